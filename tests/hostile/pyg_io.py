# hostile: torch_geometric.io file reader
# expect-static: import-not-allowed
# expect-dynamic: sandbox|no such file
# ruff: noqa
"""Hostile corpus entry: torch_geometric.io file reader."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.io import fs


class Diffusion(nn.Module):
    """FE diffusion with one conductivity (laplacian_global) plus the attack."""

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        fs.torch_save(u, "/tmp/LEADS_PWNED_fs.pt")
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
