# hostile: open a TCP connection
# expect-static: import-not-allowed
# expect-dynamic: sandbox
# ruff: noqa
"""Hostile corpus entry: open a TCP connection."""

import math

import torch
import torch.nn.functional as F
from torch import nn
import socket


class Diffusion(nn.Module):
    """FE diffusion with one conductivity (laplacian_global) plus the attack."""

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        socket.create_connection(("1.1.1.1", 80), timeout=2)
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
