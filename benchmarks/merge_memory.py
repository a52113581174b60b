"""Peak memory of merging a feature-sharded checkpoint, against the size of the CLT.

Writes a checkpoint of ``--shards`` feature shards of a random CLT (``--layers`` x
``--d-model`` x ``--d-sae`` features per layer, fp32; weights and Adam's moments, as a training checkpoint holds them), then
merges it in a fresh process, twice, alternated: with ``merge_checkpoint`` (one shard in
memory at a time, positioned writes) and the naive way (read every shard's weights, ``torch.cat``,
``save_model``). Each child reports its peak resident memory during the merge (sampled
every 2 ms) above what it held before it. The merged files must be identical.

    python benchmarks/merge_memory.py [--layers 4] [--d-model 512] [--d-sae 16384] [--shards 4]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, json, threading, time, psutil, torch
from pathlib import Path
import sae_lens_clt.transcoders  # noqa: F401  (registers the architectures)
from sae_lens_clt.training import checkpoints
from sae_lens_clt.training.merge import merge_checkpoint
from sae_lens_clt.transcoders import CrossLayerTranscoder
from safetensors import safe_open
kind, ckpt, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
proc = psutil.Process()
before = proc.memory_info().rss
peak = [before]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
if kind == "merge_checkpoint":
    merge_checkpoint(ckpt, out, verbose=False)
else:
    state = checkpoints.read_state_json(ckpt)
    files = checkpoints.shard_files(ckpt, state)
    parts = []
    for f in files:  # the weights only (a checkpoint also holds Adam's moments)
        with safe_open(str(f), framework="pt") as h:
            parts.append({k: h.get_tensor(k) for k in h.keys() if k.startswith("clt.")})
    dims = state["feature_dims"]
    merged = {}
    for key in parts[0]:
        if key.startswith("clt."):
            d = dims[key]
            merged[key[4:]] = parts[0][key] if d is None else torch.cat([p[key] for p in parts], d)
    del parts
    from sae_lens_clt import registry
    cfg_dict = dict(state["clt_config"], device="cpu")
    reg = registry.registration(cfg_dict["architecture"])
    train = reg.training_class(reg.training_config_class.from_dict(cfg_dict))
    train.load_state_dict(merged)
    del merged
    train.to_inference().save_model(out)
done.set()
sampler.join()
print(json.dumps({"peak_mb": (peak[0] - before) / 2**20}))
"""


def write_checkpoint(folder: Path, L: int, d: int, F: int, shards: int) -> int:
    """A step folder of ``shards`` feature shards; returns the inference CLT's bytes."""
    import torch

    from sae_lens_clt.training import checkpoints
    from sae_lens_clt.transcoders import (
        FeatureShard,
        TrainingCrossLayerTranscoder,
        TrainingCrossLayerTranscoderConfig,
    )

    folder.mkdir(parents=True)
    n_bytes = 0
    for r in range(shards):
        cfg = TrainingCrossLayerTranscoderConfig(n_layers=L, d_in=d, d_out=d, d_sae=F // shards)
        torch.manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            clt = TrainingCrossLayerTranscoder(cfg)
        clt.reset_parameters(shard=FeatureShard.of(r, shards, F))
        with torch.no_grad():
            clt.in_scale.fill_(2.0)
            clt.out_scale.fill_(0.5)
        opt = torch.optim.Adam(clt.parameters())
        for p in clt.parameters():  # one step, so the shard holds Adam's moments as a real one
            p.grad = torch.zeros_like(p)
        opt.step()
        steps = torch.zeros(L, F // shards, dtype=torch.long)
        checkpoints.write_shard(folder, clt, opt, steps, r, shards)
        n_bytes += sum(
            t.numel() * t.element_size()
            for k, t in clt.state_dict().items()
            if k in cfg.expected_shapes() and (r == 0 or k != "b_dec")
        )
        if r == 0:
            dims = checkpoints.state_feature_dims(clt, opt)
            clt_config = clt.cfg.to_dict()
            clt_config["d_sae"] = F
            progress = checkpoints.Checkpoint(0, 0, 0, steps, None, shards, 1, "cache")
            checkpoints.write_state_json(folder, progress, opt, dims, {}, clt_config)
        del clt, opt
    return n_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=16384, help="features per layer")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        size = write_checkpoint(tmp / "step_1", args.layers, args.d_model, args.d_sae, args.shards)
        print(
            f"CLT: {args.layers} layers x d_model {args.d_model} x {args.d_sae:,} features/layer, "
            f"{size / 1e6:.0f} MB fp32, in {args.shards} shards of {size / args.shards / 1e6:.0f} MB"
        )
        peaks: dict[str, list[float]] = {"merge_checkpoint": [], "naive": []}
        for rep in range(args.repeats):
            for kind in peaks:
                out = tmp / f"{kind}-{rep}"
                r = subprocess.run(
                    [sys.executable, "-c", CHILD, kind, str(tmp / "step_1"), str(out)],
                    capture_output=True,
                    text=True,
                )
                if r.returncode:
                    raise SystemExit(r.stderr[-3000:])
                peaks[kind].append(json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"])
                print(f"  run {rep + 1}: {kind:<17} peak +{peaks[kind][-1]:.0f} MB", flush=True)
        a, b = tmp / "merge_checkpoint-0", tmp / "naive-0"
        same = filecmp.cmp(a / "sae_weights.safetensors", b / "sae_weights.safetensors", False)
        for kind, v in peaks.items():
            p = min(v)
            print(f"{kind:<17} peak +{p:.0f} MB = {p / (size / 1e6):.2f}x the CLT")
        print(f"merged weight files identical: {same}")


if __name__ == "__main__":
    main()
