"""Activation cache throughput: building, reading (sequential and shuffled), and the disk.

1. **Disk**: write a ``--disk-mb`` file (random bytes), ``fsync``, evict it from the page
   cache (``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``) and time one sequential read
   of it in 8 MB chunks: what this disk gives a reader that has to go to it. Then read it
   again (page cache warm).
2. **Model alone**: ``live.token_batch_rows`` on ``--forward-batches`` token batches
   without writing anything: the rate the model forward allows.
3. **Build**: :func:`~sae_lens_clt.activations.cache.build_activation_cache` of the run
   config's default model (``--context-size``, ``--store-batch-size-prompts``) for
   ``--tokens`` rows in ``--dtype``: MB/s written and tokens/s over the build (model passes
   and writes, after loading the model and data), and the whole call.
4. **Read**: ``read_positions`` in ``--batch``-row reads over one epoch, sequential
   (``shuffle=False``) and shuffled (default windows of 8 shards), each cold (every shard
   ``fsync``-ed and evicted first, a fresh :class:`ActivationCache`) and then warm (page
   cache full): MB/s of rows returned and rows/s.

Run: ``python benchmarks/activation_cache.py [--tokens 300000] [--dtype float32]
[--batch 1024] [--dir /tmp] [--disk-mb 1024] [--keep]``. The files go to a temporary
folder under ``--dir`` and are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sae_lens_clt.activations import live
from sae_lens_clt.activations.cache import ActivationCache, build_activation_cache
from sae_lens_clt.training.config import CLTTrainingRunnerConfig

CHUNK = 8 * 2**20


def evict(path: Path) -> None:
    """Write ``path``'s dirty pages out and drop its pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_file(path: Path) -> float:
    """Seconds to read ``path`` sequentially in 8 MB chunks."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - start


def disk_speed(folder: Path, mb: int) -> dict[str, float]:
    path = folder / "disk_probe.bin"
    block = os.urandom(CHUNK)
    n = max(1, mb * 2**20 // CHUNK)
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(n):
            f.write(block)
        os.fsync(f.fileno())
    write_s = time.perf_counter() - start
    size = path.stat().st_size / 1e6
    evict(path)
    cold = read_file(path)
    warm = read_file(path)
    path.unlink()
    return {"mb": size, "write": size / write_s, "cold": size / cold, "warm": size / warm}


def model_alone(cfg: CLTTrainingRunnerConfig, model, dataset, n_batches: int) -> float:
    """tokens/s of ``token_batch_rows`` alone (model forward, special tokens dropped)."""
    torch.manual_seed(cfg.seed)
    store, hooks = live.make_store(model, dataset, cfg, mixing_fraction=0.0)
    live.token_batch_rows(store, hooks, store.get_batch_tokens())  # warm-up
    rows = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        x, _ = live.token_batch_rows(store, hooks, store.get_batch_tokens())
        rows += len(x)
    return rows / (time.perf_counter() - start)


def read_epoch(cache: ActivationCache, batch: int, shuffle: bool) -> tuple[float, float]:
    """(MB/s, rows/s) of reading one epoch in ``batch``-row ``read_positions`` calls."""
    before = cache.bytes_read
    start = time.perf_counter()
    for a in range(0, cache.n_rows, batch):
        cache.read_positions(a, min(a + batch, cache.n_rows), shuffle=shuffle, seed=0)
    seconds = time.perf_counter() - start
    return (cache.bytes_read - before) / 1e6 / seconds, cache.n_rows / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=300_000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=1024, help="rows per read (a training batch)")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--store-batch-size-prompts", type=int, default=16)
    p.add_argument("--forward-batches", type=int, default=20)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--disk-mb", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message="Dataset is not tokenized")
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="cache_bench_", dir=args.dir))
    try:
        print(f"folder {folder}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
        d = disk_speed(folder, args.disk_mb)
        print(
            f"disk: {d['mb']:.0f} MB file: write + fsync {d['write']:.0f} MB/s, "
            f"sequential read cold (evicted) {d['cold']:.0f} MB/s, warm {d['warm']:.0f} MB/s"
        )

        cfg = CLTTrainingRunnerConfig(
            context_size=args.context_size,
            store_batch_size_prompts=args.store_batch_size_prompts,
            train_batch_size_tokens=args.batch,
            verbose=False,
        )
        model, dataset = live.load_model_for(cfg), live.load_dataset_for(cfg)
        fwd = model_alone(cfg, model, dataset, args.forward_batches)
        print(f"model forward alone (token_batch_rows, no writes): {fwd:,.0f} tokens/s")

        cache = build_activation_cache(
            cfg, folder / "cache", n_tokens=args.tokens, dtype=args.dtype, model=model,
            dataset=dataset, verbose=False,
        )  # fmt: skip
        info = cache.build_info
        mb = info["bytes_written"] / 1e6
        print(
            f"build: {cache.n_rows:,} rows, {cache.n_shards} shards, {mb:.0f} MB "
            f"({args.dtype}, {cache.bytes_per_row:,} B/row), build {info['build_seconds']:.1f} s: "
            f"{mb / info['build_seconds']:.1f} MB/s, "
            f"{info['rows_written'] / info['build_seconds']:,.0f} tokens/s "
            f"(of it {info['write_wait_seconds']:.1f} s waiting for the disk; whole call "
            f"{info['seconds']:.1f} s)"
        )
        del cache
        print(f"read: one epoch in {args.batch}-row read_positions calls")
        for shuffle in (False, True):
            for f in sorted((folder / "cache").glob("shard_*.safetensors")):
                evict(f)
            cold = ActivationCache(folder / "cache")
            c_mb, c_rows = read_epoch(cold, args.batch, shuffle)
            w_mb, w_rows = read_epoch(cold, args.batch, shuffle)
            name = "shuffled  " if shuffle else "sequential"
            print(
                f"  {name}: cold {c_mb:7.1f} MB/s ({c_rows:10,.0f} rows/s), "
                f"warm {w_mb:7.1f} MB/s ({w_rows:10,.0f} rows/s)"
            )
            del cold
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
