"""Sparse decoding kernels: ``A @ W`` for a sparse activation matrix, sparse both ways.

1. Forward: a COO sparse x dense product (``torch.sparse.mm``), or, where the sparse
   kernels lack the dtype (half precision on CPU), a chunked gather + ``index_add_``.
2. Backward: ``dL/dvalues`` by a sampled dense-dense product at the active entries only,
   ``dL/dW = Aᵀ @ grad`` (sparse again), so no step costs ``n_rows * d_sae * D``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch


class SparseDecode(torch.autograd.Function):
    """``out = A @ W`` for a sparse ``A`` given as (rows, cols, values), sparse both ways.

    Forward is a sparse x dense product. Backward gives ``dL/dvalues`` by a sampled
    dense-dense product (only at the active entries) and ``dL/dW`` by ``Aᵀ @ grad``
    (sparse again), so no step costs ``n_rows * d_sae * D``. Where the sparse kernels lack a
    dtype (half precision on CPU) the same products are done by gathering rows in chunks.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        values: torch.Tensor,  # [nnz]
        rows: torch.Tensor,  # [nnz], sorted
        cols: torch.Tensor,  # [nnz]
        weight: torch.Tensor,  # [F, D]
        n_rows: int,
    ) -> torch.Tensor:  # [n_rows, D]
        if _has_sparse_kernels(weight):
            a = _coo(rows, cols, values, (n_rows, weight.shape[0]), row_sorted=True)
            return torch.sparse.mm(a, weight)
        return _scatter_rows(weight, cols, rows, values, n_rows)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        values, rows, cols, weight, n_rows = inputs
        ctx.save_for_backward(values, rows, cols, weight)
        ctx.n_rows = n_rows

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        values, rows, cols, weight = ctx.saved_tensors
        fast = _has_sparse_kernels(weight)
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            if fast:
                pattern = _csr(rows, cols, torch.zeros_like(values), (ctx.n_rows, weight.shape[0]))
                grad_values = torch.sparse.sampled_addmm(pattern, grad_out, weight.T).values()
            else:
                grad_values = torch.cat(
                    [
                        (grad_out[rows[i : i + _CHUNK]] * weight[cols[i : i + _CHUNK]]).sum(-1)
                        for i in range(0, rows.numel(), _CHUNK)
                    ]
                )
        if ctx.needs_input_grad[3]:
            if fast:
                transposed = _coo(cols, rows, values, (weight.shape[0], ctx.n_rows))
                grad_weight = torch.sparse.mm(transposed, grad_out)
            else:
                grad_weight = _scatter_rows(grad_out, rows, cols, values, weight.shape[0])
        return grad_values, None, None, grad_weight, None


_CHUNK = 4096  # rows gathered at once on the fallback path (bounds its memory)


def layer_slices(layer: torch.Tensor, n_layers: int) -> list[tuple[int, slice]]:
    """``(s, slice)`` of each non-empty layer in entries sorted by layer (``layer [nnz]``)."""
    counts = torch.bincount(layer, minlength=n_layers).tolist()
    ends = [sum(counts[: s + 1]) for s in range(n_layers)]
    return [(s, slice(ends[s] - counts[s], ends[s])) for s in range(n_layers) if counts[s]]


def _has_sparse_kernels(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64) or t.device.type == "cuda"


def _scatter_rows(
    src: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor, values: torch.Tensor, n: int
) -> torch.Tensor:
    """``out[dst_idx[k]] += values[k] * src[src_idx[k]]`` for all k: ``[n, D]``."""
    out = src.new_zeros(n, src.shape[1])
    for i in range(0, values.numel(), _CHUNK):
        sl = slice(i, i + _CHUNK)
        out.index_add_(0, dst_idx[sl], src[src_idx[sl]] * values[sl, None])
    return out


def _coo(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    size: tuple[int, int],
    row_sorted: bool = False,
) -> torch.Tensor:
    """Coalesced COO matrix (on CPU its products beat the CSR ones for this shape).

    ``row_sorted=True`` promises the (row, col) pairs are unique and sorted row-major (as
    ``nonzero`` returns them), which skips the sort.
    """
    indices = torch.stack([rows, cols])
    if row_sorted:
        return torch.sparse_coo_tensor(
            indices, values, size, check_invariants=False, is_coalesced=True
        )
    return torch.sparse_coo_tensor(indices, values, size, check_invariants=False).coalesce()


def _csr(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """CSR matrix from row-sorted COO indices."""
    crow = torch.zeros(size[0] + 1, dtype=torch.int64, device=values.device)
    crow[1:] = torch.bincount(rows, minlength=size[0]).cumsum(0)
    with warnings.catch_warnings():  # "CSR support is in beta": we rely only on stable ops
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)
