"""``sae-lens-clt push``: publish a CLT folder to the Hugging Face Hub (or write it only)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "push",
        help="publish a CLT to the Hugging Face Hub in SAELens + circuit-tracer layouts",
        description="Load the CLT at PATH (a folder of either layout, or a release name) and "
        "write a folder with the SAELens layout, the circuit-tracer layout and a README "
        "model card; upload it to REPO_ID, or with --out only write it to DIR.",
    )
    p.add_argument("path", metavar="PATH", help="a CLT folder (either layout) or a release name")
    p.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, 'org/name'")
    p.add_argument("--out", metavar="DIR", help="write the folder here and do not upload")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default="main", help="branch to push to (default: main)")
    p.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    p.add_argument(
        "--model-name",
        default=None,
        help="base model to record (Hub id, e.g. google/gemma-2-2b); overrides the CLT's own",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_lens_clt.cli.errors import UsageError, check_out_dir
    from sae_lens_clt.publish import push_to_hub
    from sae_lens_clt.transcoders import CrossLayerTranscoder

    if args.repo_id.count("/") != 1:
        raise UsageError(f"REPO_ID {args.repo_id!r} is not 'org/name' — e.g. me/my-clt")
    if args.out:
        check_out_dir(args.out)

    clt = CrossLayerTranscoder.from_pretrained(args.path)
    if args.model_name:
        clt.cfg.metadata.model_name = args.model_name
    result = push_to_hub(
        clt,
        args.repo_id,
        revision=args.revision,
        private=args.private,
        token=args.token,
        out_dir=args.out,
    )
    if result.folder is not None:
        print(
            f"wrote {result.folder} ({' + '.join(result.layouts)} layouts, README.md); "
            "nothing uploaded"
        )
    else:
        print(f"pushed to https://huggingface.co/{args.repo_id} ({result.commit_url})")
    return 0
