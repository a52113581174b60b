"""Influence, pruning and graph scores (docs/design.md §3, "Influence, pruning, scores").

Algorithm (graph of ``N`` nodes, adjacency ``A [N, N]``, rows = targets):

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
    edge_mask: torch.Tensor  # [N, N] bool, edges kept (rows = targets)
    node_influence: torch.Tensor  # [N] influence on the logits (unpruned graph)
    cumulative_scores: torch.Tensor  # [N] share of total influence up to this node's rank

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
    return compute_influence(normalize_rows(graph.adjacency.float()), graph.logit_weights())


def prune_graph(
    graph: GraphData, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """Steps 1-5 of the module docstring."""
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    adjacency = graph.adjacency.float()
    w = graph.logit_weights()
    influence = compute_influence(normalize_rows(adjacency), w)
    n_inner = graph.embedding_offset  # features and errors

    node_mask = torch.zeros(graph.n_nodes, dtype=torch.bool)
    node_mask[smallest_prefix(influence[:n_inner], node_threshold)] = True
    node_mask[n_inner:] = True

    pruned = adjacency * node_mask[:, None] * node_mask[None, :]
    b = normalize_rows(pruned)
    edge_scores = b * (compute_influence(b, w) + w)[:, None]
    edge_mask = torch.zeros_like(pruned, dtype=torch.bool)
    edge_mask.view(-1)[smallest_prefix(edge_scores.flatten(), edge_threshold)] = True

    n_feat = graph.n_features
    while True:
        edge_mask &= node_mask[:, None] & node_mask[None, :]
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
    return PruneResult(node_mask, edge_mask, influence, cumulative)


def graph_scores(graph: GraphData) -> GraphScores:
    """Replacement and completeness scores (step 6 of the module docstring)."""
    b = normalize_rows(graph.adjacency.float())
    w = graph.logit_weights()
    influence = compute_influence(b, w)
    errors = slice(graph.error_offset, graph.embedding_offset)
    embeddings = slice(graph.embedding_offset, graph.logit_offset)
    emb_infl, err_infl = influence[embeddings].sum(), influence[errors].sum()
    replacement = float(emb_infl / (emb_infl + err_infl).clamp(min=1e-10))

    has_inputs = b.sum(dim=1) > 0
    non_error = 1.0 - b[:, errors].sum(dim=1)
    weight = (influence + w) * has_inputs
    completeness = float((non_error * weight).sum() / weight.sum().clamp(min=1e-10))
    return GraphScores(replacement=replacement, completeness=completeness)
