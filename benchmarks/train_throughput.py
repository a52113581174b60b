"""CLT training throughput vs. the matmul-bound rate for the same FLOPs, in one run.

1. **From scratch**: train a CLT on the default model with ``CLTTrainingRunner`` for
   ``--steps`` steps, with the shipped CLT's first-stage settings (``--steps 2343`` is its
   whole first stage, 2.4 M tokens), and read its tokens/s (the full loop: model forward passes for
   activations, SAELens' mixing buffer, CLT forward + backward, Adam). A short run never
   gets as sparse as a finished one, so the L0 along the run is printed too.
2. **At trained sparsity**: continue training the shipped CLT (``from_pretrained_path``,
   with the sparsity coefficient, lr and JumpReLU settings of its last training stage, no KL
   term) for ``--continue-steps`` steps: the rate a long run has for most of its steps.
3. In the same process, time the bare dense matmuls that one training step of a dense CLT
   needs (encoder and every decoder block, forward and both backward products) on a batch
   of the same size; the fastest of 5 runs gives the matmul-bound tokens/s for those FLOPs.
   Both loops do the same useful work as that dense step; the sparse path needs fewer FLOPs
   for it, which is the point of using it.
4. Print the rates and their ratios.

Run: ``python benchmarks/train_throughput.py [--steps 2343] [--continue-steps 120]``
(about 12 minutes; ``--steps 240`` about 3, but a run that short is mostly sparsity warm-up,
where L0 is high and the step runs dense).
Steady-state rates are taken over the last quarter (from scratch) or the last three
quarters (continued) of the steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_lens_clt.default_model import DEFAULT_MODEL, load_model
from sae_lens_clt.loading.releases import DEFAULT_CLT
from sae_lens_clt.training.runner import CLTTrainingRunner, CLTTrainingRunnerConfig
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder


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


def train(model, steps: int, batch: int, d_sae: int, **overrides) -> list[dict[str, float]]:
    cfg = CLTTrainingRunnerConfig(
        model_name=DEFAULT_MODEL,
        d_sae=d_sae,
        training_tokens=steps * batch,
        train_batch_size_tokens=batch,
        log_every_n_steps=max(1, steps // 16),
        verbose=False,
        seed=0,
        **overrides,
    )
    runner = CLTTrainingRunner(cfg, override_model=model)
    runner.run()
    return runner.metrics_history


def rates(hist: list[dict[str, float]], from_fraction: float) -> tuple[float, float, dict]:
    """(whole-run tokens/s, steady-state tokens/s from ``from_fraction`` of the run, first)."""
    final = hist[-1]
    first = next(h for h in hist if h["step"] >= from_fraction * final["step"])
    steady = (final["tokens"] - first["tokens"]) / max(
        1e-9, final["elapsed_s"] - first["elapsed_s"]
    )
    return final["tokens_per_s"], steady, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-sae", type=int, default=None, help="default: the shipped CLT's")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2343, help="2343: the shipped first stage")
    p.add_argument("--continue-steps", type=int, default=120, help="0 skips part 2")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model-dir", default=None, help="default model folder (default: package)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(model_dir=args.model_dir)
    L, d = model.cfg.n_layers, model.cfg.d_model
    shipped = CrossLayerTranscoder.from_pretrained(DEFAULT_CLT)
    shipped_cfg = shipped.cfg.metadata.training_config or {}
    d_sae = args.d_sae or shipped.cfg.d_sae
    print(
        f"CLT {L} layers x {d_sae} features, d_model {d}; batch {args.batch} tokens; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    t_mm, flops = matmul_bound_seconds(L, d, d, d_sae, args.batch)
    rows = []

    # the shipped CLT's first-stage settings (its recipe), or the runner's defaults
    stages = shipped.cfg.metadata.training_stages or [shipped_cfg]
    recipe_keys = ("l0_coefficient", "lr", "store_batch_size_prompts", "context_size")
    recipe = {k: stages[0][k] for k in recipe_keys if k in stages[0]}
    if d_sae != shipped.cfg.d_sae:
        recipe = {}
    print(f"from scratch with {recipe or 'the runner defaults'}")
    hist = train(model, args.steps, args.batch, d_sae, **recipe)
    whole, steady, first = rates(hist, 0.75)
    print(
        "from scratch, L0 along the run: "
        + ", ".join(f"step {h['step']}: {h['l0']:.0f}" for h in hist[::4])
        + f"; final NMSE {hist[-1]['nmse']:.3f}"
    )
    rows.append((f"from scratch, whole run ({args.steps} steps)", whole))
    rows.append((f"from scratch, steps {first['step']}-{hist[-1]['step']}", steady))

    if args.continue_steps and d_sae == shipped.cfg.d_sae:
        keep = ("l0_coefficient", "lr", "jumprelu_bandwidth", "jumprelu_tanh_scale")
        settings = {k: shipped_cfg[k] for k in keep if k in shipped_cfg}
        hist = train(
            model,
            args.continue_steps,
            args.batch,
            d_sae,
            from_pretrained_path=DEFAULT_CLT,
            architecture=shipped.cfg.architecture(),
            l0_warm_up_steps=0,
            **settings,
        )
        _, steady_c, first_c = rates(hist, 0.25)
        l0 = sum(h["l0"] for h in hist) / len(hist)
        label = f"continuing the shipped CLT (mean L0 {l0:.1f}), steps {first_c['step']}-"
        rows.append((label + str(hist[-1]["step"]), steady_c))

    t_mm2, _ = matmul_bound_seconds(L, d, d, d_sae, args.batch)  # again, after the runs
    t_mm = min(t_mm, t_mm2)
    mm_tps = args.batch / t_mm
    print(
        f"matmul-bound for the same dense FLOPs ({flops / 1e9:.2f} GFLOP/step): "
        f"{mm_tps:,.0f} tokens/s ({flops / t_mm / 1e9:.1f} GFLOP/s; fastest of 10 runs)"
    )
    for name, tps in rows:
        print(f"{name}: {tps:,.0f} tokens/s = {tps / mm_tps:.0%} of matmul-bound")


if __name__ == "__main__":
    main()
