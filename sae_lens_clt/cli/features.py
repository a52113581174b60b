"""``sae-lens-clt features``: feature dashboards of a CLT, as circuit-tracer feature files.

Steps:

1. Load the model and the CLT (a release name, Hub id or folder).
2. Take text up to ``--n-tokens``: the embedded default corpus (``--dataset default``), a
   Hugging Face dataset (name or local folder, streamed, ``--column`` holds the text), or a
   local ``.txt`` (one document per line) or ``.jsonl`` file.
3. :func:`sae_lens_clt.dashboards.compute_dashboards` over those tokens, saving its state in
   ``--out`` as it goes (a rerun resumes), then write ``--out/<scan>/<index>.json`` per
   feature and, with ``--labels``, ``feature_labels.json`` next to them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "features",
        help="compute feature dashboards (top contexts, density, output tokens)",
        description="Per feature: top activating contexts with per-token activations, "
        "activation density and histogram, promoted and suppressed output tokens, written "
        "as the feature files circuit-tracer's local server and Neuronpedia read "
        "(OUT/<scan>/<index>.json). Batched, memory-bounded and resumable.",
    )
    p.add_argument("--clt", default=None, help="CLT name, Hub id or folder (the default CLT)")
    p.add_argument("--model", default=None, help="model name (default: the embedded model)")
    p.add_argument(
        "--dataset",
        default="default",
        help="'default' (the embedded corpus), a Hugging Face dataset name or folder, or a "
        ".txt / .jsonl file",
    )
    p.add_argument("--column", default="text", help="text column of the dataset (text)")
    p.add_argument("--split", default="train", help="dataset split (train)")
    p.add_argument("--n-tokens", type=int, default=200_000, help="token budget (200000)")
    p.add_argument("--context-size", type=int, default=64, help="tokens per row (64)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (32)")
    p.add_argument("--top-k", type=int, default=20, help="top examples kept per feature (20)")
    p.add_argument(
        "--out", required=True, help="output folder; DIR/features puts them where `serve DIR` looks"
    )
    p.add_argument("--labels", action="store_true", help="also write feature_labels.json")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.set_defaults(func=run)


def _texts(args: argparse.Namespace) -> Iterator[str]:
    """Step 2: the documents, lazily."""
    import json

    from sae_lens_clt.cli.errors import UsageError

    source = args.dataset
    if source == "default":
        from sae_lens_clt.default_model import corpus, load_default_dataset

        yield from load_default_dataset("train", natural=corpus.find_natural_text())["text"]
        return
    path = Path(source)
    if path.is_file() and path.suffix == ".txt":
        yield from (line for line in path.read_text().splitlines() if line.strip())
        return
    if path.is_file() and path.suffix == ".jsonl":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if args.column not in row:
                    raise UsageError(
                        f"{source} line {n} has no {args.column!r} field — pass --column"
                    )
                yield row[args.column]
        return
    if path.is_file():
        raise UsageError(f"--dataset {source}: a file must be .txt or .jsonl")
    from datasets import load_dataset

    data = load_dataset(source, split=args.split, streaming=True)
    for row in data:
        if args.column not in row:
            raise UsageError(
                f"dataset {source} has no column {args.column!r} (it has {sorted(row)}) — "
                "pass --column"
            )
        yield row[args.column]


def run(args: argparse.Namespace) -> int:
    from sae_lens_clt.cli.attribute import load_model_by_name
    from sae_lens_clt.cli.errors import UsageError, check_device, check_out_dir
    from sae_lens_clt.dashboards import DashboardSettings, compute_dashboards, write_feature_files
    from sae_lens_clt.evals import token_batches_from_texts
    from sae_lens_clt.labels import labels_from_dashboards, save_labels
    from sae_lens_clt.loading import pretrained
    from sae_lens_clt.loading.releases import DEFAULT_CLT
    from sae_lens_clt.transcoders.clt import CrossLayerTranscoder

    out = check_out_dir(args.out)
    check_device(args.device)
    for flag in ("n_tokens", "context_size", "batch_size", "top_k"):
        if getattr(args, flag) < 1 or (flag == "context_size" and args.context_size < 2):
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive number")
    fetched = pretrained.fetch(args.clt or DEFAULT_CLT)
    clt = CrossLayerTranscoder.from_folder_contents(fetched.read(), device=args.device)
    model = load_model_by_name(args.model, args.device)
    texts, n = [], 0
    for text in _texts(args):  # step 2: documents up to the token budget
        texts.append(text)
        n += len(model.to_tokens(text, prepend_bos=False, truncate=False)[0])
        if n >= args.n_tokens:
            break
    if not texts:
        raise UsageError(f"--dataset {args.dataset} gave no text")
    batches = token_batches_from_texts(model, texts, args.context_size, args.batch_size)
    if not batches:
        raise UsageError(
            f"{n} tokens do not fill one row of --context-size {args.context_size} — "
            "raise --n-tokens or lower --context-size"
        )
    source = (  # a saved state resumes only for the same tokens, CLT and model
        f"{args.dataset}:{args.split}:{args.column}:{n} tokens:ctx {args.context_size}:"
        f"batch {args.batch_size}:clt {args.clt or DEFAULT_CLT}:model {args.model or 'default'}"
    )
    settings = DashboardSettings(top_k=args.top_k, dataset=source)
    out.mkdir(parents=True, exist_ok=True)
    state = compute_dashboards(model, clt, batches, settings, state_dir=out, n_batches=len(batches))
    folder = write_feature_files(model, clt, state, out, scan=fetched.scan, settings=settings)
    print(
        f"{clt.cfg.n_layers * clt.cfg.d_sae} feature files for {fetched.scan} from "
        f"{state.n_positions} positions in {folder}"
    )
    if args.labels:
        path = save_labels(labels_from_dashboards(model, clt, state, settings), folder)
        print(f"labels in {path}")
    return 0
