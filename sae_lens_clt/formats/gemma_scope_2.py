"""Reading the Gemma Scope 2 CLT layout (what circuit-tracer's ``load_gemma_scope_2_clt`` reads).

The layout: a ``config.yaml`` with ``model_kind: cross_layer_transcoder``, the hooks
(``feature_input_hook`` / ``feature_output_hook``, circuit-tracer's names) and
``transcoders:``, a list of one safetensors file per layer ``i`` (``hf://org/repo/path``
Hub URIs, or local paths). Each file holds JumpReLU parameters in SAELens' orientation::

    w_enc      [d_in, F]
    b_enc      [F]
    threshold  [F]
    b_dec      [d_in]
    w_dec      [F, L, d_in]    (target layers 0..L-1; only i..L-1 are used)
    affine_skip_connection [d_in, d_in]   (optional)

Steps:

1. Read ``config.yaml``; resolve each entry of ``transcoders`` to a local file: ``hf://``
   URIs through ``huggingface_hub.hf_hub_download`` (so the Hub cache and
   ``HF_HUB_OFFLINE`` work as everywhere else), relative paths against the folder of
   ``config.yaml``.
2. Check every file's tensors and shapes against layer 0's.
3. Assemble our state dict: ``W_enc[i] = w_enc``, ``W_dec.{i} = w_dec[:, i:]`` (a feature
   read at layer ``i`` writes to ``i..L-1``; the entries for earlier layers are dropped, as
   circuit-tracer does), ``W_skip[i] = affine_skip_connection``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae_lens_clt import registry
from sae_lens_clt.formats.circuit_tracer import CONFIG_FILENAME as CT_CONFIG_FILENAME
from sae_lens_clt.formats.circuit_tracer import hook_from_circuit_tracer
from sae_lens_clt.formats.circuit_tracer import read_config as read_ct_config
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import dtype_name, read_tensors, tensor_dtype, tensor_shapes

LAYOUT = "gemma_scope_2"


def is_gemma_scope_2(folder: Path) -> bool:
    """Whether ``folder`` holds a ``config.yaml`` listing per-layer ``transcoders`` files."""
    cfg = folder / CT_CONFIG_FILENAME
    return cfg.is_file() and isinstance(read_ct_config(folder).get("transcoders"), list)


def resolve_file(entry: str, folder: Path) -> Path:
    """One ``transcoders`` entry -> a local file (``hf://org/repo/path[@rev]`` via the Hub)."""
    if entry.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        spec, _, revision = entry[len("hf://") :].partition("@")
        parts = spec.split("/")
        if len(parts) < 3:
            raise CLTFormatError(
                f"{folder / CT_CONFIG_FILENAME}: transcoder entry {entry!r} is not "
                "'hf://org/repo/path/to/file.safetensors'"
            )
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        return Path(hf_hub_download(repo_id, filename, revision=revision or None))
    path = Path(entry).expanduser()
    return path if path.is_absolute() else folder / path


def _layout(folder: Path) -> tuple[list[Path], dict[str, tuple[int, ...]], dict[str, Any]]:
    """``(layer files, tensor shapes every file must have, cfg_dict)`` from ``config.yaml``
    and layer 0's header (steps 1-2; no tensor data is read)."""
    config = read_ct_config(folder)
    source = str(folder / CT_CONFIG_FILENAME)
    files = [resolve_file(str(e), folder) for e in config["transcoders"]]
    if not files:
        raise CLTFormatError(f"{source}: 'transcoders' lists no files")
    if not files[0].is_file():
        raise CLTFormatError(f"{files[0]}: file not found (layer 0 of {source})")
    shapes = tensor_shapes(files[0])
    for name in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"):
        if name not in shapes:
            raise CLTFormatError(
                f"{files[0]}: missing tensor {name!r} (found {sorted(shapes)}); a Gemma Scope 2 "
                "CLT file holds w_enc, w_dec, b_enc, b_dec and threshold"
            )
    d_in, d_sae = shapes["w_enc"]
    L = len(files)
    want = {
        "w_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "threshold": (d_sae,),
        "b_dec": (d_in,),
        "w_dec": (d_sae, L, d_in),
    }
    skip = "affine_skip_connection" in shapes
    if skip:
        want["affine_skip_connection"] = (d_in, d_in)
    metadata: dict[str, Any] = {
        "model_name": config.get("model_name"),
        "hook_name": hook_from_circuit_tracer(
            config.get("feature_input_hook", "hook_resid_mid"), source
        ),
        "hook_name_out": hook_from_circuit_tracer(
            config.get("feature_output_hook", "hook_mlp_out"), source
        ),
    }
    cfg_dict = {
        "architecture": registry.SKIP_CLT if skip else registry.CLT,
        "n_layers": L,
        "d_in": d_in,
        "d_out": d_in,
        "d_sae": d_sae,
        "activation_fn": "jumprelu",
        "dtype": dtype_name(tensor_dtype(files[0], "w_enc")),
        "metadata": metadata,
    }
    return files, want, cfg_dict


def read_cfg_dict(folder: Path) -> dict[str, Any]:
    """Our config dict of a Gemma Scope 2 CLT folder, from headers only."""
    return _layout(folder)[2]


def read(folder: Path, dtype: torch.dtype | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(cfg_dict, state_dict)`` of a Gemma Scope 2 CLT folder (steps 1-3)."""
    files, want, cfg_dict = _layout(folder)
    source = str(folder / CT_CONFIG_FILENAME)
    L = len(files)
    layers = []
    for i, path in enumerate(files):
        got = tensor_shapes(path) if path.is_file() else None
        if got is None:
            raise CLTFormatError(f"{path}: file not found (layer {i} of {source})")
        wrong = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
        if wrong:
            raise CLTFormatError(
                f"{path}: tensors {wrong} differ from layer 0's ({ {k: want[k] for k in wrong} }); "
                f"every layer file of {source} must have the same shapes, with w_dec over all "
                f"{L} layers"
            )
        params = read_tensors(path, list(want))
        params["w_dec"] = params["w_dec"][:, i:].clone()  # drop targets < i now: peak = final
        layers.append(params)
    dt = dtype or layers[0]["w_enc"].dtype
    state: dict[str, torch.Tensor] = {
        "W_enc": torch.stack([p["w_enc"] for p in layers]).to(dt),
        "b_enc": torch.stack([p["b_enc"] for p in layers]).to(dt),
        "threshold": torch.stack([p["threshold"] for p in layers]).to(dt),
        "b_dec": torch.stack([p["b_dec"] for p in layers]).to(dt),
    }
    for i, p in enumerate(layers):
        state[f"W_dec.{i}"] = p["w_dec"].to(dt)
    if "affine_skip_connection" in want:
        state["W_skip"] = torch.stack([p["affine_skip_connection"] for p in layers]).to(dt)
    return dict(cfg_dict, dtype=dtype_name(dt)), state
