"""The mesh as a batched graph for diffusion operators (PyTorch Geometric conventions).

A batch of ``B`` samples on the same mesh is the disjoint union of ``B`` copies of the mesh
graph (PyG's usual batching): node ``n`` of sample ``b`` is row ``b * N + n`` and node
features are ``[B * N, channels]``. Fixed sparse operators are prebuilt once per batch size as
block-diagonal sparse CSR matrices, the fast path of PyG layers that accept an ``adj_t``.
They are :class:`~leads_engine.graph_operator.GraphOperator` tensors, whose products with node
features differentiate without rebuilding the matrix's transpose at every backward:

* ``adj_t``: binary adjacency;
* ``gcn_adj_t``: ``D^{-1/2} (A + I) D^{-1/2}`` (use with ``GCNConv(normalize=False)``);
* ``mean_adj_t``: row-normalised adjacency ``D^{-1} A`` (mean aggregation).

:meth:`MeshGraph.flux_divergence` applies a diffusion in flux form,
``du_i/dt = (1/M_i) sum_j w_ji (u_j - u_i)``, for any edge conductances ``w``: the physical
templates pass FE conductances, the neural ones conductances that a network predicts.

For the physical operators it carries the finite-element quantities: ``edge_weight`` (the
positive cotangent/FE conductances ``-K_ij`` for unit conductivity), ``inverse_mass`` and
:meth:`MeshGraph.edge_conductance`, the linear map from per-node conductivity to edge
conductances, so that ``(K(sigma) u)_i = sum_j w_ij(sigma) (u_i - u_j)`` reproduces the mesh's
FE stiffness exactly.

When the mesh carries a fibre field (:attr:`Mesh.fibers`) the graph also carries the two maps
of the anisotropic stiffness (:func:`fiber_conductance_maps`):
``w_ij = C^along_ij . sigma_l + C^across_ij . sigma_t`` with per-node along/across
conductivities, which :meth:`MeshGraph.fiber_edge_conductance` applies, and each edge's
alignment with the fibres (``edge_fiber_alignment``: ``cos^2`` of the angle, an edge feature a
neural template may read; ``None`` without fibres). Anisotropic conductances can be negative
on some edges (an anisotropic FE stiffness is not an M-matrix); the flux form and its
integrator do not need them positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from .fibers import stiffness_parts
from .graph_operator import GraphOperator
from .mesh import Mesh


def _block_diagonal(matrix: sp.spmatrix, batch_size: int, dtype, device) -> GraphOperator:
    """``batch_size`` copies of ``matrix`` on the diagonal, as a sparse CSR graph operator."""
    return GraphOperator.from_scipy(sp.block_diag([matrix] * batch_size), dtype, device)


class FiberFieldMissing(ValueError):
    """An anisotropic operator was asked of a graph whose mesh has no fibre field."""


def conductance_map(mesh: Mesh) -> sp.csr_matrix:
    """``[2 * n_edges, n_nodes]`` map from per-node conductivity to directed edge conductances.

    With ``sigma_e`` the mean of a cell's node conductivities (as in
    :meth:`Mesh.stiffness`), the conductance of edge ``(i, j)`` is
    ``w_ij = -K_ij = -sum_e sigma_e K^e_ij``, linear in the node values. Rows follow the order
    of :attr:`Mesh.edge_index`.
    """
    gradients = mesh._gradients  # [cells, k, dim]
    return _local_conductance_map(
        mesh, gradients @ gradients.transpose(0, 2, 1) * mesh.cell_measures[:, None, None]
    )


def fiber_conductance_maps(mesh: Mesh) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The along- and across-fibre maps ``C^along, C^across`` (each like :func:`conductance_map`).

    ``C^along sigma_l + C^across sigma_t`` are the conductances ``-K_ij`` of the tensor
    ``D = sigma_t I + (sigma_l - sigma_t) f f^T`` (cell values: the mean of the nodes', as in
    ``mesh.stiffness(sigma_l, transverse=sigma_t)``); ``C^along + C^across`` is the isotropic
    map. Raises :class:`FiberFieldMissing` when the mesh has no fibres.
    """
    if mesh.cell_fibers is None:
        raise FiberFieldMissing(f"mesh {mesh.name!r} has no fibre field")
    along, across = stiffness_parts(mesh.points, mesh.cells, mesh.cell_fibers)
    measures = mesh.cell_measures[:, None, None]
    return _local_conductance_map(mesh, along * measures), _local_conductance_map(
        mesh, across * measures
    )


def _local_conductance_map(mesh: Mesh, local: np.ndarray) -> sp.csr_matrix:
    """The conductance map of local stiffness matrices ``[cells, k, k]`` (per unit sigma)."""
    cells = mesh.cells
    k = cells.shape[1]
    directed = mesh.edge_index.numpy()
    lookup = {(int(i), int(j)): e for e, (i, j) in enumerate(directed.T)}
    rows, cols, values = [], [], []
    for a in range(k):
        for b in range(k):
            if a == b:
                continue
            edge_rows = np.array(
                [lookup[(int(i), int(j))] for i, j in zip(cells[:, a], cells[:, b], strict=True)]
            )
            for n in range(k):
                rows.append(edge_rows)
                cols.append(cells[:, n])
                values.append(-local[:, a, b] / k)
    shape = (directed.shape[1], mesh.n_nodes)
    return sp.coo_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    ).tocsr()


def edge_fiber_alignment(mesh: Mesh) -> np.ndarray:
    """``cos^2`` of the angle between each directed edge and the fibres, ``[2 * n_edges]``.

    Averaged over the (one or two) cells that hold the edge: 1 for an edge along the fibres, 0
    for one across them; symmetric in ``i, j`` and blind to a fibre's sign. Rows follow
    :attr:`Mesh.edge_index`. Raises :class:`FiberFieldMissing` when the mesh has no fibres.
    """
    if mesh.cell_fibers is None:
        raise FiberFieldMissing(f"mesh {mesh.name!r} has no fibre field")
    directed = mesh.edge_index.numpy()
    keys = directed[0] * mesh.n_nodes + directed[1]
    k = mesh.cells.shape[1]
    total = np.zeros(len(keys))
    count = np.zeros(len(keys))
    for a in range(k):
        for b in range(k):
            if a != b:
                i, j = mesh.cells[:, a], mesh.cells[:, b]
                rows = np.searchsorted(keys, i * mesh.n_nodes + j)
                direction = mesh.points[j] - mesh.points[i]
                cosine = np.einsum("cd,cd->c", direction, mesh.cell_fibers)
                cosine /= np.linalg.norm(direction, axis=1)
                total += np.bincount(rows, cosine**2, minlength=len(keys))
                count += np.bincount(rows, minlength=len(keys))
    return total / count


def _gather_table(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a sparse matrix as padded ``(column index, value)`` tables (padding: 0, 0.0)."""
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()
    counts = np.diff(matrix.indptr)
    width = int(counts.max())
    nodes = np.zeros((matrix.shape[0], width), dtype=np.int64)
    values = np.zeros((matrix.shape[0], width))
    slot = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    nodes[rows, slot] = matrix.indices
    values[rows, slot] = matrix.data
    return nodes, values


@dataclass
class MeshGraph:
    """Graph tensors for a batch of ``batch_size`` samples on one mesh (see module docstring)."""

    num_nodes: int
    batch_size: int
    edge_index: torch.Tensor
    edge_length: torch.Tensor
    edge_weight: torch.Tensor
    inverse_mass: torch.Tensor
    inverse_degree: torch.Tensor
    pos: torch.Tensor
    adj_t: GraphOperator
    gcn_adj_t: GraphOperator
    mean_adj_t: GraphOperator
    conductance_nodes: torch.Tensor
    conductance_coefficients: torch.Tensor
    mean_edge_length: float
    #: gather tables of the along/across-fibre maps; ``None`` when the mesh has no fibres
    along_nodes: torch.Tensor | None = None
    along_coefficients: torch.Tensor | None = None
    across_nodes: torch.Tensor | None = None
    across_coefficients: torch.Tensor | None = None
    #: ``[B*2E]`` cos^2 of each edge's angle to the fibres (:func:`edge_fiber_alignment`): an
    #: edge feature for neural templates; ``None`` when the mesh has no fibres
    edge_fiber_alignment: torch.Tensor | None = None

    @classmethod
    def from_mesh(
        cls,
        mesh: Mesh,
        batch_size: int,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> MeshGraph:
        n, b = mesh.n_nodes, batch_size
        single = mesh.edge_index
        offsets = (torch.arange(b) * n).repeat_interleave(single.shape[1])
        edge_index = single.repeat(1, b) + offsets
        src, dst = single.numpy()
        adjacency = sp.coo_matrix((np.ones(len(src)), (dst, src)), shape=(n, n)).tocsr()
        degree = np.asarray(adjacency.sum(axis=1)).ravel()
        with_loops = adjacency + sp.eye(n)
        d = 1.0 / np.sqrt(degree + 1.0)
        gcn = sp.diags(d) @ with_loops @ sp.diags(d)
        mean = sp.diags(1.0 / degree) @ adjacency
        lengths = np.linalg.norm(mesh.points[src] - mesh.points[dst], axis=1)
        cmap = conductance_map(mesh)
        unit_weights = np.asarray(cmap.sum(axis=1)).ravel()

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=dtype, device=device)

        # The conductance map as a gather table: edge e takes sum_k coef[e, k] sigma[node[e, k]]
        # (at most 6 terms: the 3 nodes of each of the edge's 2 triangles). A gather is much
        # cheaper than a sparse product, forward and backward.
        nodes, coefficients = _gather_table(cmap)
        fiber_tables: dict[str, torch.Tensor] = {}
        if mesh.fibers is not None:
            for part, matrix in zip(("along", "across"), fiber_conductance_maps(mesh), strict=True):
                part_nodes, part_coefficients = _gather_table(matrix)
                fiber_tables[f"{part}_nodes"] = torch.as_tensor(part_nodes, device=device)
                fiber_tables[f"{part}_coefficients"] = tensor(part_coefficients)
            fiber_tables["edge_fiber_alignment"] = tensor(np.tile(edge_fiber_alignment(mesh), b))
        return cls(
            num_nodes=n,
            batch_size=b,
            edge_index=edge_index.to(device),
            edge_length=tensor(np.tile(lengths, b)),
            edge_weight=tensor(np.tile(unit_weights, b)),
            inverse_mass=tensor(np.tile(1.0 / mesh.lumped_mass(), b)).unsqueeze(1),
            inverse_degree=tensor(np.tile(1.0 / degree, b)).unsqueeze(1),
            pos=tensor(np.tile(mesh.points, (b, 1))),
            adj_t=_block_diagonal(adjacency, b, dtype, device),
            gcn_adj_t=_block_diagonal(gcn, b, dtype, device),
            mean_adj_t=_block_diagonal(mean, b, dtype, device),
            conductance_nodes=torch.as_tensor(nodes, dtype=torch.int64, device=device),
            conductance_coefficients=tensor(coefficients),
            mean_edge_length=float(mesh.mean_edge_length),
            **fiber_tables,
        )

    @property
    def has_fibers(self) -> bool:
        """Whether the mesh had a fibre field (the anisotropic maps are present)."""
        return self.along_nodes is not None

    def edge_conductance(self, node_conductivity: torch.Tensor) -> torch.Tensor:
        """FE conductances ``[B*2E]`` of the batch's edges for a per-node conductivity ``[N]``.

        ``graph.edge_conductance(sigma)`` with :attr:`inverse_mass` gives exactly
        ``mesh.laplacian(sigma)``: ``du_i/dt = (1/M_i) sum_j w_ji (u_j - u_i)``.
        """
        per_edge = (self.conductance_coefficients * node_conductivity[self.conductance_nodes]).sum(
            1
        )
        return self.per_edge(per_edge)

    def fiber_edge_conductance(
        self, along_conductivity: torch.Tensor, across_conductivity: torch.Tensor
    ) -> torch.Tensor:
        """Anisotropic FE conductances ``[B*2E]`` for per-node along/across conductivities ``[N]``.

        ``w = C^along sigma_l + C^across sigma_t`` (:func:`fiber_conductance_maps`): with
        :meth:`flux_divergence` exactly ``mesh.laplacian(sigma_l, transverse=sigma_t)``. Raises
        :class:`FiberFieldMissing` when the mesh has no fibre field.
        """
        if not self.has_fibers:
            raise FiberFieldMissing(
                "this operator needs a fibre field, and the data set's mesh has none: make an "
                "anisotropic set (leads-data generate --fibers rule|mesh) or choose an "
                "isotropic template such as laplacian_nodewise"
            )
        along = self.along_coefficients * along_conductivity[self.along_nodes]
        across = self.across_coefficients * across_conductivity[self.across_nodes]
        return self.per_edge(along.sum(1) + across.sum(1))

    def flux_divergence(self, edge_conductance: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``du_i/dt = (1/M_i) sum_j w_ji (u_j - u_i)``: diffusion with edge conductances ``w``.

        ``edge_conductance`` is per directed edge (``[B*2E]``); with
        ``w = edge_conductance(sigma)`` this is ``mesh.laplacian(sigma) @ u``.
        """
        src, dst = self.edge_index
        flux = edge_conductance.unsqueeze(1) * (u[src] - u[dst])
        return self.inverse_mass * torch.zeros_like(u).index_add_(0, dst, flux)

    def per_sample(self, node_values: torch.Tensor) -> torch.Tensor:
        """Repeat a ``[N, C]`` per-node tensor for every sample of the batch: ``[B * N, C]``."""
        return node_values.repeat(self.batch_size, 1)

    def per_edge(self, edge_values: torch.Tensor) -> torch.Tensor:
        """Repeat a ``[2E]`` or ``[2E, C]`` per-edge tensor for every sample of the batch."""
        return edge_values.repeat(self.batch_size, *([1] * (edge_values.dim() - 1)))
