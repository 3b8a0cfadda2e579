r"""Hybrid reactions: a catalog ionic model plus a small neural residual (APHYNITY-style).

.. math::
    \Big(\frac{du}{dt}, \frac{dw}{dt}, \frac{dz}{dt}\Big) = \big(R_\theta(u, w), 0\big)
    + r_\phi(u, w, z), \qquad
    r_\phi(u, w, z) = s\,\big(\mathrm{MLP}_\phi(u, w, z)
    - \mathrm{MLP}_\phi(u_{rest}, w_{rest}, 0)\big)

``R_theta`` is the wrapped catalog model (its bounded parameters and ``time_scale`` stay
learnable and reach the fused integrator through :meth:`physical_parameters`, exactly as for the
bare model); ``r_phi`` is a pointwise multilayer perceptron, per millisecond of data time with a
fixed output scale ``s = RATE_SCALE`` (0.05 per ms). Per millisecond, not in the model's native
time: native rates differ by 45x between catalog models (Rogers-McCulloch's against
Aliev-Panfilov's) while the rates per ms of models fitted to the same data are of one order, so
the same residual means the same thing on every model. Subtracting the MLP at the resting state
keeps rest an equilibrium; the output layer starts at zero, so an untrained hybrid *is* the catalog
model. ``z`` are ``latent`` extra state variables (default none) that only the residual
drives, resting at 0: a catalog model has fewer state variables than the tissue may need (a
two-variable model cannot hold the slow inward current behind a spike-and-dome plateau), and a
residual on ``(u, w)`` alone cannot add memory; a latent variable can (augmented neural ODEs,
Dupont et al., NeurIPS 2019). Training adds ``penalty * mean ||r_phi / s||^2`` over the states
the rollout visits (:func:`residual_penalty`), so the residual stays as small as the data
allows: physics first (Yin et al., "Augmenting physical models with deep networks for complex
dynamics forecasting", ICLR 2021, the APHYNITY decomposition).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .base import ParameterRange, ReactionModel

#: A state the rollout visited: ``(u [n, 1], w [r, n, 1])``.
VisitedState = tuple[torch.Tensor, torch.Tensor]
#: the residual network's output unit, per millisecond of data time
RATE_SCALE = 0.05


class ResidualReaction(ReactionModel):
    """``ResidualReaction(base, hidden, layers)``: ``base``'s rates plus a zero-initialised MLP.

    The state is the wrapped model's (names, resting values) followed by ``latent`` variables
    ``z1, z2, ...`` resting at 0; the stiffness hint (``max_step_ms``) is the wrapped model's.
    """

    name: ClassVar[str] = "residual"
    parameter_ranges: ClassVar[dict[str, ParameterRange]] = {}

    def __init__(
        self, base: ReactionModel, hidden: int = 16, layers: int = 2, latent: int = 0
    ) -> None:
        nn.Module.__init__(self)  # no parameters of its own: the base's are the physics
        if isinstance(base, ResidualReaction):
            raise ValueError("a residual reaction wraps a catalog model, not another residual")
        if not (1 <= layers <= 3 and 4 <= hidden <= 128):
            raise ValueError(
                f"residual needs 1 <= layers <= 3 and 4 <= hidden <= 128 (got layers={layers}, "
                f"hidden={hidden})"
            )
        if not 0 <= latent <= 4:
            raise ValueError(f"residual needs 0 <= latent <= 4 (got latent={latent})")
        self.base = base
        self.latent = latent
        self.state_names = base.state_names + tuple(f"z{i + 1}" for i in range(latent))
        self.resting_state = base.resting_state + (0.0,) * latent
        self.time_scale_range = base.time_scale_range
        self.max_step_ms = base.max_step_ms
        width = 1 + base.n_recovery + latent
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(width if i == 0 else hidden, hidden), nn.Tanh()]
        output = nn.Linear(hidden, width)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        self.mlp = nn.Sequential(*blocks, output)
        self.register_buffer(
            "rest", torch.tensor(self.resting_state, dtype=torch.float32), persistent=False
        )

    def all_parameter_ranges(self) -> dict[str, ParameterRange]:  # type: ignore[override]
        return self.base.all_parameter_ranges()

    def physical_parameters(self) -> dict[str, torch.Tensor]:
        return self.base.physical_parameters()

    def residual(self, u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``r_phi(u, w, z)`` per ms: ``(r_u [...], r_w [r + latent, ...])`` (``w`` holds the
        base's recovery variables, then the latent ones); zero at rest."""
        state = torch.cat((u.unsqueeze(-1), w.movedim(0, -1)), dim=-1)
        at_rest = self.mlp(self.rest.to(state).view(1, -1))  # broadcasts over nodes
        rate = (self.mlp(state) - at_rest) * RATE_SCALE
        return rate[..., 0], rate[..., 1:].movedim(-1, 0)

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The catalog model's native rates (the residual is added per ms in :meth:`forward`);
        the latent variables' native rate is 0."""
        du, dw = self.base.rates(u, w[: self.base.n_recovery], p)
        return du, self._with_latent(dw)

    def physics(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``R_theta`` per millisecond of data time, over the whole state (0 for the latent
        variables)."""
        du, dw = self.base(u, w[: self.base.n_recovery], p)
        return du, self._with_latent(dw)

    def _with_latent(self, dw: torch.Tensor) -> torch.Tensor:
        if not self.latent:
            return dw
        return torch.cat((dw, dw.new_zeros((self.latent, *dw.shape[1:]))), dim=0)

    def forward(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``R_theta + r_phi`` per millisecond of data time."""
        du, dw = self.physics(u, w, p)
        ru, rw = self.residual(u, w)
        return du + ru, dw + rw


def residual_penalty(reaction: ResidualReaction, visited: Sequence[VisitedState]) -> torch.Tensor:
    r"""``mean ||r_phi(u, w) / RATE_SCALE||^2`` over visited states (all state components): the
    network's own output, of order 1 where the residual is as large as a typical rate.

    The states are taken as given (detached): the penalty shapes the residual network, not the
    trajectory."""
    total, count = None, 0
    for u, w in visited:
        ru, rw = reaction.residual(u.detach(), w.detach())
        squares = (ru.square().sum() + rw.square().sum()) / RATE_SCALE**2
        total = squares if total is None else total + squares
        count += u.numel()
    if total is None:
        return torch.zeros(())
    return total / max(count, 1)


def residual_share(reaction: ResidualReaction, visited: Sequence[VisitedState]) -> dict[str, float]:
    r"""How much of the reaction the residual carries over the visited states.

    ``share = sqrt(sum ||r_phi||^2 / sum ||R_theta + r_phi||^2)`` over every visited state and
    state component, and ``share_u`` the same on the ``u`` component only (what drives the TMP);
    ``rms`` is the residual's root mean square (per ms). 0: pure physics; near or above 1:
    the network does the work (above 1 it cancels part of the catalog model's rate)."""
    with torch.no_grad():
        p = reaction.physical_parameters()
        residual_sq = total_sq = residual_u = total_u = 0.0
        count = 0
        for u, w in visited:
            ru, rw = reaction.residual(u, w)
            du, dw = reaction.physics(u, w, p)
            residual_u += float(ru.square().sum())
            total_u += float((du + ru).square().sum())
            residual_sq += float(ru.square().sum() + rw.square().sum())
            total_sq += float((du + ru).square().sum() + (dw + rw).square().sum())
            count += u.numel()
    return {
        "share": (residual_sq / total_sq) ** 0.5 if total_sq > 0 else 0.0,
        "share_u": (residual_u / total_u) ** 0.5 if total_u > 0 else 0.0,
        "rms": (residual_sq / max(count, 1)) ** 0.5,
        "states": count,
    }
