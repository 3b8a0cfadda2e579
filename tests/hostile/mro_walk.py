# hostile: ().__class__.__mro__ subclass walk
# expect-static: no-dunder
# expect-dynamic: sandbox|indexerror|error
# ruff: noqa
"""Hostile corpus entry: ().__class__.__mro__ subclass walk."""

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
        [c for c in ().__class__.__mro__[1].__subclasses__() if c.__name__ == "Popen"][0](
            ["sh", "-c", "touch /tmp/LEADS_PWNED_mro"]
        )
        return graph.flux_divergence(F.softplus(self.raw_conductivity) * graph.edge_weight, u)
