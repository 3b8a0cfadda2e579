"""The mesh as a batched graph (``leads_engine.graph``): FE conductances, flux form, batching."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from leads_engine.graph import MeshGraph, conductance_map
from leads_engine.heart_mesh import make_lv_mesh


@pytest.fixture(scope="module")
def mesh():
    return make_lv_mesh(120)


@pytest.fixture(scope="module")
def graph(mesh):
    return MeshGraph.from_mesh(mesh, 2, dtype=torch.float64)


def _fields(mesh, batch: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.uniform(0.0, 1.0, (batch * mesh.n_nodes, 1)))


def test_flux_form_with_fe_conductances_is_the_mesh_laplacian(mesh, graph):
    """``(1/M_i) sum_j w_ji(sigma) (u_j - u_i)`` equals ``L(sigma) u`` of the mesh, per sample."""
    sigma = np.random.default_rng(1).uniform(0.2, 1.9, mesh.n_nodes)
    u = _fields(mesh, 2)
    rate = graph.flux_divergence(graph.edge_conductance(torch.as_tensor(sigma)), u).numpy()
    laplacian = mesh.laplacian(sigma, per="node")
    expected = np.concatenate([laplacian @ s for s in u.numpy().reshape(2, mesh.n_nodes)])
    np.testing.assert_allclose(rate[:, 0], expected, rtol=1e-9, atol=1e-9)


def test_unit_edge_weights_are_the_conductances_of_a_uniform_tissue(mesh, graph):
    ones = torch.ones(mesh.n_nodes, dtype=torch.float64)
    torch.testing.assert_close(graph.edge_conductance(ones), graph.edge_weight)
    assert (graph.edge_weight > 0).all()  # the bundled meshes have no negative cotangent weight


def test_flux_form_conserves_charge_and_leaves_a_uniform_field_at_rest(mesh, graph):
    weights = graph.edge_conductance(torch.linspace(0.3, 1.7, mesh.n_nodes, dtype=torch.float64))
    uniform = torch.full((2 * mesh.n_nodes, 1), 0.37, dtype=torch.float64)
    assert graph.flux_divergence(weights, uniform).abs().max() < 1e-12
    rate = graph.flux_divergence(weights, _fields(mesh, 2, seed=3))
    mass = 1.0 / graph.inverse_mass  # total charge sum_i M_i du_i/dt is zero per sample
    per_sample = (mass * rate).reshape(2, mesh.n_nodes).sum(1)
    assert per_sample.abs().max() < 1e-10


def test_sample_b_lives_in_rows_b_times_n(mesh, graph):
    single = MeshGraph.from_mesh(mesh, 1, dtype=torch.float64)
    u = _fields(mesh, 2, seed=4)
    n = mesh.n_nodes
    batched = graph.flux_divergence(graph.edge_weight, u)
    for b in range(2):
        alone = single.flux_divergence(single.edge_weight, u[b * n : (b + 1) * n])
        torch.testing.assert_close(batched[b * n : (b + 1) * n], alone)
    assert graph.edge_index.shape[1] == 2 * mesh.edge_index.shape[1]
    assert int(graph.edge_index.min()) == 0 and int(graph.edge_index.max()) == 2 * n - 1


def test_fixed_operators_are_the_normalised_adjacencies(mesh, graph):
    adjacency = graph.adj_t.to_dense()
    torch.testing.assert_close(adjacency, adjacency.T)
    rows = graph.mean_adj_t.to_dense().sum(1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    degree = adjacency.sum(1)
    gcn = graph.gcn_adj_t.to_dense()
    expected = (adjacency + torch.eye(len(degree), dtype=adjacency.dtype)) / torch.sqrt(
        torch.outer(degree + 1, degree + 1)
    )
    torch.testing.assert_close(gcn, expected)


def test_conductance_map_is_linear_in_the_node_conductivity(mesh):
    cmap = conductance_map(mesh)
    assert cmap.shape == (mesh.edge_index.shape[1], mesh.n_nodes)
    a, b = np.random.default_rng(5).uniform(0.1, 2.0, (2, mesh.n_nodes))
    np.testing.assert_allclose(cmap @ (2 * a + b), 2 * (cmap @ a) + cmap @ b, rtol=1e-12)
    stiffness = sp.csr_matrix(mesh.stiffness(a, per="node"))
    src, dst = mesh.edge_index.numpy()
    np.testing.assert_allclose(cmap @ a, -np.asarray(stiffness[src, dst]).ravel(), rtol=1e-9)
