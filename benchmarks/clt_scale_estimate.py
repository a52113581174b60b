"""A paper estimate of memory per GPU and step time for large CLTs, from measured per-op costs.

1. **Measure here** (this machine, fp32): the time of one shard's training step
   (fused JumpReLU encode, sparse decode, losses, backward) and of its Adam step, on a
   CLT of ``L`` layers, ``d_model`` and ``F`` features per layer, at a batch ``B`` and an
   active share like a trained CLT's. Also the machine's dense-matmul rate (the encoder
   product's shape) and its copy bandwidth.
2. **Count** the work of a step per shard (:func:`step_counts`): the matmul FLOPs (encoder
   forward; its weight gradient is sparse below 7 % active, counted as pattern rows x d),
   the sparse decode FLOPs (forward + both backward products over the active rows), and
   the memory traffic (decoder norms read every step and their gradient written, the
   gradients zero-filled, Adam's 28 bytes per parameter). The *overhead factor* is the
   measured time over ``matmul FLOPs / matmul rate + decode FLOPs / matmul rate + bytes /
   bandwidth``: what our kernels lose against the machine's own rates.
3. **Scale up**: the same counts at the target shape, divided by the target GPU's rates
   (stated below, with their sources' usual figures, not measured here), times the overhead
   factor measured in step 2; plus the communication of a tensor-parallel step (one
   all-reduce of the partial reconstruction ``[B, L, d]``, ring: ``2 (n-1)/n`` bytes over
   the bus bandwidth — NVLink inside a node, the network for a group wider than a node)
   and, with data parallelism, of the gradients; and the data: the live store's model pass
   (``2 · 2.6e9 · B`` FLOPs for Gemma-2-2B) or reading ``x, y`` from a bfloat16 cache.
4. **Memory per GPU** is counted exactly: parameters, gradients and Adam's two moments of
   one shard (fp32), the batch ``x, y [B, L, d]``, the dense pre-activations
   ``[L, B, F/tp]`` the fused encoder makes once, the pattern entries, the partial and full
   reconstructions.

    python benchmarks/clt_scale_estimate.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from sae_lens_clt.transcoders.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
)

GB = 1e9


@dataclass
class Shape:
    name: str
    L: int  # layers
    d: int  # d_model (= d_in = d_out)
    F: int  # features per layer (all shards)
    B: int  # tokens per step (global batch)
    l0: float  # active features per layer and token
    window: float = 1.0  # entries inside the threshold window, per active entry
    tp: int = 1
    dp: int = 1

    @property
    def targets(self) -> int:  # Σ_s (L - s): decoder blocks per feature, summed over layers
        return self.L * (self.L + 1) // 2


@dataclass
class Hardware:
    name: str
    matmul_flops: float  # dense fp32 (TF32) matmul rate achieved, FLOP/s
    bandwidth: float  # memory bandwidth achieved, bytes/s
    tp_bus: float  # all-reduce bus bandwidth inside the tensor-parallel group, bytes/s
    dp_bus: float  # all-reduce bus bandwidth across data-parallel groups, bytes/s
    memory: float  # bytes per device
    gpus_per_node: int = 8
    model_flops: float = 0.0  # the language model's forward (bf16) rate achieved, FLOP/s
    disk: float = 0.0  # the cache's read rate per node, bytes/s


def step_counts(s: Shape) -> dict[str, float]:
    """Work of one training step on one rank (step 2)."""
    Fs = s.F // s.tp  # features per layer in a shard
    Bs = s.B // s.dp  # tokens per data-parallel rank
    params_enc = s.L * s.d * Fs + 3 * s.L * Fs  # W_enc, b_enc, threshold (+ pattern bias)
    params_dec = Fs * s.targets * s.d
    active = Bs * s.L * s.l0 / s.tp  # active (token, feature) entries in the shard
    pattern = (1 + s.window) * active  # active + inside the threshold window
    mean_width = s.targets / s.L  # target layers of a feature, on average
    enc = 2 * Bs * s.L * s.d * Fs  # x @ W_enc
    enc_grad = 2 * pattern * s.d  # sparse weight gradient
    dec = 3 * 2 * active * mean_width * s.d  # forward, d/d values, d/d W
    params = params_enc + params_dec + s.L * s.d  # + b_dec
    traffic = (
        4 * params_dec * 3  # decoder norms: read W_dec; their gradient reads W_dec, writes dW
        + 4 * params  # gradients zero-filled
        + 28 * params  # Adam: read p, g, m, v; write p, m, v
    )
    return {
        "matmul_flops": enc + enc_grad,
        "decode_flops": dec,
        "bytes": traffic,
        "params": params,
        "allreduce_tp_bytes": 4 * Bs * s.L * s.d if s.tp > 1 else 0.0,
        "allreduce_dp_bytes": 4 * params if s.dp > 1 else 0.0,
    }


def memory_per_gpu(s: Shape) -> dict[str, float]:
    """Bytes held by one rank at the peak of a step (step 4)."""
    c = step_counts(s)
    Fs, Bs = s.F // s.tp, s.B // s.dp
    pattern = (1 + s.window) * Bs * s.L * s.l0 / s.tp
    return {
        "weights": 4 * c["params"],
        "gradients": 4 * c["params"],
        "adam": 8 * c["params"],
        "batch x, y": 2 * 4 * Bs * s.L * s.d,
        "pre-activations [L, B, F/tp]": 4 * s.L * Bs * Fs,
        "pattern entries": pattern * (4 * 8 + 8 * 4),  # ~8 float and 4 index tensors
        "reconstructions": 3 * 4 * Bs * s.L * s.d,
    }


def predict_seconds(s: Shape, hw: Hardware, overhead: float) -> dict[str, float]:
    c = step_counts(s)
    compute = (c["matmul_flops"] + c["decode_flops"]) / hw.matmul_flops + c["bytes"] / hw.bandwidth
    # a tensor-parallel group wider than a node all-reduces over the network
    bus = hw.tp_bus if s.tp <= hw.gpus_per_node else hw.dp_bus
    comm_tp = 2 * (s.tp - 1) / s.tp * c["allreduce_tp_bytes"] / bus if s.tp > 1 else 0.0
    comm_dp = 2 * (s.dp - 1) / s.dp * c["allreduce_dp_bytes"] / hw.dp_bus if s.dp > 1 else 0.0
    return {"compute": overhead * compute, "tp all-reduce": comm_tp, "dp all-reduce": comm_dp}


def data_seconds(s: Shape, hw: Hardware, model_params: float) -> dict[str, float]:
    """Per step, the two ways to get the batch: the live store's model pass on the
    group's first rank (``2 · params · B`` FLOPs) plus its broadcast of ``x, y`` (fp32)
    inside the group; or reading ``x, y`` from a bfloat16 cache (once per node: the
    group's ranks share the page cache)."""
    xy = s.B // s.dp * s.L * s.d * 2  # values of x and y per step
    live = 2 * model_params * s.B / s.dp / hw.model_flops + 4 * xy / hw.tp_bus
    cache = 2 * xy / hw.disk
    return {"live store": live, "bf16 cache": cache}


# ---------------------------------------------------------------------- measuring (step 1)
def median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_machine(L: int, d: int, F: int, B: int, reps: int) -> tuple[float, float]:
    x = torch.randn(L, B, d)
    w = torch.randn(L, d, F)
    flops = 2 * L * B * d * F / median_time(lambda: torch.bmm(x, w), reps)
    a = torch.empty(64_000_000 // 4)
    b = torch.empty_like(a)
    bw = 2 * 4 * a.numel() / median_time(lambda: b.copy_(a), reps)  # read + write
    return flops, bw


def measure_step(s: Shape, reps: int) -> tuple[float, float, float]:
    """Median seconds of a step; the measured l0 and window entries per active entry."""
    torch.manual_seed(0)
    cfg = TrainingCrossLayerTranscoderConfig(
        n_layers=s.L,
        d_in=s.d,
        d_sae=s.F,
        init_active_fraction=s.l0 / s.F,
        jumprelu_bandwidth=0.002,  # a narrow window, as in a trained CLT (few entries near θ)
    )
    clt = TrainingCrossLayerTranscoder(cfg)
    x = torch.randn(s.B, s.L, s.d)
    y = torch.randn(s.B, s.L, s.d)
    clt.initialize_from_data(x)
    opt = torch.optim.Adam(clt.parameters(), lr=1e-7)  # the sparsity stays put while timed
    seen = {}

    def step() -> None:
        out = clt.training_losses(x, y, 0.1)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        active = int((out.acts.values != 0).sum())
        seen["l0"] = active / (s.B * s.L)
        seen["window"] = (out.acts.values.numel() - active) / max(1, active)

    return median_time(step, reps), seen["l0"], seen["window"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    here = Shape("measured here", L=8, d=256, F=4096, B=1024, l0=16)
    flops, bw = measure_machine(here.L, here.d, here.F, here.B, args.reps)
    measured, here.l0, here.window = measure_step(here, args.reps)
    machine = Hardware("this machine", flops, bw, 1.0, 1.0, 0.0)
    modelled = sum(predict_seconds(here, machine, 1.0).values())
    overhead = measured / modelled
    print(f"step 1, measured on this machine ({torch.get_num_threads()} threads, fp32):")
    print(f"  dense matmul {flops / 1e9:.1f} GFLOP/s, copy bandwidth {bw / GB:.1f} GB/s")
    c = step_counts(here)
    print(
        f"  training step at L={here.L}, d={here.d}, F={here.F}/layer, B={here.B}, "
        f"l0={here.l0:.1f}/layer (+{here.window:.2f} window entries per active one): "
        f"{measured * 1e3:.1f} ms measured; "
        f"{c['matmul_flops'] / 1e9:.2f} GFLOP matmul + {c['decode_flops'] / 1e9:.2f} GFLOP "
        f"decode + {c['bytes'] / GB:.2f} GB traffic = {modelled * 1e3:.1f} ms at the machine's "
        f"rates -> overhead factor {overhead:.2f}"
    )
    # step 3: the targets, on the stated hardware
    h100 = Hardware(
        "H100 SXM 80 GB",
        matmul_flops=0.6 * 495e12,  # TF32 dense peak 495 TFLOP/s at 60 % utilisation
        bandwidth=0.8 * 3.35e12,  # HBM3 3.35 TB/s at 80 %
        tp_bus=360e9,  # NCCL all-reduce bus bandwidth over NVLink 4 inside a node
        dp_bus=45e9,  # across nodes: 8 x 400 Gb/s InfiniBand per node, ~90 % of 50 GB/s
        memory=80e9,
        model_flops=0.4 * 989e12,  # bf16 dense peak 989 TFLOP/s at 40 % for the model pass
        disk=7e9,  # one PCIe 4 NVMe drive per node, sequential
    )
    gemma_params = 2.6e9
    targets = [
        Shape("Gemma-2-2B, 426k features, 1 node", L=26, d=2304, F=16384, B=4096, l0=50, tp=8),
        Shape("Gemma-2-2B, 2.5M features, 4 nodes", L=26, d=2304, F=98304, B=4096, l0=50, tp=32),
    ]
    print(f"\nstep 3, on {h100.name} (rates assumed, see the source), overhead {overhead:.2f}:")
    for s in targets:
        c = step_counts(s)
        t = predict_seconds(s, h100, overhead)
        mem = memory_per_gpu(s)
        total = sum(t.values())
        print(
            f"\n{s.name}: L={s.L}, d_model={s.d}, {s.F:,} features/layer "
            f"({s.L * s.F:,} in all), batch {s.B} tokens, l0 {s.l0}/layer, tp={s.tp}, dp={s.dp}"
        )
        print(
            f"  CLT parameters {c['params'] * s.tp / 1e9:.2f} B ({4 * c['params'] * s.tp / GB:.0f} GB fp32); per GPU:"
        )
        for k, v in mem.items():
            print(f"    {k:<30} {v / GB:7.2f} GB")
        print(f"    {'total':<30} {sum(mem.values()) / GB:7.2f} GB of {h100.memory / GB:.0f}")
        print(
            "  step: "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items())
            + f" = {total * 1e3:.1f} ms"
        )
        for name, dt in data_seconds(s, h100, gemma_params).items():
            step_s = total + dt
            print(
                f"  + data from the {name}: {dt * 1e3:.1f} ms -> {step_s * 1e3:.0f} ms per step, "
                f"{s.B / step_s:,.0f} tokens/s, 100M tokens in {1e8 * step_s / s.B / 3600:.1f} h"
            )


if __name__ == "__main__":
    main()
