"""``sae-lens-clt demo``: trace two-hop recall on the embedded default, then check it.

Algorithm (:func:`run_demo`, one named step each):

1. :func:`load_default`: ``DEFAULT_MODEL`` and ``DEFAULT_CLT`` by name (offline) and the
   CLT's cached feature labels.
2. :func:`trace`: attribute "The capital of the state containing Dallas is", prune, write
   the graph file and the figure.
3. :func:`find_paths`: the strongest paths from the " Dallas" embedding node to the
   " Austin" logit node of the pruned graph (:mod:`sae_lens_clt.attribution.paths`).
4. :func:`ablate_paths`: set the features on those paths to 0 in the replacement model
   (frozen attention) and watch P(" Austin") fall.
5. ``circuits.two_hop.family_supernodes``: supernodes of the 150 city prompts of the template at its
   last position (:mod:`sae_lens_clt.circuits.supernodes`): per state the features
   selective for its three cities, split into the state ("Texas"), the capital to say
   ("say Austin") and the rest; "say a capital" for features shared by every prompt.
6. :func:`state_route`: how much of the Dallas → Austin effect passes through each of
   Texas' supernodes and through the chain Texas → say Austin; whether the model routes
   through a state representation here, with the evidence (which state-selective features
   are active, what they promote).
7. :func:`check_supernodes`: ablate each supernode; the graph's prediction against the
   replacement model and the real model; :func:`ablate_group`: all of Texas' at once.
8. :func:`swap_state`: replace Texas' supernodes by California's (found the same way) at
   1×, 2×, 3× their mean activation and read the top prediction; for comparison,
   :func:`steer_city` sets every feature that differs on " San Jose".
9. The supernode-level figure, the graph JSON with the supernodes (``qParams.supernodes``)
   and a faithfulness report of the graph against the real model.
10. :func:`feature_files`: dashboards of the graph's features (top contexts, density,
   promoted / suppressed tokens) over a sample of the default corpus, in
   ``features/<scan>/`` next to the graph JSON, so that ``sae-lens-clt serve`` shows them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# = default_model.corpus.TWO_HOP_PROMPT (tests/test_demo.py checks), written out so that
# the CLI starts without importing the model code
PROMPT = "The capital of the state containing {city} is"
SOURCE_CITY, SOURCE_ANSWER, SOURCE_STATE = "Dallas", "Austin", "Texas"
TARGET_CITY, TARGET_ANSWER, TARGET_STATE = "San Jose", "Sacramento", "California"
SWAP_SCALES = (1.0, 2.0, 3.0)
FAITHFULNESS_TOP_K = 10
LOOSE_Z = 2.0  # promoted-token z-score of the looser state group (the supernodes use 3)


@dataclass
class DemoResult:
    top_predictions: list[tuple[str, float]]
    replacement_score: float
    completeness_score: float
    paths: list[tuple[float, list[str]]]
    ablation: tuple[float, float]  # P(Austin) before, after
    steering: tuple[str, float, str, float]  # top-1 before/after with probabilities
    steering_p_target: tuple[float, float]  # P(Sacramento) before, after
    n_steered: int = 0  # features set by the full-activation steering
    supernodes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # Texas' + shared
    shares: dict[str, float] = field(default_factory=dict)  # of the Dallas -> Austin effect
    routes_through_state: bool = False
    evidence: list[str] = field(default_factory=list)
    checks: list[Any] = field(default_factory=list)  # SupernodeCheck per supernode
    group_ablation: tuple[int, float, float] = (0, 0.0, 0.0)  # features, P(Austin) before/after
    swap: list[tuple[float, int, str, float, float]] = field(default_factory=list)
    # (scale, features set, top-1, its probability, P(Sacramento)) per scale
    faithfulness: Any = None
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="trace 'The capital of the state containing Dallas is' and validate the circuit",
        description="Offline demo on the embedded default model and CLT: attribution graph "
        "(graph file, JSON, figure), strongest Dallas -> Austin paths, ablation and steering.",
    )
    p.add_argument("--out", default="demo_out", help="folder for the graph files (demo_out)")
    p.add_argument(
        "--clt", default=None, help="another CLT of the default model (name, Hub id or folder)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_lens_clt.cli.errors import check_out_dir

    check_out_dir(args.out)
    run_demo(args.out, clt_name=args.clt)
    return 0


def single_token(model: Any, word: str) -> int:
    """The id of ``" " + word``, which must be one token."""
    ids = model.to_tokens(" " + word, prepend_bos=False)[0]
    if ids.numel() != 1:
        raise ValueError(f"{word!r} is not a single token for this model: {ids.tolist()}")
    return int(ids[0])


def load_default(clt_name: str | None) -> tuple[Any, Any, dict, str, str]:
    """Step 1: ``(model, clt, labels, clt name, scan name)``."""
    from sae_lens_clt.default_model import DEFAULT_MODEL, load_model
    from sae_lens_clt.labels import load_with_labels
    from sae_lens_clt.loading.releases import DEFAULT_CLT

    model = load_model(DEFAULT_MODEL)
    clt_name = clt_name or DEFAULT_CLT  # any CLT of the default model: name, Hub id, folder
    clt, labels, scan = load_with_labels(clt_name)
    return model, clt, labels, clt_name, scan


def trace(
    model: Any, clt: Any, prompt: str, labels: dict, out: Path, scan: str | None = None
) -> tuple[Any, Any, Any, dict]:
    """Step 2: ``(graph, pruned, scores, files written)`` (the JSON comes in step 9, with
    the supernodes)."""
    from sae_lens_clt.attribution.attribute import attribute

    graph = attribute(model, clt, prompt)
    pruned = graph.prune()
    scores = graph.scores()
    files = {"graph": str(graph.save(out / "graph")), "figure": str(out / "graph.png")}
    graph.plot(out / "graph.png", labels=labels, pruned=pruned, title=prompt)
    return graph, pruned, scores, files


def find_paths(
    graph: Any, pruned: Any, src: int, dst: int, tok_strs: list[str], labels: dict
) -> tuple[list[tuple[float, list[int]]], list[tuple[float, list[str]]], float]:
    """Step 3: ``(paths as node ids, paths as names, total effect of all paths)``."""
    from sae_lens_clt.attribution.paths import (
        linear_effects,
        node_name,
        strongest_paths,
        total_effect,
    )

    effects = linear_effects(graph)
    paths = strongest_paths(effects, pruned.node_mask, src, dst)
    named = [(s, [node_name(graph, n, tok_strs, labels) for n in p]) for s, p in paths]
    return paths, named, total_effect(effects, src, dst)


def ablate_paths(model: Any, clt: Any, prompt: str, graph: Any, paths: list, answer_id: int):
    """Step 4: ``(intervention result, P(answer) before, after, number ablated)``."""
    from sae_lens_clt.attribution.intervene import intervene

    path_feats = sorted(
        {
            tuple(graph.active_features[n].tolist())
            for _, p in paths
            for n in p
            if n < graph.n_features
        }
    )
    ablate = [(layer, pos, feat, 0.0) for layer, pos, feat in path_feats]
    res = intervene(model, clt, prompt, ablate)
    p_before = res.clean_logits[-1].softmax(-1)[answer_id].item()
    p_after = res.logits[-1].softmax(-1)[answer_id].item()
    return res, p_before, p_after, len(ablate)


def steer_city(model: Any, clt: Any, prompt: str, clean: Any, city_pos: int):
    """Step 5: set the features that differ on ``TARGET_CITY`` from ``city_pos`` on:
    ``(probabilities before [V], after [V], number of features set)``."""
    from sae_lens_clt.attribution.intervene import intervene

    other = intervene(model, clt, PROMPT.format(city=TARGET_CITY), [])
    ours, theirs = clean.clean_activations, other.clean_activations  # [L, T, F]
    if ours.shape != theirs.shape:
        raise RuntimeError(f"{TARGET_CITY!r} and {SOURCE_CITY!r} tokenize to different lengths")
    swap = []
    for layer in range(clt.cfg.n_layers):
        for pos in range(city_pos, ours.shape[1]):  # the city and every position after it
            diff = (ours[layer, pos] != theirs[layer, pos]).nonzero()[:, 0].tolist()
            swap += [(layer, pos, f, float(theirs[layer, pos, f])) for f in diff]
    steered = intervene(model, clt, prompt, swap)
    return clean.clean_logits[-1].softmax(-1), steered.logits[-1].softmax(-1), len(swap)


def state_route(
    model: Any, clt: Any, graph: Any, supernodes: list[Any], src: int, dst: int, state: str
) -> tuple[dict[str, list[int]], Any, bool, list[str]]:
    """Step 6: ``(member nodes per supernode, effect shares, routes through the state?,
    evidence lines)``. The model routes through the state when its state supernode is
    active on the prompt and the chain state → say-capital carries at least 10 % of the
    source → target effect (or the chain through a looser state group does: the group's
    active features that promote the state at z >= ``LOOSE_Z``)."""
    from sae_lens_clt.circuits.supernode_graph import effect_shares, member_nodes
    from sae_lens_clt.circuits.supernodes import first_token, promoted_z_scores

    mine = [sn for sn in supernodes if sn.group == state or (sn.kind, sn.group) == ("shared", None)]
    mine = [sn for sn in mine if sn.group == state or sn.role is not None]  # + "say a <role>"
    members = {sn.name: member_nodes(graph, sn) for sn in mine}
    members = {name: nodes for name, nodes in members.items() if nodes}
    state_sn = next((sn for sn in mine if sn.role == "state"), None)
    capital_sn = next((sn for sn in mine if sn.role == "capital"), None)
    chain = {
        sn.name: members[sn.name]
        for sn in (state_sn, capital_sn)
        if sn is not None and sn.name in members
    }
    shares = effect_shares(graph, src, dst, members)
    chain_share = effect_shares(graph, src, dst, chain).share() if len(chain) == 2 else 0.0
    routes = len(chain) == 2 and chain_share >= 0.10
    evidence = []
    if state_sn is None:
        evidence.append(f"no feature selective for {state}'s cities promotes ' {state}'")
    else:
        active = state_sn.name in members
        evidence.append(
            f"the {state} supernode ({_n(len(state_sn.features), 'feature')} selective for "
            f"{state}'s cities, promoting ' {state}' most) is "
            + ("active" if active else "not active")
            + " on this prompt"
        )
    tok_state = first_token(model, " " + state)
    answer = capital_sn.token if capital_sn is not None else None
    if answer is not None:
        tok_answer = first_token(model, answer)
        promotes = [
            f"L{layer} F{feat} ({state} {z[tok_state]:+.1f}, {answer.strip()} {z[tok_answer]:+.1f})"
            for sn in mine
            if sn.group == state
            for i in members.get(sn.name, [])
            for layer, _, feat in [graph.active_features[i].tolist()]
            for z in [promoted_z_scores(model, clt, [(layer, feat)])[0].tolist()]
        ]
        evidence.append(
            f"what the {state}-selective features active here promote (z-scores of ' {state}', "
            f"{answer!r}): " + ", ".join(promotes)
            if promotes
            else f"no {state}-selective feature is active here"
        )
    if len(chain) == 2:
        evidence.append(f"paths through {' then '.join(chain)}: {chain_share:.1%} of the effect")
    else:
        evidence.append("so no path runs state -> say capital: the chain carries 0% of the effect")
    if capital_sn is not None and capital_sn.name in members:  # a looser state group
        capital_nodes = set(members[capital_sn.name])
        loose = [
            i
            for sn in mine
            if sn.group == state
            for i in members.get(sn.name, [])
            if i not in capital_nodes and _z(model, clt, graph, i, tok_state) >= LOOSE_Z
        ]
        if loose:
            sets = {"state": loose, "capital": sorted(capital_nodes)}
            loose_share = effect_shares(graph, src, dst, sets).share()
            routes = routes or loose_share >= 0.10
            evidence.append(
                f"with a looser state group ({_n(len(loose), 'active feature')} selective for "
                f"{state}'s cities promoting ' {state}' at z >= {LOOSE_Z:g}), paths through it "
                f"then {capital_sn.name!r} carry {loose_share:.1%} of the effect"
            )
    return members, shares, routes, evidence


def _z(model: Any, clt: Any, graph: Any, node: int, token: int) -> float:
    from sae_lens_clt.circuits.supernodes import promoted_z_scores

    layer, _, feat = (int(v) for v in graph.active_features[node])
    return float(promoted_z_scores(model, clt, [(layer, feat)])[0, token])


def state_cities(
    model: Any, clt: Any, supernodes: list[Any], state: str
) -> list[tuple[str, str, Any, float | None]]:
    """Step 6, over the family: for each city of ``state``, ``(city, prompt, graph traced
    towards the capital, share of the city → capital effect through the state supernode
    then the say-capital one, or None when the state supernode is not active there)``."""
    from sae_lens_clt.attribution.attribute import attribute
    from sae_lens_clt.circuits.supernode_graph import effect_shares, member_nodes
    from sae_lens_clt.circuits.supernodes import first_token
    from sae_lens_clt.default_model.corpus import STATES

    st = next(s for s in STATES if s.name == state)
    state_sn = next((sn for sn in supernodes if sn.group == state and sn.role == "state"), None)
    capital_sn = next((sn for sn in supernodes if sn.group == state and sn.role == "capital"), None)
    out = []
    for city in st.cities:
        prompt = PROMPT.format(city=city)
        graph = attribute(model, clt, prompt, targets=[first_token(model, " " + st.capital)])
        share = None
        if state_sn is not None and capital_sn is not None:
            sets = {
                "state": member_nodes(graph, state_sn),
                "capital": member_nodes(graph, capital_sn),
            }
            if all(sets.values()):
                src = graph.embedding_offset + graph.n_pos - 2  # the city's (last) token
                share = effect_shares(graph, src, graph.logit_offset, sets).share()
        out.append((city, prompt, graph, share))
    return out


def first_layer_share(graph: Any, src: int, dst: int) -> float:
    """Share of the ``src`` → ``dst`` effect through layer-0 features at the last position
    (what the first attention layer reads from the city into the answer position)."""
    from sae_lens_clt.circuits.supernode_graph import effect_shares

    last = graph.n_pos - 1
    nodes = [
        i for i, (layer, pos, _) in enumerate(graph.active_features.tolist())
        if layer == 0 and pos == last
    ]  # fmt: skip
    return effect_shares(graph, src, dst, {"L0": nodes}).share("L0")


def check_supernodes(
    model: Any, clt: Any, prompt: str, graph: Any, supernodes: list[Any], names: list[str]
) -> list[Any]:
    """Step 7: validate each named supernode by ablation (graph vs models)."""
    from sae_lens_clt.circuits.supernode_graph import validate_supernode

    by_name = {sn.name: sn for sn in supernodes}
    return [validate_supernode(model, clt, prompt, graph, by_name[n]) for n in names]


def check_elsewhere(
    model: Any, clt: Any, supernodes: list[Any], cities: list[tuple[str, str, Any, Any]]
) -> list[Any]:
    """Step 7 for supernodes not active on the demo prompt: validate each on the first of
    the state's other cities where it is (its check is named "<name> on '<city>'")."""
    from sae_lens_clt.circuits.supernode_graph import member_nodes, validate_supernode

    checks = []
    for sn in supernodes:
        for city, prompt, graph, _ in cities:
            if member_nodes(graph, sn):
                check = validate_supernode(model, clt, prompt, graph, sn)
                check.name = f"{sn.name} on {city!r}"
                checks.append(check)
                break
    return checks


def ablate_group(
    model: Any, clt: Any, prompt: str, supernodes: list[Any], group: str, answer: int
) -> tuple[int, float, float]:
    """Step 7: every supernode of ``group`` ablated at the last position:
    ``(features set, P(answer) before, after)``."""
    from sae_lens_clt.attribution.intervene import intervene
    from sae_lens_clt.circuits.supernodes import swap_interventions

    todo = swap_interventions([sn for sn in supernodes if sn.group == group], [], position=-1)
    res = intervene(model, clt, prompt, todo)
    before = float(res.clean_logits[-1].softmax(-1)[answer])
    return len(todo), before, float(res.logits[-1].softmax(-1)[answer])


def swap_state(
    model: Any, clt: Any, prompt: str, supernodes: list[Any], src: str, dst: str, dst_answer: int
) -> list[tuple[float, int, str, float, float]]:
    """Step 8: replace ``src``'s supernodes by ``dst``'s at each scale of ``SWAP_SCALES``:
    ``(scale, features set, top-1, its probability, P(dst_answer))`` per scale."""
    from sae_lens_clt.attribution.intervene import intervene
    from sae_lens_clt.circuits.supernodes import swap_interventions

    remove = [sn for sn in supernodes if sn.group == src]
    insert = [sn for sn in supernodes if sn.group == dst]
    out = []
    for scale in SWAP_SCALES:
        todo = swap_interventions(remove, insert, position=-1, scale=scale)
        probs = intervene(model, clt, prompt, todo).logits[-1].softmax(-1)
        top = int(probs.argmax())
        out.append(
            (scale, len(todo), model.tokenizer.decode([top]), float(probs[top]),
             float(probs[dst_answer]))
        )  # fmt: skip
    return out


def supernode_files(
    model: Any, clt: Any, graph: Any, pruned: Any, supernodes: list[Any], mine: list[Any],
    members: dict[str, list[int]], src: int, dst: int, labels: dict, scan: str, out: Path,
    prompt: str,
) -> dict[str, str]:  # fmt: skip
    """Step 9: the supernode-level figure (with a box for the other layer-0 features at the
    last position) and the graph JSON with the supernodes validated in step 7."""
    from sae_lens_clt.circuits.supernode_graph import plot_supernode_graph, supernode_json

    figure = out / "supernodes.png"
    shown = {sn.name: members[sn.name] for sn in mine if sn.name in members}
    taken = {i for nodes in shown.values() for i in nodes}
    last = graph.n_pos - 1
    shown[f"other L0 features @{graph.metadata['token_strings'][last]!r}"] = [
        i
        for i, (layer, pos, _) in enumerate(graph.active_features.tolist())
        if layer == 0 and pos == last and i not in taken
    ]  # fmt: skip (the route the verdict names)
    inactive = {
        sn.name: sum(layer for layer, _ in sn.features) / len(sn.features)
        for sn in mine
        if sn.name not in members and sn.role is not None
    }
    plot_supernode_graph(
        graph, shown, src, dst, figure, source_name=SOURCE_CITY, target_name=SOURCE_ANSWER,
        title=prompt, inactive=inactive,
    )  # fmt: skip
    groups = supernode_json(graph, mine, keep=pruned.node_mask)  # the ones validated here
    graph.to_json(out / "graph.json", labels=labels, pruned=pruned, scan=scan, supernodes=groups)
    return {"json": str(out / "graph.json"), "supernode_figure": str(figure)}


def faithfulness_lines(report: Any) -> list[tuple[str, str]]:
    """The report's agreement per measurement and its worst feature, as (name, text)."""
    from sae_lens_clt.attribution.faithfulness import MEASUREMENTS

    names = {
        "replacement": "replacement model (frozen attention)",
        "real_frozen_attn": "real MLPs, attention + norms frozen",
        "real": "real model (attention free)",
    }
    lines = [(names[m], str(report.summary[m])) for m in MEASUREMENTS]
    for row, target, _ in report.worst(1):
        lines.append(
            (
                "worst feature (real model)",
                f"{report.names[row]} -> {report.target_tokens[target]!r}: predicted "
                f"{float(report.predicted[row, target]):+.2f}, real "
                f"{float(report.real[row, target]):+.2f}",
            )
        )
    return lines


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def feature_files(
    model: Any, clt: Any, graph: Any, pruned: Any, out: Path, scan: str, n_docs: int = 300
) -> Path:
    """Step 6: the feature files of the pruned graph's features; returns their folder.

    The contexts come from ``n_docs`` held-out fact documents and a third as many held-out
    natural ones (shipped with the package), about half of the text each.
    """
    from sae_lens_clt.dashboards import compute_dashboards, write_feature_files
    from sae_lens_clt.default_model import held_out_texts
    from sae_lens_clt.evals import token_batches_from_texts

    held = held_out_texts(n_docs)
    texts = held["facts"] + held.get("natural", [])[: n_docs // 3]
    batches = token_batches_from_texts(model, texts, context_size=64, batch_size=32)
    state = compute_dashboards(model, clt, batches, progress=False)
    kept = pruned.node_mask[: graph.n_features].nonzero()[:, 0]
    feats = [(int(graph.active_features[i, 0]), int(graph.active_features[i, 2])) for i in kept]
    return write_feature_files(
        model, clt, state, out / "features", scan=scan, features=feats, progress=False
    )


def run_demo(
    out_dir: str | Path = "demo_out", verbose: bool = True, clt_name: str | None = None
) -> DemoResult:
    """Steps 1-5 of the module docstring, printing what each found."""
    from sae_lens_clt.default_model import DEFAULT_MODEL

    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, clt, labels, clt_name, scan = load_default(clt_name)
    say(f"model {DEFAULT_MODEL}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}")
    say(f"CLT {clt_name}: {clt.cfg.d_sae} features per layer; {len(labels)} labels cached")

    prompt = PROMPT.format(city=SOURCE_CITY)
    graph, pruned, scores, files = trace(model, clt, prompt, labels, out, scan)
    dec = model.tokenizer.decode
    tok_strs = [dec([int(t)]) for t in graph.input_tokens]
    top = list(
        zip(
            [dec([int(t)]) for t in graph.logit_token_ids],
            graph.logit_probabilities.tolist(),
            strict=True,
        )
    )
    say(f'\nPrompt: "{prompt}"')
    say("Top predictions: " + ", ".join(f"{t!r} {p:.1%}" for t, p in top[:5]))
    say(
        f"Graph: {graph.n_nodes} nodes ({graph.n_features} features); pruned to "
        f"{int(pruned.node_mask.sum())} nodes, {int(pruned.edge_mask.sum())} edges"
    )
    say(f"Replacement score {scores.replacement:.3f}, completeness score {scores.completeness:.3f}")

    answer_id = single_token(model, SOURCE_ANSWER)
    if answer_id not in graph.logit_token_ids.tolist():
        raise RuntimeError(f"{SOURCE_ANSWER!r} is not among the graph's logit nodes: {top}")
    city_pos = tok_strs.index(" " + SOURCE_CITY)
    src = graph.embedding_offset + city_pos
    dst = graph.logit_offset + graph.logit_token_ids.tolist().index(answer_id)
    paths, named, total = find_paths(graph, pruned, src, dst, tok_strs, labels)
    say(
        f"\nStrongest paths from the {SOURCE_CITY!r} embedding to the {SOURCE_ANSWER!r} logit "
        f"(contribution to the logit per unit of embedding; all paths sum to {total:+.3f}):"
    )
    for strength, names in named:
        say(f"  [{strength:+.3f}] " + "  ->  ".join(names))

    res, p_before, p_after, n_ablated = ablate_paths(model, clt, prompt, graph, paths, answer_id)
    say(
        f"\nAblating the {n_ablated} features on those paths: "
        f"P({SOURCE_ANSWER!r}) {p_before:.1%} -> {p_after:.1%}"
    )

    from sae_lens_clt.circuits.two_hop import family_supernodes

    supernodes = family_supernodes(model, clt, labels)  # step 5
    n_states = len({sn.group for sn in supernodes if sn.role == "state"})
    say(
        f"\nSupernodes of the 150 city prompts of the template (last position): "
        f"{len(supernodes)}; a state supernode (features selective for the state's cities "
        f"that promote the state's name) for {n_states} of 50 states. {SOURCE_STATE}'s:"
    )
    mine = [sn for sn in supernodes if sn.group == SOURCE_STATE or sn.role is not None]
    mine = [sn for sn in mine if sn.group in (None, SOURCE_STATE)]
    members, shares, routes, evidence = state_route(  # step 6
        model, clt, graph, supernodes, src, dst, SOURCE_STATE
    )
    for sn in mine:
        feats = ", ".join(
            f"L{layer} F{f}" + (f" [{labels[(layer, f)]}]" if (layer, f) in labels else "")
            for layer, f in sn.features
        )
        n_on = len(members.get(sn.name, []))
        share = f"{shares.share(sn.name):+.0%}" if sn.name in members else "—"
        say(f"  {sn.name!r:>20}: {feats}; {n_on} active here, share of the effect {share}")
    verdict = "routes" if routes else "does not route"
    say(f"On this prompt the model {verdict} through a state representation:")
    for line in evidence:
        say(f"  - {line}")
    cities = state_cities(model, clt, supernodes, SOURCE_STATE)
    state_name = next((sn.name for sn in mine if sn.role == "state"), SOURCE_STATE)
    capital_name = next((sn.name for sn in mine if sn.role == "capital"), "say capital")
    say(
        f"  - on each of {SOURCE_STATE}' cities, paths through {state_name!r} then "
        f"{capital_name!r} carry: "
        + ", ".join(
            f"{city} " + (f"{share:.1%}" if share is not None else f"— ({state_name} not active)")
            for city, _, _, share in cities
        )
    )
    if not routes:
        say(
            f"  What it does instead: {first_layer_share(graph, src, dst):.0%} of the effect "
            f"passes through layer-0 features at the last position, which the first attention "
            f"layer feeds from the {SOURCE_CITY!r} embedding; they and the later 'say "
            f"{SOURCE_ANSWER}' features map the city to its capital directly, and "
            f"{shares.outside / shares.total:.0%} passes through no supernode"
        )

    names = [sn.name for sn in mine if sn.name in members]  # step 7
    checks = check_supernodes(model, clt, prompt, graph, supernodes, names)
    checks += check_elsewhere(model, clt, [sn for sn in mine if sn.name not in members], cities)
    say("\nAblating each supernode (Δ demeaned logit; graph = linear prediction):")
    for check in checks:
        say(f"  {check}")

    group_ablation = ablate_group(model, clt, prompt, supernodes, SOURCE_STATE, answer_id)
    n_group, pa_before, pa_after = group_ablation
    say(
        f"Ablating all of {SOURCE_STATE}'s supernodes ({n_group} features): "
        f"P({SOURCE_ANSWER!r}) {pa_before:.1%} -> {pa_after:.1%}"
    )

    target_id = single_token(model, TARGET_ANSWER)  # step 8
    swap = swap_state(model, clt, prompt, supernodes, SOURCE_STATE, TARGET_STATE, target_id)
    say(
        f"\nSwapping all of {SOURCE_STATE}'s supernodes for {TARGET_STATE}'s (found the same "
        f"way: state, say {TARGET_ANSWER} and the rest):"
    )
    for scale, n, top_tok, top_p, p_target in swap:
        say(
            f"  at {scale:g}x {TARGET_STATE}'s mean activations, {n} features: top-1 "
            f"{top_tok!r} {top_p:.1%}, P({TARGET_ANSWER!r}) {p_target:.1%}"
        )
    probs_before, probs_after, n_set = steer_city(model, clt, prompt, res, city_pos)
    top_b, top_a = int(probs_before.argmax()), int(probs_after.argmax())
    say(
        f"For comparison, setting every feature from {SOURCE_CITY!r} on to its value on "
        f"{TARGET_CITY!r}: {n_set} features, top-1 {dec([top_a])!r} {probs_after[top_a]:.1%}"
    )

    files.update(  # step 9
        supernode_files(model, clt, graph, pruned, supernodes, mine, members, src, dst, labels,
                        scan, out, prompt)
    )  # fmt: skip
    report = graph.faithfulness(model, clt, top_k=FAITHFULNESS_TOP_K, labels=labels)
    say(
        f"\nFaithfulness: ablating the graph's {FAITHFULNESS_TOP_K} most influential "
        f"features, predicted (graph) against measured on {report.predicted.shape[1]} logits:"
    )
    for name, text in faithfulness_lines(report):
        say(f"  {name:<38} {text}")
    files["features"] = str(feature_files(model, clt, graph, pruned, out, scan))  # step 10
    seconds = time.perf_counter() - t0
    say(f"\nWrote {', '.join(files.values())} in {seconds:.1f}s")
    say(f"Open the graph in the viewer: sae-lens-clt serve {out}")
    return DemoResult(
        top_predictions=top,
        replacement_score=scores.replacement,
        completeness_score=scores.completeness,
        paths=named,
        ablation=(p_before, p_after),
        steering=(
            dec([top_b]),
            probs_before[top_b].item(),
            dec([top_a]),
            probs_after[top_a].item(),
        ),
        steering_p_target=(probs_before[target_id].item(), probs_after[target_id].item()),
        n_steered=n_set,
        supernodes={sn.name: list(sn.features) for sn in mine},
        shares={name: shares.share(name) for name in members},
        routes_through_state=routes,
        evidence=evidence,
        checks=checks,
        group_ablation=group_ablation,
        swap=swap,
        faithfulness=report,
        files=files,
        seconds=seconds,
    )
