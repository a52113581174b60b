"""``sae-lens-clt list``: print the registry of named CLT releases."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list",
        help="list the named CLT releases (package, Hub, user-registered)",
        description="Print every named CLT release: name, model, layers, features per "
        "layer and where its files live. Fields not recorded in the registry are shown as "
        "'?' (they are read from the files at load time). Add your own releases with a YAML "
        "file listed in $SAE_LENS_CLT_RELEASES.",
    )
    p.add_argument(
        "--releases",
        action="append",
        default=[],
        metavar="YAML",
        help="also list the releases of this YAML file (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_lens_clt.loading import releases

    for path in args.releases:
        releases.load_releases(path, overwrite=True)
    header = ("name", "model", "layers", "features/layer", "where")
    rows = [header]
    for r in map(releases.describe, releases.get_registry().values()):
        where = r.location()
        folder = r.local_folder()
        if folder is not None and not folder.is_dir():
            where += " (missing)"
        rows.append(
            (
                r.name,
                r.model or "?",
                "?" if r.n_layers is None else str(r.n_layers),
                "?" if r.d_sae is None else f"{r.d_sae:,}",
                where,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=True)), row[-1])
    return 0
