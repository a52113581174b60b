"""Attribution graphs over a CLT local replacement model (DESIGN.md §3).

``attribute`` builds an :class:`AttributionGraph` of exact direct effects; the graph prunes
itself, scores itself, exports circuit-tracer / Neuronpedia JSON and draws itself;
``intervene`` checks a circuit by ablating or steering features.
"""

from sae_lens_clt.attribution.attribute import attribute, to_tokens
from sae_lens_clt.attribution.graph import AttributionGraph
from sae_lens_clt.attribution.intervene import InterventionResult, intervene
from sae_lens_clt.attribution.prune import GraphScores, PruneResult

__all__ = [
    "AttributionGraph",
    "GraphScores",
    "InterventionResult",
    "PruneResult",
    "attribute",
    "intervene",
    "to_tokens",
]
