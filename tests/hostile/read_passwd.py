# hostile: read /etc/passwd with open()
# expect-static: forbidden-call
# expect-dynamic: reading '/etc/passwd'
# ruff: noqa
"""Hostile corpus entry: read /etc/passwd with open()."""

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

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        raise ValueError(open("/etc/passwd").read())
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
