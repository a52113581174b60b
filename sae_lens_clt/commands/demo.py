"""``sae-lens-clt demo``: trace two-hop recall on the embedded default and validate it."""

from __future__ import annotations

import argparse


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
    from sae_lens_clt.demo import run_demo

    run_demo(args.out, clt_name=args.clt)
    return 0
