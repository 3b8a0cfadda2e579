"""GraphOperator: the mesh's fixed sparse matrices, with products that differentiate cheaply."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.profiler import ProfilerActivity, profile
from torch_geometric.nn import GCNConv, SAGEConv

from leads_engine.graph import MeshGraph
from leads_engine.graph_operator import GraphOperator
from leads_engine.heart_mesh import make_lv_mesh


def _plain_csr(operator: torch.Tensor) -> torch.Tensor:
    """The same matrix as an ordinary torch CSR tensor (PyTorch's own autograd)."""
    return torch.sparse_csr_tensor(
        operator.crow_indices(),
        operator.col_indices(),
        operator.values(),
        operator.shape,
        check_invariants=True,
    )


@pytest.fixture(scope="module")
def nonsymmetric() -> sp.csr_matrix:
    """A row-normalised adjacency: not symmetric, rows of different lengths, one empty row."""
    rng = np.random.default_rng(0)
    dense = (rng.random((7, 7)) < 0.4) * rng.random((7, 7))
    dense[3] = 0.0
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_products_and_gradients_match_the_plain_sparse_product(nonsymmetric, reduce):
    operator = GraphOperator.from_scipy(nonsymmetric, torch.float64)
    plain = _plain_csr(operator)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    expected = torch.sparse.mm(plain, x, reduce) if reduce == "mean" else torch.sparse.mm(plain, x)
    got = torch.sparse.mm(operator, x, reduce)
    assert type(got) is torch.Tensor
    torch.testing.assert_close(got, expected)
    # The gradient is the transpose's product, checked against finite differences, twice over.
    assert torch.autograd.gradcheck(lambda v: torch.sparse.mm(operator, v, reduce), (x,))
    assert torch.autograd.gradgradcheck(lambda v: torch.sparse.mm(operator, v, reduce), (x,))


def test_every_spelling_of_the_product_takes_the_fixed_path(nonsymmetric):
    operator = GraphOperator.from_scipy(nonsymmetric, torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64, requires_grad=True)
    expected = torch.from_numpy(nonsymmetric.toarray()) @ x.detach()
    for product in (
        torch.sparse.mm(operator, x),
        operator @ x,
        torch.mm(operator, x),
        torch.matmul(operator, x),
        operator.matmul(x),
    ):
        assert product.grad_fn.name() == "_FixedSparseProductBackward"
        torch.testing.assert_close(product.detach(), expected)


def test_other_operations_are_pytorchs_own(nonsymmetric):
    operator = GraphOperator.from_scipy(nonsymmetric, torch.float64)
    plain = _plain_csr(operator)
    assert operator.layout == torch.sparse_csr and operator.shape == (7, 7)
    dense = operator.to_dense()
    assert type(dense) is torch.Tensor
    np.testing.assert_array_equal(dense.numpy(), nonsymmetric.toarray())
    x = torch.randn(7, 2, dtype=torch.float64)
    # A reduction it has no prebuilt matrix for is PyTorch's kernel, not an approximation.
    largest = torch.sparse.mm(operator, x, "max")
    torch.testing.assert_close(largest, torch.sparse.mm(plain, x, "max"))


def test_a_symmetric_operator_is_its_own_transpose():
    matrix = sp.csr_matrix(np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 3.0], [0.0, 3.0, 1.0]]))
    matrix_t, transpose = GraphOperator.from_scipy(matrix)._products["sum"]
    assert transpose is matrix_t
    matrix_t, transpose = GraphOperator.from_scipy(sp.triu(matrix))._products["sum"]
    np.testing.assert_array_equal(transpose.to_dense().numpy(), sp.tril(matrix).toarray())


@pytest.fixture(scope="module")
def graph() -> MeshGraph:
    return MeshGraph.from_mesh(make_lv_mesh(120), batch_size=3)


@pytest.mark.parametrize(
    ("layer", "operator"),
    [
        (lambda: GCNConv(4, 8, normalize=False), "gcn_adj_t"),
        (lambda: GCNConv(4, 8, normalize=False), "mean_adj_t"),
        (lambda: SAGEConv(4, 8, aggr="mean"), "adj_t"),
        (lambda: SAGEConv(4, 8, aggr="sum"), "adj_t"),
    ],
)
def test_pyg_layers_give_the_same_outputs_and_gradients(graph, layer, operator):
    torch.manual_seed(0)
    conv = layer()
    x = torch.randn(graph.num_nodes * graph.batch_size, 4, requires_grad=True)
    adjacency = getattr(graph, operator)
    assert isinstance(adjacency, GraphOperator)
    results = []
    for adj_t in (_plain_csr(adjacency), adjacency):
        x.grad = None
        conv.zero_grad()
        out = conv(x, adj_t)
        (out**2).sum().backward()
        results.append((out.detach(), x.grad.clone(), *(p.grad.clone() for p in conv.parameters())))
    for plain, fixed in zip(*results, strict=True):
        torch.testing.assert_close(fixed, plain, rtol=1e-5, atol=1e-5)


def test_backward_does_not_rebuild_the_transpose(graph):
    """The point of the class: no CSR conversion or sort in the backward of a product."""
    x = torch.randn(graph.num_nodes * graph.batch_size, 4, requires_grad=True)

    def backward_ops(adj_t: torch.Tensor) -> set[str]:
        out = torch.sparse.mm(adj_t, x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out.sum().backward()
        return {event.name for event in prof.events()}

    assert "aten::sort" in backward_ops(_plain_csr(graph.gcn_adj_t))  # what it saves
    assert {"aten::sort", "aten::_to_sparse_csr"}.isdisjoint(backward_ops(graph.gcn_adj_t))
