"""Heart meshes and the finite-element operators of the monodomain diffusion term.

A :class:`Mesh` is a conforming simplicial mesh: a triangulated surface (``[n_cells, 3]``,
e.g. an endocardial shell) or a tetrahedral volume (``[n_cells, 4]``). Coordinates are in
millimetres. With piecewise-linear (P1) hat functions ``phi_i`` the diffusion term of the
monodomain equation

    du/dt = div(sigma grad u) + reaction(u, ...)

is discretised by the lumped mass ``M_ii = integral phi_i`` and the stiffness
``K_ij = sum_e sigma_e integral_e grad(phi_i) . grad(phi_j)``, giving

    M du/dt = -K u   =>   du/dt = L u,   L = -M^{-1} K.

For triangles ``K`` is the cotangent Laplacian,
``K_ij = -(sigma/2) (cot alpha_ij + cot beta_ij)`` with ``alpha_ij, beta_ij`` the angles
opposite edge ``ij``; a positive off-diagonal ``K_ij`` (an obtuse pair of opposite angles) is a
"negative cotangent weight" and breaks the discrete maximum principle.

A mesh may carry a fibre field (:attr:`Mesh.fibers`, per node or per cell, validated by
:func:`leads_engine.fibers.validate_fibers`); with it the stiffness takes a conductivity tensor
``D = sigma_t I + (sigma_l - sigma_t) f f^T`` (``transverse=`` the across-fibre ``sigma_t``).

Also here: mesh validation (:func:`validate_mesh`, raising :class:`MeshError`), graph and
heat-method geodesic distances and quality figures. Reading and writing files (meshio,
``.npz``) is :mod:`leads_engine.mesh_io` (:func:`load_mesh`, re-exported here, and
:meth:`Mesh.save`). The bundled left-ventricle-like surface is made in
:mod:`leads_engine.heart_mesh`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse import csgraph
from scipy.sparse.linalg import splu

__all__ = [
    "MeshError",
    "Mesh",
    "validate_mesh",
    "load_mesh",
]

#: meshio cell-type name for each number of nodes per cell.
CELL_TYPES: dict[int, str] = {3: "triangle", 4: "tetra"}

#: a cell is degenerate when its area/volume is below this fraction of the mean cell size.
DEGENERATE_RELATIVE_SIZE = 1e-10


class MeshError(ValueError):
    """A mesh that cannot be used: the message names the problem, counts and first indices."""


def _first(indices: np.ndarray | Sequence[int], limit: int = 10) -> str:
    """Format the first offending indices, e.g. ``[3, 7, 12, ...]``."""
    shown = np.asarray(indices)[:limit].tolist()
    more = ", ..." if len(indices) > limit else ""
    return "[" + ", ".join(str(i) for i in shown) + more + "]"


# --------------------------------------------------------------------------------------
# Element geometry (shared by validation, the FE operators and the quality report)
# --------------------------------------------------------------------------------------


def _cell_measures(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Area of each triangle (``|e1 x e2| / 2``) or volume of each tetrahedron (``|det E| / 6``)."""
    corners = points[cells]
    edge_vectors = corners[:, 1:] - corners[:, :1]
    if cells.shape[1] == 3:
        return 0.5 * np.linalg.norm(np.cross(edge_vectors[:, 0], edge_vectors[:, 1]), axis=1)
    return np.abs(np.linalg.det(edge_vectors)) / 6.0


def _basis_gradients(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Constant gradients of the P1 hat functions on each cell, ``[n_cells, k+1, 3]``.

    With edge vectors ``E = [x_1 - x_0, ..., x_k - x_0]`` (rows) and Gram matrix
    ``G = E E^T``, the gradients of ``phi_1..phi_k`` are the rows of ``G^{-1} E`` (they lie in
    the cell's tangent space and satisfy ``grad(phi_j) . e_i = delta_ij``), and
    ``grad(phi_0) = -sum_j grad(phi_j)``. This covers triangles embedded in 3-D and tetrahedra.
    """
    corners = points[cells]
    edge_vectors = corners[:, 1:] - corners[:, :1]
    gram = edge_vectors @ edge_vectors.transpose(0, 2, 1)
    grads_rest = np.linalg.solve(gram, edge_vectors)
    grad_0 = -grads_rest.sum(axis=1, keepdims=True)
    return np.concatenate([grad_0, grads_rest], axis=1)


def _cell_edges(cells: np.ndarray) -> np.ndarray:
    """All (i < j) node pairs of every cell, ``[n_cells * C(k+1, 2), 2]`` (with repeats)."""
    k = cells.shape[1]
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    local = np.array(pairs)
    edges = cells[:, local].reshape(-1, 2)
    return np.sort(edges, axis=1)


def _node_adjacency(n_nodes: int, edges: np.ndarray) -> sp.csr_matrix:
    """Symmetric 0/1 node adjacency matrix from an edge list."""
    ones = np.ones(len(edges))
    adjacency = sp.coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    return (adjacency + adjacency.T).tocsr()


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def validate_mesh(points: Any, cells: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check a simplicial mesh and return it as (float64 ``[n, 3]``, int64 ``[m, 3|4]``) arrays.

    Planar ``[n, 2]`` points are padded with ``z = 0``. Raises :class:`MeshError` for: wrong
    shapes, an empty mesh, NaN/Inf coordinates, non-integer, negative or out-of-range node
    indices, a node repeated within a cell, duplicate cells, degenerate cells (area/volume below
    ``1e-10`` times the mean), nodes used by no cell, and more than one connected piece.
    """
    try:
        points = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MeshError(f"points are not a numeric array: {exc}") from exc
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise MeshError(
            f"points must have shape [n_nodes, 3] (or [n_nodes, 2]), got {points.shape}"
        )
    if points.shape[1] == 2:
        points = np.column_stack([points, np.zeros(len(points))])
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] not in CELL_TYPES:
        raise MeshError(
            "cells must have shape [n_cells, 3] (triangles) or [n_cells, 4] (tetrahedra), "
            f"got {cells.shape}"
        )
    n_nodes, n_cells = len(points), len(cells)
    if n_nodes == 0 or n_cells == 0:
        raise MeshError(f"empty mesh: {n_nodes} nodes and {n_cells} cells")

    bad_nodes = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad_nodes.size:
        raise MeshError(
            f"{bad_nodes.size} node(s) have NaN/Inf coordinates, first {_first(bad_nodes)}"
        )

    if cells.dtype.kind == "f":
        non_integer = np.flatnonzero(
            ~np.isfinite(cells).all(axis=1) | (cells != np.round(cells)).any(axis=1)
        )
        if non_integer.size:
            raise MeshError(
                f"{non_integer.size} cell(s) have non-integer node indices, "
                f"first {_first(non_integer)}"
            )
    elif cells.dtype.kind not in "iu":
        raise MeshError(f"cell node indices must be integers, got dtype {cells.dtype}")
    cells = cells.astype(np.int64)

    negative = np.flatnonzero((cells < 0).any(axis=1))
    if negative.size:
        raise MeshError(
            f"{negative.size} cell(s) have negative node indices, first cells {_first(negative)} "
            f"(indices are 0-based, e.g. {int(cells[negative[0]].min())})"
        )
    out_of_range = np.flatnonzero((cells >= n_nodes).any(axis=1))
    if out_of_range.size:
        raise MeshError(
            f"{out_of_range.size} cell(s) have node indices out of range for {n_nodes} nodes, "
            f"first cells {_first(out_of_range)} (e.g. index {int(cells[out_of_range[0]].max())})"
        )

    sorted_cells = np.sort(cells, axis=1)
    repeated = np.flatnonzero((sorted_cells[:, 1:] == sorted_cells[:, :-1]).any(axis=1))
    if repeated.size:
        raise MeshError(
            f"{repeated.size} cell(s) repeat a node within the cell, first {_first(repeated)}"
        )

    _, first_index, counts = np.unique(sorted_cells, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        is_first = np.zeros(n_cells, dtype=bool)
        is_first[first_index] = True
        duplicates = np.flatnonzero(~is_first)
        raise MeshError(
            f"{duplicates.size} duplicate cell(s) (same nodes as an earlier cell), "
            f"first {_first(duplicates)}"
        )

    measures = _cell_measures(points, cells)
    degenerate = np.flatnonzero(measures <= DEGENERATE_RELATIVE_SIZE * measures.mean())
    if degenerate.size:
        kind = "area" if cells.shape[1] == 3 else "volume"
        raise MeshError(
            f"{degenerate.size} degenerate cell(s) with (near-)zero {kind}, "
            f"first {_first(degenerate)}"
        )

    unused = np.flatnonzero(np.bincount(cells.ravel(), minlength=n_nodes) == 0)
    if unused.size:
        raise MeshError(f"{unused.size} node(s) are used by no cell, first {_first(unused)}")

    adjacency = _node_adjacency(n_nodes, _cell_edges(cells))
    n_pieces, labels = csgraph.connected_components(adjacency, directed=False)
    if n_pieces > 1:
        sizes = np.sort(np.bincount(labels))[::-1]
        raise MeshError(
            f"mesh has {n_pieces} disconnected pieces (connected components) of "
            f"{_first(sizes)} nodes; expected one connected piece"
        )
    return points, cells


# --------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class Mesh:
    """A validated simplicial mesh (triangles or tetrahedra), coordinates in millimetres.

    Arrays are stored read-only; derived quantities (edges, element gradients, mass) are
    computed once on first use. ``fibers`` (optional) is a fibre field ``[n_nodes, 3]`` or
    ``[n_cells, 3]`` (``fibers_per`` says which when the counts are equal), stored as unit
    vectors (see :mod:`leads_engine.fibers`).
    """

    points: np.ndarray
    cells: np.ndarray
    name: str = "mesh"
    fibers: np.ndarray | None = None
    fibers_per: Literal["node", "cell"] | None = None

    def __post_init__(self) -> None:
        points, cells = validate_mesh(self.points, self.cells)
        points.setflags(write=False)
        cells.setflags(write=False)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "cells", cells)
        if self.fibers is not None:
            from .fibers import validate_fibers

            fibers, per = validate_fibers(points, cells, self.fibers, self.fibers_per)
            fibers.setflags(write=False)
            object.__setattr__(self, "fibers", fibers)
            object.__setattr__(self, "fibers_per", per)

    def with_fibers(self, fibers: Any, per: Literal["node", "cell"] | None = None) -> Mesh:
        """This mesh with a fibre field (validated; :class:`MeshError` if unusable)."""
        return Mesh(self.points, self.cells, self.name, fibers, per)

    @cached_property
    def cell_fibers(self) -> np.ndarray | None:
        """One unit fibre per cell ``[n_cells, 3]`` (tangent on a surface), or ``None``."""
        if self.fibers is None:
            return None
        from .fibers import cell_fibers

        fibers = cell_fibers(self.points, self.cells, self.fibers, self.fibers_per or "node")
        fibers.setflags(write=False)
        return fibers

    def __repr__(self) -> str:
        return (
            f"Mesh(name={self.name!r}, n_nodes={self.n_nodes}, n_cells={self.n_cells}, "
            f"cell_type={self.cell_type!r})"
        )

    # ---- sizes and topology -----------------------------------------------------------

    @property
    def n_nodes(self) -> int:
        return len(self.points)

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def cell_type(self) -> str:
        """meshio name of the cells: ``"triangle"`` or ``"tetra"``."""
        return CELL_TYPES[self.cells.shape[1]]

    @cached_property
    def edges(self) -> np.ndarray:
        """Unique undirected edges ``[n_edges, 2]`` with ``i < j``, sorted lexicographically."""
        edges = np.unique(_cell_edges(self.cells), axis=0)
        edges.setflags(write=False)
        return edges

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def edge_index(self) -> torch.Tensor:
        """PyTorch Geometric ``edge_index``: LongTensor ``[2, 2 * n_edges]``, both directions.

        Columns are sorted by (source, target), i.e. already coalesced.
        """
        both = np.concatenate([self.edges, self.edges[:, ::-1]])
        order = np.lexsort((both[:, 1], both[:, 0]))
        return torch.from_numpy(np.ascontiguousarray(both[order].T))

    @cached_property
    def edge_lengths(self) -> np.ndarray:
        """Euclidean length of each edge in :attr:`edges`, ``[n_edges]`` (mm)."""
        lengths = np.linalg.norm(
            self.points[self.edges[:, 1]] - self.points[self.edges[:, 0]], axis=1
        )
        lengths.setflags(write=False)
        return lengths

    @property
    def mean_edge_length(self) -> float:
        return float(self.edge_lengths.mean())

    @cached_property
    def cell_measures(self) -> np.ndarray:
        """Area (triangles, mm^2) or volume (tetrahedra, mm^3) of each cell, ``[n_cells]``."""
        measures = _cell_measures(self.points, self.cells)
        measures.setflags(write=False)
        return measures

    @cached_property
    def _gradients(self) -> np.ndarray:
        gradients = _basis_gradients(self.points, self.cells)
        gradients.setflags(write=False)
        return gradients

    # ---- finite-element operators -------------------------------------------------------

    def lumped_mass(self) -> np.ndarray:
        """Lumped (row-sum) P1 mass ``M_ii = integral phi_i``, ``[n_nodes]``.

        Each triangle gives ``area / 3`` and each tetrahedron ``volume / 4`` to each of its
        nodes; ``sum_i M_ii`` is the total area/volume.
        """
        share = np.repeat(self.cell_measures / self.cells.shape[1], self.cells.shape[1])
        return np.bincount(self.cells.ravel(), weights=share, minlength=self.n_nodes)

    def cell_conductivity(
        self,
        conductivity: float | np.ndarray | None = None,
        per: Literal["node", "cell"] | None = None,
    ) -> np.ndarray:
        """Conductivity of each cell, ``[n_cells]``, from a scalar, per-node or per-cell value.

        Per-node values are averaged over the cell's nodes. When ``n_nodes == n_cells`` an array
        is ambiguous and ``per`` must say which it is. Negative or non-finite values are refused.
        """
        if conductivity is None:
            return np.ones(self.n_cells)
        sigma = np.asarray(conductivity, dtype=np.float64)
        if not np.isfinite(sigma).all() or (sigma < 0).any():
            raise ValueError("conductivity must be finite and non-negative (got NaN/Inf/negative)")
        if sigma.ndim == 0:
            return np.full(self.n_cells, float(sigma))
        if sigma.ndim != 1:
            raise ValueError(f"conductivity must be a scalar or 1-D array, got shape {sigma.shape}")
        if per is None:
            matches = [
                p for p, n in (("node", self.n_nodes), ("cell", self.n_cells)) if len(sigma) == n
            ]
            if len(matches) != 1:
                raise ValueError(
                    f"conductivity of length {len(sigma)} is "
                    + ("ambiguous" if matches else "neither per node nor per cell")
                    + f" for {self.n_nodes} nodes and {self.n_cells} cells; pass per='node'|'cell'"
                )
            per = matches[0]  # type: ignore[assignment]
        expected = self.n_nodes if per == "node" else self.n_cells
        if per not in ("node", "cell") or len(sigma) != expected:
            raise ValueError(f"conductivity per {per!r} needs length {expected}, got {len(sigma)}")
        return sigma[self.cells].mean(axis=1) if per == "node" else sigma

    def stiffness(
        self,
        conductivity: float | np.ndarray | None = None,
        per: Literal["node", "cell"] | None = None,
        transverse: float | np.ndarray | None = None,
    ) -> sp.csr_matrix:
        """P1 stiffness ``K_ij = sum_e |e| grad(phi_i)^T D_e grad(phi_j)``, csr ``[n, n]``.

        Symmetric positive semi-definite with rows summing to zero (constants are in the
        kernel). ``conductivity``: ``None`` (1 everywhere), a scalar, or an array per node or
        per cell (see :meth:`cell_conductivity`). Without ``transverse``, ``D_e = sigma_e I``
        (for triangles the cotangent Laplacian); with it (same forms) the mesh's fibres give
        the tensor ``D_e = sigma_t,e I + (sigma_e - sigma_t,e) f_e f_e^T``: ``conductivity`` is
        then the along-fibre and ``transverse`` the across-fibre conductivity.
        """
        sigma = self.cell_conductivity(conductivity, per)
        if transverse is not None:
            if self.cell_fibers is None:
                raise MeshError(
                    "an across-fibre (transverse) conductivity needs a fibre field on the mesh "
                    f"{self.name!r}; give it one with Mesh.with_fibers"
                )
            from .fibers import stiffness_parts

            across = self.cell_conductivity(transverse, per)
            along_part, across_part = stiffness_parts(self.points, self.cells, self.cell_fibers)
            local = sigma[:, None, None] * along_part + across[:, None, None] * across_part
            local *= self.cell_measures[:, None, None]
        else:
            gradients = self._gradients
            local = gradients @ gradients.transpose(0, 2, 1)
            local = 0.5 * (local + local.transpose(0, 2, 1))
            local *= (sigma * self.cell_measures)[:, None, None]
        k = self.cells.shape[1]
        rows = np.repeat(self.cells, k, axis=1).ravel()
        cols = np.tile(self.cells, (1, k)).ravel()
        shape = (self.n_nodes, self.n_nodes)
        stiffness = sp.coo_matrix((local.ravel(), (rows, cols)), shape=shape).tocsr()
        stiffness.sort_indices()
        return stiffness

    def laplacian(
        self,
        conductivity: float | np.ndarray | None = None,
        per: Literal["node", "cell"] | None = None,
        transverse: float | np.ndarray | None = None,
    ) -> sp.csr_matrix:
        """Mass-lumped diffusion operator ``L = -M^{-1} K``, so ``du/dt = L u`` ~ div(D grad u).

        Rows sum to zero; ``L`` is self-adjoint in the ``M`` inner product with real
        non-positive eigenvalues. Its spectral radius bounds the explicit (forward Euler) step:
        ``dt < 2 / max|lambda(L)|``. ``transverse``: see :meth:`stiffness`.
        """
        inverse_mass = sp.diags(1.0 / self.lumped_mass())
        return (-(inverse_mass @ self.stiffness(conductivity, per, transverse))).tocsr()

    # ---- distances ----------------------------------------------------------------------

    def _source_indices(self, sources: int | Sequence[int] | np.ndarray) -> np.ndarray:
        indices = np.atleast_1d(np.asarray(sources))
        if indices.ndim != 1 or indices.size == 0 or indices.dtype.kind not in "iu":
            raise ValueError(f"sources must be a node index or a sequence of them, got {sources!r}")
        bad = indices[(indices < 0) | (indices >= self.n_nodes)]
        if bad.size:
            raise ValueError(f"source node(s) {_first(bad)} out of range for {self.n_nodes} nodes")
        return indices.astype(np.int64)

    def graph_distances(self, sources: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Shortest-path distances along mesh edges (Dijkstra), ``[len(sources), n_nodes]`` (mm).

        An upper bound on the geodesic distance: paths zig-zag along edges, overestimating by
        up to ~15 % on irregular triangulations and more on structured ones.
        """
        indices = self._source_indices(sources)
        weights = sp.coo_matrix(
            (self.edge_lengths, (self.edges[:, 0], self.edges[:, 1])),
            shape=(self.n_nodes, self.n_nodes),
        ).tocsr()
        return csgraph.dijkstra(weights, directed=False, indices=indices)

    def geodesic_distances(self, sources: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Geodesic distance from each source by the heat method, ``[len(sources), n_nodes]``.

        Crane, Weischedel & Wardetzky (2013), with the P1 operators of this mesh
        (triangles or tetrahedra, per-element constant gradients):

        1. one backward-Euler heat step from a unit spike at the source,
           ``(M + t K) u = delta_s`` with ``t = h^2`` (``h`` the mean edge length);
        2. per cell, the unit field ``X_e = -grad(u)_e / |grad(u)_e|`` pointing away from the
           source;
        3. the Poisson problem ``K phi = b`` with ``b_i = sum_e |e| X_e . grad(phi_i)`` (weak
           form of ``lap(phi) = div X``), solved with one node pinned, then shifted so that the
           source is at 0.

        Natural (Neumann) conditions on open boundaries. Accuracy is O(h): an offset of a
        fraction of an edge length, i.e. a few percent beyond ~10 edge lengths from the source
        on reasonable meshes (more on coarse, strongly anisotropic ones). Nodes next to the
        source may come out very slightly negative.
        """
        indices = self._source_indices(sources)
        mass = sp.diags(self.lumped_mass())
        stiffness = self.stiffness()
        time_step = self.mean_edge_length**2

        spikes = np.zeros((self.n_nodes, len(indices)))
        spikes[indices, np.arange(len(indices))] = 1.0
        heat = splu((mass + time_step * stiffness).tocsc()).solve(spikes)  # [n_nodes, n_sources]

        gradients = self._gradients  # [n_cells, k+1, 3]
        grad_u = np.einsum("cks,ckd->scd", heat[self.cells], gradients)  # [s, n_cells, 3]
        norms = np.linalg.norm(grad_u, axis=2, keepdims=True)
        unit_field = -np.divide(grad_u, norms, out=np.zeros_like(grad_u), where=norms > 0)

        # b_i = sum_e |e| X_e . grad(phi_i) for each node i of cell e
        local = np.einsum("scd,ckd->sck", unit_field, gradients) * self.cell_measures[None, :, None]
        scatter = sp.coo_matrix(
            (np.ones(self.cells.size), (self.cells.ravel(), np.arange(self.cells.size))),
            shape=(self.n_nodes, self.cells.size),
        ).tocsr()
        divergence = (scatter @ local.reshape(len(indices), -1).T).T  # [s, n_nodes]

        # K is singular (constants): pin node 0 at 0, then shift each row to its source.
        reduced = splu(stiffness[1:, 1:].tocsc())
        potential = np.zeros((len(indices), self.n_nodes))
        potential[:, 1:] = reduced.solve(np.ascontiguousarray(divergence[:, 1:].T)).T
        return potential - potential[np.arange(len(indices)), indices][:, None]

    # ---- diagnostics and I/O ------------------------------------------------------------

    def boundary_edges(self) -> np.ndarray:
        """Edges on the mesh boundary, ``[n_boundary_edges, 2]`` (``i < j``).

        Boundary facets (edges of triangles, faces of tetrahedra) belong to exactly one cell;
        boundary edges are the edges of the boundary facets. Empty for a closed surface.
        """
        k = self.cells.shape[1]
        facets = np.sort(
            np.concatenate([np.delete(self.cells, i, axis=1) for i in range(k)]), axis=1
        )
        unique_facets, counts = np.unique(facets, axis=0, return_counts=True)
        boundary_facets = unique_facets[counts == 1]
        if len(boundary_facets) == 0:
            return np.empty((0, 2), dtype=np.int64)
        if k == 3:
            return boundary_facets
        return np.unique(_cell_edges(boundary_facets), axis=0)

    def quality(self) -> dict[str, Any]:
        """Size and shape figures of the mesh.

        ``min_angle_deg``/``max_angle_deg`` are interior angles for triangles and dihedral
        angles for tetrahedra (both are ``pi - angle(grad phi_k, grad phi_l)``).
        ``n_negative_weights`` counts edges whose uniform-conductivity stiffness entry
        ``K_ij`` is positive (negative cotangent weight), split into interior and boundary.
        """
        lengths = self.edge_lengths
        gradients = self._gradients
        unit = gradients / np.linalg.norm(gradients, axis=2, keepdims=True)
        k = self.cells.shape[1]
        pairs = np.array([(a, b) for a in range(k) for b in range(a + 1, k)])
        cosines = np.einsum("cpd,cpd->cp", unit[:, pairs[:, 0]], unit[:, pairs[:, 1]])
        angles = np.degrees(np.pi - np.arccos(np.clip(cosines, -1.0, 1.0)))

        stiffness = self.stiffness()
        weights = np.asarray(stiffness[self.edges[:, 0], self.edges[:, 1]]).ravel()
        negative = weights > 1e-12 * np.abs(stiffness.diagonal()).max()
        boundary = self.boundary_edges()
        on_boundary = np.zeros(self.n_edges, dtype=bool)
        if len(boundary):
            # edges are sorted lexicographically, so boundary rows can be located by key
            keys = self.edges[:, 0] * self.n_nodes + self.edges[:, 1]
            on_boundary[np.searchsorted(keys, boundary[:, 0] * self.n_nodes + boundary[:, 1])] = (
                True
            )
        n_components, _ = csgraph.connected_components(
            _node_adjacency(self.n_nodes, self.edges), directed=False
        )
        return {
            "cell_type": self.cell_type,
            "n_nodes": self.n_nodes,
            "n_cells": self.n_cells,
            "n_edges": self.n_edges,
            "mean_edge_length": float(lengths.mean()),
            "min_edge_length": float(lengths.min()),
            "max_edge_length": float(lengths.max()),
            "min_angle_deg": float(angles.min()),
            "max_angle_deg": float(angles.max()),
            "n_negative_weights": int(negative.sum()),
            "n_negative_weights_interior": int((negative & ~on_boundary).sum()),
            "n_negative_weights_boundary": int((negative & on_boundary).sum()),
            "negative_weight_fraction": float(negative.mean()),
            "n_boundary_edges": int(on_boundary.sum()),
            "n_components": int(n_components),
            "total_measure": float(self.cell_measures.sum()),
        }

    def save(self, path: str | Path) -> None:
        """Write the mesh (and its fibres) to a file: :func:`leads_engine.mesh_io.save_mesh`."""
        from .mesh_io import save_mesh

        save_mesh(self, path)


# Reading and writing files lives in mesh_io; load_mesh is re-exported here, where callers
# have always found it.
from .mesh_io import load_mesh  # noqa: E402
