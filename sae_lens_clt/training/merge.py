"""Merge a feature-sharded checkpoint into one inference CLT, one shard in memory at a time.

Algorithm (checkpoint ``step_N/`` with ``tp`` shards of ``F/tp`` features per layer):

1. ``training_state.json`` gives the transcoder's config with all ``F`` features and the
   feature dimension of every tensor.
2. For each shard ``t``: build the registered training class at ``d_sae = F/tp`` on the CPU,
   load the shard's ``clt.*`` tensors and call its own ``to_inference()`` (the variant's
   folding of the normalisation scales into the weights). Only the ``clt.*`` tensors are
   read (not Adam's moments) into a module built on the meta device, so the peak is about
   two copies of one shard's weights, ``2/tp`` of the CLT — never the whole CLT twice.
3. The first shard fixes each tensor's dtype; the output ``sae_weights.safetensors`` is
   laid out with the full shapes (header first) and each shard's tensors are written into
   their slices of it with positioned writes (``os.pwrite``: for a tensor viewed as
   ``[outer, F, inner]`` around its feature dimension, one write of ``F/tp * inner``
   elements per outer index), so the output never sits in this process's memory;
   replicated tensors (``b_dec``, a skip connection) come from shard 0 only.
4. ``cfg.json``: shard 0's inference config with ``d_sae = F``. Both files are written under
   temporary names and renamed into place.

``layout="circuit-tracer"`` then rewrites the merged file in circuit-tracer's per-layer
layout, one layer in memory at a time
(:func:`~sae_lens_clt.formats.circuit_tracer.write_from_saelens_file`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_lens_clt import registry
from sae_lens_clt.formats import circuit_tracer, saelens
from sae_lens_clt.formats.atomic import atomic_write_json
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import DTYPES, read_tensors, tensor_shapes
from sae_lens_clt.training import checkpoints

_ST_DTYPES = {dtype: name for name, dtype in DTYPES.items()}  # torch dtype -> safetensors name


def _shard_inference(state: dict[str, Any], file: Path, d_sae: int) -> Any:
    """Step 2: one shard as an inference transcoder (scales folded), on the CPU."""
    cfg_dict = dict(state["clt_config"], d_sae=d_sae, device="cpu")
    reg = registry.registration(cfg_dict["architecture"])
    if reg.training_config_class is None:
        raise CLTFormatError(f"architecture {cfg_dict['architecture']!r} has no training class")
    cfg = reg.training_config_class.from_dict({**cfg_dict, "device": "meta"})
    clt = reg.training_class(cfg)  # on the meta device: no init, no memory
    names = [n for n in tensor_shapes(file) if n.startswith("clt.")]  # not Adam's moments
    tensors = read_tensors(file, names)
    clt.load_state_dict({k[4:]: v for k, v in tensors.items()}, assign=True)
    clt.cfg.device = "cpu"  # the tensors now live there; to_inference builds on cfg.device
    clt.device = torch.device("cpu")
    del tensors
    inference = clt.to_inference()
    del clt
    return inference


def _write_at(fd: int, data: Any, offset: int, chunk: int = 1 << 30) -> None:
    """All of ``data`` (a uint8 array) at ``offset``: one ``pwrite`` moves at most ~2 GiB
    and may move less, so write in chunks until every byte is down."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done : done + chunk], offset + done)
        if n <= 0:
            raise OSError(f"pwrite wrote {n} bytes at offset {offset + done}")
        done += n


def _header(
    shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype]
) -> tuple[bytes, dict[str, int]]:
    """safetensors header bytes (8-byte length + padded JSON) and each tensor's data offset."""
    header: dict[str, Any] = {}
    offsets: dict[str, int] = {}
    at = 0
    for name in sorted(shapes):
        size = math.prod(shapes[name]) * dtypes[name].itemsize
        header[name] = {
            "dtype": _ST_DTYPES[dtypes[name]],
            "shape": list(shapes[name]),
            "data_offsets": [at, at + size],
        }
        offsets[name] = at
        at += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, offsets


def merge_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    layout: str = "saelens",
    metadata: dict[str, Any] | None = None,
    verbose: bool = True,
) -> Path:
    """Write the inference CLT of a (sharded) checkpoint to ``out``; returns ``out``.

    ``checkpoint``: a ``step_N`` folder, or the ``checkpoint_path`` holding them (the newest
    complete one is taken). ``layout``: ``"saelens"`` (``cfg.json`` +
    ``sae_weights.safetensors``) or ``"circuit-tracer"``. ``metadata``: fields to set in the
    config's metadata (e.g. ``training_tokens``).
    """
    if layout not in ("saelens", "circuit-tracer"):
        raise ValueError(f"layout must be 'saelens' or 'circuit-tracer', got {layout!r}")
    path = Path(checkpoint)
    folder = checkpoints.latest_checkpoint(path) if path.is_dir() else None
    if folder is None:
        raise CLTFormatError(f"{path}: no checkpoint here (no training_state.json, no step_N)")
    state = checkpoints.read_state_json(folder)
    files = checkpoints.shard_files(folder, state)
    total = checkpoints.saved_d_sae(state)
    size = total // len(files)
    dims = {k[4:]: v for k, v in (state.get("feature_dims") or {}).items() if k.startswith("clt.")}
    out = Path(out)
    if layout == "circuit-tracer":
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            merged = merge_checkpoint(folder, Path(tmp) / "merged", "saelens", metadata, verbose)
            cfg_dict = saelens.read_cfg(merged)
            circuit_tracer.write_from_saelens_file(out, cfg_dict, merged / saelens.WEIGHTS_FILENAME)
        return out
    out.mkdir(parents=True, exist_ok=True)
    weights = out / saelens.WEIGHTS_FILENAME
    fd, tmp_name = tempfile.mkstemp(prefix=f".{weights.name}.", suffix=".tmp", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with open(tmp, "r+b") as f:
            fd = f.fileno()
            offsets: dict[str, int] = {}
            shapes: dict[str, tuple[int, ...]] = {}
            cfg_dict: dict[str, Any] = {}
            base = 0
            for t, file in enumerate(tqdm(files, desc="merging shards", disable=not verbose)):
                part = _shard_inference(state, file, size)
                tensors = dict(part.state_dict())
                if t == 0:  # step 3: the layout of the merged file
                    cfg_dict = part.cfg.to_dict()
                    cfg_dict["d_sae"] = total
                    full_cfg = type(part.cfg).from_dict(cfg_dict)
                    shapes = {k: tuple(v) for k, v in full_cfg.expected_shapes().items()}
                    dtypes = {k: tensors[k].dtype for k in shapes}
                    head, offsets = _header(shapes, dtypes)
                    n_bytes = sum(math.prod(s) * dtypes[k].itemsize for k, s in shapes.items())
                    os.pwrite(fd, head, 0)
                    os.ftruncate(fd, len(head) + n_bytes)
                    base = len(head)
                for name, shape in shapes.items():
                    dim = dims[name] if name in dims else _grown_dim(part.cfg, name, size)
                    if dim is None and t > 0:
                        continue  # replicated: shard 0 wrote it
                    src = tensors[name].detach().contiguous().cpu()
                    at = base + offsets[name]
                    if dim is None:
                        _write_at(fd, src.view(-1).view(torch.uint8).numpy(), at)
                        continue
                    outer, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
                    rows = src.reshape(outer, size * inner).view(torch.uint8).numpy()
                    stride = total * inner * src.dtype.itemsize  # bytes per outer index
                    start = t * size * inner * src.dtype.itemsize
                    for o in range(outer):
                        _write_at(fd, rows[o], at + o * stride + start)
                del part, tensors
            os.fsync(fd)
        os.chmod(tmp, 0o644)
        os.replace(tmp, weights)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    md = cfg_dict.setdefault("metadata", {})
    md.update(metadata or {})
    atomic_write_json(out / saelens.CFG_FILENAME, cfg_dict, indent=2, default=str)
    return out


def _grown_dim(cfg: Any, name: str, size: int) -> int | None:
    """Feature dimension of an inference tensor (checkpoints that predate ``feature_dims``)."""
    a = cfg.expected_shapes()[name]
    b = dataclasses.replace(cfg, d_sae=size + 1).expected_shapes()[name]
    return next((i for i, (u, v) in enumerate(zip(a, b, strict=True)) if u != v), None)
