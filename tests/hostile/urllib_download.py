# hostile: download with urllib
# expect-static: import-not-allowed
# expect-dynamic: sandbox
# ruff: noqa
"""Hostile corpus entry: download with urllib."""

import math

import torch
import torch.nn.functional as F
from torch import nn
import urllib.request


class Diffusion(nn.Module):
    """FE diffusion with one conductivity (laplacian_global) plus the attack."""

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        urllib.request.urlopen("http://example.com")
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
