"""Reading and writing CLT files: SAELens layout and circuit-tracer layout.

1. **SAELens layout** (one folder): ``cfg.json`` (with ``architecture``) and
   ``sae_weights.safetensors`` holding ``W_enc [L, d_in, F]``, ``b_enc [L, F]``,
   ``b_dec [L, d_out]``, ``W_dec.{s} [F, L - s, d_out]``, ``threshold [L, F]`` (JumpReLU),
   ``W_skip [L, d_in, d_out]`` (skip connection).
2. **circuit-tracer layout** (one folder): per layer ``i``, ``W_enc_{i}.safetensors`` with
   ``W_enc_{i} [F, d_model]`` (transposed relative to SAELens), ``b_enc_{i} [F]``,
   ``b_dec_{i} [d_model]``, ``threshold_{i} [F]`` (JumpReLU), and ``W_dec_{i}.safetensors``
   with ``W_dec_{i} [F, L - i, d_model]``; plus ``config.yaml`` (model_name,
   model_kind: cross_layer_transcoder, feature_input_hook, feature_output_hook).
3. Every write goes to a temporary file that is then renamed over the target, so a crash
   never leaves a half-written file. Every read is safetensors / json / yaml (never
   pickle) and is checked: missing files or tensors, wrong shapes, wrong architecture,
   truncated files and configs that disagree with the weights raise ``CLTFormatError``
   naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from sae_lens_clt import hooks

if TYPE_CHECKING:
    from sae_lens_clt.clt import CrossLayerTranscoder, CrossLayerTranscoderConfig

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
CT_CONFIG_FILENAME = "config.yaml"


_UMASK = os.umask(0)
os.umask(_UMASK)


class CLTFormatError(ValueError):
    """A CLT file or folder is missing, malformed, or disagrees with its config."""


# ---------------------------------------------------------------------- atomic writes
def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_path)`` then rename ``tmp_path`` over ``path`` (same folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


# ---------------------------------------------------------------------- safe reads
def read_safetensors(
    path: Path, names: list[str] | None = None, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read tensors (all, or ``names``) from a safetensors file with clear errors."""
    if not path.is_file():
        raise CLTFormatError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            keys = list(f.keys())
            wanted = keys if names is None else names
            missing = [n for n in wanted if n not in keys]
            if missing:
                raise CLTFormatError(
                    f"{path}: missing tensor(s) {missing}; the file holds {sorted(keys)}"
                )
            return {n: f.get_tensor(n) for n in wanted}
    except CLTFormatError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CLTFormatError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or "
            "corrupt: re-download or re-save it"
        ) from e


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a safetensors file without reading the data."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise CLTFormatError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt"
        ) from e


def check_state_dict(
    state_dict: dict[str, Any], cfg: CrossLayerTranscoderConfig, source: str
) -> None:
    """Raise ``CLTFormatError`` unless ``state_dict`` has exactly the tensors ``cfg`` needs."""
    expected = cfg.expected_shapes()
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
        dims = (
            f"n_layers={cfg.n_layers}, d_in={cfg.d_in}, d_out={cfg.d_out}, d_sae={cfg.d_sae}, "
            f"activation_fn={cfg.activation_fn!r}, skip_connection={cfg.skip_connection}"
        )
        raise CLTFormatError(
            f"{source}: {'; '.join(problems)} (config says {dims}); the weights and the "
            "config disagree: check that they come from the same CLT"
        )


# ---------------------------------------------------------------------- SAELens layout
def save_saelens(clt: CrossLayerTranscoder, path: Path) -> tuple[Path, Path]:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    weights = atomic_save_safetensors(dict(clt.state_dict()), path / WEIGHTS_FILENAME)
    cfg = atomic_write_text(path / CFG_FILENAME, json.dumps(clt.cfg.to_dict(), indent=2))
    return weights, cfg


def read_cfg_json(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILENAME
    if not cfg_path.is_file():
        raise CLTFormatError(
            f"{cfg_path}: file not found; a SAELens-layout CLT folder holds {CFG_FILENAME} "
            f"and {WEIGHTS_FILENAME}"
        )
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CLTFormatError(f"{cfg_path}: not valid JSON ({e})") from e
    from sae_lens_clt.clt import ARCHITECTURE

    arch = cfg_dict.get("architecture")
    if arch != ARCHITECTURE:
        raise CLTFormatError(
            f"{cfg_path}: architecture is {arch!r}, expected {ARCHITECTURE!r}; this folder "
            "holds another kind of SAE: load it with sae_lens.SAE.load_from_disk"
        )
    return cfg_dict


def read_saelens(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a SAELens-layout CLT folder: ``(cfg_dict, state_dict)``."""
    from sae_lens_clt.clt import CrossLayerTranscoderConfig

    if not path.is_dir():
        raise CLTFormatError(f"{path}: not a folder")
    cfg_dict = read_cfg_json(path)
    try:
        cfg = CrossLayerTranscoderConfig.from_dict(dict(cfg_dict))
    except (TypeError, ValueError) as e:
        raise CLTFormatError(f"{path / CFG_FILENAME}: {e}") from e
    weights_path = path / WEIGHTS_FILENAME
    state_dict = read_safetensors(weights_path)
    check_state_dict(state_dict, cfg, source=str(weights_path))
    return cfg_dict, state_dict


# ---------------------------------------------------------------------- circuit-tracer layout
def hook_to_circuit_tracer(template: str) -> str:
    """Our hook template -> the name circuit-tracer's ``config.yaml`` gives the same tensor.

    ``blocks.{layer}.ln2.hook_normalized`` -> ``ln2.hook_normalized``: circuit-tracer's
    TransformerLens backend hooks ``blocks.{i}.<name>``, so only the prefix goes
    (:mod:`sae_lens_clt.hooks`). A template that names no block hook raises ``CLTFormatError``.
    """
    try:
        return hooks.to_circuit_tracer_hook(template)
    except ValueError as e:
        raise CLTFormatError(f"cannot write this CLT in circuit-tracer's layout: {e}") from e


def hook_from_circuit_tracer(name: str, source: str = "config.yaml") -> str:
    """circuit-tracer's hook name -> our template for the same tensor (``mlp.hook_in`` ->
    ``blocks.{layer}.mlp.hook_in``, ``hook_resid_mid`` -> ``blocks.{layer}.hook_resid_mid``)."""
    try:
        return hooks.from_circuit_tracer_hook(str(name))
    except ValueError as e:
        raise CLTFormatError(f"{source}: {e}") from e


def save_circuit_tracer(
    clt: CrossLayerTranscoder,
    path: Path,
    model_name: str | None = None,
    allow_extensions: bool = False,
) -> Path:
    """Write the circuit-tracer layout into ``path`` (see the module docstring).

    circuit-tracer's ``load_clt`` reads no skip weights, so a skip CLT is refused unless
    ``allow_extensions=True`` (then ``W_skip_{i}`` is written for sae_lens_clt to read back,
    and circuit-tracer loads the CLT *without* its skip connection).
    """
    cfg = clt.cfg
    if cfg.skip_connection and not allow_extensions:
        raise CLTFormatError(
            "circuit-tracer's load_clt reads no skip-connection weights, so circuit-tracer "
            "would load this CLT without its skip connection: share it in the SAELens layout "
            "(save_model), or pass allow_extensions=True to write W_skip_{i} for "
            "sae_lens_clt only"
        )
    if cfg.d_in != cfg.d_out:
        raise CLTFormatError(
            f"circuit-tracer's layout needs d_in == d_out (one d_model); this CLT has "
            f"d_in={cfg.d_in}, d_out={cfg.d_out}: use save_model (SAELens layout) instead"
        )
    if cfg.activation_fn == "topk":
        raise CLTFormatError(
            "circuit-tracer's layout stores JumpReLU or ReLU CLTs, not TopK: use save_model"
        )
    config: dict[str, Any] = {  # hooks first: a hook that cannot be carried fails before any write
        "model_name": model_name or cfg.metadata.model_name or "unknown",
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": hook_to_circuit_tracer(cfg.metadata.hook_name),
        "feature_output_hook": hook_to_circuit_tracer(cfg.metadata.hook_name_out),
    }
    processing = hooks.recorded_processing(cfg.metadata)
    if processing:  # our extension: how the model must be loaded (circuit-tracer ignores it)
        config["model_processing"] = processing
    path.mkdir(parents=True, exist_ok=True)
    for i in range(cfg.n_layers):
        enc = {
            f"W_enc_{i}": clt.W_enc[i].T,
            f"b_enc_{i}": clt.b_enc[i],
            f"b_dec_{i}": clt.b_dec[i],
        }
        if cfg.activation_fn == "jumprelu":
            enc[f"threshold_{i}"] = clt.threshold[i]
        if cfg.skip_connection:
            enc[f"W_skip_{i}"] = clt.W_skip[i]  # our extension; circuit-tracer ignores it
        atomic_save_safetensors(enc, path / f"W_enc_{i}.safetensors")
        atomic_save_safetensors({f"W_dec_{i}": clt.W_dec[i]}, path / f"W_dec_{i}.safetensors")
    atomic_write_text(path / CT_CONFIG_FILENAME, yaml.safe_dump(config, sort_keys=False))
    return path


def read_ct_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CT_CONFIG_FILENAME
    if not cfg_path.is_file():
        return {}
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CLTFormatError(f"{cfg_path}: not valid YAML ({e})") from e
    kind = config.get("model_kind", "cross_layer_transcoder")
    if kind != "cross_layer_transcoder":
        raise CLTFormatError(
            f"{cfg_path}: model_kind is {kind!r}, expected 'cross_layer_transcoder'"
        )
    return config


def circuit_tracer_n_layers(path: Path) -> int:
    """Number of layers of a circuit-tracer-layout folder (``W_enc_0..W_enc_{L-1}``)."""
    found = sorted(
        int(m.group(1))
        for p in path.glob("W_enc_*.safetensors")
        if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", p.name))
    )
    if not found:
        raise CLTFormatError(
            f"{path}: no W_enc_{{i}}.safetensors files; not a circuit-tracer-layout CLT folder"
        )
    if found != list(range(len(found))):
        raise CLTFormatError(f"{path}: encoder files are not numbered 0..L-1 (found {found})")
    return len(found)


def circuit_tracer_cfg_dict(path: Path) -> dict[str, Any]:
    """Our config dict for a circuit-tracer folder, from tensor shapes and ``config.yaml``."""
    from sae_lens_clt.clt import ARCHITECTURE

    n_layers = circuit_tracer_n_layers(path)
    shapes = tensor_shapes(path / "W_enc_0.safetensors")
    if "W_enc_0" not in shapes:
        raise CLTFormatError(f"{path / 'W_enc_0.safetensors'}: missing tensor 'W_enc_0'")
    d_sae, d_model = shapes["W_enc_0"]
    config = read_ct_config(path)
    metadata: dict[str, Any] = {
        "model_name": config.get("model_name"),
        "hook_name": hook_from_circuit_tracer(
            config.get("feature_input_hook", hooks.MLP_HOOK_IN), str(path / CT_CONFIG_FILENAME)
        ),
        "hook_name_out": hook_from_circuit_tracer(
            config.get("feature_output_hook", hooks.MLP_HOOK_OUT), str(path / CT_CONFIG_FILENAME)
        ),
    }
    if isinstance(config.get("model_processing"), dict):
        metadata["model_processing"] = dict(config["model_processing"])
    return {
        "architecture": ARCHITECTURE,
        "n_layers": n_layers,
        "d_in": d_model,
        "d_out": d_model,
        "d_sae": d_sae,
        "activation_fn": "jumprelu" if "threshold_0" in shapes else "relu",
        "skip_connection": "W_skip_0" in shapes,
        "dtype": _dtype_of(path / "W_enc_0.safetensors", "W_enc_0"),
        "metadata": metadata,
    }


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _dtype_of(path: Path, name: str) -> str:
    """Dtype name (``float32``, ``bfloat16``, ...) of one tensor, read from the header."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        code = f.get_slice(name).get_dtype()
    if code not in _SAFETENSORS_DTYPES:
        raise CLTFormatError(f"{path}: tensor {name!r} has unsupported dtype {code}")
    return _SAFETENSORS_DTYPES[code]
