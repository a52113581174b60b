"""``sae-lens-clt merge``: the inference CLT of a (feature-sharded) training checkpoint."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a training checkpoint's feature shards into one inference CLT",
        description="Write the inference CLT of a training checkpoint (a step_N folder, or "
        "the checkpoint_path holding them: its newest complete step), merging the feature "
        "shards of a tensor-parallel run one shard in memory at a time.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a step_N folder or a checkpoint_path")
    p.add_argument("--out", required=True, help="folder to write the CLT into")
    p.add_argument(
        "--layout",
        choices=["saelens", "circuit-tracer"],
        default="saelens",
        help="SAELens (cfg.json + sae_weights.safetensors) or circuit-tracer's per-layer files",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_lens_clt.cli.errors import UsageError
    from sae_lens_clt.training.merge import merge_checkpoint

    src, out = Path(args.checkpoint), Path(args.out)
    if not src.is_dir():
        raise UsageError(f"{src}: no such folder (give a step_N folder or a checkpoint_path)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder")
    merged = merge_checkpoint(src, out, layout=args.layout)
    print(f"wrote the merged CLT ({args.layout} layout) to {merged}")
    return 0
