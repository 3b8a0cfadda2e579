r"""The hybrid model: a diffusion operator from the catalog joined to a reaction model.

.. math::
    \frac{du}{dt} = D_\phi(u; \mathcal{G}) + R_u(u, w; \theta), \qquad
    \frac{dw}{dt} = R_w(u, w; \theta)

Integration for training is explicit Euler on the data's frame grid with ``steps_per_frame``
sub-steps of ``dt = frame_interval / steps_per_frame``; a stiff reaction model (one that sets
``max_step_ms``, e.g. Mitchell-Schaeffer's 0.3 ms inward current) takes several Euler
sub-steps of its own per diffusion step. Every catalog template is flux-form,
``du_i/dt = (1/M_i) sum_j w_ij (u_j - u_i)``, with ``edge_conductance(u, graph) -> w``. The
integrator is *multirate*: the conductances (a neural network's output: 10-70 ms per
evaluation on a 20-sample batch) are evaluated once per frame (every 2 frames for the
neural templates, the catalog's ``evaluation``) and held over its sub-steps,
while the flux and the reaction are evaluated at every sub-step (for the physical templates
the conductances do not depend on the state, so this is exact). Holding conductances rather
than the rate keeps the explicit scheme stable (a held rate would be an explicit step of a
whole frame). A module without ``edge_conductance`` (an agent's edit may drop it) has its
``forward`` evaluated at every sub-step. See ``benchmarks/training_speed.py``.

Memory stays bounded on long horizons by gradient checkpointing over chunks of frames:
only the chunk boundaries are stored and each chunk is recomputed during the backward pass.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .diffusion import build_diffusion, template_info
from .graph import MeshGraph
from .reactions import ReactionModel, build_reaction
from .simulator import SimulationDiverged
from .spec import CandidateSpec


def flux_euler_step(
    reaction: ReactionModel,
    u: torch.Tensor,
    w: torch.Tensor,
    conductance: torch.Tensor,
    p: dict[str, torch.Tensor],
    src: torch.Tensor,
    dst: torch.Tensor,
    inverse_mass: torch.Tensor,
    dt: float,
    reaction_substeps: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit Euler step of ``du/dt = (1/M) sum_j w_ij (u_j - u_i) + R_u``, ``dw/dt = R_w``.

    With ``reaction_substeps = k > 1`` the step is multirate: the diffusion rate is evaluated
    once and held while the (pointwise, cheap, possibly stiff) reaction takes ``k`` Euler
    steps of ``dt / k``.
    """
    flux = conductance.unsqueeze(1) * (u[src] - u[dst])
    diffusion_rate = inverse_mass * torch.zeros_like(u).index_add_(0, dst, flux)
    h = dt / reaction_substeps
    for _ in range(reaction_substeps):
        du, dw = reaction(u, w, p)
        u, w = u + h * (diffusion_rate + du), w + h * dw
    return u, w


@functools.cache
def compiled_flux_euler_step():  # noqa: ANN201 - a torch.compile wrapper
    """:func:`flux_euler_step` compiled once per process (per reaction class and shape).

    Fusing the step's ~25 small kernels, forward and backward, makes a training step about 5x
    faster on CPU (0.9 vs 4.8 ms for 10 trajectories on the bundled mesh) for a one-off compile
    of a few seconds per reaction model, cached on disk by TorchInductor across processes.
    """
    # One compiled variant per (reaction class, batch shape, sub-steps): a screening over the
    # reaction catalog with train/val/test batches needs more than dynamo's default of 8, past
    # which it would silently fall back to the slow eager step.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(flux_euler_step, dynamic=False)


class HybridModel(nn.Module):
    """``HybridModel(diffusion, reaction)``: the twin's right-hand side and its integrator."""

    def __init__(
        self,
        diffusion: nn.Module,
        reaction: ReactionModel,
        compile_step: bool = False,
        refresh_frames: int = 1,
    ) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.reaction = reaction
        #: frames over which flux-form conductances are held (the catalog's ``evaluation``)
        self.refresh_frames = refresh_frames
        #: flux-form operators (those with ``edge_conductance``) are integrated with
        #: conductances evaluated once per frame; any other module's rate at every sub-step.
        self.flux_form = callable(getattr(diffusion, "edge_conductance", None))
        self.compile_step = compile_step

    @classmethod
    def from_spec(cls, spec: CandidateSpec, num_nodes: int) -> HybridModel:
        """Build the model a spec describes, with its seed (same spec -> same weights)."""
        torch.manual_seed(spec.seed)
        reaction = build_reaction(
            spec.reaction,
            learnable=spec.reaction_learnable,
            **spec.reaction_parameters,
            **spec.reaction_hyperparameters,
        )
        diffusion = build_diffusion(
            spec.diffusion, num_nodes, spec.diffusion_hyperparameters, spec.diffusion_source
        )
        # an unknown template fails here with the catalog's list
        info = template_info(spec.diffusion)
        return cls(diffusion, reaction, refresh_frames=info.refresh_frames)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _advance(
        self,
        u: torch.Tensor,
        w: torch.Tensor,
        graph: MeshGraph,
        n_frames: int,
        steps_per_frame: int,
        dt: float,
        reaction_substeps: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integrate ``n_frames`` frames; returns the end state and the frames' ``u``."""
        p = self.reaction.physical_parameters()
        frames = []
        if self.flux_form:
            step = compiled_flux_euler_step() if self.compile_step else flux_euler_step
            src, dst = graph.edge_index
            for frame in range(n_frames):  # a chunk starts on a refresh (see rollout)
                if frame % self.refresh_frames == 0:
                    conductance = self.diffusion.edge_conductance(u, graph)
                for _ in range(steps_per_frame):
                    u, w = step(
                        self.reaction,
                        u,
                        w,
                        conductance,
                        p,
                        src,
                        dst,
                        graph.inverse_mass,
                        dt,
                        reaction_substeps,
                    )
                frames.append(u)
        else:
            h = dt / reaction_substeps
            for _ in range(n_frames):
                for _ in range(steps_per_frame):
                    diffusion_rate = self.diffusion(u, graph)
                    for _ in range(reaction_substeps):
                        du, dw = self.reaction(u, w, p)
                        u, w = u + h * (diffusion_rate + du), w + h * dw
                frames.append(u)
        return u, w, torch.stack(frames)

    def rollout(
        self,
        u0: torch.Tensor,
        graph: MeshGraph,
        n_frames: int,
        frame_interval: float,
        steps_per_frame: int,
        checkpoint_frames: int | None = 10,
        max_abs: float = 10.0,
        reaction_substeps: int | None = None,
    ) -> torch.Tensor:
        """Predict ``u`` at ``n_frames`` frames after the initial one: ``[B, n_frames, N]``.

        ``u0`` is the observed first frame ``[B, N]`` (the stimulus); recovery variables start
        at rest. Raises :class:`SimulationDiverged` (step counted from the start) when the
        state turns non-finite or exceeds ``max_abs``. ``reaction_substeps`` defaults to what
        the reaction model needs at this step (:meth:`ReactionModel.reaction_substeps`).
        """
        batch, nodes = u0.shape
        u = u0.reshape(batch * nodes, 1)
        w = self.reaction.initial_state(batch * nodes, 1, dtype=u.dtype, device=u.device)[1:]
        dt = frame_interval / steps_per_frame
        if reaction_substeps is None:
            reaction_substeps = self.reaction.reaction_substeps(dt)
        chunk = checkpoint_frames or n_frames
        chunk = max(self.refresh_frames, chunk - chunk % self.refresh_frames)
        use_checkpoint = checkpoint_frames is not None and torch.is_grad_enabled()
        outputs = []
        done = 0
        while done < n_frames:
            count = min(chunk, n_frames - done)
            if use_checkpoint and not u.requires_grad:
                # The re-entrant variant has far less per-operation overhead than the
                # saved-tensor-hook one; it needs an input that requires grad to record the
                # chunk, hence the first chunk's initial state is marked.
                u = u.detach().requires_grad_(True)
            args = (u, w, graph, count, steps_per_frame, dt, reaction_substeps)
            if use_checkpoint:
                u, w, frames = checkpoint(self._advance, *args, use_reentrant=True)
            else:
                u, w, frames = self._advance(*args)
            peak = float(frames.detach().abs().max())
            if not math.isfinite(peak) or peak > max_abs:
                first_bad = _first_bad_frame(frames.detach(), max_abs)
                frame = done + first_bad + 1
                reason = "non-finite TMP" if not math.isfinite(peak) else f"|u| reached {peak:.3g}"
                raise SimulationDiverged(
                    reason, step=frame * steps_per_frame, time=frame * frame_interval
                )
            outputs.append(frames)
            done += count
        u_frames = torch.cat(outputs)  # [n_frames, B*N, 1]
        return u_frames.reshape(n_frames, batch, nodes).transpose(0, 1)


def _first_bad_frame(frames: torch.Tensor, max_abs: float) -> int:
    bad = ~(frames.abs() <= max_abs)  # NaN compares False
    per_frame = bad.reshape(frames.shape[0], -1).any(dim=1)
    return int(per_frame.nonzero()[0, 0]) if per_frame.any() else 0
