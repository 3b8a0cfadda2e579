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

The flux form is integrated by :mod:`leads_engine.integrator`: each interval over which the
conductances are held is one step of autograd's tape whose backward is the integrator's
adjoint, and which stores only the states (a few MB per trajectory); the conductances'
evaluation (a network) is checkpointed: it stores its input and is recomputed backwards (storing
the activations instead saves 20-35% of a neural template's time but took the graph
transformer to 6.2 GB). Any other module is recorded by autograd sub-step by
sub-step, with memory bounded by gradient checkpointing over chunks of frames: only the chunk
boundaries are stored and each chunk is recomputed during the backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .diffusion import build_diffusion, template_info
from .graph import MeshGraph
from .integrator import FluxOperatorLayout, SegmentPlan, integrate_segment
from .reactions import ReactionModel, ResidualReaction, build_edited_reaction, build_reaction
from .reactions.residual import VisitedState
from .simulator import SimulationDiverged
from .spec import CandidateSpec


class HybridModel(nn.Module):
    """``HybridModel(diffusion, reaction)``: the twin's right-hand side and its integrator."""

    def __init__(
        self,
        diffusion: nn.Module,
        reaction: ReactionModel,
        compile_step: bool = False,
        refresh_frames: int = 1,
        state_dependent: bool = True,
    ) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.reaction = reaction
        #: frames over which flux-form conductances are held (the catalog's ``evaluation``)
        self.refresh_frames = refresh_frames
        #: flux-form operators (those with ``edge_conductance``) are integrated with
        #: conductances evaluated once per frame; any other module's rate at every sub-step.
        self.flux_form = callable(getattr(diffusion, "edge_conductance", None))
        #: compile the flux-form integrator's kernels (the reaction's sub-steps, the adjoint's
        #: Jacobians and parameter gradients) with ``torch.compile``; off in the sandbox
        self.compile_step = compile_step
        #: whether the conductances may depend on the state; the catalog's physical templates'
        #: do not, and their flux-form operator is then built once per chunk of frames
        self.state_dependent = state_dependent

    @classmethod
    def from_spec(cls, spec: CandidateSpec, num_nodes: int) -> HybridModel:
        """Build the model a spec describes, with its seed (same spec -> same weights)."""
        torch.manual_seed(spec.seed)
        if spec.reaction_source is not None:  # edited code: only ever in a locked-down worker
            reaction = build_edited_reaction(
                spec.reaction_source,
                learnable=spec.reaction_learnable,
                filename=f"<edited reaction: {spec.reaction}>",
                **spec.reaction_parameters,
            )
        else:
            reaction = build_reaction(
                spec.reaction,
                learnable=spec.reaction_learnable,
                **spec.reaction_parameters,
                **spec.reaction_hyperparameters,
            )
        if spec.reaction_residual is not None:
            residual = spec.reaction_residual
            reaction = ResidualReaction(reaction, residual.hidden, residual.layers, residual.latent)
        diffusion = build_diffusion(
            spec.diffusion, num_nodes, spec.diffusion_hyperparameters, spec.diffusion_source
        )
        # an unknown template fails here with the catalog's list
        info = template_info(spec.diffusion)
        return cls(
            diffusion,
            reaction,
            refresh_frames=info.refresh_frames,
            state_dependent=info.family != "physical" or spec.diffusion_source is not None,
        )

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
        checkpoint_conductance: bool = False,
        layout: FluxOperatorLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integrate ``n_frames`` frames; returns the end state and the frames' ``u``.

        The flux form integrates each refresh interval as one :class:`FluxEulerSegment` (its
        own adjoint, storing only the states); ``checkpoint_conductance`` recomputes the
        conductances' evaluation (a network's activations) in the backward pass instead of
        storing it.
        """
        p = self.reaction.physical_parameters()
        frames = []
        # a frozen network (a baseline that trains the reaction only) has nothing to recompute
        checkpoint_conductance = checkpoint_conductance and any(
            parameter.requires_grad for parameter in self.diffusion.parameters()
        )
        if self.flux_form:
            if layout is None:
                layout = FluxOperatorLayout.from_edges(
                    graph.edge_index, graph.inverse_mass, u.shape[0]
                )
            # a state-independent operator is the same at every refresh: one segment suffices
            interval = self.refresh_frames if self.state_dependent else n_frames
            for start in range(0, n_frames, interval):  # chunks start on a refresh
                count = min(interval, n_frames - start)
                if checkpoint_conductance:
                    # re-entrant: far less overhead per operation of the network than the
                    # saved-tensor-hook variant; it records only when an input requires grad
                    if not u.requires_grad:
                        u = u.detach().requires_grad_(True)
                    conductance = checkpoint(
                        self.diffusion.edge_conductance, u, graph, use_reentrant=True
                    )
                else:
                    conductance = self.diffusion.edge_conductance(u, graph)
                plan = SegmentPlan(
                    count, steps_per_frame, dt, reaction_substeps, compiled=self.compile_step
                )
                segment, w = integrate_segment(
                    self.reaction, layout, plan, u, w, layout.values(conductance), p
                )
                u = segment[-1]
                frames.append(segment)
            return u, w, torch.cat(frames)
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
        visited: list[VisitedState] | None = None,
    ) -> torch.Tensor:
        """Predict ``u`` at ``n_frames`` frames after the initial one: ``[B, n_frames, N]``.

        ``u0`` is the observed first frame ``[B, N]`` (the stimulus); recovery variables start
        at rest. Raises :class:`SimulationDiverged` (step counted from the start) when the
        state turns non-finite or exceeds ``max_abs``. ``reaction_substeps`` defaults to what
        the reaction model needs at this step (:meth:`ReactionModel.reaction_substeps`).
        ``visited``, when given, receives the (detached) state ``(u [B*N, 1], w [r, B*N, 1])``
        at the end of every chunk of ``checkpoint_frames`` frames: a sample of the states the
        rollout visits, where a hybrid reaction's residual is penalised and measured (the
        fused integrator keeps no other states).
        """
        batch, nodes = u0.shape
        u = u0.reshape(batch * nodes, 1)
        w = self.reaction.initial_state(batch * nodes, 1, dtype=u.dtype, device=u.device)[1:]
        dt = frame_interval / steps_per_frame
        if reaction_substeps is None:
            reaction_substeps = self.reaction.reaction_substeps(dt)
        chunk = checkpoint_frames or n_frames
        chunk = max(self.refresh_frames, chunk - chunk % self.refresh_frames)
        checkpointing = checkpoint_frames is not None and torch.is_grad_enabled()
        # The flux form stores only its states (FluxEulerSegment) and checkpoints the network;
        # any other module's sub-steps are recorded by autograd, so whole chunks are
        # checkpointed: only their boundaries are stored and each is recomputed backwards.
        use_checkpoint = checkpointing and not self.flux_form
        layout = None
        if self.flux_form:  # the operator's sparse structure, once per rollout
            layout = FluxOperatorLayout.from_edges(graph.edge_index, graph.inverse_mass, len(u))
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
                u, w, frames = self._advance(
                    *args, checkpoint_conductance=checkpointing, layout=layout
                )
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
            if visited is not None:
                visited.append((u.detach(), w.detach()))
        u_frames = torch.cat(outputs)  # [n_frames, B*N, 1]
        return u_frames.reshape(n_frames, batch, nodes).transpose(0, 1)


def _first_bad_frame(frames: torch.Tensor, max_abs: float) -> int:
    bad = ~(frames.abs() <= max_abs)  # NaN compares False
    per_frame = bad.reshape(frames.shape[0], -1).any(dim=1)
    return int(per_frame.nonzero()[0, 0]) if per_frame.any() else 0
