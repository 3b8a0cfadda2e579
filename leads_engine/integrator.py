r"""The trainer's fused integrator: multirate explicit Euler with a hand-written adjoint.

The model is ``du/dt = L(w) u + R_u(u, s)``, ``ds/dt = R_s(u, s)`` with a flux-form diffusion
``(L(w) u)_i = (1/M_i) sum_j w_ij (u_j - u_i)`` whose edge conductances ``w`` are held over a
*segment* of frames, and a pointwise reaction ``R`` (``s``: the recovery variables). One step of
``dt`` evaluates the diffusion once and lets the (possibly stiff) reaction take ``m`` Euler
sub-steps of ``h = dt / m``:

.. math::
    D_k = L u_k, \qquad y_{k,j+1} = y_{k,j} + h\,(D_k e_u + R(y_{k,j})), \quad j < m,
    \qquad y_{k+1,0} = y_{k,m}, \quad y = (u, s).

Recording this on autograd's tape costs ~25 small kernels and as many tape nodes per sub-step,
forward and backward, and a scatter (``index_add_``) per diffusion product that is slow on a
CPU. :class:`FluxEulerSegment` runs a whole segment without a tape and differentiates it by
its adjoint, written once for every reaction model. With ``lambda`` the adjoint of ``y_{k,j+1}``
and ``J = dR/dy`` at ``y_{k,j}``, going backwards:

.. math::
    \mu_k \mathrel{+}= h\,\lambda_u, \qquad
    \lambda \leftarrow \lambda + h\,J^\top \lambda \quad (j = m-1, \dots, 0), \qquad
    \lambda_u \leftarrow \lambda_u + L^\top \mu_k,

and the parameter gradients are sums over the segment:
``dJ/dV_{ab} = sum_k mu_k[a] u_k[b]`` for the operator's stored values ``V`` and
``dJ/dtheta = sum_{k,j} h lambda_{k,j+1}^T dR/dtheta (y_{k,j})``. Because ``R`` is pointwise,
every ``J`` of the segment comes from one autograd pass per state variable over all the
segment's stored states at once (the sum of a pointwise output over nodes has the output's
pointwise derivatives as its gradient), and the parameter gradient from one more: the
per-sub-step work is a sparse product and a few element-wise operations.

The diffusion is a sparse CSR matrix ``L`` (rows ``dst``, columns ``src`` and the diagonal), the
fastest layout for a product with one column on a CPU (about 14 us for a batch of 2 on the
bundled mesh against 110 us for the gather/scatter form); ``L^T`` shares its structure up to a
permutation of the stored values, both built once per rollout (:class:`FluxOperatorLayout`).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .reactions import ReactionModel


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant)")
        return torch.sparse_csr_tensor(crow, col, values, (size, size), check_invariants=False)


@dataclass(frozen=True)
class FluxOperatorLayout:
    r"""The CSR structure of ``L(w)`` on a batched graph's directed edges ``src -> dst``.

    Stored entries, in CSR order: the off-diagonal ``(dst, src)`` of every edge and the diagonal.
    ``edge_position [E]``/``diagonal_position [n]``: where each edge's and each node's value
    sits; ``transpose_order``: the permutation of the values that gives ``L^T`` in the CSR
    structure ``crow_t``/``col_t``; ``row``/``col``: each stored entry's row and column.
    """

    size: int
    crow: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    transpose_order: torch.Tensor
    edge_position: torch.Tensor
    edge_row: torch.Tensor
    diagonal_position: torch.Tensor
    edge_inverse_mass: torch.Tensor

    @classmethod
    def from_edges(
        cls, edge_index: torch.Tensor, inverse_mass: torch.Tensor, num_nodes: int
    ) -> FluxOperatorLayout:
        """The layout for ``edge_index [2, E]`` on ``num_nodes`` nodes (``inverse_mass [n, 1]``)."""
        device = edge_index.device
        src, dst = edge_index.cpu()
        n = num_nodes
        nodes = torch.arange(n)
        rows = torch.cat((dst, nodes))
        cols = torch.cat((src, nodes))
        order = torch.argsort(rows * n + cols)
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        sorted_rows, sorted_cols = rows[order], cols[order]
        crow = torch.zeros(n + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(sorted_rows, minlength=n), 0)
        order_t = torch.argsort(sorted_cols * n + sorted_rows)
        crow_t = torch.zeros(n + 1, dtype=torch.int64)
        crow_t[1:] = torch.cumsum(torch.bincount(sorted_cols, minlength=n), 0)

        def put(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        return cls(
            size=n,
            crow=put(crow),
            col=put(sorted_cols),
            row=put(sorted_rows),
            crow_t=put(crow_t),
            col_t=put(sorted_rows[order_t]),
            transpose_order=put(order_t),
            edge_position=put(position[: len(src)]),
            edge_row=put(dst),
            diagonal_position=put(position[len(src) :]),
            edge_inverse_mass=inverse_mass[:, 0][dst.to(device)],
        )

    def values(self, conductance: torch.Tensor) -> torch.Tensor:
        """Stored values of ``L(w)`` for edge conductances ``w [E]`` (differentiable):
        ``w_e / M_dst`` off the diagonal, minus their row sums on it."""
        off = conductance * self.edge_inverse_mass
        diagonal = off.new_zeros(self.size).index_add(0, self.edge_row, off)
        values = off.new_zeros(len(self.col))
        values = values.index_put((self.edge_position,), off)
        return values.index_put((self.diagonal_position,), -diagonal)

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow, self.col, values, self.size)

    def transpose(self, values: torch.Tensor) -> torch.Tensor:
        return _csr(self.crow_t, self.col_t, values[self.transpose_order], self.size)


@dataclass(frozen=True)
class SegmentPlan:
    """What a segment integrates: ``frames`` frames of ``steps_per_frame`` steps of ``dt``, the
    reaction taking ``substeps`` Euler sub-steps per step."""

    frames: int
    steps_per_frame: int
    dt: float
    substeps: int = 1
    #: run the reaction's sub-steps through :func:`compiled_reaction_substeps`
    compiled: bool = False


def reaction_substeps(
    reaction: ReactionModel,
    u: torch.Tensor,
    s: torch.Tensor,
    diffusion_rate: torch.Tensor,
    p: dict[str, torch.Tensor],
    h: float,
    substeps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``substeps`` Euler sub-steps of ``h`` with the diffusion rate held: ``(u, s)`` after them
    and the states entering each, stacked (``[m, n, 1]``, ``[m, r, n, 1]``)."""
    u_in, s_in = [], []
    for _ in range(substeps):
        u_in.append(u)
        s_in.append(s)
        du, ds = reaction(u, s, p)
        u = u + h * (diffusion_rate + du)
        s = s + h * ds
    return u, s, torch.stack(u_in), torch.stack(s_in)


@functools.cache
def compiled_reaction_substeps():  # noqa: ANN201 - a torch.compile wrapper
    """:func:`reaction_substeps` compiled once per process (per reaction class and shape): the
    sub-steps' ~20 element-wise kernels each become one loop (3x faster for a batch of 2), its
    code cached on disk by TorchInductor across processes."""
    # one variant per (reaction class, batch shape, sub-steps): a screening over the reaction
    # catalog with train/val/test batches needs more than dynamo's default of 8, past which it
    # would silently fall back to eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(reaction_substeps, dynamic=False)


class FluxEulerSegment(torch.autograd.Function):
    """One segment of the multirate Euler integrator with its adjoint (module docstring).

    ``apply(reaction, layout, plan, names, u [n, 1], s [r, n, 1], values [nnz], *tensors)``:
    ``tensors`` are the reaction's physical parameter values (in the order of ``names``)
    followed by the reaction module's own trainable tensors (a neural reaction's weights).
    Returns ``(frames [F, n, 1], s_end)``; ``frames[-1]`` is ``u`` at the segment's end.
    """

    @staticmethod
    def forward(  # noqa: ANN205
        ctx: Any,
        reaction: ReactionModel,
        layout: FluxOperatorLayout,
        plan: SegmentPlan,
        names: tuple[str, ...],
        u: torch.Tensor,
        s: torch.Tensor,
        values: torch.Tensor,
        *tensors: torch.Tensor,
    ):
        p = dict(zip(names, tensors[: len(names)], strict=True))
        operator = layout.matrix(values)
        h = plan.dt / plan.substeps
        react = compiled_reaction_substeps() if plan.compiled else reaction_substeps
        u_in: list[torch.Tensor] = []  # the states entering every sub-step, per step
        s_in: list[torch.Tensor] = []
        frames = []
        for _ in range(plan.frames):
            for _ in range(plan.steps_per_frame):
                diffusion_rate = torch.mv(operator, u.view(-1)).view_as(u)
                u, s, us, ss = react(reaction, u, s, diffusion_rate, p, h, plan.substeps)
                u_in.append(us)
                s_in.append(ss)
            frames.append(u)
        ctx.reaction, ctx.layout, ctx.plan, ctx.names = reaction, layout, plan, names
        ctx.save_for_backward(torch.cat(u_in), torch.cat(s_in), values, *tensors)
        return torch.stack(frames), s

    @staticmethod
    def backward(ctx: Any, grad_frames: torch.Tensor | None, grad_s: torch.Tensor | None):  # noqa: ANN205
        reaction: ReactionModel = ctx.reaction
        layout: FluxOperatorLayout = ctx.layout
        plan: SegmentPlan = ctx.plan
        u_in, s_in, values, *tensors = ctx.saved_tensors
        n_p = len(ctx.names)
        h, m = plan.dt / plan.substeps, plan.substeps
        count, n = u_in.shape[0], u_in.shape[1]
        r = s_in.shape[1]
        # every sub-step's Jacobian at once (R is pointwise)
        with torch.enable_grad():
            u_all = u_in.detach().reshape(count * n, 1).requires_grad_(True)
            s_all = s_in.detach().transpose(0, 1).reshape(r, count * n, 1).requires_grad_(True)
            p = {
                k: t.detach().requires_grad_(t.requires_grad)
                for k, t in zip(ctx.names, tensors[:n_p], strict=True)
            }
            du, ds = reaction(u_all, s_all, p)
            outputs = [du, *ds.unbind(0)]
            # the adjoint map of sub-step c, lambda_in[i] = sum_o A[c, i, o] lambda_out[o]:
            # A[c, i, o] = delta_io + h dR_o/dy_i at the state entering it
            rows = []
            for out in outputs:
                gu, gs = torch.autograd.grad(
                    out.sum(), (u_all, s_all), retain_graph=True, allow_unused=True
                )
                gu = torch.zeros_like(u_all) if gu is None else gu
                gs = torch.zeros_like(s_all) if gs is None else gs
                rows.append(torch.cat((gu.view(1, count, n), gs.view(r, count, n))))
            transition = torch.stack(rows, dim=1).permute(2, 0, 1, 3) * h  # [count, i, o, n]
            eye = torch.eye(1 + r, dtype=u_in.dtype, device=u_in.device)
            transition = (transition + eye.view(1, 1 + r, 1 + r, 1)).contiguous()
        transpose = layout.transpose(values)
        # lambda: the adjoint of the current state; updated in place only while no list holds it
        lam = torch.zeros(1 + r, n, dtype=u_in.dtype, device=u_in.device)
        if grad_s is not None:
            lam[1:] = grad_s.view(r, n)
        lam_out: list[torch.Tensor] = [lam] * count  # adjoint of each sub-step's output
        mu: list[torch.Tensor] = []  # adjoint of each step's diffusion rate
        steps = plan.frames * plan.steps_per_frame
        for k in reversed(range(steps)):
            if grad_frames is not None and (k + 1) % plan.steps_per_frame == 0:
                lam[0] += grad_frames[(k + 1) // plan.steps_per_frame - 1].view(n)
            mu_k = None
            for j in reversed(range(m)):
                idx = k * m + j
                lam_out[idx] = lam
                mu_k = lam[0] if mu_k is None else mu_k + lam[0]
                lam = (transition[idx] * lam.unsqueeze(0)).sum(1)
            mu_k = mu_k * h
            lam[0] += torch.mv(transpose, mu_k)
            mu.append(mu_k)
        # d/dV_ab = sum_k mu_k[a] u_k[b]: the steps' outer products sampled on the pattern
        mu_t = torch.stack(mu[::-1], dim=1)  # [n, steps]
        u_t = u_in.view(steps, m, n)[:, 0].t().contiguous()  # u entering each step
        grad_values = (mu_t.index_select(0, layout.row) * u_t.index_select(0, layout.col)).sum(1)
        # parameter gradients: one vector-Jacobian product over the whole segment
        grad_tensors: list[torch.Tensor | None] = [None] * len(tensors)
        wanted = [
            i for i, t in enumerate(tensors) if ctx.needs_input_grad[7 + i] and t.requires_grad
        ]
        if wanted:
            targets = [list(p.values())[i] if i < n_p else tensors[i] for i in wanted]
            weights = torch.stack(lam_out, dim=1) * h  # [1 + r, count, n]
            with torch.enable_grad():
                total = sum(
                    (out.view(count, n) * weights[i]).sum() for i, out in enumerate(outputs)
                )
                grads = torch.autograd.grad(total, targets, allow_unused=True)
            for i, g in zip(wanted, grads, strict=True):
                grad_tensors[i] = g
        return (
            None,
            None,
            None,
            None,
            lam[0].view(n, 1),
            lam[1:].view(r, n, 1),
            grad_values,
            *grad_tensors,
        )


def integrate_segment(
    reaction: ReactionModel,
    layout: FluxOperatorLayout,
    plan: SegmentPlan,
    u: torch.Tensor,
    s: torch.Tensor,
    values: torch.Tensor,
    p: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames [F, n, 1], s_end)`` of one segment with held operator ``values``, through
    :class:`FluxEulerSegment` (differentiable in ``u``, ``s``, ``values``, ``p`` and the
    reaction's own trainable tensors)."""
    names = tuple(p)
    # a physical model's ``raw_`` parameters reach it through ``p``; anything else trainable
    # (a neural reaction's weights) is used by the module directly
    own = tuple(
        t
        for name, t in reaction.named_parameters()
        if t.requires_grad and not name.rsplit(".", 1)[-1].startswith("raw_")
    )
    return FluxEulerSegment.apply(reaction, layout, plan, names, u, s, values, *p.values(), *own)
