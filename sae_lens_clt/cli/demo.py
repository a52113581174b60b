"""``sae-lens-clt demo``: trace two-hop recall on the embedded default, then check it.

Algorithm (:func:`run_demo`, one named step each):

1. :func:`load_default`: ``DEFAULT_MODEL`` and ``DEFAULT_CLT`` by name (offline) and the
   CLT's cached feature labels.
2. :func:`trace`: attribute "The capital of the state containing Dallas is", prune, and
   write the graph file, the graph JSON (labels as ``clerp``) and the figure.
3. :func:`find_paths`: the strongest paths from the " Dallas" embedding node to the
   " Austin" logit node of the pruned graph (:mod:`sae_lens_clt.attribution.paths`).
4. :func:`ablate_paths`: set the features on those paths to 0 in the replacement model
   (frozen attention) and watch P(" Austin") fall.
5. :func:`steer_city`: from the city's position on, set the features to the values
   " San Jose" gives them in the same prompt and watch " Sacramento" take over.
6. :func:`feature_files`: dashboards of the graph's features (top contexts, density,
   promoted / suppressed tokens) over a sample of the default corpus, in
   ``features/<scan>/`` next to the graph JSON, so that ``sae-lens-clt serve`` shows them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "The capital of the state containing {city} is"
SOURCE_CITY, SOURCE_ANSWER = "Dallas", "Austin"
TARGET_CITY, TARGET_ANSWER = "San Jose", "Sacramento"


@dataclass
class DemoResult:
    top_predictions: list[tuple[str, float]]
    replacement_score: float
    completeness_score: float
    paths: list[tuple[float, list[str]]]
    ablation: tuple[float, float]  # P(Austin) before, after
    steering: tuple[str, float, str, float]  # top-1 before/after with probabilities
    steering_p_target: tuple[float, float]  # P(Sacramento) before, after
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
    """Step 2: ``(graph, pruned, scores, files written)``."""
    from sae_lens_clt.attribution.attribute import attribute

    graph = attribute(model, clt, prompt)
    pruned = graph.prune()
    scores = graph.scores()
    files = {
        "graph": str(graph.save(out / "graph")),
        "json": str(out / "graph.json"),
        "figure": str(out / "graph.png"),
    }
    graph.to_json(out / "graph.json", labels=labels, pruned=pruned, scan=scan)
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
    probs_before, probs_after, n_set = steer_city(model, clt, prompt, res, city_pos)
    target_id = single_token(model, TARGET_ANSWER)
    top_b, top_a = int(probs_before.argmax()), int(probs_after.argmax())
    say(
        f"Steering: from {SOURCE_CITY!r} on, set the {n_set} features whose activations "
        f"differ to their values on {TARGET_CITY!r} (same positions): top-1 "
        f"{dec([top_b])!r} {probs_before[top_b]:.1%} -> {dec([top_a])!r} "
        f"{probs_after[top_a]:.1%}; P({TARGET_ANSWER!r}) "
        f"{probs_before[target_id]:.1%} -> {probs_after[target_id]:.1%}"
    )
    files["features"] = str(feature_files(model, clt, graph, pruned, out, scan))
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
        files=files,
        seconds=seconds,
    )
