"""Feature dashboards: what each feature reads and what it writes, in circuit-tracer's
feature-file format (the files its local server and Neuronpedia's viewer show).

Algorithm (:func:`compute_dashboards`, then :func:`write_feature_files`):

1. Stream token batches ``[B, T]``; run the model once per batch and encode the CLT inputs:
   ``acts [B*T, L*F]`` with the BOS position set to 0 (it is not explained).
2. Keep per feature, in memory bounded by ``top_k × L*F × window`` whatever the dataset size
   (:class:`DashboardState`):
   - how many positions it fires on, out of how many → ``activation_frequency``;
   - a histogram of its positive activations over fixed log-spaced bins
     (:data:`HIST_EDGES`) and its smallest positive activation → ``quantile_values``
     (the 1st..100th percentile, each read off as the upper edge of the bin it falls in),
     ``histogram`` (the log bins re-binned linearly between ``act_min`` and ``act_max``);
   - its ``top_k`` largest activations, each with the token window around it
     (``before`` tokens before, ``after`` after) and the feature's activation on each token.
   Per batch: ``topk`` over positions, gather the windows, merge with the running top-k.
3. Every ``save_every`` batches the state and the number of batches done go atomically to
   ``<out>/.dashboard_state.safetensors``; a rerun with the same settings resumes after the
   last saved batch (the settings are checked, a different run starts afresh).
4. Output tokens: each feature's decoder vectors pushed through the unembedding,
   ``Σ_{t >= s} W_dec[s -> t] @ W_U`` (final norm scale left out), top and bottom ``n_logits``.
5. One JSON per feature, ``<out>/<scan>/<index>.json`` with ``index =
   cantor_pairing(layer, feature)`` (the id the graph JSON's ``feature`` field holds), with
   exactly the fields of circuit-tracer's ``frontend.feature_models.Model``; written
   atomically, each file at most once per run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.export import cantor_pairing
from sae_lens_clt.evals import cache_clt_io
from sae_lens_clt.formats.atomic import atomic_save_safetensors, atomic_write_json
from sae_lens_clt.registry import Transcoder

STATE_FILENAME = ".dashboard_state.safetensors"
# fixed log-spaced histogram bins for positive activations: 1e-4 .. 1e4, 24 per decade
HIST_EDGES = torch.logspace(-4, 4, 8 * 24 + 1)
N_LINEAR_BINS = 50
QUANTILE_NAME = "Top activations"


@dataclass(frozen=True)
class DashboardSettings:
    """What a dashboard run keeps; a saved state resumes only under equal settings."""

    top_k: int = 20
    before: int = 16  # tokens shown before the activating token
    after: int = 4  # and after it
    n_logits: int = 10
    dataset: str = ""  # names the tokens, CLT and model, so a resume continues the same run

    @property
    def window(self) -> int:
        return self.before + 1 + self.after


@dataclass
class DashboardState:
    """Step 2's running statistics over ``n_feat = L*F`` features."""

    top_values: torch.Tensor  # [k, n_feat] float32; 0 = empty slot
    top_tokens: torch.Tensor  # [k, n_feat, W] int64 token ids; -1 = outside the row
    top_acts: torch.Tensor  # [k, n_feat, W] float32
    fired: torch.Tensor  # [n_feat] int64 positions where the feature is > 0
    hist: torch.Tensor  # [n_feat, n_bins] int64 counts over HIST_EDGES
    act_min: torch.Tensor  # [n_feat] float32 smallest positive activation (inf: never)
    n_positions: int = 0
    batches_done: int = 0

    @classmethod
    def empty(cls, n_feat: int, settings: DashboardSettings) -> DashboardState:
        k, W = settings.top_k, settings.window
        return cls(
            top_values=torch.zeros(k, n_feat),
            top_tokens=torch.full((k, n_feat, W), -1, dtype=torch.long),
            top_acts=torch.zeros(k, n_feat, W),
            fired=torch.zeros(n_feat, dtype=torch.long),
            hist=torch.zeros(n_feat, len(HIST_EDGES) - 1, dtype=torch.long),
            act_min=torch.full((n_feat,), math.inf),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "top_values": self.top_values,
            "top_tokens": self.top_tokens,
            "top_acts": self.top_acts,
            "fired": self.fired,
            "hist": self.hist,
            "act_min": self.act_min,
            "counters": torch.tensor([self.n_positions, self.batches_done]),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> DashboardState:
        n_positions, batches_done = (int(v) for v in t["counters"])
        fields = {k: v for k, v in t.items() if k != "counters"}
        return cls(**fields, n_positions=n_positions, batches_done=batches_done)


def _update(
    state: DashboardState, tokens: torch.Tensor, acts: torch.Tensor, settings: DashboardSettings
) -> None:
    """Step 2 for one batch: ``tokens [B, T]``, ``acts [B, T, n_feat]`` (BOS already 0)."""
    B, T, n_feat = acts.shape
    flat = acts.reshape(B * T, n_feat)  # [N, n_feat]
    positive = flat > 0
    state.fired += positive.sum(0)
    state.n_positions += B * (T - 1)
    rows, feats = positive.nonzero(as_tuple=True)  # [nnz] each
    values = flat[rows, feats]
    state.act_min = torch.minimum(
        state.act_min,
        torch.full((n_feat,), math.inf).scatter_reduce(0, feats, values, "amin"),
    )
    bins = torch.bucketize(values, HIST_EDGES[1:-1])  # [nnz] in 0..n_bins-1
    n_bins = state.hist.shape[1]
    state.hist += torch.bincount(feats * n_bins + bins, minlength=n_feat * n_bins).view(
        n_feat, n_bins
    )
    # top-k: the batch's best positions per feature, their windows, merged with the running ones
    k = min(settings.top_k, B * T)
    v, i = flat.topk(k, dim=0)  # [k, n_feat]
    b, p = i // T, i % T
    offsets = torch.arange(settings.window) - settings.before  # [W]
    pos = p[..., None] + offsets  # [k, n_feat, W]
    inside = (pos >= 0) & (pos < T)
    pos = pos.clamp(0, T - 1)
    bb = b[..., None].expand_as(pos)
    win_tokens = torch.where(inside, tokens[bb, pos], -1)  # [k, n_feat, W]
    feat_idx = torch.arange(n_feat)[None, :, None].expand_as(pos)
    win_acts = torch.where(inside, acts[bb, pos, feat_idx], 0.0)  # [k, n_feat, W]
    all_v = torch.cat([state.top_values, v])  # [k0 + k, n_feat]
    best = all_v.topk(settings.top_k, dim=0).indices  # [k0, n_feat]
    state.top_values = all_v.gather(0, best)
    best_w = best[..., None].expand(-1, -1, settings.window)
    state.top_tokens = torch.cat([state.top_tokens, win_tokens]).gather(0, best_w)
    state.top_acts = torch.cat([state.top_acts, win_acts]).gather(0, best_w)


def _load_state(out: Path, settings: DashboardSettings, n_feat: int) -> DashboardState | None:
    path = out / STATE_FILENAME
    if not path.is_file():
        return None
    from sae_lens_clt.formats.safetensors import file_metadata

    if file_metadata(path).get("settings") != json.dumps(asdict(settings), sort_keys=True):
        return None
    state = DashboardState.from_tensors(load_file(str(path)))
    return state if state.top_values.shape[1] == n_feat else None


def _save_state(out: Path, state: DashboardState, settings: DashboardSettings) -> None:
    meta = {"settings": json.dumps(asdict(settings), sort_keys=True)}
    atomic_save_safetensors(state.tensors(), out / STATE_FILENAME, metadata=meta)


@torch.no_grad()
def compute_dashboards(
    model: HookedTransformer,
    clt: Transcoder,
    token_batches: Iterable[torch.Tensor],
    settings: DashboardSettings | None = None,
    *,
    state_dir: str | Path | None = None,
    save_every: int = 20,
    n_batches: int | None = None,
    progress: bool = True,
) -> DashboardState:
    """Steps 1-3 over ``token_batches`` (each ``[B, T]``). With ``state_dir``, the state is
    saved every ``save_every`` batches and a saved state with equal settings is resumed:
    the batches it already holds are skipped."""
    settings = settings or DashboardSettings()
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    out = Path(state_dir) if state_dir is not None else None
    state = (_load_state(out, settings, L * F) if out else None) or DashboardState.empty(
        L * F, settings
    )
    skip = state.batches_done
    bar = tqdm(total=n_batches, desc="feature dashboards", disable=not progress, initial=skip)
    for step, tokens in enumerate(token_batches):
        if step < skip:
            continue
        _, x, _ = cache_clt_io(model, clt, tokens)
        acts = clt.encode(x).float().flatten(2).cpu()  # [B, T, L*F]
        acts[:, 0] = 0  # BOS is not explained
        _update(state, tokens.cpu(), acts, settings)
        state.batches_done = step + 1
        bar.update(1)
        if out is not None and state.batches_done % save_every == 0:
            _save_state(out, state, settings)
    bar.close()
    if out is not None:
        _save_state(out, state, settings)
    return state


@torch.no_grad()
def output_tokens(
    model: HookedTransformer, clt: Transcoder, n: int = 10, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step 4: ``(top ids, top z-scores, bottom ids, bottom z-scores)``, each ``[L*F, n]``.

    z-scores are the logit effects standardised over the vocabulary."""
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    W_U = model.W_U.float()  # [d_model, V]
    top_i, top_z, bot_i, bot_z = [], [], [], []
    for s in range(L):
        for start in range(0, F, chunk):
            feats = torch.arange(start, min(F, start + chunk))
            direct = clt.decoder_rows(s, feats).float().sum(1)  # [n, d_out]: Σ_t W_dec[s->t]
            logits = direct.to(W_U.device) @ W_U  # [n, V]
            z = (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True).clamp(
                min=1e-8
            )
            top = z.topk(n, dim=-1)
            bottom = (-z).topk(n, dim=-1)
            top_i.append(top.indices.cpu())
            top_z.append(top.values.cpu())
            bot_i.append(bottom.indices.cpu())
            bot_z.append(-bottom.values.cpu())
    return torch.cat(top_i), torch.cat(top_z), torch.cat(bot_i), torch.cat(bot_z)


def _quantiles_and_histogram(
    hist: torch.Tensor, act_min: float, act_max: float
) -> tuple[list[float], list[float]]:
    """Step 2's read-out for one feature from its log-bin counts ``hist [n_bins]``."""
    total = int(hist.sum())
    if total == 0:
        return [0.0] * 100, [0.0] * N_LINEAR_BINS
    cum = hist.cumsum(0).double() / total  # [n_bins]
    levels = torch.arange(1, 101, dtype=torch.double) / 100
    idx = torch.searchsorted(cum, levels).clamp(max=len(hist) - 1)
    quantiles = HIST_EDGES[1:][idx].clamp(min=act_min, max=act_max).tolist()
    centres = (HIST_EDGES[:-1] * HIST_EDGES[1:]).sqrt()  # geometric centre of each log bin
    span = max(act_max - act_min, 1e-12)
    linear = ((centres - act_min) / span * N_LINEAR_BINS).floor().clamp(0, N_LINEAR_BINS - 1)
    counts = torch.zeros(N_LINEAR_BINS, dtype=torch.double)
    counts.index_add_(0, linear.long(), hist.double())
    return [round(q, 5) for q in quantiles], counts.tolist()


class _Vocab:
    """Token id -> string, decoded once per id."""

    def __init__(self, model: HookedTransformer) -> None:
        self.tokenizer = model.tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            self.cache[token_id] = (
                self.tokenizer.decode([token_id]) if self.tokenizer else str(token_id)
            )
        return self.cache[token_id]


def feature_record(
    state: DashboardState,
    j: int,
    F: int,
    vocab: _Vocab,
    logits: tuple[torch.Tensor, ...],
    transcoder_id: str,
    settings: DashboardSettings,
) -> dict[str, Any]:
    """Step 5 for global feature ``j = layer * F + feature``: circuit-tracer's ``Model``."""
    layer, feat = divmod(j, F)
    examples = []
    for r in range(state.top_values.shape[0]):
        if float(state.top_values[r, j]) <= 0:
            break  # top values are sorted; the rest are empty slots
        ids = state.top_tokens[r, j].tolist()
        acts = state.top_acts[r, j].tolist()
        kept = [(i, a) for i, a in zip(ids, acts, strict=True) if i >= 0]
        first_inside = next(w for w, i in enumerate(ids) if i >= 0)
        examples.append(
            {
                "tokens": [vocab(i) for i, _ in kept],
                "tokens_acts_list": [round(a, 4) for _, a in kept],
                "train_token_ind": settings.before - first_inside,
                "is_repeated_datapoint": False,
            }
        )
    act_max = float(state.top_values[0, j])
    act_min = float(state.act_min[j]) if math.isfinite(float(state.act_min[j])) else 0.0
    quantiles, histogram = _quantiles_and_histogram(state.hist[j], act_min, act_max)
    top_ids, _, bottom_ids, _ = logits
    return {
        "transcoder_id": transcoder_id,
        "index": cantor_pairing(layer, feat),
        "examples_quantiles": [{"quantile_name": QUANTILE_NAME, "examples": examples}],
        "top_logits": [vocab(int(t)) for t in top_ids[j]],
        "bottom_logits": [vocab(int(t)) for t in bottom_ids[j]],
        "act_min": round(act_min, 5),
        "act_max": round(act_max, 5),
        "quantile_values": quantiles,
        "histogram": histogram,
        "activation_frequency": float(state.fired[j]) / max(1, state.n_positions),
    }


def write_feature_files(
    model: HookedTransformer,
    clt: Transcoder,
    state: DashboardState,
    out: str | Path,
    *,
    scan: str,
    settings: DashboardSettings | None = None,
    features: Sequence[tuple[int, int]] | None = None,
    progress: bool = True,
) -> Path:
    """Steps 4-5: write ``out/<scan>/<index>.json`` for every feature (or only the
    ``(layer, feature)`` pairs in ``features``); returns that folder."""
    settings = settings or DashboardSettings()
    F = clt.cfg.d_sae
    folder = Path(out) / scan
    folder.mkdir(parents=True, exist_ok=True)
    logits = output_tokens(model, clt, settings.n_logits)
    vocab = _Vocab(model)
    wanted = (
        range(clt.cfg.n_layers * F)
        if features is None
        else sorted({layer * F + f for layer, f in features})
    )
    for j in tqdm(wanted, desc="feature files", disable=not progress):
        record = feature_record(state, j, F, vocab, logits, scan, settings)
        atomic_write_json(folder / f"{record['index']}.json", record, ensure_ascii=False)
    return folder
