"""The synthetic benchmark generator: paced beats on the bundled heart mesh.

For one ground-truth reaction model it draws ``n_samples`` pacing sites spread over the
healthy wall, simulates one beat per site with the true Laplacian diffusion on a
heterogeneous conductivity map, and stores the TMP frames as an :class:`EPDataset`.

The conductivity map makes diffusion more than the plain mesh Laplacian:

.. math::
    \\sigma(x) = \\sigma_0 \\; g(x) \\; s(x), \\qquad
    g(x) = g_{apex} + (g_{base} - g_{apex})\\,\\frac{z - z_{min}}{z_{max} - z_{min}}, \\qquad
    s(x) = \\rho + (1 - \\rho)\\,\\mathrm{smoothstep}\\Big(\\frac{d(x) - r}{b}\\Big)

with ``d`` the geodesic distance to the scar centre, ``r`` the scar core radius, ``b`` its
border width and ``rho`` the scar's relative conductivity.

An anisotropic set (``fibers="rule"`` or ``"mesh"``) uses the conductivity tensor
``D = sigma_t I + (sigma_l - sigma_t) f f^T`` with ``sigma_l = sigma(x)`` along the fibres and
``sigma_t = sigma(x) / R`` across them, ``R = anisotropy`` a ratio of *conductivities* (speeds
differ by ``sqrt(R)``): along the fibres a wave runs as fast as in the isotropic set, and the
explicit step stays as stable (``D <= sigma I``).

The ground truth may be any generator model (:mod:`leads_engine.reactions.generator_models`):
the search catalog's, or one kept out of it (Beeler-Reuter 1977, ``br``) for data no catalog
structure explains. Every set is checked to propagate (:func:`propagation_check`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .dataset import SPLITS, DatasetError, EPDataset, datasets_dir, resolve_dataset_path
from .fibers import rule_based_fibers
from .heart_mesh import bundled_mesh
from .mesh import Mesh
from .metrics import activation_summary, activation_times
from .reactions.generator_models import (
    build_generator_reaction,
    in_search_catalog,
    resolve_generator_reaction,
)
from .simulator import FIXED_STEP_METHODS, Pacing, simulate

#: Least share of the nodes every beat of a generated set must activate (``u`` crossing 0.5):
#: a set whose wave dies out short of it is refused unless partial activation is allowed
#: explicitly (:func:`propagation_check`).
MIN_ACTIVATED_FRACTION = 0.95

#: where an anisotropic set's fibres come from (``none``: an isotropic set)
FIBER_SOURCES = ("none", "rule", "mesh")

#: Progress callback: fraction of the simulation done, in [0, 1].
ProgressCallback = Callable[[float], None]


class PartialActivationError(ValueError):
    """A generated set whose wave dies out before it reaches enough of the mesh."""

    def __init__(self, reaction: str, activation: dict[str, Any]) -> None:
        super().__init__(
            f"the {reaction} set activates only {activation['fraction_activated_min']:.1%} of "
            f"the nodes in its worst beat ({activation['fraction_activated_mean']:.1%} on "
            f"average; {MIN_ACTIVATED_FRACTION:.0%} required) and its wave dies out in "
            f"{activation['beats_stalled']} of {activation['beats']} beats: it does not "
            "propagate over the mesh. Change the reaction's parameters or the conductivity, or "
            "allow a partial set explicitly (--allow-partial)"
        )
        self.activation = activation


def propagation_check(u: np.ndarray, t: np.ndarray) -> dict[str, Any]:
    """How far each beat's wave gets: the activated shares and the beats that fall short.

    A beat short of :data:`MIN_ACTIVATED_FRACTION` is *stalled* when its wave died out (no
    node activated in the last 10% of the window, at least two frames), else *truncated*:
    still advancing when the window ends (a window shorter than the activation, not a
    failure to propagate).
    """
    at = activation_times(u, t)
    summary = activation_summary(at)
    fraction = np.isfinite(at).mean(axis=1)
    late = t[-1] - max(0.1 * (t[-1] - t[0]), 2.0 * float(t[1] - t[0]) if len(t) > 1 else 0.0)
    advancing = (np.nan_to_num(at, nan=-np.inf) >= late).any(axis=1)
    short = fraction < MIN_ACTIVATED_FRACTION
    return {
        "fraction_activated_min": summary["fraction_activated_min"],
        "fraction_activated_mean": summary["fraction_activated_mean"],
        "total_activation_time_mean_ms": summary["total_activation_time_mean"],
        "beats": int(len(fraction)),
        "beats_stalled": int((short & ~advancing).sum()),
        "beats_truncated": int((short & advancing).sum()),
    }


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark data set; stored in the data set's ``meta``."""

    reaction: str = "aliev_panfilov"
    reaction_parameters: dict[str, float] = field(default_factory=dict)
    n_samples: int = 32
    split_sizes: tuple[int, int, int] = (20, 6, 6)
    duration_ms: float = 500.0
    frame_interval_ms: float = 2.0
    step_size_ms: float = 0.05
    method: str = "euler"
    base_conductivity: float = 1.5
    gradient_apex_base: tuple[float, float] = (1.25, 0.75)
    scar_ratio: float = 0.2
    scar_radius_mm: float = 7.0
    scar_border_mm: float = 4.0
    pacing_radius_mm: float = 6.0
    noise_std: float = 0.0
    seed: int = 0
    #: fibre field: "none" (isotropic), "rule" (rule-based helix about the long axis) or
    #: "mesh" (the mesh's own, read from its file's point or cell data)
    fibers: str = "none"
    #: ratio of the conductivities along/across the fibres (speeds differ by its square root)
    anisotropy: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "reaction", resolve_generator_reaction(self.reaction))
        if sum(self.split_sizes) != self.n_samples:
            raise ValueError(
                f"split sizes {self.split_sizes} must add up to n_samples={self.n_samples}"
            )
        if self.split_sizes[0] < 1:
            raise ValueError("the training split needs at least one sample")
        if not 0 < self.scar_ratio <= 1:
            raise ValueError("scar_ratio must be in (0, 1]")
        if self.frame_interval_ms < self.step_size_ms or self.duration_ms <= 0:
            raise ValueError("need duration > 0 and frame interval >= step size")
        if self.noise_std < 0:
            raise ValueError("noise_std must be >= 0")
        if self.fibers not in FIBER_SOURCES:
            raise ValueError(f"fibers must be one of {FIBER_SOURCES}, got {self.fibers!r}")
        if not (self.anisotropy > 0 and np.isfinite(self.anisotropy)):
            raise ValueError(f"anisotropy must be a positive ratio, got {self.anisotropy}")
        if self.fibers == "none" and self.anisotropy != 1.0:
            raise ValueError("an anisotropy other than 1 needs fibres (fibers 'rule' or 'mesh')")


def tissue_mesh(mesh: Mesh, config: BenchmarkConfig) -> Mesh:
    """The mesh with the fibre field ``config.fibers`` asks for (none: the plain mesh)."""
    if config.fibers == "none":
        return mesh if mesh.fibers is None else Mesh(mesh.points, mesh.cells, mesh.name)
    if config.fibers == "rule":
        return mesh.with_fibers(rule_based_fibers(mesh), "node")
    if mesh.fibers is None:
        raise ValueError(
            f"fibers 'mesh' needs a mesh with a fibre field; {mesh.name!r} has none (read it "
            "with load_mesh(path, fibers='auto'), or use fibers 'rule')"
        )
    return mesh


@dataclass(frozen=True)
class ConductivityMap:
    """Per-node diffusivity (mm^2/ms) and the scar it contains."""

    sigma: np.ndarray
    scar_center: int
    scar_mask: np.ndarray


def conductivity_map(
    mesh: Mesh, config: BenchmarkConfig, rng: np.random.Generator
) -> ConductivityMap:
    """Smooth apex-to-base gradient times a low-conduction scar on the mid-wall."""
    z = mesh.points[:, 2]
    height = (z - z.min()) / (z.max() - z.min())
    g_apex, g_base = config.gradient_apex_base
    gradient = g_apex + (g_base - g_apex) * height
    # The scar sits on the mid-wall (between 30% and 70% of the height), never at the rim.
    candidates = np.flatnonzero((height > 0.3) & (height < 0.7))
    center = int(rng.choice(candidates))
    distance = mesh.geodesic_distances(center)[0]
    x = np.clip((distance - config.scar_radius_mm) / config.scar_border_mm, 0.0, 1.0)
    healthy = x * x * (3 - 2 * x)  # smoothstep: 0 in the core, 1 outside the border
    scar = config.scar_ratio + (1 - config.scar_ratio) * healthy
    sigma = config.base_conductivity * gradient * scar
    return ConductivityMap(sigma, center, distance <= config.scar_radius_mm)


def pacing_exclusion(
    mesh: Mesh, config: BenchmarkConfig, conductivity: ConductivityMap
) -> np.ndarray:
    """Nodes where no pacing site may fall: the scar with its border, and the open base rim.

    A stimulus there would overlap the scar or lose half its area to the rim, and a
    weakened source can fail to start a wave.
    """
    reach = config.scar_radius_mm + config.scar_border_mm + config.pacing_radius_mm
    near_scar = mesh.geodesic_distances(conductivity.scar_center)[0] < reach
    rim = np.unique(mesh.boundary_edges())
    if len(rim) == 0:
        return near_scar
    near_rim = mesh.graph_distances(rim).min(axis=0) < config.pacing_radius_mm
    return near_scar | near_rim


def choose_pacing_sites(
    mesh: Mesh, n_sites: int, avoid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Farthest-point sampling over the graph distance, starting from a random healthy node.

    Sites cover the wall evenly and never fall in ``avoid`` (the scar and its border).
    """
    allowed = np.flatnonzero(~avoid)
    if len(allowed) < n_sites:
        raise ValueError(f"only {len(allowed)} nodes available for {n_sites} pacing sites")
    sites = [int(rng.choice(allowed))]
    nearest = mesh.graph_distances(sites[0])[0]
    for _ in range(n_sites - 1):
        score = np.where(avoid, -np.inf, nearest)
        site = int(np.argmax(score))
        sites.append(site)
        nearest = np.minimum(nearest, mesh.graph_distances(site)[0])
    return np.asarray(sites, dtype=np.int64)


def assign_split(
    n_samples: int, sizes: tuple[int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """A fixed random train/val/test assignment of the given sizes."""
    labels = np.repeat(np.asarray(SPLITS), sizes)
    return labels[rng.permutation(n_samples).argsort()]


def generate_benchmark(
    config: BenchmarkConfig,
    mesh: Mesh | None = None,
    progress: ProgressCallback | None = None,
    name: str | None = None,
    allow_partial: bool = False,
) -> EPDataset:
    """Simulate a benchmark data set (deterministic under ``config.seed``).

    Every beat must activate at least :data:`MIN_ACTIVATED_FRACTION` of the nodes (before any
    observation noise) or still be advancing when the window ends; a wave that dies out short
    of it raises :class:`PartialActivationError`, unless ``allow_partial``. The figures of
    :func:`propagation_check` go into ``meta["activation"]`` either way.
    """
    mesh = tissue_mesh(mesh or bundled_mesh(), config)
    rng = np.random.default_rng(config.seed)
    conductivity = conductivity_map(mesh, config, rng)
    sites = choose_pacing_sites(
        mesh, config.n_samples, pacing_exclusion(mesh, config, conductivity), rng
    )
    split = assign_split(config.n_samples, config.split_sizes, rng)

    frames = int(round(config.duration_ms / config.frame_interval_ms)) + 1
    t = np.arange(frames) * config.frame_interval_ms
    reaction = build_generator_reaction(
        config.reaction,
        step_size_ms=config.step_size_ms if config.method in FIXED_STEP_METHODS else None,
        **config.reaction_parameters,
    )
    anisotropic = config.fibers != "none"
    transverse = conductivity.sigma / config.anisotropy if anisotropic else None
    laplacian = mesh.laplacian(conductivity.sigma, transverse=transverse)
    distances = mesh.graph_distances(sites)
    pacing = Pacing(sites.tolist(), mode="initial", radius=config.pacing_radius_mm)

    started = time.perf_counter()
    u = np.empty((config.n_samples, frames, mesh.n_nodes), dtype=np.float32)
    # Integrate in chunks of frames so long runs report progress; the fixed-step grid is the
    # same as one call's because chunk boundaries are frame times.
    chunk = max(1, (frames - 1) // 20)
    state = None
    with torch.no_grad():
        for first in range(0, frames - 1, chunk):
            last = min(first + chunk, frames - 1)
            result = simulate(
                laplacian,
                reaction,
                pacing,
                t[first : last + 1],
                distances,
                method=config.method,
                step_size=config.step_size_ms,
                device="cpu",
                initial_state=state,
                return_states=True,
            )
            u[:, first : last + 1] = result.u.numpy()
            state = result.states[-1]
            if progress is not None:
                progress(last / (frames - 1))
    elapsed = time.perf_counter() - started
    activation = propagation_check(u, t)
    if activation["beats_stalled"] and not allow_partial:
        raise PartialActivationError(config.reaction, activation)

    if config.noise_std > 0:
        u += rng.normal(0.0, config.noise_std, size=u.shape).astype(np.float32)

    meta: dict[str, Any] = {
        "name": name or f"{config.reaction}",
        "generator": "leads_engine.generator",
        "generator_version": __version__,
        "reaction": config.reaction,
        "reaction_parameters": reaction.parameter_values(),
        "reaction_in_catalog": in_search_catalog(config.reaction),
        "activation": {**activation, "partial_allowed": allow_partial},
        "diffusion": "fe_laplacian",
        "mesh": mesh.name,
        "scar_center": conductivity.scar_center,
        "scar_nodes": int(conductivity.scar_mask.sum()),
        "config": asdict(config),
        "seed": config.seed,
        "noise_std": config.noise_std,
        "units": {"t": "ms", "points": "mm", "conductivity": "mm^2/ms", "u": "normalised TMP"},
        "simulation_seconds": round(elapsed, 3),
    }
    extras: dict[str, np.ndarray] = {}
    if anisotropic:
        meta["diffusion"] = "fe_laplacian_anisotropic"
        meta["fibers"] = {
            "source": config.fibers,
            "per": mesh.fibers_per,
            "anisotropy": config.anisotropy,
            "ratio_of": "conductivities along/across the fibres; speeds differ by its sqrt",
        }
        extras["fibers"] = np.asarray(mesh.fibers)
    return EPDataset(
        points=mesh.points,
        cells=mesh.cells,
        u=u,
        t=t,
        pacing_site=sites,
        split=split,
        conductivity=conductivity.sigma,
        meta=meta,
        extras=extras,
    )


def benchmark_path(name: str, progress: ProgressCallback | None = None) -> Path:
    """The file of data set ``name``; a missing benchmark set (``ap``, ``rm``, ``ms``, ...) is
    first generated with the default :class:`BenchmarkConfig` under ``$LEADS_HOME/datasets``.

    Raises the lookup's :class:`DatasetError` when ``name`` is neither a data set nor a
    reaction model to generate one for.
    """
    try:
        return resolve_dataset_path(name)
    except DatasetError as missing:
        try:
            config = BenchmarkConfig(reaction=name)
        except (KeyError, ValueError):
            raise missing from None
    return generate_benchmark(config, progress=progress, name=name).save(
        datasets_dir() / f"{name}.npz"
    )
