"""Anisotropic finite-element Laplacian: learnable conductivities along and across the fibres."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


class Diffusion(nn.Module):
    """Monodomain FE diffusion with the conductivity tensor of fibrous tissue [mm^2/ms].

        D_n       = sigma_t,n I + (sigma_l,n - sigma_t,n) f f^T    (f: the mesh's unit fibre)
        sigma_l,n = softplus(a) * exp(delta_n),   sigma_t,n = softplus(b) * exp(delta_n)
        w_ij      = sum_n C^along_{ij,n} sigma_l,n + C^across_{ij,n} sigma_t,n
                    (graph.fiber_edge_conductance(sigma_l, sigma_t))
        du_i/dt   = (1 / M_i) * sum_{j in N(i)} w_ij (u_j - u_i)

    i.e. ``mesh.laplacian(sigma_l, transverse=sigma_t) @ u`` (each cell uses the mean of its
    nodes' values). ``anisotropy_ratio = softplus(a) / softplus(b)`` is the ratio of the
    conductivities along and across the fibres; conduction speeds differ by its square root.
    The per-node factor exp(delta_n) (delta = 0 at the start) is shared by both directions:
    a scar scales the whole tensor. It starts at ``conductivity`` along the fibres and
    ``conductivity / anisotropy`` across them.

    Needs the data set's fibre field (the graph's along/across maps): on a data set without
    fibres ``edge_conductance`` raises a clear error rather than falling back to isotropic
    diffusion, where the two conductivities could not be told apart. Some conductances can be
    negative (an anisotropic FE stiffness is not an M-matrix); the flux form does not need them
    positive, and since D <= sigma_l I an explicit step stable for sigma_l stays stable.
    A uniform ``u`` gives exactly 0. The catalog gives it an Adam step of 0.1 on its ``raw_``
    parameters (0.03 for the other physical templates): from an isotropic start the two
    conductivities must move apart by a factor of several within a search's few epochs.
    """

    def __init__(self, num_nodes: int, conductivity: float = 1.0, anisotropy: float = 1.0) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        # inverse softplus, so that softplus(raw) is the initial value
        self.raw_along = nn.Parameter(torch.tensor(_inverse_softplus(conductivity)))
        self.raw_across = nn.Parameter(torch.tensor(_inverse_softplus(conductivity / anisotropy)))
        self.raw_log_factor = nn.Parameter(torch.zeros(num_nodes))

    @property
    def anisotropy_ratio(self) -> torch.Tensor:
        return F.softplus(self.raw_along) / F.softplus(self.raw_across)

    def conductivities(self) -> tuple[torch.Tensor, torch.Tensor]:
        factor = torch.exp(self.raw_log_factor)
        return F.softplus(self.raw_along) * factor, F.softplus(self.raw_across) * factor

    def edge_conductance(self, u: torch.Tensor, graph) -> torch.Tensor:
        along, across = self.conductivities()
        return graph.fiber_edge_conductance(along, across)

    def forward(self, u: torch.Tensor, graph) -> torch.Tensor:
        return graph.flux_divergence(self.edge_conductance(u, graph), u)
