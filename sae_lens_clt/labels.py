"""Feature labels computed from data: what a feature reads, and what it says.

Algorithm:

1. The feature dashboards (:mod:`sae_lens_clt.dashboards`) over a sample of text: each
   feature's ``top_k`` largest activations with their token windows, how often it fires,
   and the output tokens its decoders promote through the unembedding (z-scores over the
   vocabulary).
2. Label (:func:`make_label`) = what it reads, then what it says:
   - reads: the token that dominates its top activations (``"Texas"``), else the two most
     common ones (``"Texas/Houston"``); prefixed ``dense`` when it fires on more than
     ``dense`` of all tokens (such a feature says little about a prompt);
   - says: ``→ Austin`` for the promoted output tokens whose z-score passes ``say_z`` (at
     most two: ``→ Austin/Texas``), else the token (of 3 characters or more) that follows
     the activating one in at least half of its top contexts (what it precedes in the data).
3. Labels are cached as ``feature_labels.json`` next to the CLT, so that the demo and the
   graph JSON (``clerp``) read them without recomputing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from transformer_lens import HookedTransformer

from sae_lens_clt.dashboards import (
    DashboardSettings,
    DashboardState,
    compute_dashboards,
    output_tokens,
)
from sae_lens_clt.evals import token_batches_from_texts
from sae_lens_clt.formats.atomic import atomic_write_json
from sae_lens_clt.loading import pretrained
from sae_lens_clt.registry import Transcoder
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder

LABELS_FILENAME = "feature_labels.json"
N_PROMOTED = 5


def _clean(token: str) -> str:
    return token.strip() or repr(token)


def make_label(
    top_tokens: list[str],
    promoted: list[str],
    promoted_z: list[float],
    say_z: float = 4.0,
    *,
    next_tokens: list[str] | None = None,
    frequency: float = 0.0,
    dense: float = 0.5,
) -> str:
    """A short label from a feature's top-activating tokens, its promoted outputs (with
    their z-scores), the tokens that follow its top activations, and its firing rate."""
    counts = Counter(_clean(t) for t in top_tokens)
    if not counts:
        return "(never fires)"
    (first, n_first), *rest = counts.most_common(2)
    reads = first if n_first * 2 >= len(top_tokens) or not rest else f"{first}/{rest[0][0]}"
    if frequency > dense:
        reads = f"dense {reads}"
    says = [_clean(t) for t, z in zip(promoted, promoted_z, strict=False) if z >= say_z][:2]
    if not says and next_tokens:
        (after, n_after), *_ = Counter(_clean(t) for t in next_tokens).most_common(1)
        if n_after * 2 >= len(next_tokens) and len(after) >= 3:  # not "is", ".", ","
            says = [after]
    return f"{reads} → {'/'.join(says)}" if says else reads


def labels_from_dashboards(
    model: HookedTransformer,
    clt: Transcoder,
    state: DashboardState,
    settings: DashboardSettings,
    *,
    n_contexts: int = 4,
    context_before: int = 6,
) -> dict[str, Any]:
    """Step 2 for every feature, from a dashboard ``state``."""
    decode = model.tokenizer.decode if model.tokenizer else (lambda ids: " ".join(map(str, ids)))
    top_ids, top_z, _, _ = output_tokens(model, clt, N_PROMOTED)
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    centre = settings.before
    features: dict[str, Any] = {}
    for j in range(L * F):
        layer, feat = divmod(j, F)
        values = state.top_values[:, j]
        n = int((values > 0).sum())
        windows = state.top_tokens[:n, j].tolist()  # [n, W], -1 outside the row
        toks = [decode([w[centre]]) for w in windows]
        nexts = [
            decode([w[centre + 1]]) for w in windows if centre + 1 < len(w) and w[centre + 1] >= 0
        ]
        contexts = [
            decode([t for t in w[max(0, centre - context_before) : centre] if t >= 0])
            + f"[[{tok}]]"
            for w, tok in zip(windows[:n_contexts], toks, strict=False)
        ]
        promoted = [decode([int(t)]) for t in top_ids[j]]
        z = [round(float(v), 2) for v in top_z[j]]
        frequency = float(state.fired[j]) / max(1, state.n_positions)
        features[f"{layer}:{feat}"] = {
            "label": make_label(toks, promoted, z, next_tokens=nexts, frequency=frequency),
            "top_tokens": toks,
            "top_activations": [round(v, 4) for v in values[:n].tolist()],
            "contexts": contexts,
            "promotes": promoted,
            "promote_z": z,
            "frequency": round(frequency, 6),
        }
    return {"version": 2, "n_positions": state.n_positions, "clt": repr(clt), "features": features}


def compute_labels(
    model: HookedTransformer,
    clt: Transcoder,
    texts: list[str],
    *,
    context_size: int = 64,
    batch_size: int = 16,
    top_k: int = 20,
    progress: bool = False,
) -> dict[str, Any]:
    """Labels for every feature from ``texts``; see the module docstring."""
    batches = token_batches_from_texts(model, texts, context_size, batch_size)
    settings = DashboardSettings(top_k=top_k)
    state = compute_dashboards(model, clt, batches, settings, progress=progress)
    return labels_from_dashboards(model, clt, state, settings)


def save_labels(labels: dict[str, Any], folder: str | Path) -> Path:
    return atomic_write_json(Path(folder) / LABELS_FILENAME, labels, ensure_ascii=False)


def load_labels(folder: str | Path) -> dict[str, Any] | None:
    """The cached labels of the CLT in ``folder``, or None."""
    path = Path(folder) / LABELS_FILENAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def label_map(labels: dict[str, Any] | None) -> dict[tuple[int, int], str]:
    """``{(layer, feature): label}`` for the graph JSON and figure."""
    if not labels:
        return {}
    out = {}
    for key, info in labels["features"].items():
        layer, feat = key.split(":")
        out[(int(layer), int(feat))] = info["label"]
    return out


def from_pretrained_with_labels(
    name_or_repo: str, *, device: str = "cpu"
) -> tuple[CrossLayerTranscoder, dict[tuple[int, int], str]]:
    """``CrossLayerTranscoder.from_pretrained`` plus the feature labels cached next to the
    CLT (``{}`` if none), fetching the folder once."""
    clt, labels, _ = load_with_labels(name_or_repo, device=device)
    return clt, labels


def load_with_labels(
    name_or_repo: str, *, device: str = "cpu"
) -> tuple[CrossLayerTranscoder, dict[tuple[int, int], str], str]:
    """:func:`from_pretrained_with_labels` plus the CLT's scan name (the folder of its
    feature files, the graph JSON's ``metadata.scan``)."""
    fetched = pretrained.fetch(name_or_repo)
    clt = CrossLayerTranscoder.from_folder_contents(fetched.read(), device=device)
    return clt, label_map(load_labels(fetched.folder)), fetched.scan
