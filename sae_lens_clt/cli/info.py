"""``sae-lens-clt info``: build (or load) a CLT and print its shapes."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="print a CLT's configuration and tensor shapes",
        description="Print a CLT's configuration and tensor shapes. Without NAME, builds "
        "a small random CLT and runs one encode / decode on random input.",
    )
    p.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="a release name, an org/repo[/subfolder] Hub id or a CLT folder (any layout)",
    )
    p.add_argument("--path", help="a CLT folder (same as NAME)")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-sae", type=int, default=512, help="features per layer")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sae_lens_clt.cli.errors import UsageError, check_device
    from sae_lens_clt.transcoders import CrossLayerTranscoder, CrossLayerTranscoderConfig

    check_device(args.device)
    if args.name and args.path:
        raise UsageError("give NAME or --path, not both")
    if args.name or args.path:
        clt = CrossLayerTranscoder.from_pretrained(args.name or args.path, device=args.device)
    else:
        cfg = CrossLayerTranscoderConfig(
            n_layers=args.n_layers, d_in=args.d_model, d_sae=args.d_sae, device=args.device
        )
        clt = CrossLayerTranscoder(cfg)
    print(clt)
    print(f"input hook:  {clt.cfg.metadata.hook_name}")
    print(f"output hook: {clt.cfg.metadata.hook_name_out}")
    n_params = 0
    for name, p in clt.named_parameters():
        n_params += p.numel()
        print(f"  {name:<12} {list(p.shape)}  {str(p.dtype).removeprefix('torch.')}")
    print(f"parameters: {n_params:,}")
    x = torch.randn(2, clt.cfg.n_layers, clt.cfg.d_in, device=args.device, dtype=clt.dtype)
    with torch.no_grad():
        acts = clt.encode(x)
        recon = clt.decode_sparse(acts, x)
    print(f"encode {list(x.shape)} -> {list(acts.shape)}; decode -> {list(recon.shape)}")
    return 0
