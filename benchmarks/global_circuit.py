"""The global circuit of the two-hop template's 150 city prompts on the shipped default.

Steps:

1. Load the default model and CLT with their labels (``cli.demo.load_default``).
2. ``attribute_many``: one graph per city prompt of "The capital of the state containing
   {city} is", traced towards its own answer (``targets=[first token of the capital]``),
   timed (``--out DIR`` keeps the graphs; a rerun resumes).
3. ``template_roles`` + ``aggregate_graphs``: one ``GlobalCircuit`` aligned by role, timed.
4. Print its size, how many features appear in 100 / 90 / 50 / 10 % of the prompts, its
   replacement and completeness scores and its most influential features with their share.

Run: ``python benchmarks/global_circuit.py [--out DIR] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_lens_clt.circuits import aggregate_graphs, attribute_many, template_roles
from sae_lens_clt.circuits.two_hop import PROMPT, family
from sae_lens_clt.cli.demo import load_default
from sae_lens_clt.default_model.corpus import STATES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="keep the graphs in this folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, clt, labels, _, _ = load_default(None)
    prompts, _, answers = family(model)  # the 150 city prompts, in STATES order
    cities = [city for st in STATES for city in st.cities]
    t0 = time.perf_counter()
    graphs = attribute_many(model, clt, prompts, targets=[[a] for a in answers], out_dir=args.out)
    t1 = time.perf_counter()
    roles = [template_roles(model, PROMPT, {"city": city}) for city in cities]
    circuit = aggregate_graphs(graphs, roles)
    t2 = time.perf_counter()
    print(f"traced {len(prompts)} prompts in {t1 - t0:.1f}s; aggregated in {t2 - t1:.2f}s")
    print(f"{circuit}; roles {circuit.role_names}")
    share = circuit.node_share[: circuit.n_features]
    for th in (1.0, 0.9, 0.5, 0.1):
        print(f"features in >= {th:.0%} of prompts: {int((share >= th).sum())}")
    scores = circuit.scores()
    print(f"replacement {scores.replacement:.3f}, completeness {scores.completeness:.3f}")
    influence = circuit.prune().node_influence[: circuit.n_features]
    print("most influential features (share of prompts, influence):")
    for i in influence.argsort(descending=True)[:8].tolist():
        layer, pos, feat = circuit.active_features[i].tolist()
        print(
            f"  L{layer} F{feat} @{circuit.role_names[pos]!r}: share {float(share[i]):.2f}, "
            f"influence {float(influence[i]):.3f} [{labels.get((layer, feat), '')}]"
        )


if __name__ == "__main__":
    main()
