r"""Forward simulation of the monodomain reaction-diffusion system on a mesh.

.. math::
    \frac{\partial u}{\partial t} = \nabla\cdot(D\nabla u) + R_u(u, w) + I_{stim}(x, t),
    \qquad \frac{\partial w}{\partial t} = R_w(u, w)

with ``D = sigma I`` (isotropic tissue) or the fibre tensor
``D = sigma_t I + (sigma_l - sigma_t) f f^T`` (anisotropic tissue, see
:mod:`leads_engine.fibers`). Space is discretised by the mesh's mass-lumped finite-element
Laplacian ``L = -M^{-1} K(D)`` (``mesh.laplacian(sigma)`` or
``mesh.laplacian(sigma_l, transverse=sigma_t)``); time by :func:`torchdiffeq.odeint`
(fixed-step ``euler``, ``midpoint``, ``rk4`` or adaptive ``dopri5``, ``bosh3``, ...). A batch
of stimuli (one pacing site per sample) is integrated at once with the state laid out as
``[1 + n_recovery, nodes, batch]``: the diffusion term is then one sparse-times-dense product.

A :class:`StabilityGuard` inside the vector field stops the integration as soon as the state
turns NaN/Inf or blows past a bound, and reports the step and time: a diverging model never
runs on silently.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torchdiffeq import odeint

from .reactions import ReactionModel

FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")


class SimulationDiverged(RuntimeError):
    """The state became non-finite or left its plausible range during integration."""

    def __init__(self, reason: str, step: int, time: float, unit: str = "step") -> None:
        super().__init__(f"simulation diverged at {unit} {step} (t = {time:.3f} ms): {reason}")
        self.reason = reason
        self.step = step
        self.time = time


class StabilityGuard:
    """Counts vector-field evaluations and checks the state every ``every`` of them.

    Checking costs a device synchronisation, so on a GPU check every few steps; on a CPU every
    step is cheap. At most ``every - 1`` evaluations are wasted after a blow-up.
    """

    def __init__(self, every: int = 1, max_abs: float = 1e3) -> None:
        if every < 1:
            raise ValueError("guard interval must be at least 1")
        self.every = every
        self.max_abs = max_abs
        self.evaluations = 0

    def check(self, t: torch.Tensor, state: torch.Tensor, rate: torch.Tensor) -> None:
        self.evaluations += 1
        if self.evaluations % self.every:
            return
        # One reduction covers every failure: max() propagates NaN and Inf exceeds max_abs.
        # A rate that is non-finite shows up in the state one step later.
        peak = float(state.detach().abs().max())
        if not math.isfinite(peak):
            raise SimulationDiverged(
                "non-finite state", self.evaluations, float(t), "right-hand-side evaluation"
            )
        if peak > self.max_abs:
            raise SimulationDiverged(
                f"|state| reached {peak:.3g} > {self.max_abs:g}",
                self.evaluations,
                float(t),
                "right-hand-side evaluation",
            )


@dataclass(frozen=True)
class Pacing:
    """Where and how each sample is stimulated.

    ``mode="initial"``: nodes within ``radius`` (mm, graph distance) of the site start at
    ``u = amplitude``. ``mode="current"``: a current ``amplitude`` (1/ms) is injected there for
    ``start <= t < start + duration``.
    """

    sites: Sequence[int]
    mode: Literal["initial", "current"] = "initial"
    radius: float = 6.0
    amplitude: float = 1.0
    start: float = 0.0
    duration: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("initial", "current"):
            raise ValueError(f"pacing mode must be 'initial' or 'current', got {self.mode!r}")
        if len(self.sites) == 0:
            raise ValueError("pacing needs at least one site")
        if self.radius < 0 or self.duration <= 0:
            raise ValueError("pacing radius must be >= 0 and duration > 0")

    def region(self, graph_distances: np.ndarray) -> np.ndarray:
        """Boolean ``[nodes, batch]`` mask of stimulated nodes from ``[batch, nodes]`` distances."""
        return (graph_distances <= self.radius).T


def to_torch_csr(
    matrix: sp.spmatrix, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """A scipy sparse matrix as a torch sparse CSR tensor."""
    csr = sp.csr_matrix(matrix)
    csr.sort_indices()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant)")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(csr.data).to(dtype),
            size=csr.shape,
            device=device,
            check_invariants=False,
        )


class SparseLaplacian(nn.Module):
    """Fixed diffusion operator ``u -> L u`` for ``u`` of shape ``[nodes, batch]``.

    ``forward(u, rate)`` returns ``rate + L u`` in one fused sparse kernel.
    """

    def __init__(self, laplacian: torch.Tensor) -> None:
        super().__init__()
        self.laplacian = laplacian

    def forward(self, u: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
        if rate is None:
            return torch.sparse.mm(self.laplacian, u)
        return torch.sparse.addmm(rate, self.laplacian, u)


class ReactionDiffusionField(nn.Module):
    """The right-hand side ``dy/dt`` of the reaction-diffusion system for torchdiffeq.

    ``diffusion(u, rate)`` returns ``rate`` plus the diffusive rate of ``u [nodes, batch]``
    (adding inside lets a sparse operator fuse the sum); ``reaction`` is a catalog
    model; ``stimulus_current`` is an optional ``[nodes, batch]`` current switched on during
    ``stimulus_window = (start, end)``.
    """

    def __init__(
        self,
        diffusion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        reaction: ReactionModel,
        guard: StabilityGuard | None = None,
        stimulus_current: torch.Tensor | None = None,
        stimulus_window: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.reaction = reaction
        self.guard = guard
        self.stimulus_current = stimulus_current
        self.stimulus_window = stimulus_window
        self._parameters_now: dict[str, torch.Tensor] | None = None

    def freeze_parameters(self) -> None:
        """Evaluate the reaction's constrained parameters once for a whole integration."""
        self._parameters_now = self.reaction.physical_parameters()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u, w = y[0], y[1:]
        p = self._parameters_now if self._parameters_now is not None else None
        du_reaction, dw = self.reaction(u, w, p)
        du = self.diffusion(u, du_reaction)
        if self.stimulus_current is not None:
            start, end = self.stimulus_window
            if start <= float(t) < end:
                du = du + self.stimulus_current
        dy = torch.cat((du.unsqueeze(0), dw), dim=0)
        if self.guard is not None:
            self.guard.check(t, y, dy)
        return dy


@dataclass
class SimulationResult:
    """TMP trajectories ``u [batch, frames, nodes]`` at times ``t [frames]``."""

    t: torch.Tensor
    u: torch.Tensor
    states: torch.Tensor | None
    evaluations: int


def integrate(
    field: ReactionDiffusionField,
    y0: torch.Tensor,
    t: torch.Tensor,
    method: str = "euler",
    step_size: float | None = 0.05,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    native_euler: bool = True,
) -> torch.Tensor:
    """Integrate ``field`` from ``y0`` and return the states at ``t``: ``[frames, *y0.shape]``.

    Methods are torchdiffeq's. Fixed-step methods need ``step_size``; adaptive methods use
    ``rtol``/``atol``. With ``native_euler`` (default) explicit Euler on frames that lie on the
    step grid runs as a plain loop (same scheme, faster). Raises :class:`SimulationDiverged`
    when the field's guard trips.
    """
    if method in FIXED_STEP_METHODS:
        if step_size is None or step_size <= 0:
            raise ValueError(f"fixed-step method {method!r} needs a positive step_size")
        options = {"step_size": step_size}
    elif method in ADAPTIVE_METHODS:
        options = {}
    else:
        raise ValueError(
            f"unknown method {method!r}; fixed-step: {FIXED_STEP_METHODS}, "
            f"adaptive: {ADAPTIVE_METHODS}"
        )
    field.freeze_parameters()
    try:
        steps = steps_per_frame(t, step_size) if native_euler and method == "euler" else None
        if steps is not None:
            return _euler_on_frame_grid(field, y0, t, step_size, steps)
        return odeint(field, y0, t, method=method, options=options, rtol=rtol, atol=atol)
    finally:
        field._parameters_now = None


def steps_per_frame(t: torch.Tensor, step_size: float) -> list[int] | None:
    """Whole number of steps between consecutive frames, or None if frames are off the grid."""
    ratios = torch.diff(t.double()).cpu().numpy() / step_size
    steps = np.rint(ratios)
    if steps.min() < 1 or np.abs(ratios - steps).max() > 1e-6:
        return None
    return steps.astype(int).tolist()


def _euler_on_frame_grid(
    field: ReactionDiffusionField,
    y0: torch.Tensor,
    t: torch.Tensor,
    step_size: float,
    steps: list[int],
) -> torch.Tensor:
    """Explicit Euler when every frame lies on the step grid.

    The same scheme as ``odeint(method="euler")`` (agreeing to float rounding) without its
    per-step grid and interpolation bookkeeping, which made a step on the 1119-node mesh about
    1.6x slower (measured in ``benchmarks/simulator_speed.py``).
    """
    frames = [y0]
    y = y0
    time = float(t[0])
    for frame, n_steps in enumerate(steps):
        for step in range(n_steps):
            y = y + step_size * field(time + step * step_size, y)
        time = float(t[frame + 1])
        frames.append(y)
    return torch.stack(frames)


def simulate(
    laplacian: sp.spmatrix | torch.Tensor,
    reaction: ReactionModel,
    pacing: Pacing,
    t: Sequence[float] | np.ndarray | torch.Tensor,
    graph_distances: np.ndarray,
    method: str = "euler",
    step_size: float | None = 0.05,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    guard_every: int | None = None,
    max_abs: float = 1e3,
    return_states: bool = False,
    initial_state: torch.Tensor | None = None,
    native_euler: bool = True,
) -> SimulationResult:
    """Simulate one paced beat per pacing site, all sites as one batch.

    ``laplacian`` is ``L = -M^{-1} K(D)`` (see :meth:`leads_engine.mesh.Mesh.laplacian`; the
    conductivity tensor ``D`` of anisotropic tissue enters through its ``transverse``);
    ``graph_distances[b]`` holds the distances from pacing site ``b`` to every node (used to
    shape the stimulus). Returns ``u`` as ``[batch, frames, nodes]`` on the chosen device.
    ``initial_state`` (``[1 + n_recovery, nodes, batch]``) continues an earlier run instead of
    starting from rest plus the stimulus; an injected current still follows its time window.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    operator = laplacian if isinstance(laplacian, torch.Tensor) else to_torch_csr(laplacian, dtype)
    operator = operator.to(device=device, dtype=dtype)
    nodes = operator.shape[0]
    batch = len(pacing.sites)
    if graph_distances.shape != (batch, nodes):
        raise ValueError(
            f"graph_distances must be [sites={batch}, nodes={nodes}], got {graph_distances.shape}"
        )
    times = torch.as_tensor(np.asarray(t, dtype=np.float64), dtype=dtype, device=device)
    region = torch.as_tensor(pacing.region(graph_distances), device=device)

    reaction = reaction.to(device)
    current = None
    if initial_state is not None:
        y0 = initial_state.to(device=device, dtype=dtype)
    else:
        y0 = reaction.initial_state(nodes, batch, dtype=dtype, device=device)
        if pacing.mode == "initial":
            y0[0] = torch.where(region, torch.as_tensor(pacing.amplitude, dtype=dtype), y0[0])
    if pacing.mode == "current":
        current = region.to(dtype) * pacing.amplitude
    guard = StabilityGuard(guard_every or (10 if device.type == "cpu" else 50), max_abs)
    field = ReactionDiffusionField(
        SparseLaplacian(operator),
        reaction,
        guard,
        current,
        (pacing.start, pacing.start + pacing.duration),
    )
    states = integrate(field, y0, times, method, step_size, rtol, atol, native_euler)
    u = states[:, 0].permute(2, 0, 1).contiguous()
    return SimulationResult(times, u, states if return_states else None, guard.evaluations)
