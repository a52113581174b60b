"""Our ``attribute`` against circuit-tracer 0.5's at GPT-2-small shape: time, peak memory,
and our share of the matmul-bound time.

Steps:

1. Setup (the same in every process, from seeds): a random TransformerLens model of
   GPT-2-small's shape (12 layers, d_model 768, 12 heads, d_mlp 3072, LayerNorm with
   weights away from 1, learned positions, vocabulary 50,257) and a random CLT of 12 × 4,096
   JumpReLU features whose thresholds are calibrated on random tokens so that about
   ``--active`` (0.5 %) of the features are active per layer and token. The parent writes
   the CLT once in circuit-tracer's layout (``to_circuit_tracer``); circuit-tracer's side
   loads it with its own ``load_clt`` and ``TransformerLensReplacementModel``, as its user
   would.
2. Each (tool, prompt length, ``max_feature_nodes``) runs in a fresh subprocess, ours and
   theirs alternating: build, warm up on 4 tokens, then time one ``attribute`` call on a
   random prompt (BOS + random ids) and read the peak RSS of the process (``ru_maxrss``:
   setup included), the peak RSS during the call (``VmHWM`` reset just before it: the
   resident model and CLT plus the attribution) and the RSS before the call. Both use batch
   size 128 by default.
3. Ours also: the FLOPs the call executes (``torch.utils.flop_counter.FlopCounterMode``, a
   second call) and this process' dense-matmul rate (a ``[4096, 768] @ [768, 4096]`` GEMM,
   best of 5), so ``matmul-bound share = FLOPs / rate / our time``.
4. Print a table and the ratios (ours / theirs) per configuration. circuit-tracer runs whose
   estimated time exceeds ``--ct-max-s`` (from the 16-token full-graph run, growing as
   tokens²) are skipped and reported as skipped.

Run: ``python benchmarks/attribution_vs_circuit_tracer.py [--lengths 16,32,64]
[--max-feature-nodes none,1024] [--threads 1] [--ct-max-s 900]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.test_architectures

N_LAYERS, D_MODEL, N_HEADS, D_MLP, VOCAB, D_SAE = 12, 768, 12, 3072, 50257, 4096


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_call_peak() -> None:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def call_peak_mb() -> float:
    """Peak RSS since :func:`reset_call_peak` (``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build(active: float, seed: int = 0, with_clt: bool = True):
    """Step 1: ``(model, clt)``, identical in every process (``with_clt=False``: the model
    only, ``clt`` None — circuit-tracer's side, which loads the CLT from its files, so its
    peak memory holds one CLT, as ours does)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_MODEL // N_HEADS,
        d_mlp=D_MLP, d_vocab=VOCAB, n_ctx=128, act_fn="gelu_new", normalization_type="LN",
        seed=seed,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith(".w"):
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=gen))
        if not with_clt:
            return model, None
        ccfg = CrossLayerTranscoderConfig(n_layers=N_LAYERS, d_in=D_MODEL, d_sae=D_SAE)
        clt = CrossLayerTranscoder(ccfg)
        clt.W_enc.copy_(torch.randn(clt.W_enc.shape, generator=gen))
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=gen) * (0.5 / D_MODEL**0.5))
        clt.b_dec.zero_()
        tokens = torch.randint(1, VOCAB, (16, 128), generator=gen)
        tokens[:, 0] = 0  # BOS, as in the prompts; position 0 is left out of the calibration
        hooks = [ccfg.hook_in(s) for s in range(N_LAYERS)]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
        for s, h in enumerate(hooks):
            pre = cache[h][:, 1:].flatten(0, 1) @ clt.W_enc[s]  # [n, F], n = 16 * 127
            clt.threshold[s].copy_(pre.quantile(1 - active, dim=0).clamp(min=1e-3))
    return model, clt


def word_tokenizer():
    """A word-level tokenizer over the vocabulary (``<bos>`` = 0, then ``w1`` …), built
    offline: circuit-tracer's replacement model reads the tokenizer's special ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>"] + [f"w{i}" for i in range(1, VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<bos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<bos>",
        unk_token="<bos>", add_bos_token=True, name_or_path="words",
    )  # fmt: skip


def prompt_tokens(n_tokens: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.cat([torch.tensor([0]), torch.randint(1, VOCAB, (n_tokens - 1,), generator=gen)])


def matmul_rate() -> float:
    a, b = torch.randn(4096, D_MODEL), torch.randn(D_MODEL, 4096)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 * D_MODEL * 4096 / best  # FLOP/s


def worker(conf: dict) -> dict:
    """Step 2 (and 3 for ours), in a fresh process."""
    torch.set_num_threads(conf["threads"])
    model, clt = build(conf["active"], with_clt=conf["tool"] == "ours")
    tokens = prompt_tokens(conf["n_tokens"])
    mfn = conf["max_feature_nodes"]
    if conf["tool"] == "ours":
        from sae_lens_clt.attribution import attribute

        def run(toks):
            return attribute(model, clt, toks, max_feature_nodes=mfn, batch_size=conf["batch"])
    else:
        from circuit_tracer import attribute as ct_attribute

        from tests.test_architectures import circuit_tracer_model

        model.tokenizer = word_tokenizer()  # circuit-tracer reads its special ids
        rm = circuit_tracer_model(model, Path(conf["ct_folder"]))  # its own load_clt
        del model

        def run(toks):
            return ct_attribute(
                toks, rm, max_feature_nodes=mfn, batch_size=conf["batch"], verbose=False
            )

    run(tokens[:4])  # warm up
    before = rss_mb()
    process_peak = peak_mb()  # so far: setup (building / loading model and CLT) + warm-up
    reset_call_peak()
    t = time.perf_counter()
    graph = run(tokens)
    seconds = time.perf_counter() - t
    out = {
        **conf,
        "seconds": seconds,
        "peak_rss_mb": max(peak_mb(), process_peak),
        "call_peak_mb": call_peak_mb(),
        "rss_before_mb": before,
        "active": int(graph.active_features.shape[0]),
    }
    if conf["tool"] == "ours":
        from torch.utils.flop_counter import FlopCounterMode

        del graph
        counter = FlopCounterMode(display=False)
        with counter:
            g2 = run(tokens)
        out["flops"] = counter.get_total_flops()
        out["rows"] = g2.n_features + g2.n_logits
        out["matmul_flops_per_s"] = matmul_rate()
    return out


def run_config(conf: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(conf)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return {**conf, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="16,32,64")
    p.add_argument("--max-feature-nodes", default="none,1024")
    p.add_argument("--active", type=float, default=0.005)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ct-max-s", type=float, default=900.0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp()) / "clt"
    _, clt = build(args.active)
    clt.to_circuit_tracer(folder)
    del clt
    lengths = [int(x) for x in args.lengths.split(",")]
    mfns = [None if x == "none" else int(x) for x in args.max_feature_nodes.split(",")]
    base = {"active": args.active, "batch": args.batch, "threads": args.threads,
            "ct_folder": str(folder)}  # fmt: skip
    rows, ct_full_16 = [], None
    for mfn in mfns:
        for n in lengths:
            conf = {**base, "n_tokens": n, "max_feature_nodes": mfn}
            ours = run_config({**conf, "tool": "ours"})
            est = None
            if ct_full_16 is not None and mfn is None:
                est = ct_full_16 * (n / 16) ** 2
            if est is not None and est > args.ct_max_s:
                theirs = {**conf, "tool": "circuit-tracer", "skipped": f"~{est:.0f}s estimated"}
            else:
                theirs = run_config({**conf, "tool": "circuit-tracer"})
                if mfn is None and n == 16 and "seconds" in theirs:
                    ct_full_16 = theirs["seconds"]
            rows.append((ours, theirs))
            print(json.dumps({"ours": ours, "theirs": theirs}), flush=True)
    print(
        "\n| tokens | max_feature_nodes | active | ours s | circuit-tracer s | time ratio | "
        "ours peak MB | circuit-tracer peak MB | memory ratio | ours call peak MB | "
        "circuit-tracer call peak MB | call memory ratio | our GFLOP | matmul-bound share |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ours, theirs in rows:
        mfn = ours["max_feature_nodes"] or "all"
        bound = ours["flops"] / ours["matmul_flops_per_s"] / ours["seconds"]
        if "seconds" in theirs:
            t_ratio = f"{ours['seconds'] / theirs['seconds']:.3f}"
            m_ratio = f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}"
            c_ratio = f"{ours['call_peak_mb'] / theirs['call_peak_mb']:.2f}"
            t_s, t_m = f"{theirs['seconds']:.1f}", f"{theirs['peak_rss_mb']:.0f}"
            t_c = f"{theirs['call_peak_mb']:.0f}"
        else:
            t_ratio = m_ratio = c_ratio = t_c = "—"
            t_s, t_m = theirs.get("skipped") or f"failed: {theirs.get('error')}", "—"
        print(
            f"| {ours['n_tokens']} | {mfn} | {ours['active']} | {ours['seconds']:.2f} | {t_s} | "
            f"{t_ratio} | {ours['peak_rss_mb']:.0f} | {t_m} | {m_ratio} | "
            f"{ours['call_peak_mb']:.0f} | {t_c} | {c_ratio} | "
            f"{ours['flops'] / 1e9:.1f} | {bound:.0%} |"
        )
    print(f"(matmul rate measured in our processes: "
          f"{rows[0][0]['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s)")  # fmt: skip


if __name__ == "__main__":
    main()
