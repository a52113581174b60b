"""The main job in one call: trace two-hop recall on the embedded default, then check it.

Algorithm (``run_demo``):

1. Load ``DEFAULT_MODEL`` and ``DEFAULT_CLT`` by name (offline) and the CLT's cached
   feature labels (computed once by :mod:`sae_lens_clt.labels` and stored next to it).
2. Attribute "The capital of the state containing Dallas is", prune, and write the graph
   file, the graph JSON (labels as ``clerp``) and the figure.
3. Find the strongest paths from the " Dallas" embedding node to the " Austin" logit node in
   the pruned graph: a path's contribution is the product of the per-unit direct effects
   along it (exact under the frozen replacement model; all paths sum to the embedding's
   total effect on the logit), found by dynamic programming.
4. Validate by intervention on the replacement model (frozen attention): ablate the
   features on those paths (value 0) and watch P(" Austin") fall; then, from the city's
   position on, set the features to the values " San Jose" gives them in the same prompt
   and watch " Sacramento" become the top prediction.
"""

from __future__ import annotations

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


def linear_effects(graph: Any) -> torch.Tensor:
    """Per-unit direct effects ``Ã [N, N]``: feature columns divided by the activation.

    ``A[t, f]`` is the effect of removing feature ``f`` (activation ``a_f``); under the
    frozen replacement model a JumpReLU feature above threshold passes its pre-activation
    through with slope 1, so ``A[t, f] / a_f`` is the effect per unit of its input, and the
    product of ``Ã`` along a path is that path's exact linear contribution.
    """
    at = graph.adjacency.double().clone()
    nf = graph.n_features
    at[:, :nf] /= graph.activation_values.double().clamp(min=1e-12)[None, :]
    return at


def strongest_paths(
    effects: torch.Tensor,
    node_mask: torch.Tensor,
    source: int,
    target: int,
    k: int = 5,
    max_len: int = 8,
) -> list[tuple[float, list[int]]]:
    """Top-``k`` paths ``source -> ... -> target`` among kept nodes by contribution.

    A path's contribution is the product of the per-unit direct effects along it
    (``effects = linear_effects(graph)``), in units of the target (a logit) per unit of the source;
    the contributions of all paths sum to the source's total effect. Dynamic programming
    keeps, per node, the ``k`` largest and ``k`` smallest partial products (signs multiply).
    """
    at = effects * node_mask[:, None] * node_mask[None, :]
    best: dict[int, list[tuple[float, list[int]]]] = {source: [(1.0, [source])]}
    frontier = {source}
    for _ in range(max_len):
        new_frontier = set()
        for n in frontier:
            for t in at[:, n].nonzero()[:, 0].tolist():
                w = float(at[t, n])
                cands = best.setdefault(t, [])
                before = list(cands)
                cands += [(v * w, path + [t]) for v, path in best[n] if t not in path]
                cands.sort(key=lambda c: -c[0])
                keep = cands[:k] + [c for c in cands[-k:] if c not in cands[:k]]
                best[t] = keep
                if keep != before:
                    new_frontier.add(t)
        frontier = new_frontier
        if not frontier:
            break
    return sorted(best.get(target, []), key=lambda c: -c[0])[:k]


def total_effect(effects: torch.Tensor, source: int, target: int) -> float:
    """Sum of the contributions of every path ``source -> target``: ``[(I - A)^-1]_ts``
    for ``A = effects`` (the full graph), from one linear solve against ``e_source``."""
    n = effects.shape[0]
    e = torch.zeros(n, dtype=effects.dtype)
    e[source] = 1.0
    return float(torch.linalg.solve(torch.eye(n, dtype=effects.dtype) - effects, e)[target])


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


def run_demo(
    out_dir: str | Path = "demo_out", verbose: bool = True, clt_name: str | None = None
) -> DemoResult:
    from sae_lens_clt import DEFAULT_CLT, DEFAULT_MODEL, load_model
    from sae_lens_clt.attribution import attribute, intervene
    from sae_lens_clt.pretrained import from_pretrained_with_labels

    say = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(DEFAULT_MODEL)
    clt_name = clt_name or DEFAULT_CLT  # any CLT of the default model: name, Hub id, folder
    clt, labels = from_pretrained_with_labels(clt_name)
    say(f"model {DEFAULT_MODEL}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}")
    say(f"CLT {clt_name}: {clt.cfg.d_sae} features per layer; {len(labels)} labels cached")

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
    effects = linear_effects(graph)
    paths = strongest_paths(effects, pruned.node_mask, src, dst)
    named = [(s, [node_name(graph, n, tok_strs, labels) for n in p]) for s, p in paths]
    say(
        f"\nStrongest paths from the {SOURCE_CITY!r} embedding to the {SOURCE_ANSWER!r} logit "
        "(contribution to the logit per unit of embedding; all paths sum to "
        f"{total_effect(effects, src, dst):+.3f}):"
    )
    for strength, names in named:
        say(f"  [{strength:+.3f}] " + "  ->  ".join(names))

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
        for pos in range(city_pos, ours.shape[1]):  # the city and every position after it
            diff = (ours[layer, pos] != theirs[layer, pos]).nonzero()[:, 0].tolist()
            swap += [(layer, pos, f, float(theirs[layer, pos, f])) for f in diff]
    steered = intervene(model, clt, prompt, swap)
    probs_before = res.clean_logits[-1].softmax(-1)
    probs_after = steered.logits[-1].softmax(-1)
    top_b, top_a = int(probs_before.argmax()), int(probs_after.argmax())
    dec = model.tokenizer.decode
    say(
        f"Steering: from {SOURCE_CITY!r} on, set the {len(swap)} features whose activations "
        f"differ to their values on {TARGET_CITY!r} (same positions): top-1 {dec([top_b])!r} {probs_before[top_b]:.1%} -> "
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
