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
    rows: torch.Tensor,
    row_nodes: torch.Tensor,
    logit_nodes: torch.Tensor,
    probs: torch.Tensor,
    chunk: int = 4096,
) -> torch.Tensor:
    """Influence of every node ``[N]`` from some rows of ``A`` (``rows [R, N]`` of the nodes
    ``row_nodes [R]``), with ``probs`` on ``logit_nodes``.

    The same series as :func:`compute_influence`, without a normalised copy of ``rows``
    (which may be a memory-mapped file): with ``s_0 = w[R]`` and ``s_k = s_{k-1} B[:, R]``
    (the ``[R, R]`` block), the influence is ``(Σ_k s_k) B``; ``B``'s row sums, its
    ``[R, R]`` block and that last product are read ``chunk`` rows at a time."""
    n_rows, n = rows.shape
    sums = torch.zeros(n_rows, dtype=torch.float32)
    block = torch.zeros(n_rows, n_rows, dtype=torch.float32)  # |A|[:, R], then B[:, R]
    for i in range(0, n_rows, chunk):
        part = rows[i : i + chunk].abs().float()
        sums[i : i + chunk] = part.sum(1)
        block[i : i + chunk] = part[:, row_nodes]
    scale = 1.0 / sums.clamp(min=1e-10)
    block *= scale[:, None]
    weights = torch.zeros(n, dtype=torch.float32)
    weights[logit_nodes] = probs.float()
    current = weights[row_nodes]
    total = current.clone()
    for _ in range(n_rows + 1):
        current = current @ block
        if not current.any():
            break
        total += current
    else:
        raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")
    total *= scale  # (Σ s_k) B = ((Σ s_k) / row sums) |A|
    influence = torch.zeros(n, dtype=torch.float32)
    for i in range(0, n_rows, chunk):
        influence += total[i : i + chunk] @ rows[i : i + chunk].abs().float()
    return influence


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
