"""Parameter-free graph diffusion: relax each node towards the mean of its neighbours."""

import torch
from torch import nn


class Diffusion(nn.Module):
    """Mean-aggregation (random-walk graph Laplacian) diffusion, no learnable parameters.

        du_i/dt = rate * (mean_{j in N(i)} u_j - u_i)
                = (1 / M_i) sum_j w_ji (u_j - u_i)   with   w_ji = rate * M_i / deg_i

    ``rate`` [1/ms] is a fixed hyper-parameter. On a ~2 mm mesh with conductivity ~1 mm^2/ms
    the FE Laplacian is of the same order (~4 sigma / h^2 times the same difference). A
    spatially uniform ``u`` gives exactly 0. Written in the flux form shared by the catalog
    (conductance of each edge into its target node, ``graph.flux_divergence``).
    """

    def __init__(self, num_nodes: int, rate: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.rate = rate

    def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:
        target = graph.edge_index[1]
        per_node = self.rate * graph.inverse_degree / graph.inverse_mass  # [B*N, 1]
        return per_node.squeeze(1)[target]

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.flux_divergence(self.edge_conductance(u, graph), u)
