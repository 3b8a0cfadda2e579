"""Finite-element (cotangent) Laplacian with one learnable global conductivity."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Diffusion(nn.Module):
    """Monodomain FE diffusion with a single conductivity sigma > 0 [mm^2/ms].

        du_i/dt = sigma * (1 / M_i) * sum_{j in N(i)} w_ij (u_j - u_i)

    w_ij are the FE conductances for unit conductivity (``graph.edge_weight``), 1/M_i the
    lumped inverse mass (``graph.inverse_mass``); this is ``sigma * L_unit @ u``. sigma is
    softplus-reparameterised so it stays positive. A uniform ``u`` gives exactly 0.
    """

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        # inverse softplus, so that softplus(raw) == conductivity at initialisation
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))

    @property
    def conductivity(self) -> torch.Tensor:
        return F.softplus(self.raw_conductivity)

    def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:
        return self.conductivity * graph.edge_weight

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.flux_divergence(self.edge_conductance(u, graph), u)
