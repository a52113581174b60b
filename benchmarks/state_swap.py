"""Across all 50 states: is the state's supernode found, and does swapping it for another
state's give that state's capital?

Steps (the shipped default model and CLT, offline):

1. Supernodes of the two-hop template "The capital of the state containing {city} is" at its
   last position (``sae_lens_clt.circuits.two_hop.family_supernodes``, the demo's rule: features selective
   for a state's cities, split by the token they promote into the state ("Texas"), the
   capital to say ("say Austin") and the rest). ``--find-from all`` uses all three cities
   of every state (150 prompts, as the demo does); ``held-in`` leaves each state's
   held-out city out, so the test prompt below was never used to find them.
2. For each state S, the prompt of its held-out city (never written into the template in
   training: the model must compose city -> state -> capital) and the next state S' in
   alphabetical order (wrapping): replace S's supernodes by S''s at ``--scales`` times
   their mean activation on S''s prompts (``swap_interventions``), in the replacement
   model with frozen attention, and check whether the top-1 token is the first token of
   S''s capital. Variants: the state supernode only, the say-capital one only, both, the
   group without its state supernode, and every supernode of the state's group; and a
   control that only ablates S's whole group (no insertion).
3. The chain: on each held-out prompt where S's state and say-capital supernodes are both
   active, the share of the city embedding's effect on S's capital through both
   (``effect_shares``, the graph traced towards that capital).
4. Print, per variant and scale, the fraction of the 50 states that succeed and the mean
   number of features set; and how many states have a state supernode, and how many of
   them are active on the held-out prompt.

Run: ``python benchmarks/state_swap.py [--find-from all|held-in] [--scales 1,2,3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_lens_clt.attribution.attribute import attribute  # noqa: E402
from sae_lens_clt.attribution.intervene import intervene  # noqa: E402
from sae_lens_clt.circuits.supernode_graph import effect_shares, member_nodes  # noqa: E402
from sae_lens_clt.circuits.supernodes import first_token, swap_interventions  # noqa: E402
from sae_lens_clt.circuits.two_hop import PROMPT, family_supernodes  # noqa: E402
from sae_lens_clt.cli.demo import load_default  # noqa: E402
from sae_lens_clt.default_model.corpus import STATES, held_out_cities  # noqa: E402

VARIANTS = {  # which of a state's supernodes (by role; None = the rest) are swapped
    "state only": {"state"},
    "say capital only": {"capital"},
    "state + say capital": {"state", "capital"},
    "group minus state": {"capital", None},
    "whole group": {"state", "capital", None},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--find-from", choices=("all", "held-in"), default="all")
    parser.add_argument("--scales", default="1,2,3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    t0 = time.perf_counter()
    model, clt, labels, clt_name, _ = load_default(None)
    held = held_out_cities()

    def keep(state: str, city: str) -> bool:
        return args.find_from == "all" or city != held[state]

    min_in = 2 / 3 if args.find_from == "all" else 1.0  # 2 of 3 cities, or both of 2
    supernodes = family_supernodes(model, clt, labels, keep=keep, min_in=min_in)
    n_prompts = sum(keep(st.name, c) for st in STATES for c in st.cities)
    print(
        f"CLT {clt_name}; supernodes from {n_prompts} prompts ({args.find_from}); "
        f"{len(supernodes)} supernodes"
    )

    n_state, n_state_active, clean_ok = 0, 0, 0
    results = {(v, s): [] for v in VARIANTS for s in scales}
    n_feats = {(v, s): [] for v in VARIANTS for s in scales}
    control, chains = [], []
    for i, st in enumerate(STATES):
        dst = STATES[(i + 1) % len(STATES)]
        prompt = PROMPT.format(city=held[st.name])
        answer = first_token(model, " " + dst.capital)
        clean = intervene(model, clt, prompt, [])
        clean_ok += int(clean.clean_logits[-1].argmax()) == first_token(model, " " + st.capital)
        mine = [sn for sn in supernodes if sn.group == st.name]
        state_sn = [sn for sn in mine if sn.role == "state"]
        if state_sn:
            n_state += 1
            last = clean.clean_activations[:, -1]  # [L, F]
            n_state_active += any(float(last[f]) > 0 for f in state_sn[0].features)
        theirs = [sn for sn in supernodes if sn.group == dst.name]
        for variant, roles in VARIANTS.items():
            remove = [sn for sn in mine if sn.role in roles]
            insert = [sn for sn in theirs if sn.role in roles]
            for scale in scales:
                todo = swap_interventions(remove, insert, position=-1, scale=scale)
                ok = False
                if remove and insert:
                    top = int(intervene(model, clt, prompt, todo).logits[-1].argmax())
                    ok = top == answer
                results[(variant, scale)].append(ok)
                n_feats[(variant, scale)].append(len(todo))
        todo = swap_interventions(mine, [], position=-1)
        control.append(int(intervene(model, clt, prompt, todo).logits[-1].argmax()) == answer)
        capital_sn = [sn for sn in mine if sn.role == "capital"]
        if state_sn and capital_sn:  # the chain city -> state -> say capital -> capital
            own = first_token(model, " " + st.capital)
            graph = attribute(model, clt, prompt, targets=[own])
            sets = {"s": member_nodes(graph, state_sn[0]), "c": member_nodes(graph, capital_sn[0])}
            if all(sets.values()):
                src = graph.embedding_offset + graph.n_pos - 2  # the city's token
                chains.append(effect_shares(graph, src, graph.logit_offset, sets).share())

    n = len(STATES)
    print(f"held-out prompts answered correctly (clean): {clean_ok}/{n}")
    print(f"states with a state supernode: {n_state}/{n}; active on the held-out prompt: "
          f"{n_state_active}/{n_state}")  # fmt: skip
    print("\n| variant | scale | success | fraction | mean features set |")
    print("|---|---:|---:|---:|---:|")
    for (variant, scale), oks in results.items():
        feats = n_feats[(variant, scale)]
        print(
            f"| {variant} | {scale:g}x | {sum(oks)}/{n} | {sum(oks) / n:.2f} | "
            f"{sum(feats) / len(feats):.1f} |"
        )
    print(f"| control: ablate the whole group, insert nothing | — | {sum(control)}/{n} | "
          f"{sum(control) / n:.2f} | — |")  # fmt: skip
    if chains:
        c = torch.tensor(chains)
        print(
            f"\nchain city -> state supernode -> say-capital supernode -> capital, on the "
            f"{len(chains)} held-out prompts where both are active: share of the city's effect "
            f"median {float(c.median()):.1%}, max {float(c.max()):.1%}, "
            f">= 10% in {int((c >= 0.1).sum())}"
        )
    print(f"\n{time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
