"""Training checkpoints: one folder per step, sharded by features, written atomically,
read back at any tensor-parallel size, without pickle.

A checkpoint ``step_{N}/`` of a job with ``tp`` feature shards holds:

- ``shard-{t:05d}-of-{tp:05d}.safetensors`` (one per shard, written by the shard's
  data-parallel rank 0): the training transcoder's state dict for features
  ``[t F/tp, (t+1) F/tp)`` (``clt.*``, normalisation scales included), Adam's moments
  (``optim.{param index}.{name}``) and ``steps_since_fired [L, F/tp]``;
- ``rng-{d:05d}-of-{dp:05d}.safetensors``: the torch RNG state of data-parallel group
  ``d``'s data reader (the live store's mixing buffer draws from it);
- ``training_state.json``: step, tokens, batches drawn, the layout (``tp``, ``dp``), the
  data source, which dimension of each tensor is the feature dimension
  (``feature_dims``; ``null`` = replicated), Adam's param groups, the run's and the
  transcoder's configs (``d_sae`` = all features per layer);
- ``clt/``: the inference transcoder (SAELens layout, scales folded, all features),
  loadable on its own.

1. :func:`begin` (rank 0) clears a stale ``.step_{N}.partial`` staging folder; every rank
   then writes its files into it; :func:`commit` (rank 0, after a barrier) renames it to
   ``step_{N}`` in one step, so a crash — of any rank — never leaves a half-written
   ``step_{N}``: the last complete checkpoint is intact and a resume starts from it.
2. :func:`load_checkpoint` restores a rank's shard of the transcoder and of Adam's state for
   the *current* layout: each tensor is assembled from the slices of the saved shards that
   overlap this rank's features (``safetensors.safe_open(...).get_slice``: only those bytes
   are read), so a job resumes on a different number of feature shards. A checkpoint from
   before sharding (one ``training_state.safetensors``) reads as a single shard.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from sae_lens_clt.formats.atomic import atomic_save_safetensors, atomic_write_json
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.transcoders.clt import FeatureShard

STATE_JSON = "training_state.json"
LEGACY_STATE_TENSORS = "training_state.safetensors"  # single-process checkpoints of 0.2
INFERENCE_FOLDER = "clt"


def shard_filename(tp_rank: int, tp: int) -> str:
    return f"shard-{tp_rank:05d}-of-{tp:05d}.safetensors"


def rng_filename(dp_rank: int, dp: int) -> str:
    return f"rng-{dp_rank:05d}-of-{dp:05d}.safetensors"


@dataclass
class Checkpoint:
    """What a checkpoint restores besides the weights."""

    step: int
    n_tokens: int
    batches_drawn: int
    steps_since_fired: torch.Tensor  # [L, F_shard]
    rng_state: torch.Tensor | None
    tp: int = 1
    dp: int = 1
    data_source: str = "live"
    runner_config: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_checkpoint(folder: Path) -> bool:
    return (folder / STATE_JSON).is_file()


def latest_checkpoint(path: Path) -> Path | None:
    """``path`` itself if it is a checkpoint, else its newest complete ``step_{N}``."""
    if is_checkpoint(path):
        return path
    found = [p for p in path.glob("step_*") if p.name[5:].isdigit() and is_checkpoint(p)]
    return max(found, key=lambda p: int(p.name[5:])) if found else None


# ---------------------------------------------------------------------- the feature dims
def feature_dims(clt: Any) -> dict[str, int | None]:
    """For each tensor of ``clt.state_dict()``: the dimension that indexes features, or
    None (replicated). Read from the config's ``expected_shapes`` at ``d_sae`` and
    ``d_sae + 1``: the dimension that grows is the feature dimension."""
    cfg = clt.cfg
    a = cfg.expected_shapes()
    b = dataclasses.replace(cfg, d_sae=cfg.d_sae + 1).expected_shapes()
    dims: dict[str, int | None] = {}
    for name in clt.state_dict():
        if name in a and a[name] != b[name]:
            dims[name] = next(
                i for i, (u, v) in enumerate(zip(a[name], b[name], strict=True)) if u != v
            )
        else:
            dims[name] = None
    return dims


def state_feature_dims(clt: Any, optimizer: torch.optim.Optimizer) -> dict[str, int | None]:
    """:func:`feature_dims` for every tensor a shard file holds (``clt.*``, ``optim.*``,
    ``steps_since_fired``)."""
    own = feature_dims(clt)
    dims = {f"clt.{k}": v for k, v in own.items()}
    params = dict(clt.named_parameters())
    names = list(params)
    per_param = {id(p): own.get(n) for n, p in params.items()}
    for idx, state in optimizer.state_dict()["state"].items():
        p = params[names[idx]]
        for name, value in state.items():
            same_shape = torch.is_tensor(value) and value.shape == p.shape
            dims[f"optim.{idx}.{name}"] = per_param[id(p)] if same_shape else None
    dims["steps_since_fired"] = 1
    return dims


# ---------------------------------------------------------------------- writing
def staging_folder(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.partial"


def begin(folder: Path) -> Path:
    """Rank 0: an empty staging folder for ``folder`` (a stale one from a crash is cleared)."""
    staging = staging_folder(folder)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def write_shard(
    staging: Path,
    clt: Any,
    optimizer: torch.optim.Optimizer,
    steps_since_fired: torch.Tensor,
    tp_rank: int,
    tp: int,
) -> Path:
    """One feature shard's tensors (its data-parallel rank 0 writes it)."""
    tensors = {f"clt.{k}": v for k, v in clt.state_dict().items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["steps_since_fired"] = steps_since_fired
    return atomic_save_safetensors(tensors, staging / shard_filename(tp_rank, tp))


def write_rng(staging: Path, rng_state: torch.Tensor, dp_rank: int, dp: int) -> Path:
    return atomic_save_safetensors({"rng_state": rng_state}, staging / rng_filename(dp_rank, dp))


def write_state_json(
    staging: Path,
    progress: Checkpoint,
    optimizer: torch.optim.Optimizer,
    dims: dict[str, int | None],
    runner_config: dict[str, Any],
    clt_config: dict[str, Any],
) -> Path:
    """Rank 0: the checkpoint's description (``clt_config`` with every feature)."""
    state = {
        "step": progress.step,
        "n_tokens": progress.n_tokens,
        "batches_drawn": progress.batches_drawn,
        "tp": progress.tp,
        "dp": progress.dp,
        "data_source": progress.data_source,
        "feature_dims": dims,
        "optimizer_param_groups": optimizer.state_dict()["param_groups"],
        "runner_config": runner_config,
        "clt_config": clt_config,
    }
    return atomic_write_json(staging / STATE_JSON, state, indent=2, default=str)


def commit(staging: Path, folder: Path, expected: tuple[str, ...] | list[str] = ()) -> Path:
    """Rank 0, after every rank wrote: the staging folder becomes ``folder`` in one rename.

    ``expected``: the files every rank should have written (shards, RNG states)."""
    missing = [n for n in [STATE_JSON, *expected] if not (staging / n).is_file()]
    if missing:
        raise CLTFormatError(
            f"{staging}: incomplete checkpoint, missing {missing}; every rank must write to "
            "the same checkpoint_path (on several nodes: a shared filesystem)"
        )
    fd = os.open(staging, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return folder


# ---------------------------------------------------------------------- reading
def read_state_json(folder: Path) -> dict[str, Any]:
    if not is_checkpoint(folder):
        raise CLTFormatError(
            f"{folder}: not a checkpoint (no {STATE_JSON}); give a step_N folder or the "
            "checkpoint_path that holds them"
        )
    return json.loads((folder / STATE_JSON).read_text())


def shard_files(folder: Path, state: dict[str, Any]) -> list[Path]:
    """The saved shard files, in feature order (checked to exist)."""
    if (folder / LEGACY_STATE_TENSORS).is_file() and "tp" not in state:
        return [folder / LEGACY_STATE_TENSORS]
    tp = int(state["tp"])
    files = [folder / shard_filename(t, tp) for t in range(tp)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CLTFormatError(f"{folder}: checkpoint shard(s) {missing} are missing")
    return files


def saved_d_sae(state: dict[str, Any]) -> int:
    return int(state["clt_config"]["d_sae"])


def read_sharded(
    files: list[Path],
    total: int,
    dims: dict[str, int | None],
    names: list[str],
    shard: FeatureShard,
) -> dict[str, torch.Tensor]:
    """``names`` for features ``[shard.start, shard.stop)``, cut from the saved shards
    (``total`` features per layer split evenly over ``files``)."""
    size = total // len(files)
    out: dict[str, torch.Tensor] = {}
    handles = [safe_open(str(f), framework="pt") for f in files]
    for name in names:
        dim = dims.get(name)
        if dim is None:
            out[name] = handles[0].get_tensor(name)
            continue
        parts = []
        for j, h in enumerate(handles):
            lo, hi = max(shard.start, j * size), min(shard.stop, (j + 1) * size)
            if lo >= hi:
                continue
            sl = h.get_slice(name)
            index = [slice(None)] * len(sl.get_shape())
            index[dim] = slice(lo - j * size, hi - j * size)
            parts.append(sl[tuple(index)])
        out[name] = torch.cat(parts, dim=dim)
    return out


def load_checkpoint(
    folder: Path,
    clt: Any,
    optimizer: torch.optim.Optimizer,
    shard: FeatureShard,
    dp_rank: int = 0,
    dp: int = 1,
) -> Checkpoint:
    """Restore this rank's ``clt`` and ``optimizer`` (features ``shard``) from ``folder``."""
    state = read_state_json(folder)
    files = shard_files(folder, state)
    total = saved_d_sae(state)
    if total != shard.total:
        raise CLTFormatError(
            f"{folder}: the checkpoint has d_sae={total} features per layer, this run "
            f"{shard.total}: resume with the checkpoint's config"
        )
    with safe_open(str(files[0]), framework="pt") as h:
        names = list(h.keys())
    legacy = "feature_dims" not in state
    if legacy and (shard.start, shard.stop) != (0, total):
        raise CLTFormatError(
            f"{folder}: a checkpoint of sae_lens_clt 0.2 (one process) resumes in one process "
            "only (tensor_parallel_size=1); resume it there, then change the layout"
        )
    dims = state["feature_dims"] if not legacy else state_feature_dims(clt, optimizer)
    tensors = read_sharded(files, total, dims, [n for n in names if n != "rng_state"], shard)
    clt.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("clt.")}, strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    saved_dp = int(state.get("dp", 1))
    rng = None
    if files[0].name == LEGACY_STATE_TENSORS:
        with safe_open(str(files[0]), framework="pt") as h:
            rng = h.get_tensor("rng_state")
    elif saved_dp == dp and (folder / rng_filename(dp_rank, dp)).is_file():
        with safe_open(str(folder / rng_filename(dp_rank, dp)), framework="pt") as h:
            rng = h.get_tensor("rng_state")
    return Checkpoint(
        step=state["step"],
        n_tokens=state["n_tokens"],
        batches_drawn=state["batches_drawn"],
        steps_since_fired=tensors["steps_since_fired"].clone(),
        rng_state=rng,
        tp=int(state.get("tp", 1)),
        dp=saved_dp,
        data_source=state.get("data_source", "live"),
        runner_config=state.get("runner_config") or {},
    )
