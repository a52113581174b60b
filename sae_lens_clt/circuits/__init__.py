"""Beyond one prompt: circuits over prompt sets, global weights and supernodes.

- :func:`attribute_many` traces a set of prompts (resumable to a folder) and
  :func:`aggregate_graphs` aligns their graphs by feature and role position
  (:func:`template_roles`) into one :class:`GlobalCircuit`, with the same prune / scores /
  JSON / figure as a single graph;
- :class:`GlobalWeights`: prompt-independent feature-to-feature weights of a CLT (virtual
  weights through the residual stream) and their data-weighted version, with
  ``top_inputs`` / ``top_outputs`` / ``top_table`` queries in bounded memory;
- :func:`find_supernodes` (over :func:`role_activations` of a prompt family): features that
  play one role across the family, named; :func:`validate_supernode`,
  :func:`effect_shares`, :func:`supernode_json` and :func:`plot_supernode_graph` read one
  graph through them.

Example (the default model's two-hop template)::

    from sae_lens_clt.circuits import attribute_many, aggregate_graphs, template_roles

    template = "The capital of the state containing {city} is"
    prompts = [template.format(city=c) for c in ("Dallas", "Houston", "Miami")]
    graphs = attribute_many(model, clt, prompts, targets=[[" Austin"], [" Austin"],
                            [" Tallahassee"]], out_dir="graphs/")
    roles = [template_roles(model, template, {"city": c}) for c in ("Dallas", "Houston", "Miami")]
    circuit = aggregate_graphs(graphs, roles)   # node_share: in how many prompts a node is
"""

from sae_lens_clt.circuits.aggregate import GlobalCircuit, aggregate_graphs, template_roles
from sae_lens_clt.circuits.global_weights import GlobalWeights
from sae_lens_clt.circuits.many import attribute_many
from sae_lens_clt.circuits.supernode_graph import (
    EffectShares,
    SupernodeCheck,
    effect_shares,
    member_nodes,
    plot_supernode_graph,
    supernode_json,
    validate_supernode,
)
from sae_lens_clt.circuits.supernodes import (
    Supernode,
    find_supernodes,
    role_activations,
    swap_interventions,
)

__all__ = [
    "EffectShares",
    "GlobalCircuit",
    "GlobalWeights",
    "Supernode",
    "SupernodeCheck",
    "aggregate_graphs",
    "attribute_many",
    "effect_shares",
    "find_supernodes",
    "member_nodes",
    "plot_supernode_graph",
    "role_activations",
    "supernode_json",
    "swap_interventions",
    "template_roles",
    "validate_supernode",
]
