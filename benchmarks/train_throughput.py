"""CLT training throughput vs. the matmul-bound rate for the same FLOPs, in one run.

1. Train a CLT on the default model with ``CLTTrainingRunner`` for ``--steps`` steps and
   read its tokens/s (the full loop: model forward passes for activations, SAELens'
   mixing buffer, CLT forward + backward, Adam).
2. In the same process, time the bare dense matmuls that one training step of a dense CLT
   needs (encoder and every decoder block, forward and both backward products) on a
   batch of the same size: that gives the matmul-bound tokens/s for those FLOPs.
3. Print both and their ratio.

Run: ``python benchmarks/train_throughput.py [--d-sae 1024] [--batch 1024] [--steps 240]``.
The steady-state rate is taken over the last quarter of the steps, once the sparsity
coefficient has warmed up and few features are active.
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_lens_clt.default_model import DEFAULT_MODEL, load_model
from sae_lens_clt.training.runner import CLTTrainingRunner, CLTTrainingRunnerConfig


def matmul_bound_seconds(
    n_layers: int, d_in: int, d_out: int, d_sae: int, batch: int, repeats: int = 5
) -> tuple[float, float]:
    """(seconds, FLOPs) of the dense matmuls of one CLT training step on ``batch`` tokens.

    The time is the fastest of ``repeats`` runs: the bound is what the machine can do.
    """
    L, F, B = n_layers, d_sae, batch
    x = torch.randn(B, d_in)
    a = torch.randn(B, F)
    w_enc = torch.randn(d_in, F)
    w_dec = [torch.randn(F, (L - s) * d_out) for s in range(L)]
    g_dec = [torch.randn(B, (L - s) * d_out) for s in range(L)]

    def step() -> None:
        for _ in range(L):  # encoder: forward, grad wrt input, grad wrt weight
            _ = x @ w_enc
            _ = a @ w_enc.T
            _ = x.T @ a
        for s in range(L):  # decoder block of source s: forward and both backward products
            _ = a @ w_dec[s]
            _ = g_dec[s] @ w_dec[s].T
            _ = a.T @ g_dec[s]

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    flops = 3 * 2 * B * F * (L * d_in + d_out * L * (L + 1) // 2)
    return min(times), flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model-dir", default=None, help="default model folder (default: package)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(model_dir=args.model_dir)
    L, d = model.cfg.n_layers, model.cfg.d_model
    cfg = CLTTrainingRunnerConfig(
        model_name=DEFAULT_MODEL,
        d_sae=args.d_sae,
        training_tokens=args.steps * args.batch,
        train_batch_size_tokens=args.batch,
        log_every_n_steps=max(1, args.steps // 16),
        verbose=False,
        seed=0,
    )
    runner = CLTTrainingRunner(cfg, override_model=model)
    t0 = time.perf_counter()
    runner.run()
    wall = time.perf_counter() - t0
    hist = runner.metrics_history
    final = hist[-1]
    whole_tps = final["tokens_per_s"]
    # steady state: the last quarter of the run (sparsity warmed up, sparse decode in use)
    a = next(h for h in hist if h["step"] >= 0.75 * args.steps)
    train_tps = (final["tokens"] - a["tokens"]) / max(1e-9, final["elapsed_s"] - a["elapsed_s"])
    t_mm, flops = matmul_bound_seconds(L, d, d, args.d_sae, args.batch)
    mm_tps = args.batch / t_mm
    print(
        f"CLT {L} layers x {args.d_sae} features, d_model {d}; batch {args.batch} tokens; "
        f"{args.steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"final L0 {final['l0']:.1f}/layer, NMSE {final['nmse']:.3f} (short run)")
    print(
        "L0 and tokens/s along the run: "
        + ", ".join(
            f"step {h['step']}: L0 {h['l0']:.0f}, {h['tokens_per_s']:,.0f} tok/s" for h in hist[::4]
        )
    )
    print(f"training loop, whole run (incl. model forward + buffer): {whole_tps:,.0f} tokens/s")
    print(
        f"training loop, steady state (steps {a['step']}-{final['step']}, L0 {final['l0']:.1f}): "
        f"{train_tps:,.0f} tokens/s"
    )
    print(
        f"matmul-bound for the same dense FLOPs ({flops / 1e9:.2f} GFLOP/step): "
        f"{mm_tps:,.0f} tokens/s ({flops / t_mm / 1e9:.1f} GFLOP/s)"
    )
    print(
        f"ratio training / matmul-bound: steady state {train_tps / mm_tps:.0%}, whole run "
        f"{whole_tps / mm_tps:.0%}"
    )
    print(f"(wall time incl. setup and norm estimation: {wall:.1f}s)")


if __name__ == "__main__":
    main()
