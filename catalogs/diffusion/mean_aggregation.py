"""Parameter-free graph diffusion: relax each node towards the mean of its neighbours."""

import torch
from torch import nn
from torch_geometric.utils import scatter


class Diffusion(nn.Module):
    """Mean-aggregation (random-walk graph Laplacian) diffusion, no learnable parameters.

        du_i/dt = rate * (mean_{j in N(i)} u_j - u_i)

    ``rate`` [1/ms] is a fixed hyper-parameter. On a ~2 mm mesh with conductivity ~1 mm^2/ms
    the FE Laplacian is of the same order (~4 sigma / h^2 times the same difference). A
    spatially uniform ``u`` gives exactly 0. The mean is a scatter over ``graph.edge_index``
    (messages src -> dst), which for one channel is faster than ``graph.mean_adj_t @ u``
    once the backward pass is counted.
    """

    def __init__(self, num_nodes: int, rate: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.rate = rate

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        src, dst = graph.edge_index
        neighbour_mean = scatter(u[src], dst, dim=0, dim_size=u.shape[0], reduce="mean")
        return self.rate * (neighbour_mean - u)
