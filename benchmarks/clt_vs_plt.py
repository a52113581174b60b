"""Cross-layer transcoder vs. per-layer transcoders on the default model, matched L0.

1. Train two transcoders with the same runner, data, seed, number of features per layer
   and training tokens: a CLT (every ``s -> t >= s`` decoder block) and per-layer
   transcoders (only the ``s -> s`` blocks; the others are held at zero).
2. Both use TopK activations with the same ``k``, so L0 is matched exactly (``--k``); with
   ``--activation jumprelu`` both get the same sparsity coefficient instead and the table
   shows the L0 each reaches.
3. Evaluate both on held-out text of the default model (facts + natural text): NMSE, L0,
   fraction of LM loss recovered, KL and top-1 agreement; print a table.

Run: ``python benchmarks/clt_vs_plt.py [--d-sae 512] [--k 16] [--training-tokens 400000]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_lens_clt.default_model import DEFAULT_MODEL, held_out_texts, load_model
from sae_lens_clt.evals import evaluate_clt, token_batches_from_texts
from sae_lens_clt.training.runner import CLTTrainingRunner, CLTTrainingRunnerConfig


def held_out_batches(model, n_docs: int, n_batches: int):
    texts = [t for docs in held_out_texts(n_docs).values() for t in docs]
    batches = token_batches_from_texts(model, texts, context_size=128, batch_size=16)
    return batches[:: max(1, len(batches) // n_batches)][:n_batches]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--activation", choices=["topk", "jumprelu"], default="topk")
    p.add_argument("--l0-coefficient", type=float, default=3e-3)
    p.add_argument("--training-tokens", type=int, default=400_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model-dir", default=None, help="default model folder (default: package)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(model_dir=args.model_dir)
    batches = held_out_batches(model, 200, args.eval_batches)
    rows = []
    for name, cross in (("CLT", True), ("per-layer", False)):
        cfg = CLTTrainingRunnerConfig(
            model_name=DEFAULT_MODEL,
            d_sae=args.d_sae,
            activation_fn=args.activation,
            k=args.k if args.activation == "topk" else None,
            l0_coefficient=args.l0_coefficient,
            cross_layer_decoders=cross,
            training_tokens=args.training_tokens,
            train_batch_size_tokens=args.batch,
            verbose=False,
            seed=0,
        )
        t0 = time.perf_counter()
        clt = CLTTrainingRunner(cfg, override_model=model).run()
        seconds = time.perf_counter() - t0
        r = evaluate_clt(model, clt, batches)
        rows.append((name, r, seconds))
        print(f"{name}: {r.summary()}", flush=True)
    L = model.cfg.n_layers
    print(
        f"\n{L} layers x {args.d_sae} features/layer, {args.activation}"
        f"{f' k={args.k}' if args.activation == 'topk' else ''}, "
        f"{args.training_tokens:,} training tokens; held-out tokens: {rows[0][1].n_tokens}"
    )
    print(f"{'':>10} | {'NMSE':>6} | {'L0/layer':>8} | {'loss rec.':>9} | {'KL':>6} | {'top-1':>6}")
    for name, r, _ in rows:
        print(
            f"{name:>10} | {r.nmse:>6.3f} | {r.l0:>8.1f} | {r.fraction_loss_recovered:>9.1%} | "
            f"{r.kl_to_original:>6.3f} | {r.top1_agreement:>6.1%}"
        )


if __name__ == "__main__":
    main()
