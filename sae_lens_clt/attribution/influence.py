"""Influence on the logits: the one implementation, used by ranking and by pruning.

With ``B = |A|`` row-normalised (rows = targets) and ``w`` the target weights on the
logit (target) nodes (tokens' probabilities, or custom targets' weights), the influence of every node is ``w (B + B² + B³ + …)``. The graph is a DAG,
so the series ends after at most depth + 1 terms; it is summed term by term.

:func:`compute_influence` takes either the whole ``B [N, N]`` or only some of its rows
(``B[row_nodes]``, ``[R, N]``: the rows computed so far while attribution ranks features).
"""

from __future__ import annotations

import torch


def normalize_rows(adjacency: torch.Tensor) -> torch.Tensor:
    """``|A|`` with every nonzero row scaled to sum to 1 (same shape)."""
    b = adjacency.abs()
    return b / b.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(
    b: torch.Tensor, weights: torch.Tensor, row_nodes: torch.Tensor | None = None
) -> torch.Tensor:
    """``weights (B + B² + …)`` ``[N]`` for a nilpotent (DAG) ``B``.

    ``b`` is ``B [N, N]``, or with ``row_nodes [R]`` the rows ``B[row_nodes]`` ``[R, N]``
    (the other rows are zero). ``weights`` is ``[N]``.
    """

    def step(v: torch.Tensor) -> torch.Tensor:
        return (v if row_nodes is None else v[row_nodes]) @ b

    current = step(weights)
    influence = current.clone()
    for _ in range(b.shape[0] + 1):
        if not current.any():
            return influence
        current = step(current)
        influence += current
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


def influence_from_rows(
    rows: torch.Tensor, row_nodes: torch.Tensor, logit_nodes: torch.Tensor, probs: torch.Tensor
) -> torch.Tensor:
    """Influence of every node ``[N]`` from some rows of ``A`` (``rows [R, N]`` of the nodes
    ``row_nodes [R]``), with ``probs`` on ``logit_nodes``."""
    weights = torch.zeros(rows.shape[1], dtype=rows.dtype)
    weights[logit_nodes] = probs.to(rows.dtype)
    return compute_influence(normalize_rows(rows), weights, row_nodes)


def smallest_prefix(values: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the smallest set of entries (largest first) holding ``threshold`` of the
    total of ``values [n]`` (non-negative)."""
    if threshold <= 0 or values.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(values, descending=True, stable=True)
    total = values.sum()
    if total <= 0:
        return torch.zeros(0, dtype=torch.long)
    cumulative = values[order].cumsum(0) / total
    k = int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype)))
    return order[: min(k + 1, values.numel())]
