"""The SAELens layout of a transcoder: ``cfg.json`` + ``sae_weights.safetensors`` in one folder.

``cfg.json`` is the config dict (``architecture`` names the registered class, see
:mod:`sae_lens_clt.registry`); the weights file holds the class's state dict, e.g. for a
CLT ``W_enc [L, d_in, F]``, ``b_enc [L, F]``, ``b_dec [L, d_out]``, ``W_dec.{s}
[F, n_targets(s), d_out]``, ``threshold [L, F]`` (JumpReLU), ``W_skip [L, d_in, d_out]``.
File names are SAELens' own constants.

1. :func:`write` writes both files atomically (weights first, so a folder whose
   ``cfg.json`` exists has its weights).
2. :func:`read_cfg` reads and checks ``cfg.json``, upgrading configs written before the
   variants became classes (:func:`upgrade_cfg_dict`).
3. :func:`read` returns ``(cfg_dict, state_dict)``; the class checks shapes
   (:func:`check_state_dict`) and builds itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sae_lens_clt import registry
from sae_lens_clt.formats.atomic import atomic_save_safetensors, atomic_write_json
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import read_tensors, tensor_shapes

# SAELens' own names (sae_lens.constants.SAE_CFG_FILENAME / SAE_WEIGHTS_FILENAME); spelled
# here because importing sae_lens costs seconds and these files are read before it is needed
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"


def upgrade_cfg_dict(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A ``cfg.json`` dict written before the variants were classes, in today's terms.

    Round-1 files describe every CLT as ``cross_layer_transcoder`` with flags:
    ``skip_connection: true`` is now :data:`~sae_lens_clt.registry.SKIP_CLT`,
    ``activation_fn: topk`` is :data:`~sae_lens_clt.registry.TOPK_CLT`. Returns a new dict.
    """
    d = dict(cfg_dict)
    if d.get("architecture") == registry.CLT:
        if d.get("activation_fn") == "topk" and d.get("skip_connection"):
            raise CLTFormatError(
                "cfg.json describes a TopK CLT with a skip connection (written by sae_lens_clt "
                "0.1): no shipped variant is both; register one (docs/contributing_a_variant.md) "
                "or load it with sae_lens_clt 0.1 and retrain"
            )
        if d.get("activation_fn") == "topk":
            d["architecture"] = registry.TOPK_CLT
            d.pop("activation_fn")
        elif d.get("skip_connection"):
            d["architecture"] = registry.SKIP_CLT
    if d.get("architecture") != registry.SKIP_CLT:
        d.pop("skip_connection", None)
    return d


def read_cfg(folder: Path) -> dict[str, Any]:
    """``cfg.json`` of a SAELens-layout folder, checked and upgraded."""
    cfg_path = folder / CFG_FILENAME
    if not cfg_path.is_file():
        raise CLTFormatError(
            f"{cfg_path}: file not found; a SAELens-layout CLT folder holds {CFG_FILENAME} "
            f"and {WEIGHTS_FILENAME}"
        )
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CLTFormatError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(cfg_dict, dict) or "architecture" not in cfg_dict:
        raise CLTFormatError(f"{cfg_path}: no 'architecture' field; not a SAELens config")
    return upgrade_cfg_dict(cfg_dict)


def read(
    folder: Path, dtype: torch.dtype | None = None, skip_prefix: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(cfg_dict, state_dict)`` of a SAELens-layout folder.

    ``skip_prefix`` leaves out the tensors whose name starts with it (a lazy decoder).
    """
    if not folder.is_dir():
        raise CLTFormatError(f"{folder}: not a folder")
    cfg_dict = read_cfg(folder)
    weights = folder / WEIGHTS_FILENAME
    names = [n for n in tensor_shapes(weights) if not (skip_prefix and n.startswith(skip_prefix))]
    return cfg_dict, read_tensors(weights, names, dtype)


def write(
    folder: Path, cfg_dict: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> tuple[Path, Path]:
    """Write the layout into ``folder``: ``(weights path, cfg path)``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = atomic_save_safetensors(dict(state_dict), folder / WEIGHTS_FILENAME)
    cfg = atomic_write_json(folder / CFG_FILENAME, cfg_dict, indent=2)
    return weights, cfg


def check_state_dict(
    state_dict: dict[str, Any], expected: dict[str, tuple[int, ...]], source: str, describe: str
) -> None:
    """Raise ``CLTFormatError`` unless ``state_dict`` holds exactly ``expected`` (name -> shape).

    ``describe`` (the config's dimensions) goes into the message.
    """
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: expected {list(shape)}, got {list(state_dict[k].shape)}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {missing}")
    if extra:
        problems.append(f"unexpected tensor(s) {extra}")
    if wrong:
        problems.append("wrong shape(s): " + "; ".join(wrong))
    if problems:
        raise CLTFormatError(
            f"{source}: {'; '.join(problems)} (config says {describe}); the weights and the "
            "config disagree: check that they come from the same CLT"
        )
