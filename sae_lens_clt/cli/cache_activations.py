"""``sae-lens-clt cache-activations``: build a CLT's multi-hook activation cache on disk.

The run is described by the same flags and ``--config`` as ``sae-lens-clt train`` (model,
dataset, hooks, context, batch, seed); ``--out`` is the cache folder. An interrupted build
run again with the same flags goes on from its last complete shard; a finished one is
left as it is. See :mod:`sae_lens_clt.activations.cache`.
"""

from __future__ import annotations

import argparse

from sae_lens_clt.cli.train import add_config_arguments, config_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache-activations",
        help="cache a CLT's training activations on disk (sharded, resumable)",
        description="Run the model over the training data of a run config (the flags and "
        "--config of `train`) and store the MLP inputs and outputs of every layer in "
        "sharded safetensors files under --out. Run it again to resume an interrupted build.",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="the cache folder")
    p.add_argument(
        "--n-tokens",
        type=int,
        default=None,
        metavar="N",
        help="rows (tokens) to cache (default: what the run reads, training_tokens plus the "
        "norm-estimate batches)",
    )
    p.add_argument(
        "--batches-per-shard",
        type=int,
        default=None,
        metavar="N",
        help="token batches (store_batch_size_prompts sequences each) per shard (default: "
        "shards of about 256 MB)",
    )
    p.add_argument(
        "--cache-dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="storage dtype (default: --dtype when it is one of these, else float32)",
    )
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_lens_clt.activations.cache import build_activation_cache
    from sae_lens_clt.cli.errors import UsageError, check_device, check_out_dir

    out = check_out_dir(args.out)
    for flag, value in (
        ("--n-tokens", args.n_tokens),
        ("--batches-per-shard", args.batches_per_shard),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: give a positive number")
    cfg = config_from_args(args)
    check_device(cfg.device)
    cache = build_activation_cache(
        cfg,
        out,
        n_tokens=args.n_tokens,
        batches_per_shard=args.batches_per_shard,
        dtype=args.cache_dtype,
        verbose=cfg.verbose,
    )
    total = sum(f.stat().st_size for f in cache.shard_files) / 1e6
    info = cache.build_info or {}
    print(f"activation cache: {cache.path}")
    print(
        f"  {cache.n_rows:,} rows (tokens), {cache.n_shards} shards, {total:.1f} MB "
        f"({cache.config['dtype']}, {cache.n_layers} layers, d_in {cache.d_in}, "
        f"d_out {cache.d_out})"
    )
    if info.get("shards_written"):
        build = max(info["build_seconds"], 1e-9)
        mb = info["bytes_written"] / 1e6
        resumed = f"; {info['shards_reused']} shards kept" if info["shards_reused"] else ""
        print(
            f"  wrote {mb:.1f} MB in {build:.1f} s: {mb / build:.1f} MB/s, "
            f"{info['rows_written'] / build:,.0f} tokens/s ({info['seconds']:.1f} s in all, "
            f"with loading the model and data{resumed})"
        )
    else:
        print("  already complete: nothing to build")
    return 0
