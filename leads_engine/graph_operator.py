"""Fixed sparse operators of the mesh graph whose products differentiate cheaply.

A diffusion template multiplies node features by a fixed sparse matrix of the mesh graph
(``graph.gcn_adj_t``, ``graph.adj_t``, ...) once or twice per conductance evaluation, and the
trainer differentiates through every one of them. ``torch.sparse.mm(A, x)`` with a CSR ``A``
differentiates to ``A^T @ grad``, and PyTorch builds that transpose afresh on every backward
call: a CSR-to-CSC conversion that sorts all stored entries. For the GCN operator of a batch of
10 on the bundled mesh that is 4.2 of the 4.5 ms of a product's forward and backward (measured
on this repository's CPU machine, one thread).

The matrices never change during training, so :class:`GraphOperator` builds their transposes
once. It *is* the CSR tensor (PyG layers take it as ``adj_t`` unchanged and it prints, moves and
multiplies like one) and routes its products with dense node features, ``torch.sparse.mm(op,
x)``, ``torch.sparse.mm(op, x, "mean")``, ``op @ x`` and ``torch.mm(op, x)``, through an
autograd function whose backward multiplies by the prebuilt transpose. ``"mean"`` (PyG's mean
aggregation, the row mean over stored entries) is the product with the row-normalised matrix.
Every other operation, including the ``"max"``/``"min"`` reductions, is PyTorch's own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .simulator import to_torch_csr

_PRODUCTS = (
    torch.sparse.mm,
    torch.mm,
    torch.matmul,
    torch.Tensor.mm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
)


class _FixedSparseProduct(torch.autograd.Function):
    """``y = A @ x`` for a constant sparse ``A``; ``dL/dx = A^T @ dL/dy`` with ``A^T`` given."""

    @staticmethod
    def forward(ctx: Any, matrix: torch.Tensor, transpose: torch.Tensor, dense: torch.Tensor):  # noqa: ANN205
        ctx.matrices = (matrix, transpose)
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):  # noqa: ANN205
        matrix, transpose = ctx.matrices
        # Itself a fixed product, so higher-order gradients stay cheap as well.
        return None, None, _FixedSparseProduct.apply(transpose, matrix, grad_output)


class GraphOperator(torch.Tensor):
    """A constant sparse CSR matrix of the mesh graph with prebuilt transposes (module docstring).

    Build it with :meth:`from_scipy`. Its stored values carry no gradient: it is part of the
    mesh, not of the model.
    """

    _products: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def from_scipy(
        cls,
        matrix: sp.spmatrix,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> GraphOperator:
        """The operator of a scipy sparse matrix, with its transpose and row-mean products."""
        matrix = sp.csr_matrix(matrix)
        row_counts = np.diff(matrix.indptr).astype(float)
        row_mean = sp.diags(1.0 / np.maximum(row_counts, 1.0)) @ matrix

        def pair(m: sp.spmatrix) -> tuple[torch.Tensor, torch.Tensor]:
            forward = to_torch_csr(m, dtype, device)
            symmetric = m.shape[0] == m.shape[1] and abs(m - m.T).max() == 0
            return forward, forward if symmetric else to_torch_csr(m.T, dtype, device)

        products = {"sum": pair(matrix), "mean": pair(row_mean)}
        operator = torch.Tensor._make_subclass(cls, products["sum"][0])
        operator._products = products
        return operator

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if (
            func in _PRODUCTS
            and len(args) >= 2
            and isinstance(args[0], cls)
            and set(kwargs) <= {"reduce"}
        ):
            operator, dense = args[0], args[1]
            reduce = args[2] if len(args) > 2 else kwargs.get("reduce", "sum")
            if (
                reduce in operator._products
                and isinstance(dense, torch.Tensor)
                and dense.layout == torch.strided
                and dense.dim() == 2
            ):
                return _FixedSparseProduct.apply(*operator._products[reduce], dense)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)
