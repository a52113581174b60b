"""Attribution graphs over a CLT local replacement model (docs/design.md §3).

``attribute`` builds an :class:`AttributionGraph` of exact direct effects; the graph prunes
itself, scores itself, exports circuit-tracer / Neuronpedia JSON and draws itself;
``intervene`` checks a circuit by ablating or steering features; ``faithfulness`` compares
the graph's predicted feature effects with interventions on the real model.

Example::

    from sae_lens_clt import CrossLayerTranscoder, load_model
    from sae_lens_clt.attribution import attribute, intervene

    model = load_model()
    clt = CrossLayerTranscoder.from_pretrained(name_or_folder)
    graph = attribute(model, clt, "The capital of the state containing Dallas is")
    print(graph.scores())                      # replacement, completeness
    graph.to_json("graphs/dallas.json")        # circuit-tracer / Neuronpedia viewer
    graph.plot("dallas.png")
    layer, pos, feature = graph.active_features[0].tolist()
    result = intervene(model, clt, "The capital of the state containing Dallas is",
                       [(layer, pos, feature, 0.0)])   # ablate one feature
    result.logits[-1].softmax(-1)              # new next-token distribution
    print(graph.faithfulness(model, clt))       # predicted vs real effects of top features
"""

from sae_lens_clt.attribution.attribute import attribute, to_tokens
from sae_lens_clt.attribution.faithfulness import FaithfulnessReport, faithfulness
from sae_lens_clt.attribution.generate import GenerationResult, generate
from sae_lens_clt.attribution.graph import AttributionGraph
from sae_lens_clt.attribution.heads import HeadLoadings, edge_head_loadings
from sae_lens_clt.attribution.intervene import InterventionResult, intervene
from sae_lens_clt.attribution.prune import GraphScores, PruneResult
from sae_lens_clt.attribution.targets import Direction, FeatureTarget, LogitDiff, Token

__all__ = [
    "AttributionGraph",
    "Direction",
    "FeatureTarget",
    "HeadLoadings",
    "LogitDiff",
    "Token",
    "edge_head_loadings",
    "FaithfulnessReport",
    "GenerationResult",
    "GraphScores",
    "InterventionResult",
    "PruneResult",
    "attribute",
    "faithfulness",
    "generate",
    "intervene",
    "to_tokens",
]
