"""``sae-lens-clt attribute``: trace one prompt, write the graph, its JSON and its figure.

Steps:

1. Load the model (``sae_lens_clt.default_model.load_model`` when available, which also
   serves TransformerLens names) and the CLT (``CrossLayerTranscoder.from_pretrained``:
   a release name, Hub id or folder; or ``random`` for a seeded random CLT calibrated on
   the prompt, only for trying the pipeline).
2. ``attribute`` the prompt, prune, and write ``graph.safetensors``, ``graph.json`` (plus
   ``graph-metadata.json`` for circuit-tracer's server) and ``graph.png`` into ``--out``,
   with the feature labels cached next to a named CLT when there are any.
3. Print the top logits, node counts, scores and timings.
4. Targets: by default the most probable next tokens; ``--target TOKEN`` (repeatable),
   ``--logit-diff A B`` and ``--feature-target LAYER:POS:FEATURE`` (active or not) name
   them instead (:mod:`sae_lens_clt.attribution.targets`); ``--head-loadings`` splits the
   cross-position edges by head (the JSON's links carry them).
5. With ``--faithfulness [K]``: ablate the graph's ``K`` (default 20) most influential
   features one at a time in the frozen replacement model and in the real model, print how
   the graph's predicted logit effects agree with the measured ones
   (:mod:`sae_lens_clt.attribution.faithfulness`) and write ``<slug>-faithfulness.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformer_lens import HookedTransformer

    from sae_lens_clt.attribution.graph import AttributionGraph
    from sae_lens_clt.transcoders.clt import CrossLayerTranscoder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "attribute",
        help="build an attribution graph for a prompt",
        description="Trace a prompt through the CLT replacement model: write the graph "
        "(safetensors), the circuit-tracer / Neuronpedia graph JSON and a figure.",
    )
    p.add_argument("--model", default=None, help="model name (default: the embedded model)")
    p.add_argument(
        "--clt",
        default=None,
        help="a pretrained CLT name, a Hub id, a CLT folder (SAELens or circuit-tracer "
        "layout), or 'random' (a random CLT calibrated on the prompt, to try the pipeline); "
        "default: the package's default CLT",
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slug", default="graph", help="file stem and JSON slug")
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--max-feature-nodes", type=int, default=None)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="rows per backward pass (default 128, or what fits --memory-budget)",
    )
    p.add_argument(
        "--memory-budget",
        default=None,
        help="memory the attribution may use besides the weights, e.g. 8GB: long prompts run "
        "in query chunks, rows spill to disk past it; the estimate is printed first",
    )
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument(
        "--faithfulness",
        type=int,
        nargs="?",
        const=20,
        default=None,
        metavar="K",
        help="also ablate the K (default 20) most influential features in the replacement "
        "and the real model and compare with the graph's predicted effects",
    )
    p.add_argument(
        "--target", action="append", default=[], metavar="TOKEN",
        help="explain this next token's logit (exactly one token, e.g. ' Austin'; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--logit-diff", action="append", nargs=2, default=[], metavar=("A", "B"),
        help="explain the logit difference A - B of two tokens (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--feature-target", action="append", default=[], metavar="LAYER:POS:FEATURE",
        help="explain a feature's pre-activation, active or not (negative POS counts from "
        "the end; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--head-loadings", action="store_true",
        help="split every cross-position edge by the attention head that carries it",
    )  # fmt: skip
    p.add_argument("--d-sae", type=int, default=512, help="features per layer for --clt random")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)"
    )
    p.set_defaults(func=run)


def check_model_name(name: str) -> None:
    """``--model``: a TransformerLens model name (or alias), else a short error with the
    closest names (TransformerLens' own error lists every model it knows)."""
    import difflib

    from transformer_lens import loading_from_pretrained as tl_loading

    from sae_lens_clt.cli.errors import UsageError

    known = [*tl_loading.OFFICIAL_MODEL_NAMES]
    known += [a for aliases in tl_loading.MODEL_ALIASES.values() for a in aliases]
    if name.lower() in {k.lower() for k in known}:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    suggestion = f"closest: {', '.join(close)}" if close else "e.g. gpt2, google/gemma-2-2b"
    raise UsageError(
        f"--model {name!r} is not a TransformerLens model name ({suggestion}) — "
        "or omit --model for the embedded default"
    )


def load_model_by_name(name: str | None, device: str) -> HookedTransformer:
    """The embedded default model (or any TransformerLens name) via ``load_model``.

    A model from the Hub loads in offline mode when the Hub cannot be reached, so a model
    missing from the cache fails at once with one message instead of minutes of retries.
    """
    from sae_lens_clt.default_model import DEFAULT_MODEL, load_model
    from sae_lens_clt.loading.hub import offline_unless_reachable

    if name in (None, DEFAULT_MODEL):
        return load_model(DEFAULT_MODEL, device=device)
    check_model_name(name)
    with offline_unless_reachable() as offline:
        try:
            return load_model(name, device=device)
        except OSError as e:
            if not offline:
                raise
            raise OSError(
                f"model {name!r} is not in the local Hugging Face cache and "
                "the Hub cannot be reached (or HF_HUB_OFFLINE is set) — run once online to "
                "cache it, or use the embedded default (no --model)"
            ) from e


def random_clt(
    model: HookedTransformer,
    tokens: torch.Tensor,
    d_sae: int = 512,
    active_frac: float = 0.02,
    seed: int = 0,
) -> CrossLayerTranscoder:
    """A seeded random CLT over ``model`` whose JumpReLU thresholds leave about
    ``active_frac`` of the features active on ``tokens [T]`` (for trying the pipeline)."""
    import torch

    with torch.no_grad():
        return _calibrated_random_clt(model, tokens, d_sae, active_frac, seed)


def _calibrated_random_clt(
    model: HookedTransformer, tokens: torch.Tensor, d_sae: int, active_frac: float, seed: int
) -> CrossLayerTranscoder:
    import torch

    from sae_lens_clt.transcoders.clt import CrossLayerTranscoder, CrossLayerTranscoderConfig

    L, d = model.cfg.n_layers, model.cfg.d_model
    cfg = CrossLayerTranscoderConfig(n_layers=L, d_in=d, d_sae=d_sae, device=str(model.cfg.device))
    cfg.metadata.model_name = str(model.cfg.model_name)
    clt = CrossLayerTranscoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    clt.W_enc.copy_(torch.randn(L, d, d_sae, generator=gen))
    for w in clt.W_dec:
        w.copy_(torch.randn(w.shape, generator=gen) * (0.5 / d**0.5))
    hooks = [cfg.hook_in(s) for s in range(L)]
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in hooks)
    x = torch.stack([cache[h][0] for h in hooks], dim=1)  # [T, L, d]
    pre = torch.einsum("tli,lif->tlf", x, clt.W_enc)
    per_layer = pre.transpose(0, 1).flatten(1).float()  # [L, T * F]
    q = torch.quantile(per_layer, 1 - active_frac, dim=1)  # one threshold per layer
    clt.threshold.copy_(q.clamp(min=1e-3)[:, None].expand(L, d_sae))
    return clt


def run(args: argparse.Namespace) -> int:
    import torch

    from sae_lens_clt.attribution.attribute import attribute, to_tokens
    from sae_lens_clt.cli.errors import UsageError, check_device, check_out_dir
    from sae_lens_clt.labels import load_with_labels
    from sae_lens_clt.loading.releases import DEFAULT_CLT

    out = check_out_dir(args.out)
    check_device(args.device)
    if not args.prompt.strip():
        raise UsageError("--prompt is empty — give the text to trace")
    if (args.head_loadings or args.faithfulness is not None) and (
        args.logit_diff or args.feature_target
    ):
        raise UsageError(
            "--head-loadings and --faithfulness read token logits: drop them or the "
            "--logit-diff / --feature-target targets"
        )
    if args.faithfulness is not None and args.faithfulness < 1:
        raise UsageError(
            f"--faithfulness {args.faithfulness}: K must be >= 1 — the number of top features "
            "to ablate (or give --faithfulness alone for 20)"
        )
    if args.memory_budget is not None:
        from sae_lens_clt.attribution.budget import parse_bytes

        try:
            parse_bytes(args.memory_budget)
        except ValueError as e:
            raise UsageError(f"--memory-budget {args.memory_budget!r}: {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_model_by_name(args.model, args.device)
    clt_name = args.clt or DEFAULT_CLT
    if clt_name == "random":
        clt = random_clt(model, to_tokens(model, args.prompt), d_sae=args.d_sae)
        labels: dict[tuple[int, int], str] = {}
        scan = None
    else:
        clt, labels, scan = load_with_labels(clt_name, device=args.device)
    t_load = time.perf_counter() - t0
    graph = attribute(
        model,
        clt,
        args.prompt,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        targets=cli_targets(args),
        memory_budget=args.memory_budget,
    )
    if args.head_loadings:  # the edges this command's pruning keeps
        from sae_lens_clt.attribution.heads import edge_head_loadings

        graph.head_loadings = edge_head_loadings(
            model, clt, graph, batch_size=graph.metadata["settings"]["batch_size"],
            node_threshold=args.node_threshold,
            edge_threshold=args.edge_threshold,
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    pruned = graph.prune(args.node_threshold, args.edge_threshold)
    graph.save(out / f"{args.slug}.safetensors")
    data = graph.to_json(
        out / f"{args.slug}.json",
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        pruned=pruned,
        labels=labels,
        scan=scan,
    )
    graph.plot(out / f"{args.slug}.png", pruned=pruned, labels=labels)
    scores = graph.scores()

    print(f"prompt: {args.prompt!r} ({graph.n_pos} tokens with BOS)")
    named = cli_targets(args) is not None
    print("targets (influence weight):" if named else "top logits:")
    for tok, prob in zip(
        graph.metadata["logit_token_strings"], graph.logit_probabilities.tolist(), strict=True
    ):
        print(f"  {tok!r:>16}  {'w' if named else 'p'}={prob:.3f}")
    n_kept = int(pruned.node_mask[: graph.n_features].sum())
    print(
        f"graph: {graph.metadata['n_active_features']} active features, {graph.n_features} "
        f"nodes with rows, {n_kept} after pruning; JSON {len(data['nodes'])} nodes, "
        f"{len(data['links'])} links"
    )
    print(f"replacement score {scores.replacement:.3f}, completeness {scores.completeness:.3f}")
    print(f"time: load {t_load:.2f}s, attribute {graph.metadata['timing_s']['total']:.2f}s")
    written = [out / f"{args.slug}.{suffix}" for suffix in ("safetensors", "json", "png")]
    if args.faithfulness is not None:
        written.append(write_faithfulness(graph, model, clt, args, labels, out))
    for path in written:
        print(f"wrote {path}")
    return 0


def cli_targets(args: argparse.Namespace) -> list | None:
    """Step 4: the ``--target`` / ``--logit-diff`` / ``--feature-target`` targets, in that
    order (None: the top logits)."""
    from sae_lens_clt.attribution.targets import FeatureTarget, LogitDiff
    from sae_lens_clt.cli.errors import UsageError

    out: list = list(args.target)
    out += [LogitDiff(a, b) for a, b in args.logit_diff]
    for spec in args.feature_target:
        try:
            layer, pos, feat = (int(x) for x in spec.split(":"))
        except ValueError:
            raise UsageError(
                f"--feature-target {spec!r}: give LAYER:POS:FEATURE as three integers, e.g. 3:-1:10"
            ) from None
        out.append(FeatureTarget(layer, pos, feat))
    return out or None


def write_faithfulness(
    graph: AttributionGraph,
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    args: argparse.Namespace,
    labels: dict[tuple[int, int], str],
    out: Path,
) -> Path:
    """Step 4: print the faithfulness report and write it as JSON; returns the path."""
    from sae_lens_clt.formats.atomic import atomic_write_json

    t0 = time.perf_counter()
    report = graph.faithfulness(model, clt, top_k=args.faithfulness, labels=labels)
    print(report)
    print(f"time: faithfulness {time.perf_counter() - t0:.2f}s")
    return atomic_write_json(out / f"{args.slug}-faithfulness.json", report.to_dict(), indent=1)
