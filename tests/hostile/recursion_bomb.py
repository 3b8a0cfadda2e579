# hostile: unbounded recursion
# expect-static: none
# expect-dynamic: recursion
# ruff: noqa
"""Hostile corpus entry: unbounded recursion."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Diffusion(nn.Module):
    """FE diffusion with one conductivity (laplacian_global) plus the attack."""

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    def deep(self, n: int) -> int:
        return self.deep(n + 1) + 1

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        self.deep(0)
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
