"""The ``sae-lens-clt`` command line.

Each subcommand lives next to the code it drives and exposes ``add_parser(subparsers)``,
which registers its arguments and sets ``func`` to the function that runs it. This module
only collects them; modules are imported lazily so ``sae-lens-clt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, each with add_parser(subparsers)
SUBCOMMAND_MODULES = [
    "sae_lens_clt.commands.demo",
    "sae_lens_clt.commands.info",
    "sae_lens_clt.commands.train",
    "sae_lens_clt.attribution.cli",
    "sae_lens_clt.commands.list",
    "sae_lens_clt.commands.push",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-clt",
        description="Cross-layer transcoders for SAELens: train, load, trace, publish.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency: let it surface
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
