"""The attribution graph a user holds: the graph data plus its analyses.

:class:`AttributionGraph` is :class:`~sae_lens_clt.attribution.nodes.GraphData` (node
table, adjacency, save / load) with methods that prune it and score it
(:mod:`.prune`), export the circuit-tracer / Neuronpedia JSON (:mod:`.export`) and draw it
(:mod:`.plot`). Those modules read ``GraphData`` only, so nothing imports back up here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_clt.attribution.export import write_graph_json
from sae_lens_clt.attribution.faithfulness import FaithfulnessReport, faithfulness
from sae_lens_clt.attribution.nodes import GraphData
from sae_lens_clt.attribution.plot import plot_graph
from sae_lens_clt.attribution.prune import GraphScores, PruneResult, graph_scores, prune_graph

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from sae_lens_clt.registry import Transcoder


@dataclass(repr=False)  # keeps GraphData.__repr__
class AttributionGraph(GraphData):
    """Direct-effect graph of one prompt over a CLT replacement model (see ``GraphData``)."""

    # a heads.HeadLoadings when built with attribute(..., head_loadings=True); not saved
    # with the graph (recompute with heads.edge_head_loadings after load)
    head_loadings: Any = field(default=None, repr=False, compare=False)

    def edge_heads(self, target: Any, source: Any) -> Any:
        """``[n_layers, n_heads]``: the edge ``target <- source`` split by the attention head
        that carries it into the target's position (see ``heads.py``)."""
        if self.head_loadings is None:
            raise ValueError(
                "this graph has no head loadings: build it with attribute(..., "
                "head_loadings=True) or set graph.head_loadings = edge_head_loadings(...)"
            )
        return self.head_loadings.edge_heads(target, source)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """Keep the nodes and edges that carry most influence on the logits (see ``prune.py``)."""
        return prune_graph(self, node_threshold, edge_threshold)

    def scores(self) -> GraphScores:
        """Replacement and completeness scores (docs/design.md §3)."""
        return graph_scores(self)

    def to_json(self, path: str | Path, **kwargs: Any) -> dict[str, Any]:
        """Write the circuit-tracer / Neuronpedia graph JSON (see ``export.py``)."""
        return write_graph_json(self, path, **kwargs)

    def plot(self, path: str | Path | None = None, **kwargs: Any) -> Any:
        """Draw the pruned graph with matplotlib (see ``plot.py``); returns the figure."""
        return plot_graph(self, path, **kwargs)

    def faithfulness(
        self, model: HookedTransformer, clt: Transcoder, **kwargs: Any
    ) -> FaithfulnessReport:
        """The graph's predicted effects of its top features against interventions on the
        replacement and the real model (see ``faithfulness.py``; ``top_k``, ``value``,
        ``scale``, ``targets``, ``labels``)."""
        return faithfulness(self, model, clt, **kwargs)
