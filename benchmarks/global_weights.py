"""Global weights of the shipped default CLT: queries, tables, and their cost.

1. **Load** the default model and CLT with their labels (``cli.demo.load_default``) and build
   :class:`~sae_lens_clt.circuits.global_weights.GlobalWeights` (per unit norm scale).
2. **Queries**: ``top_inputs`` / ``top_outputs`` (``kind="virtual"``) of ``--features``, with
   labels, and the time of one query (best of 5).
3. **Table**: ``top_table`` over every layer pair with ``--k`` (virtual), timed.
4. **Data**: ``fit`` on ``--max-tokens`` tokens of the default eval split (packed by
   ``evals.token_batches_from_texts``, context 128), timed; the measured mean ``1/σ`` per
   layer; ``top_inputs(kind="data")`` of the same features; ``top_table(kind="data")`` timed.
5. **Width** (``--wide F``): a random CLT of ``F`` features per layer on the default model,
   ``top_table`` over all layer pairs timed, with the growth of the process' resident memory
   during the call (sampled every 5 ms; a dense ``V`` of one layer pair alone would be
   ``4 F²`` bytes).

Run: ``python benchmarks/global_weights.py [--features 3:10 2:905] [--k 10]
[--max-tokens 20000] [--wide 16384] [--threads 1]``. Prints every figure it measures.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings

import torch

from sae_lens_clt.circuits.global_weights import GlobalWeights
from sae_lens_clt.cli.demo import load_default
from sae_lens_clt.default_model import load_default_dataset
from sae_lens_clt.evals import token_batches_from_texts


def feature(text: str) -> tuple[int, int]:
    layer, feat = text.split(":")
    return int(layer), int(feat)


def show(title: str, rows: list[tuple[int, int, float]], labels: dict) -> None:
    print(f"  {title}")
    for layer, feat, w in rows:
        print(f"    {layer}:{feat:<5d} {w:+9.4f}  {labels.get((layer, feat), '')}")


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class RssPeak:
    """The process' resident memory, sampled every 5 ms: ``grew`` = peak - at entry (bytes)."""

    def __enter__(self) -> RssPeak:
        import psutil  # a dev extra

        self._proc = psutil.Process()
        self._base = self._peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.grew = self._peak - self._base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=feature, nargs="+", default=[(3, 10), (2, 905)])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=20_000)
    parser.add_argument("--wide", type=int, default=0, help="features per layer of a random CLT")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    start = time.perf_counter()
    model, clt, labels, name, _ = load_default(None)
    gw = GlobalWeights(model, clt)
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    print(
        f"{name}: {L} layers x {F} features, hook {clt.cfg.metadata.hook_name}; "
        f"loaded and built in {time.perf_counter() - start:.2f}s (threads={args.threads})"
    )

    for t, g in args.features:
        print(f"\n{t}:{g} {labels.get((t, g), '')!r}")
        show("top_inputs (virtual, per unit norm scale)", gw.top_inputs((t, g), args.k), labels)
        if t < L - 1:
            show("top_outputs (virtual)", gw.top_outputs((t, g), 5), labels)
    t, g = args.features[0]
    print(
        f"\none top_inputs query: {best_of(5, lambda: gw.top_inputs((t, g), args.k)) * 1e3:.1f} ms"
    )
    s = min(layer for layer, _ in args.features)
    print(
        f"one top_outputs query: {best_of(5, lambda: gw.top_outputs((s, 0), args.k)) * 1e3:.1f} ms"
    )

    start = time.perf_counter()
    table = gw.top_table(k=args.k, progress=False)
    took = time.perf_counter() - start
    pairs = L * (L - 1) // 2
    print(
        f"top_table (virtual, all {pairs} layer pairs, k={args.k}, chunk 1024): {took:.2f}s "
        f"({pairs * F * F / took / 1e9:.2f} G feature pairs/s); table "
        f"{list(table.weights.shape)}"
    )

    texts = load_default_dataset("eval")["text"]
    batches = token_batches_from_texts(model, texts, context_size=128, batch_size=16)
    start = time.perf_counter()
    gw.fit(batches, max_tokens=args.max_tokens, progress=False)
    took = time.perf_counter() - start
    nnz = sum(a.val.numel() for a in gw.layer_activations)
    print(
        f"\nfit: {gw.n_tokens} tokens in {took:.2f}s ({gw.n_tokens / took:.0f} tok/s), "
        f"{nnz} active entries (mean L0 {nnz / gw.n_tokens / L:.1f} per layer); "
        f"mean 1/sigma per layer {[round(float(v), 3) for v in gw.measured_norm_scale]}"
    )
    for t, g in args.features:
        print(f"\n{t}:{g} {labels.get((t, g), '')!r}")
        show(
            "top_inputs (data: V * E[a_s a_t] / E[a_t])",
            gw.top_inputs((t, g), args.k, "data"),
            labels,
        )
    start = time.perf_counter()
    gw.top_table(k=args.k, kind="data", progress=False)
    print(f"\ntop_table (data, all layer pairs, k={args.k}): {time.perf_counter() - start:.2f}s")
    if args.wide:
        wide(model, clt, args.wide, args.k)


def wide(model, clt, F: int, k: int) -> None:
    """Step 5: ``top_table`` of a random CLT with ``F`` features per layer."""
    cfg = dict(clt.cfg.to_dict(), d_sae=F)
    state = {}
    gen = torch.Generator().manual_seed(0)
    for key, shape in type(clt.cfg).from_dict(cfg).expected_shapes().items():
        state[key] = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
    big = type(clt).from_dict_and_state(cfg, state)
    del state
    gw = GlobalWeights(model, big)
    start = time.perf_counter()
    with RssPeak() as rss:
        gw.top_table(k=k, progress=False)
    took = time.perf_counter() - start
    grew = rss.grew / 2**20
    L = big.cfg.n_layers
    pairs = L * (L - 1) // 2
    print(
        f"\nrandom CLT, {L} layers x {F} features: top_table (virtual, all layer pairs, k={k}) "
        f"{took:.1f}s ({pairs * F * F / took / 1e9:.2f} G feature pairs/s); peak RSS grew "
        f"{grew:.0f} MiB (one dense layer pair would be {4 * F * F / 2**20:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
