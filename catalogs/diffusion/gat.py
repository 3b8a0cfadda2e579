"""GAT (Velickovic et al., ICLR 2018) predicting edge conductances of a diffusion."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv
from torch_geometric.nn.resolver import activation_resolver


class Diffusion(nn.Module):
    """Flux-form diffusion whose edge conductances a GAT network predicts.

        x_i     = [u_i, mean_j u_j - u_i, p_i]          (p: node position, standardised)
        h       = multi-head attention layers on x,
                  alpha_ij = softmax_j LeakyReLU(a . [W h_i || W h_j])
        w_ij    = w^FE_ij * softplus(c + g (h_i + h_j))     (w^FE: graph.edge_weight)
        du_i/dt = (1 / M_i) sum_j w_ij (u_j - u_i)

    Hidden layers concatenate ``heads`` heads of ``hidden`` channels; the last has one head
    and one channel. The flux form conserves charge and maps a uniform u to 0. At
    initialisation the gain g is small, so the operator starts as the FE Laplacian with
    conductivity softplus(c) (init ``conductivity``, mm^2/ms) and attention learns where and
    when conduction deviates from it. ``edge_conductance`` is the expensive part: the trainer
    evaluates it every second data frame and reuses it over the sub-steps.
    """

    def __init__(
        self,
        num_nodes: int,
        hidden: int = 8,
        heads: int = 2,
        layers: int = 2,
        activation: str = "tanh",
        conductivity: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        convs, in_channels = [], 5
        for _ in range(layers - 1):
            convs.append(GATConv(in_channels, hidden, heads=heads, bias=False))
            in_channels = hidden * heads
        convs.append(GATConv(in_channels, 1, heads=1, bias=False))
        self.convs = nn.ModuleList(convs)
        self.act = activation_resolver(activation)
        self.raw_conductivity = nn.Parameter(torch.tensor(math.log(math.expm1(conductivity))))
        self.gain = nn.Parameter(torch.tensor(0.1))

    def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:
        src, dst = graph.edge_index
        neighbour_mean = torch.zeros_like(u).index_add_(0, dst, u[src]) * graph.inverse_degree
        position = (graph.pos - graph.pos.mean(0)) / graph.pos.std(0, correction=0)
        h = torch.cat([u, neighbour_mean - u, position], dim=1)
        for layer, conv in enumerate(self.convs):
            h = conv(h, graph.edge_index)
            if layer < len(self.convs) - 1:
                h = self.act(h)
        h = h.squeeze(1)
        return graph.edge_weight * F.softplus(self.raw_conductivity + self.gain * (h[src] + h[dst]))

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.flux_divergence(self.edge_conductance(u, graph), u)
