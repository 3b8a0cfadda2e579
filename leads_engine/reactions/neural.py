"""A neural reaction term: an MLP over the local state (the All-Neural ablation)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .base import ParameterRange, ReactionModel


class NeuralReaction(ReactionModel):
    r"""Local kinetics learned by a multilayer perceptron.

    .. math::
        \Big(\frac{du}{d\tau}, \frac{dw}{d\tau}\Big) = \mathrm{MLP}_\theta(u, w)
        - \mathrm{MLP}_\theta(u_{rest}, w_{rest})

    Subtracting the MLP at the resting state makes rest an equilibrium, as in every catalog
    model. ``n_recovery`` recovery variables (default 1, like the two-variable models) start
    at 0. The output layer starts at zero, so an untrained model is a passive medium.

    Source: the All-Neural ablation of LEADS (2026); HDTwinGen-style hybrid baselines.

    Defaults: ``hidden = 32``, ``layers = 2``, ``n_recovery = 1``, ``time_scale = 0.1`` per ms
    (the MLP's rates are of order 1 in its own time unit of 10 ms).
    """

    name = "neural"
    state_names: ClassVar[tuple[str, ...]] = ("w1",)
    resting_state: ClassVar[tuple[float, ...]] = (0.0, 0.0)
    parameter_ranges: ClassVar[dict[str, ParameterRange]] = {}
    time_scale_range = ParameterRange(0.1, 0.005, 2.0, log=True)

    def __init__(
        self,
        learnable: bool = True,
        hidden: int = 32,
        layers: int = 2,
        n_recovery: int = 1,
        **values: float,
    ) -> None:
        super().__init__(learnable=learnable, **values)
        if not (1 <= layers <= 4 and 4 <= hidden <= 256 and 1 <= n_recovery <= 3):
            raise ValueError("neural reaction needs 1<=layers<=4, 4<=hidden<=256, 1<=n_recovery<=3")
        self.state_names = tuple(f"w{i + 1}" for i in range(n_recovery))
        self.resting_state = (0.0,) * (1 + n_recovery)
        width = 1 + n_recovery
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Linear(width if i == 0 else hidden, hidden), nn.Tanh()]
        output = nn.Linear(hidden, width)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        self.mlp = nn.Sequential(*blocks, output)
        if not learnable:
            self.requires_grad_(False)

    def rates(
        self, u: torch.Tensor, w: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        state = torch.cat((u.unsqueeze(-1), w.movedim(0, -1)), dim=-1)
        rate_at_rest = self.mlp(state.new_zeros(1, state.shape[-1]))  # broadcasts over nodes
        rate = self.mlp(state) - rate_at_rest
        return rate[..., 0], rate[..., 1:].movedim(-1, 0)
