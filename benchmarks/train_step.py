"""Time of one CLT training step (loss, backward, Adam) by share of active features.

Synthetic normalized activations (no model), 4 layers × ``--d-sae`` features, ``--tokens``
tokens per step; thresholds set from the data so each feature fires on the given share.
Each density is run with the sparse route (``decode_sparse_below=1``) and the dense route
(``decode_sparse_below=0``); the runner switches between them at ``decode_sparse_below``
(default 0.07). Median of ``--reps`` steps after one warm-up step.

Run: ``python benchmarks/train_step.py [--tokens 1024] [--d-sae 1024] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sae_lens_clt.transcoders.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
)


def step_seconds(x, y, d_sae: int, density: float, sparse_below: float, reps: int):
    cfg = TrainingCrossLayerTranscoderConfig(
        n_layers=x.shape[1],
        d_in=x.shape[2],
        d_sae=d_sae,
        init_active_fraction=density,
        decode_sparse_below=sparse_below,
    )
    clt = TrainingCrossLayerTranscoder(cfg)
    clt.initialize_from_data(x)
    opt = torch.optim.Adam(clt.parameters(), lr=1e-4)
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        out = clt.training_losses(x, y, 0.1)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), out.acts.l0()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.tokens, 4, args.d_model)
    y = torch.randn(args.tokens, 4, args.d_model)
    print(
        f"{args.tokens} tokens, 4 layers x {args.d_sae} features, d_model {args.d_model}, "
        f"{torch.get_num_threads()} thread(s); ms per step (loss + backward + Adam)"
    )
    print(f"{'active':>8} {'L0':>6} {'sparse':>9} {'dense':>9}")
    for density in (0.01, 0.02, 0.05, 0.1, 0.2):
        t_sparse, l0 = step_seconds(x, y, args.d_sae, density, 1.0, args.reps)
        t_dense, _ = step_seconds(x, y, args.d_sae, density, 0.0, args.reps)
        print(f"{density:>8.0%} {l0:>6.0f} {t_sparse * 1e3:>8.0f}  {t_dense * 1e3:>8.0f}")


if __name__ == "__main__":
    main()
