"""Tests of leads_engine.mesh: validation, FE operators, distances, I/O, bundled ventricle."""

from __future__ import annotations

import itertools
from pathlib import Path

import meshio
import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial import ConvexHull, Delaunay

from leads_engine.heart_mesh import bundled_mesh, make_lv_mesh
from leads_engine.mesh import Mesh, MeshError, load_mesh, validate_mesh

# --------------------------------------------------------------------------------------
# Test meshes
# --------------------------------------------------------------------------------------


def square_mesh(n: int = 31, jitter: float = 0.0, seed: int = 0) -> Mesh:
    """Delaunay triangulation of an (n x n) grid on the unit square, interior nodes jittered."""
    x, y = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    points = np.column_stack([x.ravel(), y.ravel()])
    interior = ((points > 0) & (points < 1)).all(axis=1)
    spacing = 1.0 / (n - 1)
    rng = np.random.default_rng(seed)
    points[interior] += rng.uniform(-jitter, jitter, (interior.sum(), 2)) * spacing
    if jitter == 0.0:  # structured: split every grid square along the same diagonal
        index = np.arange(n * n).reshape(n, n)
        a, b = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
        c, d = index[1:, :-1].ravel(), index[1:, 1:].ravel()
        cells = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])
    else:
        cells = Delaunay(points).simplices
    return Mesh(points, cells, name="square")


def cube_mesh(n: int = 6) -> Mesh:
    """Unit cube, n^3 grid cubes each split into 6 Kuhn tetrahedra (conforming)."""
    grid = np.linspace(0, 1, n + 1)
    points = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    corners = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)

    def node(ijk: np.ndarray) -> np.ndarray:
        return (ijk[:, 0] * (n + 1) + ijk[:, 1]) * (n + 1) + ijk[:, 2]

    tetrahedra = []
    for axes in itertools.permutations(range(3)):  # path corner -> opposite corner
        vertex, path = corners.copy(), [node(corners)]
        for axis in axes:
            vertex = vertex.copy()
            vertex[:, axis] += 1
            path.append(node(vertex))
        tetrahedra.append(np.column_stack(path))
    return Mesh(points, np.concatenate(tetrahedra), name="cube")


def sphere_mesh(n_points: int = 2000, radius: float = 10.0) -> Mesh:
    """Convex hull of a Fibonacci lattice on a sphere."""
    height = 1 - 2 * (np.arange(n_points) + 0.5) / n_points
    azimuth = np.pi * (3 - np.sqrt(5)) * np.arange(n_points)
    ring = np.sqrt(1 - height**2)
    points = radius * np.column_stack([ring * np.cos(azimuth), ring * np.sin(azimuth), height])
    return Mesh(points, ConvexHull(points).simplices, name="sphere")


def annulus_mesh(k: int = 8) -> Mesh:
    """Flat ring strip with 2k nodes and 2k triangles (n_nodes == n_cells)."""
    angle = 2 * np.pi * np.arange(k) / k
    points = np.concatenate(
        [
            np.column_stack([np.cos(angle), np.sin(angle)]),
            2 * np.column_stack([np.cos(angle), np.sin(angle)]),
        ]
    )
    i, j = np.arange(k), (np.arange(k) + 1) % k
    cells = np.concatenate([np.column_stack([i, j, k + i]), np.column_stack([j, k + j, k + i])])
    return Mesh(points, cells, name="annulus")


@pytest.fixture(scope="module")
def heart() -> Mesh:
    return bundled_mesh()


# --------------------------------------------------------------------------------------
# Bundled left ventricle
# --------------------------------------------------------------------------------------


def test_bundled_mesh_figures(heart: Mesh) -> None:
    quality = heart.quality()
    print("heart_lv quality:", quality)
    assert heart.name == "heart_lv"
    assert heart.cell_type == "triangle"
    assert heart.n_nodes == 1119
    assert quality["n_components"] == 1
    assert quality["n_negative_weights"] == 0
    assert abs(quality["mean_edge_length"] - 2.0) < 0.05
    assert quality["min_angle_deg"] > 15.0
    assert quality["max_angle_deg"] < 120.0
    # a disc (open base): Euler characteristic V - E + F = 1, one boundary loop
    assert heart.n_nodes - heart.n_edges + heart.n_cells == 1
    assert quality["n_boundary_edges"] == len(np.unique(heart.boundary_edges()))
    # apex at the bottom, open base at z ~ 0, short semi-axis about 20 mm
    assert heart.points[:, 2].max() <= 0.0
    assert 15.0 < np.abs(heart.points[:, :2]).max() < 25.0
    stiffness = heart.stiffness()
    off_diagonal = stiffness - np.diag(stiffness.diagonal())
    assert off_diagonal.max() <= 1e-12


def test_bundled_mesh_is_reproduced_by_generator(heart: Mesh) -> None:
    generated = make_lv_mesh()
    assert np.array_equal(generated.cells, heart.cells)
    assert np.allclose(generated.points, heart.points, rtol=0, atol=1e-12)
    again = make_lv_mesh()
    assert np.array_equal(again.cells, generated.cells)
    assert np.array_equal(again.points, generated.points)


def test_bundled_mesh_is_consistently_oriented_outward(heart: Mesh) -> None:
    directed = np.concatenate(
        [heart.cells[:, [0, 1]], heart.cells[:, [1, 2]], heart.cells[:, [2, 0]]]
    )
    # each directed half-edge appears once: neighbours traverse their shared edge oppositely
    assert len(np.unique(directed, axis=0)) == len(directed)
    corners = heart.points[heart.cells]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    centre = np.array([0.0, 0.0, 0.0])
    assert (np.einsum("cd,cd->c", normals, corners.mean(axis=1) - centre) > 0).all()


def test_small_lv_mesh_is_valid() -> None:
    small = make_lv_mesh(200)
    quality = small.quality()
    assert small.n_nodes == 200
    assert quality["n_negative_weights"] == 0
    assert abs(quality["mean_edge_length"] - 2.0) < 1e-9


# --------------------------------------------------------------------------------------
# Finite-element operators
# --------------------------------------------------------------------------------------


def test_stiffness_and_laplacian_spectra(heart: Mesh) -> None:
    stiffness = heart.stiffness()
    laplacian = heart.laplacian()
    mass = heart.lumped_mass()
    assert abs(stiffness - stiffness.T).max() < 1e-14
    assert np.abs(stiffness.sum(axis=1)).max() < 1e-12
    assert np.abs(laplacian.sum(axis=1)).max() < 1e-12
    assert mass.min() > 0
    assert np.isclose(mass.sum(), heart.cell_measures.sum())

    eigenvalues = np.linalg.eigvalsh(stiffness.toarray())
    assert abs(eigenvalues[0]) < 1e-10 * eigenvalues[-1]  # constants: the only kernel
    assert eigenvalues[1] > 1e-6 * eigenvalues[-1]  # connected: simple zero eigenvalue

    # -L = M^{-1} K is M-self-adjoint: its spectrum is that of the pencil (K, M)
    spectrum = scipy.linalg.eigh(stiffness.toarray(), np.diag(mass), eigvals_only=True)
    largest = spectrum[-1]
    h = heart.mean_edge_length
    print(f"largest eigenvalue of -L: {largest:.4f} /mm^2 = {largest * h**2:.2f} / h^2")
    assert spectrum[0] > -1e-10
    assert 4.0 / h**2 < largest < 20.0 / h**2


def test_structured_square_laplacian_is_exact_for_quadratics() -> None:
    mesh = square_mesh(21)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    interior = ((mesh.points[:, :2] > 1e-9) & (mesh.points[:, :2] < 1 - 1e-9)).all(axis=1)
    laplacian = mesh.laplacian()
    assert np.allclose((laplacian @ (x**2 + y**2))[interior], 4.0, atol=1e-8)
    assert np.allclose((laplacian @ (3 * x - 2 * y + 1))[interior], 0.0, atol=1e-9)
    assert np.isclose(mesh.lumped_mass().sum(), 1.0)


def test_jittered_square_laplacian_is_consistent() -> None:
    mesh = square_mesh(41, jitter=0.2)
    x, y = mesh.points[:, 0], mesh.points[:, 1]
    inside = ((mesh.points[:, :2] > 0.1) & (mesh.points[:, :2] < 0.9)).all(axis=1)
    laplacian = mesh.laplacian()
    mass = mesh.lumped_mass()
    # linear fields are harmonic exactly; quadratics only in the mass-weighted (weak) sense
    assert np.abs((laplacian @ (3 * x - 2 * y + 1))[inside]).max() < 1e-9
    applied = laplacian @ (x**2 + y**2)
    assert abs((mass[inside] * applied[inside]).sum() / mass[inside].sum() - 4.0) < 0.1
    assert abs(np.median(applied[inside]) - 4.0) < 0.2


def test_tetrahedral_cube_laplacian_is_exact_for_quadratics() -> None:
    mesh = cube_mesh(6)
    interior = ((mesh.points > 1e-9) & (mesh.points < 1 - 1e-9)).all(axis=1)
    laplacian = mesh.laplacian()
    assert np.allclose((laplacian @ (mesh.points**2).sum(axis=1))[interior], 6.0, atol=1e-8)
    assert np.allclose((laplacian @ (mesh.points @ [1.0, -2.0, 0.5]))[interior], 0.0, atol=1e-9)
    assert np.isclose(mesh.lumped_mass().sum(), 1.0)
    assert np.isclose(mesh.cell_measures.sum(), 1.0)
    assert mesh.quality()["n_negative_weights"] == 0


def test_conductivity_per_node_per_cell_and_scalar(heart: Mesh) -> None:
    stiffness = heart.stiffness()
    per_node = heart.stiffness(np.full(heart.n_nodes, 2.0))
    assert (per_node - 2.0 * stiffness).count_nonzero() == 0
    assert abs(heart.stiffness(2.0) - 2.0 * stiffness).max() == 0.0
    assert abs(heart.laplacian(2.0) - 2.0 * heart.laplacian()).max() < 1e-12

    # per cell: a scarred region (sigma = 0.1) in the apical third; K is linear in sigma
    scar = heart.points[heart.cells].mean(axis=1)[:, 2] < -22.0
    sigma = np.where(scar, 0.1, 1.0)
    heterogeneous = heart.stiffness(sigma)
    only_scar = heart.stiffness(scar.astype(float))
    expected = stiffness - 0.9 * only_scar
    assert abs(heterogeneous - expected).max() < 1e-12
    assert np.abs(heterogeneous.sum(axis=1)).max() < 1e-12
    # nodes touching only healthy cells keep their uniform rows
    scar_nodes = np.unique(heart.cells[scar])
    healthy = np.setdiff1d(np.arange(heart.n_nodes), scar_nodes)
    assert abs(heterogeneous[healthy] - stiffness[healthy]).max() < 1e-12


def test_conductivity_errors() -> None:
    ring = annulus_mesh()
    assert ring.n_nodes == ring.n_cells
    with pytest.raises(ValueError, match="ambiguous"):
        ring.stiffness(np.ones(ring.n_nodes))
    by_cell = ring.stiffness(np.arange(1.0, ring.n_cells + 1), per="cell")
    assert np.abs(by_cell.sum(axis=1)).max() < 1e-12
    with pytest.raises(ValueError, match="negative"):
        ring.stiffness(-1.0)
    with pytest.raises(ValueError, match="NaN"):
        ring.stiffness(np.array([np.nan] + [1.0] * (ring.n_cells - 1)), per="cell")
    with pytest.raises(ValueError, match="neither per node nor per cell"):
        ring.stiffness(np.ones(3))


# --------------------------------------------------------------------------------------
# Graph structure and distances
# --------------------------------------------------------------------------------------


def test_edges_and_edge_index(heart: Mesh) -> None:
    edges = heart.edges
    assert (edges[:, 0] < edges[:, 1]).all()
    assert len(np.unique(edges, axis=0)) == len(edges)
    assert np.array_equal(edges, edges[np.lexsort((edges[:, 1], edges[:, 0]))])
    edge_index = heart.edge_index
    assert edge_index.dtype == torch.int64
    assert tuple(edge_index.shape) == (2, 2 * heart.n_edges)
    pairs = edge_index.numpy().T
    assert set(map(tuple, pairs)) == set(map(tuple, edges)) | set(map(tuple, edges[:, ::-1]))
    assert np.array_equal(heart.edge_index.numpy(), edge_index.numpy())  # deterministic
    expected = np.linalg.norm(heart.points[edges[:, 0]] - heart.points[edges[:, 1]], axis=1)
    assert np.allclose(heart.edge_lengths, expected)


def test_graph_distances_bound_euclidean(heart: Mesh) -> None:
    sources = [0, 500, heart.n_nodes - 1]
    distances = heart.graph_distances(sources)
    assert distances.shape == (3, heart.n_nodes)
    euclidean = np.linalg.norm(heart.points[None] - heart.points[sources][:, None], axis=2)
    assert (distances >= euclidean - 1e-9).all()
    assert np.allclose(distances[np.arange(3), sources], 0.0)
    assert np.allclose(heart.graph_distances(500)[0], distances[1])
    with pytest.raises(ValueError, match="out of range"):
        heart.graph_distances(heart.n_nodes)


def test_geodesic_distances_flat_square() -> None:
    mesh = square_mesh(41, jitter=0.2)
    centre = int(np.argmin(np.linalg.norm(mesh.points[:, :2] - 0.5, axis=1)))
    sources = [centre, 0]
    geodesic = mesh.geodesic_distances(sources)
    graph = mesh.graph_distances(sources)
    assert geodesic.shape == (2, mesh.n_nodes)
    for row, source in enumerate(sources):
        euclidean = np.linalg.norm(mesh.points - mesh.points[source], axis=1)
        away = euclidean > 0.2
        relative = geodesic[row, away] / euclidean[away] - 1
        assert np.abs(relative).max() < 0.05
        assert geodesic[row, source] == 0.0
        # the heat method beats the edge-path distance, which zig-zags
        graph_error = np.abs(graph[row, away] / euclidean[away] - 1)
        assert np.abs(relative).mean() < graph_error.mean()


def test_geodesic_distances_sphere() -> None:
    radius = 10.0
    mesh = sphere_mesh(2000, radius)
    sources = [0, 700, 1000]
    geodesic = mesh.geodesic_distances(sources)
    for row, source in enumerate(sources):
        cosine = mesh.points @ mesh.points[source] / radius**2
        great_circle = radius * np.arccos(np.clip(cosine, -1, 1))
        away = great_circle > 4.0
        assert np.abs(geodesic[row, away] / great_circle[away] - 1).max() < 0.05


def test_geodesic_distances_tetrahedra() -> None:
    """Heat method on tets: O(h) accurate; the Kuhn cube is coarse and anisotropic."""
    mesh = cube_mesh(12)
    centre = int(np.argmin(np.linalg.norm(mesh.points - 0.5, axis=1)))
    geodesic = mesh.geodesic_distances(centre)[0]
    euclidean = np.linalg.norm(mesh.points - mesh.points[centre], axis=1)
    away = euclidean > 0.2
    relative = geodesic[away] / euclidean[away] - 1
    assert np.abs(relative).mean() < 0.05
    assert np.abs(relative).max() < 0.15
    graph = mesh.graph_distances(centre)[0]
    assert np.abs(relative).mean() < np.abs(graph[away] / euclidean[away] - 1).mean()


# --------------------------------------------------------------------------------------
# Input and output
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".vtk", ".vtu", ".obj", ".ply", ".msh", ".npz"])
def test_surface_round_trip(heart: Mesh, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"heart{suffix}"
    heart.save(path)
    loaded = load_mesh(path)
    assert loaded.name == "heart"
    assert np.array_equal(loaded.cells, heart.cells)
    assert np.allclose(loaded.points, heart.points, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".vtk", ".vtu", ".msh"])
def test_volume_round_trip(tmp_path: Path, suffix: str) -> None:
    cube = cube_mesh(3)
    path = tmp_path / f"cube{suffix}"
    cube.save(path)
    loaded = load_mesh(path, name="box")
    assert loaded.name == "box" and loaded.cell_type == "tetra"
    assert np.array_equal(loaded.cells, cube.cells)
    assert np.allclose(loaded.points, cube.points)


def test_volume_file_with_boundary_triangles_loads_tetrahedra(tmp_path: Path) -> None:
    cube = cube_mesh(2)
    faces = np.array([[0, 1, 3]])
    path = tmp_path / "mixed.vtu"
    meshio.Mesh(cube.points, [("triangle", faces), ("tetra", cube.cells)]).write(path)
    assert load_mesh(path).cell_type == "tetra"


def test_tetrahedra_cannot_be_saved_to_surface_formats(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="surfaces only"):
        cube_mesh(2).save(tmp_path / "cube.obj")


def test_planar_points_are_padded() -> None:
    mesh = square_mesh(5)
    assert mesh.points.shape == (25, 3)
    assert (mesh.points[:, 2] == 0).all()
    assert not mesh.points.flags.writeable


# --------------------------------------------------------------------------------------
# Malformed meshes
# --------------------------------------------------------------------------------------

TWO_TRIANGLES = (
    np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]),
    np.array([[0, 1, 2], [1, 3, 2]]),
)


def _broken(kind: str) -> tuple[np.ndarray, np.ndarray]:
    points, cells = TWO_TRIANGLES[0].copy(), TWO_TRIANGLES[1].copy()
    if kind == "nan":
        points[3, 1] = np.nan
    elif kind == "out_of_range":
        cells[1, 1] = 7
    elif kind == "negative":
        cells[1, 1] = -1
    elif kind == "degenerate":
        points[3] = [0.5, 0.5, 0.0]  # on the hypotenuse 1-2: triangle (1, 3, 2) has zero area
    elif kind == "disconnected":
        points = np.concatenate([points, points + [5.0, 0.0, 0.0]])
        cells = np.concatenate([cells, cells + 4])
    elif kind == "unused":
        points = np.concatenate([points, [[9.0, 9.0, 0.0]]])
    elif kind == "repeated":
        cells[1] = [1, 3, 3]
    elif kind == "duplicate":
        cells = np.concatenate([cells, [[2, 0, 1]]])
    elif kind == "non_integer":
        cells = cells.astype(float)
        cells[0, 0] = 0.5
    elif kind == "shape_points":
        points = points[:, :1]
    elif kind == "shape_cells":
        cells = cells[:, :2]
    elif kind == "empty":
        cells = cells[:0]
    return points, cells


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", r"1 node\(s\) have NaN/Inf coordinates, first \[3\]"),
        ("out_of_range", r"out of range for 4 nodes, first cells \[1\] \(e\.g\. index 7\)"),
        ("negative", r"negative node indices, first cells \[1\]"),
        ("degenerate", r"1 degenerate cell\(s\) with \(near-\)zero area, first \[1\]"),
        ("disconnected", r"2 disconnected pieces .* \[4, 4\] nodes"),
        ("unused", r"1 node\(s\) are used by no cell, first \[4\]"),
        ("repeated", r"repeat a node within the cell, first \[1\]"),
        ("duplicate", r"1 duplicate cell\(s\).*first \[2\]"),
        ("non_integer", r"non-integer node indices, first \[0\]"),
        ("shape_points", r"points must have shape \[n_nodes, 3\]"),
        ("shape_cells", r"cells must have shape \[n_cells, 3\]"),
        ("empty", r"empty mesh: 4 nodes and 0 cells"),
    ],
)
def test_malformed_mesh_is_refused(kind: str, message: str) -> None:
    points, cells = _broken(kind)
    with pytest.raises(MeshError, match=message):
        validate_mesh(points, cells)
    with pytest.raises(MeshError, match=message):
        Mesh(points, cells)


def test_valid_arrays_are_cleaned() -> None:
    points, cells = validate_mesh(TWO_TRIANGLES[0][:, :2].tolist(), TWO_TRIANGLES[1].astype(float))
    assert points.dtype == np.float64 and points.shape == (4, 3)
    assert cells.dtype == np.int64
    assert issubclass(MeshError, ValueError)


def test_quad_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "quads.vtk"
    points = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    meshio.Mesh(points, [("quad", np.array([[0, 1, 2, 3]]))]).write(path)
    with pytest.raises(MeshError, match=r"cell types \['quad'\]; supported are 'tetra'"):
        load_mesh(path)


def test_missing_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.vtk"
    with pytest.raises(MeshError, match="nowhere.vtk.*no such file"):
        load_mesh(missing)
    garbage = tmp_path / "garbage.vtu"
    garbage.write_text("this is not a mesh")
    with pytest.raises(MeshError, match="cannot read mesh file .*garbage.vtu"):
        load_mesh(garbage)
