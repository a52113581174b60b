"""Influence, pruning and graph scores (docs/design.md §3, "Influence, pruning, scores").

Algorithm (graph of ``N`` nodes, adjacency ``A [N, N]``, rows = targets; computed on the
feature and target rows only, ``[R, N]``, the only rows that can be nonzero, so a graph in
rows form (:mod:`.nodes`) is pruned without an ``[N, N]`` matrix):

1. ``B = |A|`` with each row scaled to sum to 1 (rows without inputs stay zero).
2. Influence of every node on the logits: ``w (B + B² + B³ + …)`` with ``w`` the logit
   nodes' weights (zero elsewhere; a token's probability, or a custom target's weight,
   :mod:`.targets`), by :mod:`sae_lens_clt.attribution.influence`.
3. Node pruning: sort feature and error nodes by influence and keep the smallest prefix
   holding ``node_threshold`` of their total influence. Embeddings and logits always stay.
4. Edge pruning: zero the rows and columns of dropped nodes, recompute ``B`` and the
   influence ``I`` on that graph; edge ``(t, s)`` scores ``B[t, s] · (I[t] + w[t])``. Keep
   the smallest set of edges holding ``edge_threshold`` of the total edge score.
5. Clean up, until nothing changes: a feature or error node with no kept outgoing edge
   cannot reach the logits, and a feature with no kept incoming edge is unexplained; drop
   them and their edges (the rule circuit-tracer uses).
6. Scores. **Replacement**: influence of the embedding nodes divided by the influence of
   embedding plus error nodes. **Completeness**: over the nodes with incoming edges
   (features with rows, logits), the average of ``1 - (share of the node's normalised
   incoming mass that comes from error nodes)`` weighted by ``I + w``. (circuit-tracer
   also counts source nodes, which have no incoming mass, as complete; we do not.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sae_lens_clt.attribution.influence import compute_influence, normalize_rows, smallest_prefix
from sae_lens_clt.attribution.nodes import GraphData


class PruneResult(NamedTuple):
    node_mask: torch.Tensor  # [N] bool, nodes kept
    # edges kept (rows = targets): [N, N] bool, or [R, N] when the graph is in rows form
    # (row r is node row_nodes[r])
    edge_mask: torch.Tensor
    node_influence: torch.Tensor  # [N] influence on the logits (unpruned graph)
    cumulative_scores: torch.Tensor  # [N] share of total influence up to this node's rank
    row_nodes: torch.Tensor | None = None  # [R] node of each edge_mask row (None: [N, N])

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(targets [E], sources [E])`` node indices of the kept edges, row-major."""
        rows, sources = self.edge_mask.nonzero(as_tuple=True)
        return (rows if self.row_nodes is None else self.row_nodes[rows]), sources

    def __repr__(self) -> str:
        return (
            f"PruneResult(nodes kept {int(self.node_mask.sum())} of {int(self.node_mask.numel())}, "
            f"edges kept {int(self.edge_mask.sum())})"
        )


class GraphScores(NamedTuple):
    replacement: float
    completeness: float


def node_influence(graph: GraphData) -> torch.Tensor:
    """Influence of every node on the logits: ``[N]``."""
    b = normalize_rows(graph.adjacency_rows().float())
    return compute_influence(b, graph.logit_weights(), graph.row_nodes())


def prune_graph(
    graph: GraphData, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """Steps 1-5 of the module docstring."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    rows, row_nodes = graph.adjacency_rows().float(), graph.row_nodes()  # [R, N], [R]
    w = graph.logit_weights()
    influence = compute_influence(normalize_rows(rows), w, row_nodes)
    n_inner = graph.embedding_offset  # features and errors

    node_mask = torch.zeros(graph.n_nodes, dtype=torch.bool)
    node_mask[smallest_prefix(influence[:n_inner], node_threshold)] = True
    node_mask[n_inner:] = True

    pruned = rows * node_mask[row_nodes][:, None] * node_mask[None, :]
    b = normalize_rows(pruned)
    edge_scores = b * (compute_influence(b, w, row_nodes) + w)[row_nodes][:, None]
    scored = edge_scores.nonzero(as_tuple=True)  # row-major, as the flattened matrix
    kept = smallest_prefix(edge_scores[scored], edge_threshold)
    edge_mask = torch.zeros_like(pruned, dtype=torch.bool)  # [R, N]
    edge_mask[scored[0][kept], scored[1][kept]] = True
    del pruned, b, edge_scores

    n_feat = graph.n_features  # rows[:n_feat] are the features
    while True:
        edge_mask &= node_mask[row_nodes][:, None] & node_mask[None, :]
        new_mask = node_mask.clone()
        new_mask[:n_inner] &= edge_mask[:, :n_inner].any(0)  # needs an outgoing edge
        new_mask[:n_feat] &= edge_mask[:n_feat].any(1)  # features need an incoming edge
        if torch.equal(new_mask, node_mask):
            break
        node_mask = new_mask

    order = torch.argsort(influence, descending=True, stable=True)
    cumulative = torch.zeros_like(influence)
    total = influence.sum().clamp(min=1e-10)
    cumulative[order] = influence[order].cumsum(0) / total
    if not graph.is_rows_form:  # a dense graph gets a dense mask
        dense = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=torch.bool)
        dense[row_nodes] = edge_mask
        return PruneResult(node_mask, dense, influence, cumulative)
    return PruneResult(node_mask, edge_mask, influence, cumulative, row_nodes)


def graph_scores(graph: GraphData) -> GraphScores:
    """Replacement and completeness scores (step 6 of the module docstring)."""
    b = normalize_rows(graph.adjacency_rows().float())  # [R, N]
    w, row_nodes = graph.logit_weights(), graph.row_nodes()
    influence = compute_influence(b, w, row_nodes)
    errors = slice(graph.error_offset, graph.embedding_offset)
    embeddings = slice(graph.embedding_offset, graph.logit_offset)
    emb_infl, err_infl = influence[embeddings].sum(), influence[errors].sum()
    replacement = float(emb_infl / (emb_infl + err_infl).clamp(min=1e-10))

    has_inputs = b.sum(dim=1) > 0
    non_error = 1.0 - b[:, errors].sum(dim=1)
    weight = (influence + w)[row_nodes] * has_inputs
    completeness = float((non_error * weight).sum() / weight.sum().clamp(min=1e-10))
    return GraphScores(replacement=replacement, completeness=completeness)
