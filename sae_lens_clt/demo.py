"""The main job in one call: trace two-hop recall on the embedded default, then check it.

Algorithm (``run_demo``):

1. Load ``DEFAULT_MODEL`` and ``DEFAULT_CLT`` by name (offline) and the CLT's cached
   feature labels (computed once by :mod:`sae_lens_clt.labels` and stored next to it).
2. Attribute "The capital of the state containing Dallas is", prune, and write the graph
   file, the graph JSON (labels as ``clerp``) and the figure.
3. Find the strongest paths from the " Dallas" embedding node to the " Austin" logit node in
   the pruned graph: a path's strength is the product of its edges' normalized weights
   (``|A|`` with rows summing to 1), found by dynamic programming over the layer order.
4. Validate by intervention on the replacement model (frozen attention): ablate the
   features on those paths (value 0) and watch P(" Austin") fall; then, at the city's
   position, swap the features for those that " San Jose" activates in the same prompt
   and watch " Sacramento" become the top prediction.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

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


def single_token(model: Any, word: str) -> int:
    ids = model.to_tokens(" " + word, prepend_bos=False)[0]
    if ids.numel() != 1:
        raise ValueError(f"{word!r} is not a single token for this model: {ids.tolist()}")
    return int(ids[0])


def strongest_paths(
    graph: Any, node_mask: torch.Tensor, source: int, target: int, k: int = 3, max_len: int = 8
) -> list[tuple[float, list[int]]]:
    """Top-``k`` paths ``source -> ... -> target`` among kept nodes, by product of
    row-normalized |edge| weights. Returns ``[(strength, [node indices])]``."""
    from sae_lens_clt.attribution.prune import normalize_rows

    B = normalize_rows(graph.adjacency) * node_mask[:, None] * node_mask[None, :]
    # best[n]: up to k (strength, path) pairs from source to n; relax edges max_len times
    best: dict[int, list[tuple[float, list[int]]]] = {source: [(1.0, [source])]}
    frontier = {source}
    for _ in range(max_len):
        new_frontier = set()
        for n in frontier:
            targets = B[:, n].nonzero()[:, 0].tolist()
            for t in targets:
                w = float(B[t, n])
                for strength, path in best[n]:
                    if t in path:
                        continue
                    cand = (strength * w, path + [t])
                    lst = best.setdefault(t, [])
                    if len(lst) < k or cand[0] > lst[-1][0]:
                        lst.append(cand)
                        lst.sort(key=lambda c: -c[0])
                        del lst[k:]
                        new_frontier.add(t)
        frontier = new_frontier
        if not frontier:
            break
    return heapq.nlargest(k, best.get(target, []), key=lambda c: c[0])


def node_name(graph: Any, index: int, tok_strs: list[str], labels: dict) -> str:
    kind = graph.node_kind(index)
    if kind == "feature":
        layer, pos, feat = graph.active_features[index].tolist()
        label = labels.get((layer, feat), "")
        return f"L{layer} F{feat} @{tok_strs[pos]!r}" + (f" [{label}]" if label else "")
    if kind == "error":
        layer, pos = graph.node_layer_pos(index)
        return f"error L{layer} @{tok_strs[pos]!r}"
    if kind == "embedding":
        _, pos = graph.node_layer_pos(index)
        return f"embedding {tok_strs[pos]!r}"
    i = index - graph.logit_offset
    return f"logit {graph.metadata['logit_token_strings'][i]!r}"


def run_demo(out_dir: str | Path = "demo_out", verbose: bool = True) -> DemoResult:
    from sae_lens_clt import DEFAULT_CLT, DEFAULT_MODEL, CrossLayerTranscoder, load_model
    from sae_lens_clt.attribution import attribute, intervene
    from sae_lens_clt.labels import label_map, load_labels
    from sae_lens_clt.pretrained import fetch

    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(DEFAULT_MODEL)
    clt = CrossLayerTranscoder.from_pretrained(DEFAULT_CLT)
    labels = label_map(load_labels(fetch(DEFAULT_CLT)))
    say(f"model {DEFAULT_MODEL}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}")
    say(f"CLT {DEFAULT_CLT}: {clt.cfg.d_sae} features per layer; {len(labels)} labels cached")

    prompt = PROMPT.format(city=SOURCE_CITY)
    graph = attribute(model, clt, prompt)
    pruned = graph.prune()
    scores = graph.scores()
    files = {
        "graph": str(graph.save(out / "graph")),
        "json": str(out / "graph.json"),
        "figure": str(out / "graph.png"),
    }
    graph.to_json(out / "graph.json", labels=labels, pruned=pruned, slug="dallas-austin")
    graph.plot(out / "graph.png", labels=labels, pruned=pruned, title=prompt)

    tok_strs = [model.tokenizer.decode([int(t)]) for t in graph.input_tokens]
    logit_strs = [model.tokenizer.decode([int(t)]) for t in graph.logit_token_ids]
    top = list(zip(logit_strs, graph.logit_probabilities.tolist(), strict=True))
    say(f'\nPrompt: "{prompt}"')
    say("Top predictions: " + ", ".join(f"{t!r} {p:.1%}" for t, p in top[:5]))
    say(
        f"Graph: {graph.n_nodes} nodes ({graph.n_features} features); pruned to "
        f"{int(pruned.node_mask.sum())} nodes, {int(pruned.edge_mask.sum())} edges"
    )
    say(f"Replacement score {scores.replacement:.3f}, completeness score {scores.completeness:.3f}")

    answer_id = single_token(model, SOURCE_ANSWER)
    city_pos = tok_strs.index(" " + SOURCE_CITY)
    if answer_id not in graph.logit_token_ids.tolist():
        raise RuntimeError(f"{SOURCE_ANSWER!r} is not among the graph's logit nodes: {top}")
    src = graph.embedding_offset + city_pos
    dst = graph.logit_offset + graph.logit_token_ids.tolist().index(answer_id)
    paths = strongest_paths(graph, pruned.node_mask, src, dst)
    named = [(s, [node_name(graph, n, tok_strs, labels) for n in p]) for s, p in paths]
    say(f"\nStrongest paths from the {SOURCE_CITY!r} embedding to the {SOURCE_ANSWER!r} logit:")
    for strength, names in named:
        say(f"  [{strength:.2e}] " + "  ->  ".join(names))

    # validation 1: ablate the features on those paths
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
    say(
        f"\nAblating the {len(ablate)} features on those paths: "
        f"P({SOURCE_ANSWER!r}) {p_before:.1%} -> {p_after:.1%}"
    )

    # validation 2: steer in the features a California city activates at the same place
    target_id = single_token(model, TARGET_ANSWER)
    other = intervene(model, clt, PROMPT.format(city=TARGET_CITY), [])
    ours, theirs = res.clean_activations, other.clean_activations  # [L, T, F]
    if ours.shape != theirs.shape:
        raise RuntimeError(f"{TARGET_CITY!r} and {SOURCE_CITY!r} tokenize to different lengths")
    swap = []
    for layer in range(clt.cfg.n_layers):
        diff = (ours[layer, city_pos] != theirs[layer, city_pos]).nonzero()[:, 0].tolist()
        swap += [(layer, city_pos, f, float(theirs[layer, city_pos, f])) for f in diff]
    steered = intervene(model, clt, prompt, swap)
    probs_before = res.clean_logits[-1].softmax(-1)
    probs_after = steered.logits[-1].softmax(-1)
    top_b, top_a = int(probs_before.argmax()), int(probs_after.argmax())
    dec = model.tokenizer.decode
    say(
        f"Steering: at {SOURCE_CITY!r}'s position, set the {len(swap)} features that differ to "
        f"their values on {TARGET_CITY!r}: top-1 {dec([top_b])!r} {probs_before[top_b]:.1%} -> "
        f"{dec([top_a])!r} {probs_after[top_a]:.1%}; P({TARGET_ANSWER!r}) "
        f"{probs_before[target_id]:.1%} -> {probs_after[target_id]:.1%}"
    )
    seconds = time.perf_counter() - t0
    say(f"\nWrote {', '.join(files.values())} in {seconds:.1f}s")
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
