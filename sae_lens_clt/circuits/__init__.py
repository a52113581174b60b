"""Beyond one prompt: circuits over prompt sets, global weights and supernodes.

- :func:`attribute_many` traces a set of prompts (resumable to a folder) and
  :func:`aggregate_graphs` aligns their graphs by feature and role position into one
  :class:`GlobalCircuit` (same prune / scores / JSON / figure as a single graph);
- :class:`GlobalWeights`: prompt-independent feature-to-feature weights of a CLT and their
  data-weighted version, with ``top_inputs`` / ``top_outputs`` queries;
- :func:`find_supernodes`: features that play one role across a prompt family, named,
  validated by ablation.
"""
