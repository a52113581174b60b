"""Long prompts in bounded memory: peak memory of ``attribute`` against prompt length.

Steps:

1. Model: random, 8 layers, d_model 256 (8 heads of 32), d_mlp 1024, n_ctx 4096, LN, learned
   positions, vocab 512. CLT: random 8 × 4,096 JumpReLU, thresholds calibrated on random
   text so that about ``--l0`` features per layer and token are active.
2. Each run is a fresh subprocess: build, warm up on 8 tokens, read the RSS, run
   ``attribute(..., max_feature_nodes=M, memory_budget=B)`` on a random prompt of ``T``
   tokens, read the peak RSS (``ru_maxrss``) above the RSS before the run ("extra peak";
   the model and CLT weights are below it). ``--unbounded T ...`` also runs the default path
   (no budget: one-pass forward, dense ``[N, N]`` graph) at those lengths and compares the
   two graphs (same active features, kept features and edges to float tolerance).
3. Print per run: tokens, active features, nodes, rows, backward passes, seconds, the
   printed estimate, the extra peak, and the peak per token; then the growth exponent of
   the extra peak between successive lengths (1 = linear, 2 = quadratic).

The batch size and the query chunk are fixed (``--batch-size``, ``--query-chunk``) so that
what grows with ``T`` is what is measured; left to the budget, the batch size fills it.

Usage: ``python benchmarks/long_prompts.py [--tokens 512 1024 2048 4096] [--budget 8GB]
[--max-feature-nodes 128] [--unbounded 512 1024] [--batch-size 16] [--query-chunk 256]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(l0: float, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig

    cfg = HookedTransformerConfig(
        n_layers=8, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=4096, d_vocab=512,
        act_fn="gelu", normalization_type="LN", seed=seed, initializer_range=0.05,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    L, d, F = 8, 256, 4096
    clt = CrossLayerTranscoder(CrossLayerTranscoderConfig(n_layers=L, d_in=d, d_sae=F))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clt.W_enc.copy_(torch.randn(L, d, F, generator=gen))
        for w in clt.W_dec:
            w.copy_(torch.randn(w.shape, generator=gen) * (0.5 / d**0.5))
        tokens = torch.randint(1, 512, (4, 256), generator=gen)
        hooks = [clt.cfg.hook_in(s) for s in range(L)]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in hooks)
        x = torch.stack([cache[h].flatten(0, 1) for h in hooks], dim=1)  # [n, L, d]
        pre = torch.einsum("nli,lif->lfn", x, clt.W_enc)  # [L, F, n]
        clt.threshold.copy_(torch.quantile(pre, 1 - l0 / F, dim=-1).clamp(min=1e-3))
    return model, clt


def worker(conf: dict) -> dict:
    torch.set_num_threads(conf["threads"])
    from sae_lens_clt.attribution import attribute

    model, clt = build(conf["l0"])
    gen = torch.Generator().manual_seed(1)
    prompt = torch.cat(
        [torch.tensor([0]), torch.randint(1, 512, (conf["n_tokens"] - 1,), generator=gen)]
    )
    kw = {
        "max_feature_nodes": conf["max_feature_nodes"],
        "memory_budget": conf["budget"],
        "batch_size": conf["batch_size"],
        "query_chunk": conf["query_chunk"] if conf["budget"] is not None else None,
    }
    attribute(model, clt, prompt[:8], **kw)  # warm up
    before = current_rss_mb()
    t = time.perf_counter()
    graph = attribute(model, clt, prompt, **kw)
    seconds = time.perf_counter() - t
    extra = peak_rss_mb() - before
    if conf.get("save"):
        graph.save(conf["save"])
    memory = graph.metadata["memory"]
    return {
        "n_tokens": conf["n_tokens"],
        "budget": conf["budget"],
        "active": graph.metadata["n_active_features"],
        "nodes": graph.n_nodes,
        "rows": graph.n_features + graph.n_logits,
        "passes": graph.metadata["n_backward_passes"],
        "batch_size": memory["batch_size"],
        "query_chunk": memory["query_chunk"],
        "seconds": seconds,
        "estimate_mb": memory["estimate_bytes"] / 2**20,
        "extra_peak_mb": extra,
    }


def run(conf: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(conf)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a_path: str, b_path: str) -> str:
    from sae_lens_clt.attribution import AttributionGraph

    a, b = AttributionGraph.load(a_path), AttributionGraph.load(b_path)
    same_feats = torch.equal(a.active_features, b.active_features)
    da, db = a.dense_adjacency(), b.dense_adjacency()
    rel = float((da - db).abs().max() / db.abs().max()) if same_feats else float("nan")
    return f"same kept features: {same_feats}, max edge difference / max edge: {rel:.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--budget", default="8GB")
    ap.add_argument("--max-feature-nodes", type=int, default=128)
    ap.add_argument("--l0", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=16, help="fixed: the passes' share")
    ap.add_argument("--query-chunk", type=int, default=256, help="forward chunk (budget runs)")
    ap.add_argument("--unbounded", type=int, nargs="*", default=[512, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    print(
        f"# 8 layers, d_model 256, CLT 8 x 4096 (~{args.l0:g} active per layer and token), "
        f"max_feature_nodes {args.max_feature_nodes}, batch size {args.batch_size}, budget "
        f"runs in query chunks of {args.query_chunk}, {args.threads} threads"
    )
    base = {
        "l0": args.l0,
        "max_feature_nodes": args.max_feature_nodes,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "query_chunk": args.query_chunk,
    }
    tmp = tempfile.mkdtemp()
    head = (
        f"{'tokens':>6} {'budget':>7} {'active':>8} {'nodes':>8} {'rows':>5} {'passes':>6} "
        f"{'B':>4} {'chunk':>5} {'s':>7} {'est MB':>7} {'peak+ MB':>8} {'MB/token':>8}"
    )
    print(head)
    bounded = []
    for T in args.tokens:
        for budget in ([None] if T in args.unbounded else []) + [args.budget]:
            save = os.path.join(tmp, f"{T}_{budget}.safetensors")
            r = run({**base, "n_tokens": T, "budget": budget, "save": save})
            print(
                f"{T:>6} {str(budget):>7} {r['active']:>8} {r['nodes']:>8} {r['rows']:>5} "
                f"{r['passes']:>6} {r['batch_size']:>4} {str(r['query_chunk']):>5} "
                f"{r['seconds']:>7.1f} {r['estimate_mb']:>7.0f} {r['extra_peak_mb']:>8.0f} "
                f"{r['extra_peak_mb'] / T:>8.3f}",
                flush=True,
            )
            if budget is not None:
                bounded.append(r)
        if T in args.unbounded:
            print(
                f"       {T} tokens, budget vs none: {compare(save, os.path.join(tmp, f'{T}_None.safetensors'))}"
            )
    for a, b in zip(bounded, bounded[1:], strict=False):
        k = math.log(b["extra_peak_mb"] / a["extra_peak_mb"]) / math.log(
            b["n_tokens"] / a["n_tokens"]
        )
        print(f"growth {a['n_tokens']} -> {b['n_tokens']} tokens: peak ∝ T^{k:.2f}")


if __name__ == "__main__":
    main()
