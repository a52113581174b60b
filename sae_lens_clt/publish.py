"""Publishing CLTs to the Hugging Face Hub.

:func:`push_to_hub` ``(clt, repo_id)``:

1. Write one folder holding both layouts side by side, so every ecosystem loads it:
   ``cfg.json`` + ``sae_weights.safetensors`` (SAELens layout: ``sae_lens.SAE.load_from_disk``
   once ``sae_lens_clt`` is imported, and ``CrossLayerTranscoder.from_pretrained``),
   and ``W_enc_{i}`` / ``W_dec_{i}.safetensors`` + ``config.yaml`` (circuit-tracer layout:
   ``circuit_tracer``'s ``load_clt(folder)`` and ``ReplacementModel.from_pretrained(model,
   "org/repo")``, which glob ``W_enc_*.safetensors`` and so ignore the SAELens file).
   A CLT that circuit-tracer cannot represent (TopK, ``d_in != d_out``) gets the SAELens
   layout only.
2. Write ``README.md``, a model card: YAML metadata (``library_name``, ``base_model`` when
   the model is a Hub id, ``tags``) and a body with hooks, layers, features, the metrics
   found in ``clt.cfg.metadata`` (L0, NMSE, loss recovered, training tokens) and how to load it.
3. Unless ``out_dir`` is given (write only), upload it: ``HfApi.create_repo`` (exist_ok),
   ``HfApi.create_branch`` when ``revision`` is not ``main``, then ``HfApi.upload_folder``.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_clt.formats.atomic import atomic_write_text
from sae_lens_clt.formats.circuit_tracer import CONFIG_FILENAME as CT_CONFIG_FILENAME
from sae_lens_clt.hooks import recorded_processing
from sae_lens_clt.registry import Transcoder

LIBRARY_NAME = "sae-lens-clt"
TAGS = [
    "sae-lens-clt",
    "saelens",
    "circuit-tracer",
    "cross-layer-transcoder",
    "transcoder",
    "interpretability",
    "mechanistic-interpretability",
]
# metrics reported on the model card: (label, candidate keys), looked up at the top level of
# clt.cfg.metadata and in each evaluation set of metadata["eval_held_out"] (as written by
# scripts/train_default_clt.py: {set name: CLTEvalResult.to_dict()})
METRICS = [
    ("L0", ("l0", "mean_l0")),
    ("NMSE", ("nmse",)),
    ("Loss recovered", ("loss_recovered", "fraction_loss_recovered", "ce_loss_score")),
    ("Training tokens", ("training_tokens", "n_training_tokens")),
]
EVAL_SETS_KEY = "eval_held_out"


@dataclass
class PushResult:
    """What :func:`push_to_hub` did: the folder it wrote and, if uploaded, the commit URL."""

    repo_id: str
    folder: Path | None
    commit_url: str | None = None
    layouts: tuple[str, ...] = ()


def _circuit_tracer_ok(clt: Transcoder) -> bool:
    return clt.circuit_tracer_exportable() is None  # circuit-tracer reads it as this very CLT


def write_hub_folder(clt: Transcoder, folder: str | Path, repo_id: str) -> Path:
    """Write the folder :func:`push_to_hub` uploads (steps 1-2 of the module docstring)."""
    if clt.lazy_decoder is not None:
        raise ValueError(
            "this CLT was loaded with lazy=True, so its decoder is not in memory: load it "
            "with lazy=False before pushing it"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct_ok = _circuit_tracer_ok(clt)
    _remove_stale_circuit_tracer_files(folder, clt.cfg.n_layers if ct_ok else 0)
    clt.save_model(folder)
    layouts = ["saelens"]
    if ct_ok:
        clt.to_circuit_tracer(folder, model_name=clt.cfg.metadata.model_name)
        layouts.append("circuit_tracer")
    atomic_write_text(folder / "README.md", model_card(clt, repo_id, layouts))
    return folder


def _remove_stale_circuit_tracer_files(folder: Path, n_layers: int) -> None:
    """Delete ``W_enc_{i}`` / ``W_dec_{i}`` files with ``i >= n_layers`` left by an earlier write.

    circuit-tracer counts layers by globbing ``W_enc_*.safetensors``, so a leftover file
    from a deeper CLT would corrupt the folder. ``n_layers=0`` also removes ``config.yaml``.
    """
    for path in folder.glob("W_*_*.safetensors"):
        m = re.fullmatch(r"W_(enc|dec)_(\d+)\.safetensors", path.name)
        if m and int(m.group(2)) >= n_layers:
            path.unlink()
    if n_layers == 0:
        (folder / CT_CONFIG_FILENAME).unlink(missing_ok=True)


def _metric(values: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = values.get(key) if hasattr(values, "get") else None
        if value is not None:
            return value
    return None


def _metric_rows(meta: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(label, value)], [labels recorded nowhere])`` from a CLT's metadata."""
    rows, found = [], set()
    sets = meta.get(EVAL_SETS_KEY) if hasattr(meta, "get") else None
    sources = [("", meta)]
    if isinstance(sets, dict):
        sources += [(f" ({name})", v) for name, v in sets.items() if isinstance(v, dict)]
    for label, keys in METRICS:
        for suffix, values in sources:
            value = _metric(values, keys)
            if value is not None:
                rows.append((label + suffix, _fmt(value)))
                found.add(label)
    return rows, [label for label, _ in METRICS if label not in found]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _processing_row(meta: Any) -> str:
    """How the CLT's model must be loaded, from the recorded processing."""
    record = recorded_processing(meta)
    if record is None:
        return "not recorded"
    done = [k for k, v in record.items() if v]
    if not done:
        return "unprocessed (`HookedTransformer.from_pretrained_no_processing`)"
    return "with " + ", ".join(f"`{k}=True`" for k in done)


def model_card(clt: Transcoder, repo_id: str, layouts: list[str]) -> str:
    """``README.md`` text: YAML metadata + hooks, shapes, metrics and loading snippets."""
    c, meta = clt.cfg, clt.cfg.metadata
    model = meta.model_name
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        base_model=model if isinstance(model, str) and "/" in model else None,
        tags=TAGS,
    )
    header = card_data.to_yaml()
    rows = [
        ("Model", f"`{model}`" if model else "unknown"),
        ("Layers", _fmt(c.n_layers)),
        ("Features per layer", _fmt(c.d_sae)),
        ("Features in all", _fmt(c.n_layers * c.d_sae)),
        ("d_in / d_out", f"{c.d_in} / {c.d_out}"),
        ("Architecture", f"`{c.architecture()}` (`{type(clt).__name__}`)"),
        ("Activation", c.activation_fn + (f" (k={c.k})" if getattr(c, "k", None) else "")),
        ("Input hook (reads)", f"`{c.metadata.hook_name}`"),
        ("Output hook (writes)", f"`{c.metadata.hook_name_out}`"),
        ("Model loaded", _processing_row(meta)),
        ("dtype", c.dtype),
    ]
    metric_rows, missing = _metric_rows(meta)
    rows += metric_rows
    table = "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])
    note = f"\n\nNot recorded with this CLT: {', '.join(missing)}." if missing else ""
    files = "- SAELens layout: `cfg.json` + `sae_weights.safetensors`.\n" + (
        "- circuit-tracer layout: `W_enc_{i}.safetensors` (`W_enc_{i}` [F, d_model], "
        "`b_enc_{i}`, `b_dec_{i}`"
        + (", `threshold_{i}`" if c.activation_fn == "jumprelu" else "")
        + ") and `W_dec_{i}.safetensors` (`W_dec_{i}` [F, L - i, d_model]) + `config.yaml`.\n"
        if "circuit_tracer" in layouts
        else ""
    )
    ct_snippet = (
        f"""
With circuit-tracer:

```python
from circuit_tracer import ReplacementModel
model = ReplacementModel.from_pretrained("{model}", "{repo_id}")
```
"""
        if "circuit_tracer" in layouts
        else ""
    )
    return f"""---
{header}
---

# Cross-layer transcoder `{repo_id}`

A cross-layer transcoder (CLT): at every layer it reads the MLP input and its features
write to the MLP outputs of that layer and all later ones, replacing the model's MLPs by
sparse, interpretable features (see "Circuit Tracing", Ameisen et al., 2025).
Published with `sae-lens-clt` (`pip install sae-lens-clt`), a SAELens plugin.

{table}{note}

## Files

{files}
## How to load it

```python
import sae_lens_clt
clt = sae_lens_clt.CrossLayerTranscoder.from_pretrained("{repo_id}")
# large CLTs: keep the decoder on disk and read active rows only
clt = sae_lens_clt.CrossLayerTranscoder.from_pretrained("{repo_id}", lazy=True)
```

With SAELens (after `import sae_lens_clt`, which registers the architecture):

```python
import sae_lens, sae_lens_clt
from sae_lens_clt.loading.pretrained import sae_lens_loader
clt = sae_lens.SAE.from_pretrained("{repo_id}", "clt", converter=sae_lens_loader)
```
{ct_snippet}"""


def push_to_hub(
    clt: Transcoder,
    repo_id: str,
    *,
    revision: str = "main",
    private: bool = False,
    token: str | None = None,
    out_dir: str | Path | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Write ``clt`` in both layouts with a model card and upload it to ``repo_id``.

    With ``out_dir`` the folder is written there and nothing is uploaded. Otherwise it is
    written to a temporary folder, uploaded to ``revision`` (a branch, created if needed),
    and deleted.
    """
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    layouts = ("saelens", "circuit_tracer") if _circuit_tracer_ok(clt) else ("saelens",)
    if out_dir is not None:
        folder = write_hub_folder(clt, out_dir, repo_id)
        return PushResult(repo_id=repo_id, folder=folder, layouts=layouts)

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="sae_lens_clt_push_") as tmp:
        folder = write_hub_folder(clt, tmp, repo_id)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        if revision != "main":
            api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            repo_type="model",
            commit_message=commit_message or f"Upload CLT with sae-lens-clt ({', '.join(layouts)})",
        )
    url = getattr(commit, "commit_url", None) or str(commit)
    return PushResult(repo_id=repo_id, folder=None, commit_url=url, layouts=layouts)
