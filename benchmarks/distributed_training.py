"""Training throughput at 1 and 2 processes, from the live store and from the disk cache.

Every run is a real ``torchrun`` job on the default model (``python -m torch.distributed.run
--standalone --nproc-per-node N``, gloo on CPU); rank 0 reports the run's tokens/s over the
training steps (model load and normalisation estimate excluded). The layouts:

- ``1 proc``: one process with every CPU thread;
- ``tp=2``: features sharded over two processes (one thread each); from the live store the
  first rank runs the model and broadcasts the activations;
- ``dp=2``: two data-parallel processes (one thread each), each with half of every batch.

The six (layout, data) runs are alternated ``--repeats`` times in one go and the median
tokens/s of each is printed with its ratio to ``1 proc, live``.

    python benchmarks/distributed_training.py [--d-sae 1024] [--steps 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(config: Path, out: Path) -> None:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig
    from sae_lens_clt.training.runner import CLTTrainingRunner

    cfg = CLTTrainingRunnerConfig(**json.loads(config.read_text()))
    runner = CLTTrainingRunner(cfg)
    runner.run()
    if runner.layout is not None and runner.layout.is_main:
        out.write_text(json.dumps(runner.metrics_history[-1]))


def launch(nproc: int, threads: int, cfg: dict, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), __file__, "--worker", str(folder / "cfg.json")]
    cmd += [str(folder / "metrics.json")]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"job failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    m = json.loads((folder / "metrics.json").read_text())
    m["wall_s"] = time.perf_counter() - t0
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-sae", type=int, default=1024, help="features per layer")
    ap.add_argument("--batch", type=int, default=1024, help="train_batch_size_tokens")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return

    import torch

    from sae_lens_clt.activations.cache import build_activation_cache
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

    n_norm = 4
    base = {
        "d_sae": args.d_sae,
        "train_batch_size_tokens": args.batch,
        "training_tokens": args.steps * args.batch,
        "n_batches_for_norm_estimate": n_norm,
        "log_every_n_steps": args.steps,
        "verbose": False,
        "seed": 0,
    }
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        cache = build_activation_cache(
            CLTTrainingRunnerConfig(**base), tmp / "cache", verbose=False
        )
        build_s = time.perf_counter() - t0
        print(
            f"cache: {cache.n_rows:,} tokens, {cache.n_rows * cache.bytes_per_row / 1e6:.0f} MB, "
            f"built in {build_s:.1f} s (model load included)"
        )
        layouts = {
            "1 proc": (1, threads, {}),
            "tp=2": (2, max(1, threads // 2), {"tensor_parallel_size": 2}),
            "dp=2": (2, max(1, threads // 2), {}),
        }
        sources = {"live": {}, "cache": {"cached_activations_path": str(tmp / "cache")}}
        results: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.repeats):
            for lname, (nproc, nthreads, extra) in layouts.items():
                for sname, src in sources.items():
                    cfg = {**base, **extra, **src, "output_path": str(tmp / "out")}
                    m = launch(nproc, nthreads, cfg, tmp / f"{lname}-{sname}-{rep}")
                    results.setdefault((lname, sname), []).append(m["tokens_per_s"])
                    print(
                        f"  run {rep + 1}: {lname:<6} {sname:<5} {m['tokens_per_s']:9.0f} tok/s"
                        f"  (job wall {m['wall_s']:.1f} s)",
                        flush=True,
                    )
    ref = statistics.median(results[("1 proc", "live")])
    print(
        f"\nd_sae={args.d_sae} x 4 layers, batch {args.batch} tokens, {args.steps} steps, "
        f"{threads} CPU threads, torch {torch.__version__}; median of {args.repeats}"
    )
    print(f"{'layout':<8}{'data':<7}{'tokens/s':>10}{'vs 1 proc live':>16}{'cache / live':>14}")
    for lname in layouts:
        live_v = statistics.median(results[(lname, "live")])
        for sname in sources:
            v = statistics.median(results[(lname, sname)])
            ratio = f"{v / live_v:.2f}x" if sname == "cache" else ""
            print(f"{lname:<8}{sname:<7}{v:>10.0f}{v / ref:>15.2f}x{ratio:>14}")


if __name__ == "__main__":
    main()
