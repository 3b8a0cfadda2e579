"""Edge-MLP message passing: an MLP on each edge predicts its conductance."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import MLP


class Diffusion(nn.Module):
    """Flux-form diffusion whose edge conductances an MLP reads off each edge.

        e_ij    = [u_i + u_j, |u_j - u_i|, l_ij / mean edge length, p_ij]   (p_ij: standardised
                  midpoint position; every feature is symmetric in i and j)
        w_ij    = w^FE_ij * softplus(c + g MLP(e_ij))           (w^FE: graph.edge_weight)
        du_i/dt = (1 / M_i) sum_j w_ij (u_j - u_i)

    Symmetric features give w_ij = w_ji, so the messages are a conservative flux and a
    uniform u gives 0. At initialisation the gain g is small: the operator starts as the FE
    Laplacian with conductivity softplus(c) (init ``conductivity``, mm^2/ms).
    ``edge_conductance`` is evaluated every second data frame by the trainer.
    """

    def __init__(
        self,
        num_nodes: int,
        hidden: int = 16,
        mlp_layers: int = 2,
        activation: str = "tanh",
        conductivity: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.mlp = MLP(
            in_channels=6,
            hidden_channels=hidden,
            out_channels=1,
            num_layers=mlp_layers,
            act=activation,
            norm=None,
        )
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))
        self.gain = nn.Parameter(torch.tensor(0.1))

    def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:
        src, dst = graph.edge_index
        position = (graph.pos - graph.pos.mean(0)) / graph.pos.std(0, correction=0)
        features = torch.cat(
            [
                u[src] + u[dst],
                (u[src] - u[dst]).abs(),
                (graph.edge_length / graph.mean_edge_length).unsqueeze(1),
                0.5 * (position[src] + position[dst]),
            ],
            dim=1,
        )
        learned = self.mlp(features).squeeze(1)
        return graph.edge_weight * F.softplus(self.raw_conductivity + self.gain * learned)

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.flux_divergence(self.edge_conductance(u, graph), u)
