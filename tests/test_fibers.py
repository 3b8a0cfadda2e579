"""Fibre fields: validation and refusal, the rule-based field, file round trips, the tensor
stiffness against exact identities, the graph's along/across maps and data sets with fibres."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from conftest import dataset_fields

from leads_engine.dataset import DatasetError, EPDataset, load_dataset
from leads_engine.fibers import (
    TANGENT_TOLERANCE,
    node_normals,
    rule_based_fibers,
    validate_fibers,
)
from leads_engine.graph import (
    FiberFieldMissing,
    MeshGraph,
    conductance_map,
    edge_fiber_alignment,
    fiber_conductance_maps,
)
from leads_engine.heart_mesh import make_lv_mesh
from leads_engine.mesh import Mesh, MeshError, load_mesh


def sheet(n: int = 9, size: float = 8.0) -> Mesh:
    """A flat structured triangle mesh of ``n x n`` nodes on ``[0, size]^2``."""
    x, y = np.meshgrid(np.linspace(0, size, n), np.linspace(0, size, n), indexing="ij")
    index = np.arange(n * n).reshape(n, n)
    a, b = index[:-1, :-1].ravel(), index[1:, :-1].ravel()
    c, d = index[1:, 1:].ravel(), index[:-1, 1:].ravel()
    cells = np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])
    return Mesh(np.column_stack([x.ravel(), y.ravel()]), cells, name="sheet")


def in_plane(angle_deg: float, count: int) -> np.ndarray:
    angle = np.radians(angle_deg)
    return np.tile([np.cos(angle), np.sin(angle), 0.0], (count, 1))


@pytest.fixture(scope="module")
def ventricle() -> Mesh:
    mesh = make_lv_mesh(300)
    return mesh.with_fibers(rule_based_fibers(mesh))


def tetra_block() -> Mesh:
    """Two tetrahedra sharing a face."""
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float)
    return Mesh(points, np.array([[0, 1, 2, 3], [1, 2, 3, 4]]), name="tets")


# ---- refusal of bad fields ---------------------------------------------------------------


def test_nan_fibres_are_refused_with_the_nodes_named():
    mesh = sheet()
    fibers = in_plane(0, mesh.n_nodes)
    fibers[[4, 17]] = np.nan
    with pytest.raises(MeshError, match=r"2 fibre\(s\) at nodes have NaN/Inf.*\[4, 17\]"):
        mesh.with_fibers(fibers)


def test_zero_fibres_are_refused():
    mesh = sheet()
    fibers = in_plane(0, mesh.n_cells)
    fibers[3] = 0.0
    with pytest.raises(MeshError, match=r"1 fibre\(s\) at cells are zero vectors.*\[3\]"):
        mesh.with_fibers(fibers)


def test_fibres_out_of_the_surface_are_refused(ventricle):
    normals = node_normals(ventricle.points, ventricle.cells)
    bad = np.array(ventricle.fibers)
    bad[7] = normals[7]  # straight out of the wall
    with pytest.raises(MeshError, match=r"1 fibre\(s\) at nodes are not tangent.*\[7\]"):
        ventricle.with_fibers(bad)
    # a flat sheet: a fibre with a z component beyond the tolerance
    mesh = sheet()
    tilted = in_plane(0, mesh.n_nodes)
    tilted[0] = [1.0, 0.0, 0.5]
    with pytest.raises(MeshError, match="worst 26.6"):
        mesh.with_fibers(tilted)


def test_slightly_tilted_fibres_are_projected_onto_the_surface():
    mesh = sheet()
    tilt = 0.5 * TANGENT_TOLERANCE
    fibers = mesh.with_fibers(np.tile([1.0, 0.0, tilt], (mesh.n_nodes, 1))).fibers
    np.testing.assert_allclose(fibers, in_plane(0, mesh.n_nodes), atol=1e-12)


@pytest.mark.parametrize(
    ("fibers", "message"),
    [
        (np.ones((5, 3)), r"neither per node nor per cell"),
        (np.ones((81, 2)), r"shape \[n_nodes=81, 3\]"),
        (np.ones((81, 3, 1)), r"shape"),
        ([["a", "b", "c"]] * 81, "not a numeric array"),
    ],
)
def test_wrong_shapes_are_refused(fibers, message):
    with pytest.raises(MeshError, match=message):
        sheet().with_fibers(fibers)


def test_equal_node_and_cell_counts_need_to_say_which():
    # a closed surface with as many nodes as cells does not exist; fake it on the raw check
    points = np.zeros((4, 3))
    cells = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(MeshError, match="ambiguous"):
        validate_fibers(points, cells, np.ones((4, 3)))
    unit, per = validate_fibers(points, cells, np.ones((4, 3)), per="cell")
    assert per == "cell" and np.allclose(np.linalg.norm(unit, axis=1), 1.0)


def test_volume_meshes_take_any_direction():
    mesh = tetra_block()
    fibers = mesh.with_fibers(np.array([[0, 0, 2.0], [0, 3.0, 0]]), "cell")
    np.testing.assert_allclose(fibers.cell_fibers, [[0, 0, 1], [0, 1, 0]])
    rule = rule_based_fibers(mesh)
    assert rule.shape == (5, 3) and np.allclose(np.linalg.norm(rule, axis=1), 1.0)


# ---- the rule-based field -----------------------------------------------------------------


def test_rule_based_fibres_are_unit_tangent_helices(ventricle):
    fibers = ventricle.fibers
    normals = node_normals(ventricle.points, ventricle.cells)
    assert np.allclose(np.linalg.norm(fibers, axis=1), 1.0)
    assert np.abs(np.einsum("nd,nd->n", fibers, normals)).max() < 1e-9
    # away from the apex: 60 degrees from the horizontal circumferential direction
    radial = ventricle.points[:, :2] - ventricle.points[:, :2].mean(axis=0)
    side = np.linalg.norm(radial, axis=1) > 8.0
    circumferential = np.column_stack([-radial[:, 1], radial[:, 0], np.zeros(len(radial))])
    circumferential /= np.linalg.norm(circumferential, axis=1, keepdims=True)
    cosine = np.abs(np.einsum("nd,nd->n", fibers, circumferential))[side]
    np.testing.assert_allclose(cosine, np.cos(np.radians(60.0)), atol=0.02)
    assert ventricle.cell_fibers.shape == (ventricle.n_cells, 3)


def test_a_fibre_is_an_axis_flipping_signs_changes_nothing(ventricle):
    flipped = np.array(ventricle.fibers)
    flipped[::3] *= -1
    other = ventricle.with_fibers(flipped)
    sigma = np.linspace(0.5, 2.0, ventricle.n_nodes)
    difference = other.stiffness(sigma, transverse=sigma / 4) - ventricle.stiffness(
        sigma, transverse=sigma / 4
    )
    assert abs(difference).max() < 1e-12


# ---- files -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".vtu", ".vtk", ".npz"])
@pytest.mark.parametrize("per", ["node", "cell"])
def test_fibres_round_trip_through_mesh_files(tmp_path, suffix, per):
    mesh = sheet()
    count = mesh.n_nodes if per == "node" else mesh.n_cells
    original = mesh.with_fibers(in_plane(30, count), per)
    path = tmp_path / f"sheet{suffix}"
    original.save(path)
    loaded = load_mesh(path, fibers="auto")
    assert loaded.fibers_per == per
    np.testing.assert_allclose(loaded.fibers, original.fibers, atol=1e-12)
    assert load_mesh(path).fibers is None  # read only when asked for


def test_a_named_field_and_a_missing_one(tmp_path):
    import meshio

    mesh = sheet()
    path = tmp_path / "named.vtu"
    fibers = in_plane(45, mesh.n_nodes)
    meshio.Mesh(
        mesh.points,
        [("triangle", mesh.cells)],
        point_data={"sheet_dir": fibers, "thickness": np.ones(mesh.n_nodes)},
    ).write(path)
    np.testing.assert_allclose(load_mesh(path, fibers="sheet_dir").fibers, fibers)
    with pytest.raises(MeshError, match=r"no fibre field any of .*it has \['sheet_dir', 'thick"):
        load_mesh(path, fibers="auto")


# ---- the tensor stiffness ------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 30.0, 77.0])
def test_energy_of_a_linear_field_is_the_tensor_form(angle):
    """P1 reproduces linear fields, so u^T K u = |area| g^T D g exactly for u = g . x."""
    mesh = sheet()
    sigma_l, sigma_t = 2.0, 0.5
    anisotropic = mesh.with_fibers(in_plane(angle, mesh.n_cells))
    stiffness = anisotropic.stiffness(sigma_l, transverse=sigma_t)
    f = in_plane(angle, 1)[0, :2]
    tensor = sigma_t * np.eye(2) + (sigma_l - sigma_t) * np.outer(f, f)
    for g in np.array([[1.0, 0.0], [0.0, 1.0], [0.6, -0.8]]):
        u = mesh.points[:, :2] @ g
        np.testing.assert_allclose(u @ stiffness @ u, 64.0 * g @ tensor @ g, rtol=1e-12)


def test_tensor_stiffness_properties(ventricle):
    sigma = np.linspace(0.4, 1.8, ventricle.n_nodes)
    stiffness = ventricle.stiffness(sigma, transverse=sigma / 3)
    assert abs(stiffness - stiffness.T).max() < 1e-12
    assert np.abs(np.asarray(stiffness.sum(axis=1))).max() < 1e-10
    smallest = sla.eigsh(stiffness, k=1, which="SA", return_eigenvectors=False)[0]
    assert smallest > -1e-8  # positive semi-definite
    # equal conductivities along and across: exactly the isotropic operator
    isotropic = ventricle.stiffness(sigma, transverse=sigma) - ventricle.stiffness(sigma)
    assert abs(isotropic).max() < 1e-12


def test_the_anisotropic_step_is_no_stiffer_than_the_isotropic_one(ventricle):
    """D <= sigma_l I, so an explicit step stable for sigma_l stays stable."""
    sigma = np.linspace(0.4, 1.8, ventricle.n_nodes)

    def radius(laplacian) -> float:
        return float(np.abs(sla.eigs(laplacian, k=1, which="LM", return_eigenvectors=False))[0])

    assert radius(ventricle.laplacian(sigma, transverse=sigma / 3)) <= radius(
        ventricle.laplacian(sigma)
    ) * (1 + 1e-9)


def test_a_transverse_conductivity_needs_fibres():
    with pytest.raises(MeshError, match="needs a fibre field"):
        sheet().stiffness(1.0, transverse=0.5)


# ---- graph maps --------------------------------------------------------------------------


def test_along_and_across_maps_add_up_to_the_isotropic_one(ventricle):
    along, across = fiber_conductance_maps(ventricle)
    assert abs(along + across - conductance_map(ventricle)).max() < 1e-12
    with pytest.raises(FiberFieldMissing):
        fiber_conductance_maps(make_lv_mesh(60))


def test_graph_conductances_reproduce_the_tensor_laplacian(ventricle):
    rng = np.random.default_rng(1)
    along = rng.uniform(0.8, 2.0, ventricle.n_nodes)
    across = along / rng.uniform(1.5, 4.0, ventricle.n_nodes)
    graph = MeshGraph.from_mesh(ventricle, 2, dtype=torch.float64)
    assert graph.has_fibers
    conductance = graph.fiber_edge_conductance(torch.as_tensor(along), torch.as_tensor(across))
    assert bool((conductance < 0).any())  # not an M-matrix, and the flux form does not mind
    u = rng.normal(size=(2, ventricle.n_nodes))
    rate = graph.flux_divergence(conductance, torch.as_tensor(u.reshape(-1, 1)))
    laplacian = ventricle.laplacian(along, transverse=across)
    expected = np.concatenate([laplacian @ sample for sample in u])
    np.testing.assert_allclose(rate.numpy().ravel(), expected, rtol=1e-10, atol=1e-10)


def test_edge_alignment_with_the_fibres():
    mesh = sheet()
    fibred = mesh.with_fibers(in_plane(30.0, mesh.n_nodes))
    alignment = edge_fiber_alignment(fibred)
    src, dst = mesh.edge_index.numpy()
    direction = mesh.points[dst] - mesh.points[src]
    angle = np.degrees(np.arctan2(direction[:, 1], direction[:, 0]))
    np.testing.assert_allclose(alignment, np.cos(np.radians(angle - 30.0)) ** 2, atol=1e-12)
    graph = MeshGraph.from_mesh(fibred, 2)
    assert graph.edge_fiber_alignment.shape == (2 * len(src),)
    assert MeshGraph.from_mesh(mesh, 2).edge_fiber_alignment is None


def test_a_graph_without_fibres_says_what_to_do():
    graph = MeshGraph.from_mesh(make_lv_mesh(60), 1)
    assert not graph.has_fibers and graph.along_nodes is None
    sigma = torch.ones(60)
    with pytest.raises(FiberFieldMissing, match="--fibers rule.*laplacian_nodewise"):
        graph.fiber_edge_conductance(sigma, sigma)


# ---- data sets ---------------------------------------------------------------------------


def test_a_data_set_keeps_its_fibres_through_a_file(ventricle, tmp_path):
    fields = dataset_fields(ventricle)
    fields["meta"]["fibers"] = {"source": "rule", "per": "node", "anisotropy": 3.0}
    data = EPDataset(**fields, extras={"fibers": np.array(ventricle.fibers)})
    loaded = load_dataset(data.save(tmp_path / "fibred.npz"))
    np.testing.assert_allclose(loaded.fibers, ventricle.fibers)
    assert loaded.anisotropy == 3.0 and loaded.mesh().fibers_per == "node"
    assert loaded.summary()["fibers"] == "per node" and loaded.summary()["anisotropy"] == 3.0
    plain = EPDataset(**dataset_fields(ventricle))
    assert plain.fibers is None and plain.mesh().fibers is None and plain.anisotropy == 1.0
    assert "fibers" not in plain.summary() and "anisotropy" not in plain.summary()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("nan", r"fibers: 1 fibre\(s\) at nodes have NaN"),
        ("zero", r"fibers: 1 fibre\(s\) at nodes are zero vectors"),
        ("normal", r"fibers: .* not tangent to the surface"),
        ("shape", r"fibers: fibers must have shape"),
        ("ratio", r"meta.fibers.anisotropy: must be a positive number"),
        ("per", r"meta.fibers.per: 'edge'"),
    ],
)
def test_a_data_set_with_a_bad_fibre_field_is_refused(ventricle, tmp_path, change, message):
    fields = dataset_fields(ventricle)
    fibers = np.array(ventricle.fibers)
    info = {"source": "mesh", "anisotropy": 2.0}
    if change == "nan":
        fibers[5, 1] = np.nan
    elif change == "zero":
        fibers[5] = 0.0
    elif change == "normal":
        fibers[5] = node_normals(ventricle.points, ventricle.cells)[5]
    elif change == "shape":
        fibers = fibers[:, :2]
    elif change == "ratio":
        info["anisotropy"] = -1.0
    else:
        info["per"] = "edge"
    fields["meta"]["fibers"] = info
    with pytest.raises(DatasetError, match=message):
        EPDataset(**fields, extras={"fibers": fibers})
    # and the same from a file
    if change == "nan":
        good = EPDataset(**fields, extras={"fibers": np.array(ventricle.fibers)})
        path = good.save(tmp_path / "bad.npz")
        with np.load(path) as archive:
            contents = dict(archive)
        contents["fibers"] = fibers
        np.savez(path, **contents)
        with pytest.raises(DatasetError, match="bad.npz: fibers: 1 fibre"):
            load_dataset(path)
