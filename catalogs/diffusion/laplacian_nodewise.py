"""Finite-element Laplacian with a learnable conductivity at every mesh node."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Diffusion(nn.Module):
    """Monodomain FE diffusion with a heterogeneous conductivity map sigma_n > 0 [mm^2/ms].

        sigma_n     = sigma_0 * exp(delta_n)
        w_ij(sigma) = sum_n C_{ij,n} sigma_n     (graph.edge_conductance(sigma))
        du_i/dt     = (1 / M_i) * sum_{j in N(i)} w_ij(sigma) (u_j - u_i)

    i.e. ``mesh.laplacian(sigma) @ u`` (each cell uses the mean of its nodes' sigma). The map
    is a global conductivity sigma_0 (softplus, positive) times a per-node factor exp(delta_n)
    (delta = 0 at the start): the global level, which every node's gradient informs, is
    learnt in a few steps, and the per-node factors then shape the map. Shared by the batch.
    A uniform ``u`` gives exactly 0. Fibrosis/scar shows up as low sigma.
    """

    def __init__(self, num_nodes: int, conductivity: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        # inverse softplus, so that softplus(raw) == conductivity at initialisation
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))
        self.raw_log_factor = nn.Parameter(torch.zeros(num_nodes))

    @property
    def conductivity(self) -> torch.Tensor:
        return F.softplus(self.raw_conductivity) * torch.exp(self.raw_log_factor)

    def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.edge_conductance(self.conductivity)

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.flux_divergence(self.edge_conductance(u, graph), u)
