"""Feature labels computed from data: what a feature reads, and what it says.

Algorithm:

1. Run the model over a sample of text; encode every position with the CLT and keep, for
   each feature, its ``top_k`` largest activations with the token and a short context
   around it, and how often it fires.
2. Read each feature's direct effect on the logits: its decoder vectors pushed through
   the unembedding, ``Σ_{t >= s} W_dec[s -> t] @ W_U`` (the final norm scale left out), and
   keep the tokens it promotes most.
3. Label: the token that dominates its top activations (``"Texas"``), or the two most
   common ones (``"Texas/Houston"``); plus ``→ Austin`` when its strongest promoted output
   token stands out from the rest (z-score above ``say_z``).
4. Labels are cached as ``feature_labels.json`` next to the CLT, so that the demo and the
   graph JSON (``clerp``) read them without recomputing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_clt.evals import cache_clt_io, token_batches_from_texts
from sae_lens_clt.formats.atomic import atomic_write_json
from sae_lens_clt.loading import pretrained
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder

LABELS_FILENAME = "feature_labels.json"


def _tok(model: HookedTransformer, token_id: int) -> str:
    return model.tokenizer.decode([token_id]) if model.tokenizer else str(token_id)


@torch.no_grad()
def top_activations(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    token_batches: Iterable[torch.Tensor],
    top_k: int = 8,
) -> dict[str, Any]:
    """Top activations of every feature over ``token_batches`` (each ``[B, T]``).

    Returns ``values [k, L*F]``, ``where [k, L*F, 2]`` (global row, position), the rows
    ``tokens [n_rows, T]`` and ``frequency [L*F]`` (share of positions ≥ 1 it fires on).
    """
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    values = torch.full((top_k, L * F), -1.0)
    where = torch.zeros(top_k, L * F, 2, dtype=torch.long)
    fired = torch.zeros(L * F)
    rows: list[torch.Tensor] = []
    n_pos = 0
    for tokens in tqdm(list(token_batches), desc="feature activations", leave=False):
        _, x, _ = cache_clt_io(model, clt, tokens)
        acts = clt.encode(x).float()  # [B, T, L, F]
        acts[:, 0] = 0  # BOS is not explained
        B, T = tokens.shape
        flat = acts.reshape(B * T, L * F)
        fired += (flat > 0).sum(0).float()
        n_pos += B * (T - 1)
        k = min(top_k, flat.shape[0])
        v, i = flat.topk(k, dim=0)  # [k, L*F]
        offset = sum(r.shape[0] for r in rows)  # global row index of this batch's first row
        pos = torch.stack([i // T + offset, i % T], dim=-1)
        rows.append(tokens.cpu())
        cat_v = torch.cat([values, v])
        cat_w = torch.cat([where, pos])
        best = cat_v.topk(top_k, dim=0).indices  # [k, L*F]
        values = cat_v.gather(0, best)
        where = cat_w.gather(0, best[..., None].expand(-1, -1, 2))
    return {
        "values": values,
        "where": where,
        "tokens": torch.cat(rows),
        "frequency": fired / max(1, n_pos),
    }


@torch.no_grad()
def promoted_tokens(
    model: HookedTransformer, clt: CrossLayerTranscoder, top_n: int = 5, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens each feature's decoder promotes most through the unembedding.

    Returns ``(token_ids [L*F, top_n], z_scores [L*F, top_n])``.
    """
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    W_U = model.W_U.float()  # [d_model, V]
    ids, zs = [], []
    for s in range(L):
        for start in range(0, F, chunk):
            feats = torch.arange(start, min(F, start + chunk))
            direct = clt.decoder_rows(s, feats).float().sum(1)  # [n, d_out]: Σ_t W_dec[s->t]
            logits = direct @ W_U  # [n, V]
            logits = logits - logits.mean(-1, keepdim=True)
            z = logits / logits.std(-1, keepdim=True).clamp(min=1e-8)
            top = z.topk(top_n, dim=-1)
            ids.append(top.indices)
            zs.append(top.values)
    return torch.cat(ids), torch.cat(zs)


def make_label(
    top_tokens: list[str], promoted: list[str], promoted_z: list[float], say_z: float = 4.0
) -> str:
    """A short label from a feature's top-activating tokens and its promoted outputs."""
    counts = Counter(t.strip() or repr(t) for t in top_tokens)
    if not counts:
        return "(never fires)"
    (first, n_first), *rest = counts.most_common(2)
    reads = first if n_first * 2 >= len(top_tokens) or not rest else f"{first}/{rest[0][0]}"
    if promoted and promoted_z[0] >= say_z:
        return f"{reads} → {promoted[0].strip() or repr(promoted[0])}"
    return reads


def compute_labels(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    texts: list[str],
    *,
    context_size: int = 64,
    batch_size: int = 16,
    top_k: int = 8,
    window: int = 6,
) -> dict[str, Any]:
    """Labels for every feature from ``texts``; see the module docstring."""
    batches = token_batches_from_texts(model, texts, context_size, batch_size)
    top = top_activations(model, clt, batches, top_k=top_k)
    prom_ids, prom_z = promoted_tokens(model, clt)
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    features: dict[str, Any] = {}
    rows = top["tokens"]
    for j in range(L * F):
        layer, feat = divmod(j, F)
        toks, contexts = [], []
        for v, (r, p) in zip(
            top["values"][:, j].tolist(), top["where"][:, j].tolist(), strict=True
        ):
            if v <= 0:
                continue
            toks.append(_tok(model, int(rows[r, p])))
            lo = max(1, p - window)
            before = model.tokenizer.decode(rows[r, lo:p].tolist()) if model.tokenizer else ""
            contexts.append(f"{before}[[{toks[-1]}]]")
        promoted = [_tok(model, int(t)) for t in prom_ids[j]]
        z = [round(float(v), 2) for v in prom_z[j]]
        features[f"{layer}:{feat}"] = {
            "label": make_label(toks, promoted, z),
            "top_tokens": toks,
            "top_activations": [round(v, 4) for v in top["values"][:, j].tolist() if v > 0],
            "contexts": contexts[:4],
            "promotes": promoted,
            "promote_z": z,
            "frequency": round(float(top["frequency"][j]), 6),
        }
    return {
        "version": 1,
        "n_positions": int(rows.numel()),
        "clt": repr(clt),
        "features": features,
    }


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
    fetched = pretrained.fetch(name_or_repo)
    clt = CrossLayerTranscoder.from_folder_contents(fetched.read(), device=device)
    return clt, label_map(load_labels(fetched.folder))
