"""The ``sae-lens-clt`` command line.

One module per subcommand, each exposing ``add_parser(subparsers)``, which registers its
arguments and sets ``func`` to the function that runs it. This module only collects them;
the library is imported inside ``func``, so ``sae-lens-clt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sae_lens_clt.cli.errors import run_reporting

# subcommand modules, each with add_parser(subparsers)
SUBCOMMAND_MODULES = [
    "sae_lens_clt.cli.demo",
    "sae_lens_clt.cli.info",
    "sae_lens_clt.cli.train",
    "sae_lens_clt.cli.cache_activations",
    "sae_lens_clt.cli.attribute",
    "sae_lens_clt.cli.list",
    "sae_lens_clt.cli.push",
    "sae_lens_clt.cli.serve",
    "sae_lens_clt.cli.features",
    "sae_lens_clt.cli.merge",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-clt",
        description="Cross-layer transcoders for SAELens: train, load, trace, publish.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
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
    return run_reporting(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
