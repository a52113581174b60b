"""Paths through an attribution graph: per-unit effects, strongest paths, total effects.

1. :func:`linear_effects`: per-unit direct effects ``Ã`` (feature columns divided by the
   activation); under the frozen replacement model the product of ``Ã`` along a path is
   that path's exact linear contribution.
2. :func:`strongest_paths`: the ``k`` strongest paths between two nodes of a (pruned)
   graph by dynamic programming over the DAG in node order.
3. :func:`total_effect`: the sum over *all* paths, ``[(I - Ã)^-1]_ts``, from one solve.
4. :func:`node_name`: a readable name of a node (with feature labels when given).
"""

from __future__ import annotations

from typing import Any

import torch


def linear_effects(graph: Any) -> torch.Tensor:
    """Per-unit direct effects ``Ã [N, N]``: feature columns divided by the activation.

    ``A[t, f]`` is the effect of removing feature ``f`` (activation ``a_f``); under the
    frozen replacement model a JumpReLU feature above threshold passes its pre-activation
    through with slope 1, so ``A[t, f] / a_f`` is the effect per unit of its input, and the
    product of ``Ã`` along a path is that path's exact linear contribution.
    """
    at = graph.dense_adjacency().double()  # (a copy)
    nf = graph.n_features
    at[:, :nf] /= graph.activation_values.double().clamp(min=1e-12)[None, :]
    return at


def strongest_paths(
    effects: torch.Tensor,
    node_mask: torch.Tensor,
    source: int,
    target: int,
    k: int = 5,
    max_len: int = 8,
) -> list[tuple[float, list[int]]]:
    """Top-``k`` paths ``source -> ... -> target`` among kept nodes by contribution.

    A path's contribution is the product of the per-unit direct effects along it
    (``effects = linear_effects(graph)``), in units of the target (a logit) per unit of the source;
    the contributions of all paths sum to the source's total effect. Dynamic programming
    keeps, per node, the ``k`` largest and ``k`` smallest partial products (signs multiply).
    """
    at = effects * node_mask[:, None] * node_mask[None, :]
    best: dict[int, list[tuple[float, list[int]]]] = {source: [(1.0, [source])]}
    frontier = {source}
    for _ in range(max_len):
        new_frontier = set()
        for n in frontier:
            for t in at[:, n].nonzero()[:, 0].tolist():
                w = float(at[t, n])
                cands = best.setdefault(t, [])
                before = list(cands)
                cands += [(v * w, path + [t]) for v, path in best[n] if t not in path]
                cands.sort(key=lambda c: -c[0])
                keep = cands[:k] + [c for c in cands[-k:] if c not in cands[:k]]
                best[t] = keep
                if keep != before:
                    new_frontier.add(t)
        frontier = new_frontier
        if not frontier:
            break
    return sorted(best.get(target, []), key=lambda c: -c[0])[:k]


def total_effect(effects: torch.Tensor, source: int, target: int) -> float:
    """Sum of the contributions of every path ``source -> target``: ``[(I - A)^-1]_ts``
    for ``A = effects`` (the full graph), from one linear solve against ``e_source``."""
    n = effects.shape[0]
    e = torch.zeros(n, dtype=effects.dtype)
    e[source] = 1.0
    return float(torch.linalg.solve(torch.eye(n, dtype=effects.dtype) - effects, e)[target])


def node_name(graph: Any, index: int, tok_strs: list[str], labels: dict) -> str:
    kind = graph.node_kind(index)
    if kind == "feature":
        layer, pos, feat = graph.active_features[index].tolist()
        label = labels.get((layer, feat), "")
        return f"L{layer} F{feat} @{tok_strs[pos]!r}" + (f" [{label}]" if label else "")
    if kind == "error":
        layer, pos = graph.node_layer_pos(index)
        return f"error L{layer} @{tok_strs[pos]!r}"
    if kind == "embedding":
        _, pos = graph.node_layer_pos(index)
        return f"embedding {tok_strs[pos]!r}"
    i = index - graph.logit_offset
    if graph.target_kind(i) != "token":
        return f"target {graph.target_label(i)}"
    return f"logit {graph.metadata['logit_token_strings'][i]!r}"
