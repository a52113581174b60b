"""circuit-tracer's CLT layout: per-layer safetensors files and a ``config.yaml``.

Per layer ``i``: ``W_enc_{i}.safetensors`` with ``W_enc_{i} [F, d_model]`` (transposed
relative to SAELens), ``b_enc_{i} [F]``, ``b_dec_{i} [d_model]``, ``threshold_{i} [F]``
(JumpReLU), and ``W_dec_{i}.safetensors`` with ``W_dec_{i} [F, L - i, d_model]``; plus
``config.yaml`` (``model_name``, ``model_kind: cross_layer_transcoder``,
``feature_input_hook``, ``feature_output_hook`` in circuit-tracer's names, and our
``model_processing`` extension, which circuit-tracer ignores).

1. :func:`write` takes our state dict (``W_enc [L, d, F]``, ``W_dec.{s} [F, w_s, d]``, ...)
   and writes the files atomically. A decoder narrower than ``L - s`` (a per-layer
   transcoder) is padded with zero blocks, which circuit-tracer computes with exactly.
   Hooks are translated first, so a hook circuit-tracer cannot name fails before any write.
   :func:`write_from_saelens_file` does the same from a SAELens weights file, reading one
   layer's rows at a time (for CLTs larger than memory).
2. :func:`read_cfg_dict` builds our config dict from ``config.yaml`` and the tensor shapes;
   :func:`read_state` reads one layer file at a time into the final buffers (peak memory =
   final size) and returns the decoder sources for a lazy decoder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from sae_lens_clt import hooks, registry
from sae_lens_clt.formats.atomic import atomic_save_safetensors, atomic_write_text
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import (
    dtype_name,
    read_rows,
    read_tensors,
    tensor_dtype,
    tensor_shapes,
    to_torch_dtype,
)

CONFIG_FILENAME = "config.yaml"
MODEL_KIND = "cross_layer_transcoder"


def hook_to_circuit_tracer(template: str) -> str:
    """Our hook template -> circuit-tracer's name for it (``blocks.{layer}.X`` -> ``X``)."""
    try:
        return hooks.to_circuit_tracer_hook(template)
    except ValueError as e:
        raise CLTFormatError(f"cannot write this CLT in circuit-tracer's layout: {e}") from e


def hook_from_circuit_tracer(name: str, source: str = CONFIG_FILENAME) -> str:
    """circuit-tracer's hook name -> our template (``mlp.hook_in`` -> ``blocks.{layer}.mlp.hook_in``)."""
    try:
        return hooks.from_circuit_tracer_hook(str(name))
    except ValueError as e:
        raise CLTFormatError(f"{source}: {e}") from e


def write(
    folder: Path,
    cfg_dict: dict[str, Any],
    state: dict[str, torch.Tensor],
    model_name: str | None = None,
    allow_extensions: bool = False,
) -> Path:
    """Write the layout of a JumpReLU / ReLU transcoder with one ``d_model`` (step 1)."""

    def layer(i: int) -> dict[str, torch.Tensor]:
        names = ["W_enc", "b_enc", "b_dec", "threshold", "W_skip"]
        own = {n: state[n][i] for n in names if n in state}
        return {**own, "W_dec": state[f"W_dec.{i}"]}

    return _write_layers(folder, cfg_dict, "W_skip" in state, layer, model_name, allow_extensions)


def write_from_saelens_file(
    folder: Path,
    cfg_dict: dict[str, Any],
    weights: Path,
    model_name: str | None = None,
    allow_extensions: bool = False,
) -> Path:
    """:func:`write` from a SAELens ``sae_weights.safetensors``, one layer in memory at a time."""
    shapes = tensor_shapes(weights)

    def layer(i: int) -> dict[str, torch.Tensor]:
        names = [n for n in ("W_enc", "b_enc", "b_dec", "threshold", "W_skip") if n in shapes]
        own = {n: read_rows(weights, n, [(i, i + 1)])[0][0] for n in names}
        return {**own, "W_dec": read_tensors(weights, [f"W_dec.{i}"])[f"W_dec.{i}"]}

    return _write_layers(folder, cfg_dict, "W_skip" in shapes, layer, model_name, allow_extensions)


def _write_layers(
    folder: Path,
    cfg_dict: dict[str, Any],
    has_skip: bool,
    layer: Callable[[int], dict[str, torch.Tensor]],
    model_name: str | None,
    allow_extensions: bool,
) -> Path:
    """The checks, then per layer ``i`` the two files from ``layer(i)`` (``W_enc [d, F]``,
    ``b_enc``, ``b_dec``, ``threshold``, ``W_skip`` of layer i, ``W_dec [F, w_i, d]``)."""
    L, d_in, d_out = cfg_dict["n_layers"], cfg_dict["d_in"], cfg_dict["d_out"]
    act = cfg_dict.get("activation_fn", "jumprelu")
    if has_skip and not allow_extensions:
        raise CLTFormatError(
            "circuit-tracer's load_clt reads no skip-connection weights, so circuit-tracer "
            "would load this CLT without its skip connection: share it in the SAELens layout "
            "(save_model), or pass allow_extensions=True to write W_skip_{i} for "
            "sae_lens_clt only"
        )
    if d_in != d_out:
        raise CLTFormatError(
            f"circuit-tracer's layout needs d_in == d_out (one d_model); this CLT has "
            f"d_in={d_in}, d_out={d_out}: use save_model (SAELens layout) instead"
        )
    if act not in ("jumprelu", "relu"):
        raise CLTFormatError(
            f"circuit-tracer's layout stores JumpReLU or ReLU CLTs, not {act!r}: use save_model"
        )
    md = cfg_dict.get("metadata") or {}
    config: dict[str, Any] = {
        "model_name": model_name or md.get("model_name") or "unknown",
        "model_kind": MODEL_KIND,
        "feature_input_hook": hook_to_circuit_tracer(md["hook_name"]),
        "feature_output_hook": hook_to_circuit_tracer(md["hook_name_out"]),
    }
    processing = hooks.recorded_processing(md)
    if processing:
        config["model_processing"] = processing
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(L):
        t = layer(i)
        enc = {f"W_enc_{i}": t["W_enc"].T, f"b_enc_{i}": t["b_enc"], f"b_dec_{i}": t["b_dec"]}
        if "threshold" in t:
            enc[f"threshold_{i}"] = t["threshold"]
        if "W_skip" in t:
            enc[f"W_skip_{i}"] = t["W_skip"]  # our extension; circuit-tracer ignores it
        atomic_save_safetensors(enc, folder / f"W_enc_{i}.safetensors")
        w = t["W_dec"]  # [F, w_i, d]
        if w.shape[1] < L - i:  # per-layer transcoder: zero cross-layer blocks
            w = torch.cat([w, w.new_zeros(w.shape[0], L - i - w.shape[1], w.shape[2])], 1)
        atomic_save_safetensors({f"W_dec_{i}": w}, folder / f"W_dec_{i}.safetensors")
        del t, enc, w
    atomic_write_text(folder / CONFIG_FILENAME, yaml.safe_dump(config, sort_keys=False))
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    """``config.yaml`` as a dict (``{}`` when there is none), checked for the model kind."""
    cfg_path = folder / CONFIG_FILENAME
    if not cfg_path.is_file():
        return {}
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CLTFormatError(f"{cfg_path}: not valid YAML ({e})") from e
    kind = config.get("model_kind", MODEL_KIND)
    if kind != MODEL_KIND:
        raise CLTFormatError(f"{cfg_path}: model_kind is {kind!r}, expected {MODEL_KIND!r}")
    return config


def n_layers(folder: Path) -> int:
    """Number of layers of a folder (``W_enc_0 .. W_enc_{L-1}``)."""
    found = sorted(
        int(m.group(1))
        for p in folder.glob("W_enc_*.safetensors")
        if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", p.name))
    )
    if not found:
        raise CLTFormatError(
            f"{folder}: no W_enc_{{i}}.safetensors files; not a circuit-tracer-layout CLT folder"
        )
    if found != list(range(len(found))):
        raise CLTFormatError(f"{folder}: encoder files are not numbered 0..L-1 (found {found})")
    return len(found)


def read_cfg_dict(folder: Path) -> dict[str, Any]:
    """Our config dict for a folder, from ``config.yaml`` and the tensor shapes."""
    L = n_layers(folder)
    shapes = tensor_shapes(folder / "W_enc_0.safetensors")
    if "W_enc_0" not in shapes:
        raise CLTFormatError(f"{folder / 'W_enc_0.safetensors'}: missing tensor 'W_enc_0'")
    d_sae, d_model = shapes["W_enc_0"]
    config = read_config(folder)
    source = str(folder / CONFIG_FILENAME)
    metadata: dict[str, Any] = {
        "model_name": config.get("model_name"),
        "hook_name": hook_from_circuit_tracer(
            config.get("feature_input_hook", hooks.MLP_HOOK_IN), source
        ),
        "hook_name_out": hook_from_circuit_tracer(
            config.get("feature_output_hook", hooks.MLP_HOOK_OUT), source
        ),
    }
    if isinstance(config.get("model_processing"), dict):
        metadata["model_processing"] = dict(config["model_processing"])
    skip = "W_skip_0" in shapes
    return {
        "architecture": registry.SKIP_CLT if skip else registry.CLT,
        "n_layers": L,
        "d_in": d_model,
        "d_out": d_model,
        "d_sae": d_sae,
        "activation_fn": "jumprelu" if "threshold_0" in shapes else "relu",
        "dtype": dtype_name(tensor_dtype(folder / "W_enc_0.safetensors", "W_enc_0")),
        "metadata": metadata,
    }


def check_shapes(path: Path, want: dict[str, tuple[int, ...]]) -> None:
    """Raise unless the file holds tensors of the shapes ``want`` (name -> shape)."""
    if not path.is_file():
        raise CLTFormatError(
            f"{path}: file not found; a circuit-tracer-layout CLT needs W_enc_{{i}} and "
            "W_dec_{i}.safetensors for every layer (an interrupted download? fetch it again)"
        )
    shapes = tensor_shapes(path)
    missing = [k for k in want if k not in shapes]
    wrong = [
        f"{k}: expected {list(s)}, got {list(shapes[k])}"
        for k, s in want.items()
        if k in shapes and tuple(shapes[k]) != s
    ]
    if missing or wrong:
        raise CLTFormatError(
            f"{path}: "
            + "; ".join(
                ([f"missing tensor(s) {missing}"] if missing else [])
                + ([f"wrong shape(s): {'; '.join(wrong)}"] if wrong else [])
            )
            + "; the files of this folder disagree with each other (layers, d_model or "
            "features per layer)"
        )


def read_state(
    folder: Path, cfg_dict: dict[str, Any], dtype: torch.dtype | None, lazy: bool
) -> tuple[dict[str, torch.Tensor], list[tuple[Path, str]]]:
    """``(state_dict, decoder sources)``; with ``lazy`` the state has no ``W_dec.{i}``."""
    L, F, d = cfg_dict["n_layers"], cfg_dict["d_sae"], cfg_dict["d_in"]
    jump = cfg_dict["activation_fn"] == "jumprelu"
    skip = cfg_dict["architecture"] == registry.SKIP_CLT
    dt = dtype or to_torch_dtype(cfg_dict["dtype"])
    state: dict[str, torch.Tensor] = {
        "W_enc": torch.empty(L, d, F, dtype=dt),
        "b_enc": torch.empty(L, F, dtype=dt),
        "b_dec": torch.empty(L, d, dtype=dt),
    }
    if jump:
        state["threshold"] = torch.empty(L, F, dtype=dt)
    if skip:
        state["W_skip"] = torch.empty(L, d, d, dtype=dt)
    sources = []
    for i in range(L):
        enc_path = folder / f"W_enc_{i}.safetensors"
        want = {f"W_enc_{i}": (F, d), f"b_enc_{i}": (F,), f"b_dec_{i}": (d,)}
        if jump:
            want[f"threshold_{i}"] = (F,)
        if skip:
            want[f"W_skip_{i}"] = (d, d)
        check_shapes(enc_path, want)
        enc = read_tensors(enc_path, list(want))
        state["W_enc"][i].copy_(enc.pop(f"W_enc_{i}").T)  # [F, d] on disk -> [d, F]
        for key in ("b_enc", "b_dec", "threshold", "W_skip"):
            if key in state:
                state[key][i].copy_(enc.pop(f"{key}_{i}"))
        del enc
        dec_path = folder / f"W_dec_{i}.safetensors"
        check_shapes(dec_path, {f"W_dec_{i}": (F, L - i, d)})
        sources.append((dec_path, f"W_dec_{i}"))
        if not lazy:
            state[f"W_dec.{i}"] = read_tensors(dec_path, [f"W_dec_{i}"], dtype)[f"W_dec_{i}"]
    return state, sources
