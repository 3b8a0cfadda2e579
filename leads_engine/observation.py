"""Observation operators: what of the simulated TMP a data set actually measured.

The trainer's loss and the evaluation compare the *observed* quantity, never more:

.. math::
    \\mathcal{L} = \\frac{1}{B (F-1) E} \\sum_{b,f,e}
        \\big(\\mathcal{N}_e(\\mathcal{O}(\\hat u)_{b,f,e}) - \\mathcal{N}_e(y_{b,f,e})\\big)^2

with ``\\hat u`` the predicted TMP ``[B, F, N]``, ``y`` the data set's targets and
``\\mathcal{O}`` one of

* :class:`IdentityObservation` (``"tmp"``): ``O(u) = u``; the targets are the TMP itself;
* :class:`LeadFieldObservation` (``"lead_field"``): ``O(u)_{b,f} = H u_{b,f}`` with a lead field
  ``H [electrodes, nodes]`` (unipolar electrograms, body-surface ECG);
* :class:`ContactNodeObservation` (``"contact_nodes"``): ``O(u) = u[..., nodes]``, the TMP at
  the nodes under contact electrodes (sparse contact / optical mapping); stored in the file as
  a one-hot ``H``.

``\\mathcal{N}_e`` is the per-electrode normalisation: ``none`` (identity) or ``standardise``,
``N_e(y) = (y - mu_e) / s_e`` with ``mu_e`` and ``s_e`` the mean and standard deviation of
electrode ``e`` over the *training* split's samples and frames (no information from the
validation or test samples). The offset cancels in the difference; the scale weights the
electrodes equally whatever their amplitude (a far electrode counts as much as a near one).

The lead field of :func:`infinite_medium_lead_field` is the standard infinite homogeneous
volume-conductor model; see there for the formula and why.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .dataset import NORMALISATIONS, DatasetError, EPDataset
from .mesh import Mesh

__all__ = [
    "ContactNodeObservation",
    "IdentityObservation",
    "LeadFieldObservation",
    "ObservationOperator",
    "Standardisation",
    "electrode_correlation",
    "electrode_nodes",
    "infinite_medium_lead_field",
    "observation_for",
]


@runtime_checkable
class ObservationOperator(Protocol):
    """Maps predicted TMP to the measured quantity and provides the matching targets."""

    name: str

    def observe(self, u: torch.Tensor) -> torch.Tensor:
        """``[B, F, N]`` TMP -> ``[B, F, E]`` normalised observations (differentiable)."""
        ...

    def targets(self, dataset: EPDataset, indices: np.ndarray) -> torch.Tensor:
        """Normalised measurements ``[len(indices), frames - 1, E]`` after frame 0 (CPU)."""
        ...

    def to(self, device: torch.device | str) -> ObservationOperator:
        """The same operator with its tensors on ``device``."""
        ...


@dataclass(frozen=True)
class Standardisation:
    """Per-electrode affine normalisation ``(y - mean) / scale`` (``[E]`` each)."""

    mean: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_training_split(cls, dataset: EPDataset) -> Standardisation:
        """Mean and standard deviation of each electrode over the train samples and frames.

        A flat electrode (std below ``1e-6`` of the largest) gets that floor as its scale, so it
        neither divides by zero nor dominates the loss.
        """
        signals = np.asarray(dataset.extras["signals"], dtype=np.float64)[dataset.indices("train")]
        mean = signals.mean(axis=(0, 1))
        std = signals.std(axis=(0, 1))
        std = np.maximum(std, 1e-6 * max(float(std.max()), 1e-30))
        return cls(torch.from_numpy(mean).float(), torch.from_numpy(std).float())

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        # recorded targets come from numpy (CPU) while predictions live on the model's device
        return (y - self.mean.to(y.device)) / self.scale.to(y.device)

    def to(self, device: torch.device | str) -> Standardisation:
        return Standardisation(self.mean.to(device), self.scale.to(device))


class IdentityObservation:
    """``O(u) = u``: the loss compares TMP on every node (the synthetic benchmarks)."""

    name = "tmp"

    def observe(self, u: torch.Tensor) -> torch.Tensor:
        return u

    __call__ = observe

    def targets(self, dataset: EPDataset, indices: np.ndarray) -> torch.Tensor:
        if dataset.u is None:
            raise DatasetError(
                f"{dataset.name}: the TMP observation needs u, which this recording lacks"
            )
        return torch.from_numpy(dataset.u[indices, 1:])

    def to(self, device: torch.device | str) -> IdentityObservation:
        return self


class _ElectrodeObservation(ABC):
    """Shared part of the electrode operators: targets from ``signals``, normalisation."""

    name = "electrodes"

    def __init__(self, standardisation: Standardisation | None = None) -> None:
        self.standardisation = standardisation

    @property
    def normalisation(self) -> str:
        return "none" if self.standardisation is None else "standardise"

    @abstractmethod
    def raw(self, u: torch.Tensor) -> torch.Tensor:
        """Un-normalised observation ``[B, F, E]`` (signal units)."""

    def observe(self, u: torch.Tensor) -> torch.Tensor:
        y = self.raw(u)
        return y if self.standardisation is None else self.standardisation(y)

    __call__ = observe

    def targets(self, dataset: EPDataset, indices: np.ndarray) -> torch.Tensor:
        y = torch.from_numpy(np.asarray(dataset.extras["signals"][indices, 1:], dtype=np.float32))
        return y if self.standardisation is None else self.standardisation(y)


class LeadFieldObservation(_ElectrodeObservation):
    """``O(u)_{b,f} = H u_{b,f}``: electrograms through a lead field ``H [E, N]``."""

    name = "lead_field"

    def __init__(self, H: torch.Tensor, standardisation: Standardisation | None = None) -> None:
        super().__init__(standardisation)
        self.H = H.float()

    def raw(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.H.to(u.dtype).T

    def to(self, device: torch.device | str) -> LeadFieldObservation:
        standardisation = None if self.standardisation is None else self.standardisation.to(device)
        return LeadFieldObservation(self.H.to(device), standardisation)


class ContactNodeObservation(_ElectrodeObservation):
    """``O(u) = u[..., nodes]``: TMP under contact electrodes (a node subset)."""

    name = "contact_nodes"

    def __init__(self, nodes: torch.Tensor, standardisation: Standardisation | None = None) -> None:
        super().__init__(standardisation)
        self.nodes = nodes.long()

    def raw(self, u: torch.Tensor) -> torch.Tensor:
        return u[..., self.nodes]

    def to(self, device: torch.device | str) -> ContactNodeObservation:
        standardisation = None if self.standardisation is None else self.standardisation.to(device)
        return ContactNodeObservation(self.nodes.to(device), standardisation)


def observation_for(dataset: EPDataset, normalisation: str | None = None) -> ObservationOperator:
    """The operator a data set's measurements were taken through.

    ``meta["observation"]["kind"]`` decides; without it, a file with ``H`` and ``signals`` is a
    lead-field recording and anything else is observed as TMP. ``normalisation`` (``none`` or
    ``standardise``) overrides ``meta["observation"]["normalisation"]`` (default ``none``).
    """
    spec = dataset.meta.get("observation") or {}
    has_recording = "H" in dataset.extras and "signals" in dataset.extras
    kind = spec.get("kind", "lead_field" if has_recording else "tmp")
    if kind == "tmp":
        return IdentityObservation()
    normalisation = normalisation or spec.get("normalisation", "none")
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation {normalisation!r} is not one of {NORMALISATIONS}")
    standardisation = (
        Standardisation.from_training_split(dataset) if normalisation == "standardise" else None
    )
    H = np.asarray(dataset.extras["H"])
    if kind == "contact_nodes":
        return ContactNodeObservation(torch.from_numpy(H.argmax(axis=1)), standardisation)
    return LeadFieldObservation(torch.from_numpy(H.astype(np.float32)), standardisation)


# --------------------------------------------------------------------------------------------
# Lead fields and electrodes
# --------------------------------------------------------------------------------------------


def infinite_medium_lead_field(
    mesh: Mesh,
    electrode_positions: np.ndarray,
    bath_conductivity: float = 1.0,
    regularisation_mm: float | None = None,
) -> np.ndarray:
    """Lead field ``H [E, N]`` of unipolar electrodes in an infinite homogeneous conductor.

    In the bidomain model with an unbounded homogeneous extracellular bath of conductivity
    ``sigma_b``, the extracellular potential obeys ``sigma_b lap(phi) = -div(sigma_i grad V_m)``,
    whose solution is the classical source integral (Plonsey; Gima & Rudy 2002)

    .. math::
        \\phi(x_e) = \\frac{1}{4 \\pi \\sigma_b} \\int \\frac{\\nabla\\cdot(\\sigma_i \\nabla
        V_m)(x)}{|x_e - x|}\\, dx.

    Writing ``1/r_e`` as the P1 interpolant ``sum_n r_{en}^{-1} phi_n`` and using the weak form
    ``int phi_n div(sigma_i grad u) = -(K u)_n`` (no flux through the tissue boundary) gives

    .. math::
        H = -\\frac{1}{4 \\pi \\sigma_b} R^{-1} K, \\qquad
        (R^{-1})_{en} = \\big(|x_e - x_n|^2 + \\varepsilon^2\\big)^{-1/2},

    with ``K`` the mesh's P1 stiffness for a uniform intracellular conductivity (the tissue's
    true one is unknown for a recording, and a scale only rescales ``H``). Rows of ``H`` sum to
    zero, so a uniform TMP produces no signal, as it must: only wavefronts (current sources)
    are seen. ``epsilon`` (default half the mean edge length) smooths the ``1/r`` singularity of
    an electrode closer to a node than the mesh resolves. On a surface mesh the wall is a thin
    sheet and its thickness is absorbed in the overall scale. Why this model: it needs only
    the geometry and the electrode positions (no torso mesh, no conductivity map), it is the
    standard first approximation for contact and near-field electrograms, and it is linear in
    ``u``, which keeps the trainer's observation a fixed matrix.
    """
    positions = np.asarray(electrode_positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"electrode_positions: expected [electrodes, 3], got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("electrode_positions: contains NaN/Inf")
    if bath_conductivity <= 0:
        raise ValueError(f"bath_conductivity must be > 0, got {bath_conductivity}")
    epsilon = 0.5 * mesh.mean_edge_length if regularisation_mm is None else regularisation_mm
    squared = ((positions[:, None, :] - mesh.points[None, :, :]) ** 2).sum(axis=2)
    inverse_distance = 1.0 / np.sqrt(squared + epsilon**2)
    stiffness = mesh.stiffness()
    return -(stiffness @ inverse_distance.T).T / (4 * math.pi * bath_conductivity)


def electrode_nodes(dataset: EPDataset) -> np.ndarray | None:
    """Mesh node of each electrode: the contact node, else the node nearest its position."""
    spec = dataset.meta.get("observation") or {}
    if spec.get("kind") == "contact_nodes":
        return np.asarray(dataset.extras["H"]).argmax(axis=1)
    if "electrode_positions" not in dataset.extras:
        return None
    positions = np.asarray(dataset.extras["electrode_positions"], dtype=np.float64)
    squared = ((positions[:, None, :] - dataset.points[None, :, :]) ** 2).sum(axis=2)
    return squared.argmin(axis=1)


def electrode_correlation(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson correlation over frames per electrode, averaged over samples, ``[E]``.

    ``rho_{s,e} = cov_f(p, y) / (std_f(p) std_f(y))`` for each sample ``s`` and electrode
    ``e`` of ``[samples, frames, electrodes]`` arrays; a flat trace (zero variance) has no
    correlation and is left out of the mean (NaN if flat in every sample).
    """
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 3:
        raise ValueError(f"electrode_correlation: shapes {p.shape} and {y.shape} differ or not 3-D")
    p = p - p.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((p**2).sum(axis=1) * (y**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(denominator > 0, (p * y).sum(axis=1) / denominator, np.nan)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(rho)
        counts = valid.sum(axis=0)
        return np.where(counts > 0, np.nansum(rho, axis=0) / np.maximum(counts, 1), np.nan)
