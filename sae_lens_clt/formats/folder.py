"""Which layout a folder holds, and reading a folder of any layout into plain data.

1. :func:`detect_layout`: ``cfg.json`` + ``sae_weights.safetensors`` is the SAELens
   layout; ``W_enc_0.safetensors`` circuit-tracer's; a ``config.yaml`` listing
   ``transcoders`` files the Gemma Scope 2 layout. The SAELens layout wins where a folder
   holds two (as the folders :func:`sae_lens_clt.publish.push_to_hub` writes do).
2. :func:`read_folder` returns a :class:`FolderContents`: the config dict (its
   ``architecture`` names the class to build), the state dict and, for a lazy read, the
   ``(file, tensor)`` of each layer's decoder instead of the decoder itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_lens_clt.formats import circuit_tracer, gemma_scope_2, saelens
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import dtype_name, to_torch_dtype

SAELENS = "saelens"
CIRCUIT_TRACER = "circuit_tracer"
GEMMA_SCOPE_2 = gemma_scope_2.LAYOUT
LAYOUTS = (SAELENS, CIRCUIT_TRACER, GEMMA_SCOPE_2)


@dataclass
class FolderContents:
    cfg_dict: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    decoder_sources: list[tuple[Path, str]] | None  # set for a lazy read: W_dec stays on disk
    layout: str
    cfg_source: str  # the file the config comes from (for messages)
    weights_source: str  # the file (or folder) the tensors come from


def detect_layout(folder: Path) -> str:
    """``"saelens"``, ``"circuit_tracer"`` or ``"gemma_scope_2"`` (step 1)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CLTFormatError(f"{folder}: not a folder")
    if (folder / saelens.CFG_FILENAME).is_file() and (folder / saelens.WEIGHTS_FILENAME).is_file():
        return SAELENS
    if (folder / "W_enc_0.safetensors").is_file():
        return CIRCUIT_TRACER
    if gemma_scope_2.is_gemma_scope_2(folder):
        return GEMMA_SCOPE_2
    found = sorted(p.name for p in folder.iterdir())[:12]
    raise CLTFormatError(
        f"{folder}: holds no CLT: expected {saelens.CFG_FILENAME} + {saelens.WEIGHTS_FILENAME} "
        f"(SAELens layout), W_enc_{{i}}/W_dec_{{i}}.safetensors + {circuit_tracer.CONFIG_FILENAME} "
        f"(circuit-tracer layout) or a {circuit_tracer.CONFIG_FILENAME} listing 'transcoders' "
        f"files (Gemma Scope 2 layout); found {found}"
    )


def read_cfg_dict(folder: Path) -> dict[str, Any]:
    """Only the config dict of a folder (cheap: headers and small files)."""
    layout = detect_layout(folder)
    if layout == SAELENS:
        return saelens.read_cfg(folder)
    if layout == CIRCUIT_TRACER:
        return circuit_tracer.read_cfg_dict(folder)
    return gemma_scope_2.read_cfg_dict(folder)


def read_folder(
    folder: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    lazy: bool = False,
    layout: str | None = None,
) -> FolderContents:
    """Read a transcoder folder (step 2). ``dtype=None`` keeps the dtype of the files."""
    folder = Path(folder)
    if layout is None:
        layout = detect_layout(folder)
    elif layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or None, got {layout!r}")
    elif not folder.is_dir():
        raise CLTFormatError(f"{folder}: not a folder")
    want = to_torch_dtype(dtype)
    sources: list[tuple[Path, str]] | None = None
    if layout == GEMMA_SCOPE_2:
        if lazy:
            warnings.warn(
                "the Gemma Scope 2 layout keeps each layer's decoder for all layers in one "
                "tensor; loading it eagerly (lazy=True is not supported for this layout)",
                UserWarning,
                stacklevel=3,
            )
        cfg_dict, state = gemma_scope_2.read(folder, want)
        cfg_source = weights_source = str(folder / circuit_tracer.CONFIG_FILENAME)
    elif layout == SAELENS:
        cfg_dict, state = saelens.read(folder, want, skip_prefix="W_dec." if lazy else None)
        weights = folder / saelens.WEIGHTS_FILENAME
        cfg_source, weights_source = str(folder / saelens.CFG_FILENAME), str(weights)
        if lazy:
            sources = [(weights, f"W_dec.{s}") for s in range(int(cfg_dict.get("n_layers", 0)))]
        if want is not None:
            cfg_dict["dtype"] = dtype_name(want)
    else:
        cfg_dict = circuit_tracer.read_cfg_dict(folder)
        state, all_sources = circuit_tracer.read_state(folder, cfg_dict, want, lazy)
        sources = all_sources if lazy else None
        cfg_source, weights_source = str(folder / circuit_tracer.CONFIG_FILENAME), str(folder)
        if want is not None:
            cfg_dict["dtype"] = dtype_name(want)
    return FolderContents(cfg_dict, state, sources, layout, cfg_source, weights_source)
