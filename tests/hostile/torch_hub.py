# hostile: torch.hub.load of remote code
# expect-static: forbidden-attribute
# expect-dynamic: sandbox
# ruff: noqa
"""Hostile corpus entry: torch.hub.load of remote code."""

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
        torch.hub.load("pytorch/vision", "resnet18")
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
