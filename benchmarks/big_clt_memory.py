"""Peak RAM of loading a Gemma-2-2B-sized CLT, and rows read by a lazy decoder.

Usage: ``python benchmarks/big_clt_memory.py [--dir DIR] [--keep] [--features 2048]``

1. Build a circuit-tracer-layout CLT with random weights: 26 layers, d_model 2304,
   2048 features per layer, bf16 (about 3.3 GiB of files), one layer at a time, so building
   it needs about one layer's decoder (0.25 GB) of RAM, not the whole CLT.
2. In a fresh subprocess, import ``sae_lens_clt`` (baseline RSS), load the CLT eagerly with
   :meth:`CrossLayerTranscoder.from_pretrained` and read the peak RSS
   (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, cross-checked with ``VmHWM`` of
   ``/proc/self/status``). It must stay below 1.3x the file size. Linux carries a parent's
   ``ru_maxrss`` into its children across fork + exec, so the parent stays small: it never
   imports torch before the measurements, and the build runs in a subprocess of its own.
3. In another subprocess, load it with ``lazy=True``, encode a batch of random inputs and
   ``decode_sparse`` its active features. The lazy decoder counts the rows and bytes it
   read from the ``W_dec_{i}`` files: they must equal the distinct active
   (layer, feature) pairs and their decoder rows, nothing more.
4. Check that the eager and lazy reconstructions agree, print a JSON report, delete the
   files (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_LAYERS, D_MODEL = 26, 2304
BATCH = 16  # tokens encoded in the lazy run


def build(folder: Path, n_layers: int, d_model: int, d_sae: int, seed: int = 0) -> int:
    """Write the CLT layer by layer; return the total size of its files in bytes."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    bf = torch.bfloat16
    for i in range(n_layers):
        enc = {
            f"W_enc_{i}": (torch.randn(d_sae, d_model, generator=gen) / d_model**0.5).to(bf),
            f"b_enc_{i}": torch.zeros(d_sae, dtype=bf),
            f"b_dec_{i}": (0.01 * torch.randn(d_model, generator=gen)).to(bf),
            # z ~ N(0, 1) for x ~ N(0, 1): thresholds in [2, 3] keep ~1% of features active
            f"threshold_{i}": (2.0 + torch.rand(d_sae, generator=gen)).to(bf),
        }
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        del enc
        dec = torch.empty(d_sae, n_layers - i, d_model, dtype=bf)
        for a in range(0, d_sae, 256):  # fill in chunks: no float32 copy of the whole layer
            chunk = torch.randn(min(256, d_sae - a), n_layers - i, d_model, generator=gen)
            dec[a : a + chunk.shape[0]] = (chunk * 0.02).to(bf)
        save_file({f"W_dec_{i}": dec}, str(folder / f"W_dec_{i}.safetensors"))
        del dec
    (folder / "config.yaml").write_text(
        "model_name: google/gemma-2-2b\nmodel_kind: cross_layer_transcoder\n"
        "feature_input_hook: hook_resid_mid\nfeature_output_hook: hook_mlp_out\n"
    )
    return sum(p.stat().st_size for p in folder.iterdir())


def rss_mb() -> float:
    """Peak RSS of this process in MB (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mb() -> float:
    """Peak RSS of this process image in MB (``VmHWM``; not inherited from the parent)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return float("nan")


def child(mode: str, folder: Path, out: Path) -> None:
    """Run in a subprocess: load (eager or lazy), encode + decode a batch, report."""
    import torch

    from sae_lens_clt import CrossLayerTranscoder

    torch.set_num_threads(1)
    report: dict[str, float | int | str | bool] = {
        "mode": mode,
        "baseline_peak_rss_mb": rss_mb(),
        "baseline_vmhwm_mb": hwm_mb(),
    }
    t0 = time.perf_counter()
    clt = CrossLayerTranscoder.from_pretrained(str(folder), lazy=(mode == "lazy"))
    report["load_s"] = time.perf_counter() - t0
    report["peak_rss_after_load_mb"] = rss_mb()
    report["vmhwm_after_load_mb"] = hwm_mb()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, clt.cfg.n_layers, clt.cfg.d_in, generator=gen)
    with torch.no_grad():
        t0 = time.perf_counter()
        acts = clt.encode(x)  # [BATCH, L, F]
        recon = clt.decode_sparse(acts)  # [BATCH, L, d]
        report["encode_decode_s"] = time.perf_counter() - t0
    active = (acts != 0).any(0)  # [L, F]: features active on some token
    report["active_pairs"] = int(active.sum())
    report["active_per_token"] = float((acts != 0).sum() / BATCH)
    L, d, F = clt.cfg.n_layers, clt.cfg.d_in, clt.cfg.d_sae
    report["needed_row_bytes"] = int(sum(int(active[s].sum()) * (L - s) * d * 2 for s in range(L)))
    report["decoder_bytes"] = int(sum(F * (L - s) * d * 2 for s in range(L)))
    if clt.lazy_decoder is not None:
        report["rows_read"] = clt.lazy_decoder.rows_read
        report["bytes_read"] = clt.lazy_decoder.bytes_read
        report["slice_reads"] = clt.lazy_decoder.reads
        report["w_dec_is_meta"] = all(w.is_meta for w in clt.W_dec)
    report["peak_rss_mb"] = rss_mb()
    report["vmhwm_mb"] = hwm_mb()
    torch.save({"acts": acts, "recon": recon}, out)
    print(json.dumps(report))


def circuit_tracer_child(folder: Path) -> None:
    """Reference: peak RSS of circuit-tracer's own ``load_clt`` (decoder loaded eagerly)."""
    import torch
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    report = {"mode": "circuit_tracer_load_clt", "baseline_vmhwm_mb": hwm_mb()}
    t0 = time.perf_counter()
    load_clt(str(folder), device=torch.device("cpu"), dtype=torch.bfloat16, lazy_decoder=False)
    report["load_s"] = time.perf_counter() - t0
    report["peak_rss_after_load_mb"] = rss_mb()
    report["vmhwm_after_load_mb"] = hwm_mb()
    print(json.dumps(report))


def run_child(mode: str, folder: Path, out: Path, features: int = 0) -> dict:
    """Run ``--child mode`` in a fresh interpreter and parse its JSON report."""
    cmd = [sys.executable, __file__, "--child", mode, "--dir", str(folder), "--out", str(out)]
    cmd += ["--features", str(features)] if features else []
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a temp dir)")
    ap.add_argument("--features", type=int, default=2048, help="features per layer")
    ap.add_argument("--keep", action="store_true", help="keep the files afterwards")
    ap.add_argument("--reuse", type=Path, help="measure a CLT folder kept by an earlier --keep")
    ap.add_argument(
        "--compare-circuit-tracer",
        action="store_true",
        help="also measure circuit-tracer's load_clt on the same files",
    )
    ap.add_argument(
        "--child", choices=["build", "eager", "lazy", "circuit_tracer"], help=argparse.SUPPRESS
    )
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "build":
        t0 = time.perf_counter()
        size = build(args.dir, N_LAYERS, D_MODEL, args.features)
        done = {"size": size, "build_s": time.perf_counter() - t0, "peak_rss_mb": rss_mb()}
        print(json.dumps(done))
        return 0
    if args.child == "circuit_tracer":
        circuit_tracer_child(args.dir)
        return 0
    if args.child:
        child(args.child, args.dir, args.out)
        return 0

    root = Path(tempfile.mkdtemp(prefix="big_clt_", dir=args.dir))
    folder = args.reuse or root / "clt"
    try:
        if args.reuse:
            size = sum(p.stat().st_size for p in folder.iterdir())
            built = {"size": size, "build_s": 0.0, "peak_rss_mb": 0.0}
        else:
            built = run_child("build", folder, root / "unused", args.features)
        size = built["size"]
        print(
            f"built {size / 2**30:.2f} GiB in {built['build_s']:.0f} s (builder peak RSS "
            f"{built['peak_rss_mb']:.0f} MB); parent peak RSS {rss_mb():.0f} MB",
            file=sys.stderr,
        )
        eager = run_child("eager", folder, root / "eager.pt")
        lazy = run_child("lazy", folder, root / "lazy.pt")
        ct = None
        if args.compare_circuit_tracer:
            ct = run_child("circuit_tracer", folder, root / "unused")

        import torch

        a, b = torch.load(root / "eager.pt"), torch.load(root / "lazy.pt")
        same_acts = torch.equal(a["acts"], b["acts"])
        max_diff = float((a["recon"].float() - b["recon"].float()).abs().max())
    finally:
        if args.keep or args.reuse:
            print(f"kept {folder}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    file_mb = size / 2**20
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}",
        "shape": f"{N_LAYERS} layers x {args.features} features x d_model {D_MODEL}, bf16",
        "file_mb": round(file_mb, 1),
        "build_s": round(built["build_s"], 1),
        "builder_peak_rss_mb": round(built["peak_rss_mb"], 1),
        "eager": eager,
        "lazy": lazy,
        "eager_peak_over_files": round(eager["peak_rss_after_load_mb"] / file_mb, 3),
        "eager_vmhwm_over_files": round(eager["vmhwm_after_load_mb"] / file_mb, 3),
        "eager_added_over_files": round(
            (eager["vmhwm_after_load_mb"] - eager["baseline_vmhwm_mb"]) / file_mb, 3
        ),
        "lazy_peak_over_files": round(lazy["peak_rss_mb"] / file_mb, 3),
        "lazy_vmhwm_over_files": round(lazy["vmhwm_mb"] / file_mb, 3),
        "lazy_read_fraction_of_decoder": round(lazy["bytes_read"] / lazy["decoder_bytes"], 4),
        "eager_lazy_same_acts": same_acts,
        "eager_lazy_recon_max_abs_diff": max_diff,
    }
    if ct is not None:
        report["circuit_tracer_load_clt"] = ct
        report["circuit_tracer_peak_over_files"] = round(ct["vmhwm_after_load_mb"] / file_mb, 3)
    print(json.dumps(report, indent=2))
    ok = (
        report["eager_peak_over_files"] < 1.3
        and report["eager_vmhwm_over_files"] < 1.3
        and lazy["rows_read"] == lazy["active_pairs"]
        and lazy["bytes_read"] == lazy["needed_row_bytes"]
        and same_acts
        and max_diff < 1e-2
    )
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
