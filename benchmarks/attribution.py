"""Benchmark ``sae_lens_clt.attribute``: time and peak memory, growth with prompt length and
with ``max_feature_nodes``.

Steps:

1. Model: the embedded default model when its weights exist, else a random model of the
   same architecture (4 layers, d_model 128, d_mlp 512, LN, learned positions, vocab 3072).
   CLT: random, ``--d-sae`` features per layer, JumpReLU thresholds calibrated on random
   text so that about ``--l0`` features per layer and token are active (the trained CLT
   will replace it).
2. Each configuration runs in a fresh subprocess: load, warm up on a 4-token prompt, then
   time ``attribute`` (best of ``--repeats``) and read the peak RSS (``ru_maxrss``) above
   the RSS just before the timed runs.
3. Print a table: tokens, active features, rows, backward passes, seconds, rows/s, extra
   peak RSS, dense adjacency size, model + CLT size.

Usage: ``python benchmarks/attribution.py [--threads 1] [--d-sae 2048] [--l0 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_setup(d_sae: int, l0: int, seed: int = 0):
    """(model, clt, description): the default model (or its random twin) + a random CLT."""
    from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig

    try:
        from sae_lens_clt.default_model import load_model

        model = load_model()
        what = "default model (trained weights)"
    except (ImportError, FileNotFoundError, OSError):
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=256,
            d_vocab=3072, act_fn="gelu", normalization_type="LN", seed=seed,
        )  # fmt: skip
        model = HookedTransformer(cfg).eval()
        what = "random model with the default architecture (default weights not found)"
    L, d = model.cfg.n_layers, model.cfg.d_model
    cfg = CrossLayerTranscoderConfig(n_layers=L, d_in=d, d_sae=d_sae)
    clt = CrossLayerTranscoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clt.W_enc.copy_(torch.randn(L, d, d_sae, generator=gen))
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=gen) * (0.5 / d**0.5))
        tokens = torch.randint(1, model.cfg.d_vocab, (8, 64), generator=gen)
        hooks = [cfg.hook_in(s) for s in range(L)]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
        x = torch.stack([cache[h].flatten(0, 1) for h in hooks], dim=1)  # [n, L, d]
        pre = torch.einsum("nli,lif->lfn", x, clt.W_enc)  # [L, F, n]
        frac = l0 / d_sae
        clt.threshold.copy_(torch.quantile(pre, 1 - frac, dim=-1).clamp(min=1e-3))
    return model, clt, what


def worker(conf: dict) -> dict:
    """One configuration, in this (fresh) process."""
    torch.set_num_threads(conf["threads"])
    from sae_lens_clt.attribution import attribute

    model, clt, what = load_setup(conf["d_sae"], conf["l0"])
    gen = torch.Generator().manual_seed(1)
    vocab = model.cfg.d_vocab
    prompt = torch.randint(1, vocab, (conf["n_tokens"] - 1,), generator=gen)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    prompt = torch.cat([torch.tensor([bos if bos is not None else 0]), prompt])
    kwargs = {"max_feature_nodes": conf["max_feature_nodes"], "batch_size": conf["batch_size"]}
    attribute(model, clt, prompt[:4], **kwargs)  # warm up
    rss_before = current_rss_mb()
    times, graph = [], None
    for _ in range(conf["repeats"]):
        graph = None  # free the previous graph first: one adjacency alive at a time
        t = time.perf_counter()
        graph = attribute(model, clt, prompt, **kwargs)
        times.append(time.perf_counter() - t)
        n_rows = graph.n_features + graph.n_logits
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    clt_mb = sum(p.numel() * p.element_size() for p in clt.parameters()) / 2**20
    return {
        **conf,
        "setup": what,
        "active": graph.metadata["n_active_features"],
        "rows": n_rows,
        "n_nodes": graph.n_nodes,
        "backward_passes": graph.metadata["n_backward_passes"],
        "seconds": min(times),
        "forward_s": graph.metadata["timing_s"]["forward"],
        "extra_peak_rss_mb": max(0.0, peak_rss_mb() - rss_before),
        "adjacency_mb": graph.adjacency.numel() * 4 / 2**20,
        "model_mb": param_mb,
        "clt_mb": clt_mb,
    }


def run_config(conf: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(conf)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--l0", type=int, default=32, help="active features per layer and token")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", default="8,16,32,64")
    p.add_argument("--max-feature-nodes", default="none,1024,512,256,128")
    p.add_argument("--mfn-length", type=int, default=64, help="prompt length for that series")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    base = {
        "threads": args.threads, "d_sae": args.d_sae, "l0": args.l0,
        "batch_size": args.batch_size, "repeats": args.repeats, "max_feature_nodes": None,
    }  # fmt: skip
    confs = [{**base, "n_tokens": int(n)} for n in args.lengths.split(",")]
    for m in args.max_feature_nodes.split(","):
        if m != "none":
            confs.append({**base, "n_tokens": args.mfn_length, "max_feature_nodes": int(m)})
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, "
        f"{args.threads} thread(s), {os.cpu_count()} CPUs; CLT d_sae={args.d_sae}/layer, "
        f"L0≈{args.l0}/layer/token, batch_size={args.batch_size}"
    )
    header = (
        f"{'tokens':>6} {'max_feat':>8} {'active':>7} {'rows':>6} {'bwd':>4} {'time s':>7} "
        f"{'fwd s':>6} {'rows/s':>7} {'peak+MB':>8} {'adj MB':>7} {'model+CLT MB':>12}"
    )
    printed_setup = False
    for conf in confs:
        r = run_config(conf)
        if not printed_setup:
            print(f"setup: {r['setup']}")
            print(header)
            printed_setup = True
        mfn = "all" if r["max_feature_nodes"] is None else r["max_feature_nodes"]
        print(
            f"{r['n_tokens']:>6} {mfn!s:>8} {r['active']:>7} {r['rows']:>6} "
            f"{r['backward_passes']:>4} {r['seconds']:>7.3f} {r['forward_s']:>6.3f} "
            f"{r['rows'] / r['seconds']:>7.0f} {r['extra_peak_rss_mb']:>8.1f} "
            f"{r['adjacency_mb']:>7.1f} {r['model_mb'] + r['clt_mb']:>12.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
