"""Training checkpoints: one folder per step, written atomically, read without pickle.

A checkpoint ``step_{N}/`` holds:

- ``training_state.safetensors``: the training transcoder's state dict (``clt.*``, its
  normalisation scales included), Adam's moments (``optim.{param}.{name}``),
  ``steps_since_fired [L, F]`` and the torch RNG state;
- ``training_state.json``: step, tokens seen, batches drawn, Adam's param groups, the run's
  and the transcoder's configs;
- ``clt/``: the inference transcoder (SAELens layout, scales folded), loadable on its own.

1. :func:`save_checkpoint` fills a temporary folder and renames it into place
   (:func:`~sae_lens_clt.formats.atomic.atomic_folder`): a crash never leaves a
   half-written ``step_{N}``.
2. :func:`load_checkpoint` reads it back and restores the transcoder and optimizer;
   the runner then replays the data stream to the recorded position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_lens_clt.formats.atomic import atomic_folder, atomic_save_safetensors, atomic_write_json
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import read_tensors

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


@dataclass
class Checkpoint:
    """What a checkpoint restores besides the weights."""

    step: int
    n_tokens: int
    batches_drawn: int
    steps_since_fired: torch.Tensor  # [L, F]
    rng_state: torch.Tensor


def save_checkpoint(
    folder: Path,
    clt: Any,
    optimizer: torch.optim.Optimizer,
    progress: Checkpoint,
    runner_config: dict[str, Any],
) -> Path:
    """Write ``folder`` (e.g. ``.../step_100``) atomically (step 1)."""
    with atomic_folder(folder) as tmp:
        tensors = {f"clt.{k}": v for k, v in clt.state_dict().items()}
        opt = optimizer.state_dict()
        for idx, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
        tensors["steps_since_fired"] = progress.steps_since_fired
        tensors["rng_state"] = progress.rng_state
        atomic_save_safetensors(tensors, tmp / STATE_TENSORS)
        state_json = {
            "step": progress.step,
            "n_tokens": progress.n_tokens,
            "batches_drawn": progress.batches_drawn,
            "optimizer_param_groups": opt["param_groups"],
            "runner_config": runner_config,
            "clt_config": clt.cfg.to_dict(),
        }
        atomic_write_json(tmp / STATE_JSON, state_json, indent=2, default=str)
        clt.save_inference_model(tmp / "clt")
    return folder


def load_checkpoint(folder: Path, clt: Any, optimizer: torch.optim.Optimizer) -> Checkpoint:
    """Restore ``clt`` and ``optimizer`` from ``folder``; returns the progress (step 2)."""
    if not (folder / STATE_JSON).is_file():
        raise CLTFormatError(f"{folder}: not a checkpoint (no {STATE_JSON})")
    state = json.loads((folder / STATE_JSON).read_text())
    tensors = read_tensors(folder / STATE_TENSORS)
    clt.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("clt.")}, strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
    return Checkpoint(
        step=state["step"],
        n_tokens=state["n_tokens"],
        batches_drawn=state["batches_drawn"],
        steps_since_fired=tensors["steps_since_fired"].clone(),
        rng_state=tensors["rng_state"],
    )
