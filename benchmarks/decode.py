"""Sparse vs. dense CLT decode, forward and backward, on a GPT-2-small-shaped CLT.

1. Build a CLT with 12 layers, d_model 768 and 4096 features per layer (random weights).
2. For each density (1 %, 5 %, 20 % of features active, chosen at random per token),
   make activations for ``--tokens`` tokens that require grad.
3. Time ``decode`` (dense matmuls) and ``decode_sparse`` (CSR products), forward alone
   and forward + backward (gradients for the activations and every decoder weight),
   taking the median of ``--repeats`` runs after one warm-up, side by side in one process.
4. Check both give the same output, then print times and the dense/sparse ratio.

Run: ``python benchmarks/decode.py`` (add ``--device cuda`` on a GPU machine).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.05, 0.20])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = CrossLayerTranscoderConfig(
        n_layers=args.n_layers, d_in=args.d_model, d_sae=args.d_sae, device=args.device
    )
    clt = CrossLayerTranscoder(cfg)
    L, F, N = args.n_layers, args.d_sae, args.tokens
    n_dec = sum(w.numel() for w in clt.W_dec)
    print(
        f"CLT: {L} layers, d_model {args.d_model}, {F} features/layer, "
        f"{n_dec / 1e6:.0f}M decoder weights; {N} tokens; device {args.device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}"
    )
    header = (
        f"{'active':>7} | {'dense fwd':>9} {'sparse fwd':>10} {'ratio':>6} | "
        f"{'dense f+b':>9} {'sparse f+b':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for density in args.densities:
        mask = torch.rand(N, L, F, device=args.device) < density
        acts = (torch.rand(N, L, F, device=args.device) + 0.1) * mask
        grad_out = torch.randn(N, L, args.d_model, device=args.device)

        with torch.no_grad():
            dense_out = clt.decode(acts)
            sparse_out = clt.decode_sparse(acts)
        err = (dense_out - sparse_out).abs().max().item()
        assert err < 1e-3 * dense_out.abs().max().item(), f"sparse != dense (max err {err})"

        def fwd(decode, acts=acts):
            def run():
                with torch.no_grad():
                    decode(acts)

            return run

        def fwd_bwd(decode, acts=acts, grad_out=grad_out):
            def run():
                clt.zero_grad(set_to_none=True)
                a = acts.clone().requires_grad_(True)
                (decode(a) * grad_out).sum().backward()

            return run

        t_df = time_it(fwd(clt.decode), args.repeats, args.device)
        t_sf = time_it(fwd(clt.decode_sparse), args.repeats, args.device)
        t_db = time_it(fwd_bwd(clt.decode), args.repeats, args.device)
        t_sb = time_it(fwd_bwd(clt.decode_sparse), args.repeats, args.device)
        print(
            f"{density:>6.0%} | {t_df:>8.3f}s {t_sf:>9.3f}s {t_df / t_sf:>5.1f}x | "
            f"{t_db:>8.3f}s {t_sb:>9.3f}s {t_db / t_sb:>5.1f}x"
        )


if __name__ == "__main__":
    main()
