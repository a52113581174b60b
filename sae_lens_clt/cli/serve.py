"""``sae-lens-clt serve [DIR]``: the local graph viewer (:mod:`sae_lens_clt.viewer.server`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="open the graph JSON files of a folder in a local, offline viewer",
        description="Serve the interactive viewer for the graph JSON files in DIR (and the "
        "feature files in DIR/features) on this machine only. Pinned nodes and supernodes "
        "are saved back into each graph's qParams.",
    )
    p.add_argument("dir", nargs="?", default=".", help="folder of graph JSON files (.)")
    p.add_argument("--port", type=int, default=8041, help="port to listen on (8041; 0 = any free)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes the "
        "graphs to your network)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_lens_clt.cli.errors import UsageError

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UsageError(f"{args.dir} is not a folder — give the folder that holds the graph JSON")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port — use 0-65535 (0 = any free port)")
    from sae_lens_clt.viewer.server import list_graphs, make_server

    graphs = list_graphs(folder)
    if not graphs:
        raise UsageError(
            f"{args.dir} holds no graph JSON — write one with `sae-lens-clt attribute` or "
            "`sae-lens-clt demo --out DIR`"
        )
    try:
        httpd = make_server(folder, host=args.host, port=args.port, quiet=True)
    except OSError as e:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port} ({e.strerror}) — choose another --port"
        ) from e
    host, port = httpd.server_address[:2]
    print(f"Serving {len(graphs)} graph(s) from {folder} at http://{host}:{port}/ (Ctrl-C stops)")
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0
