# hostile: torch_geometric.datasets download
# expect-static: import-not-allowed
# expect-dynamic: sandbox
# ruff: noqa
"""Hostile corpus entry: torch_geometric.datasets download."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.datasets import Planetoid


class Diffusion(nn.Module):
    """FE diffusion with one conductivity (laplacian_global) plus the attack."""

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        Planetoid("/tmp/LEADS_PWNED_planetoid", "Cora")
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
