"""Evaluating a CLT on held-out text: reconstruction and the replacement model.

Algorithm (``evaluate_clt``), over batches of held-out token sequences:

1. Run the model once, caching every layer's CLT input ``x_l`` and MLP output ``y_l``.
   Position 0 (BOS) is left out of every metric: it is an attention sink whose huge,
   constant activations no transcoder is meant to explain (the attribution graph does not
   explain it either).
2. Reconstruction, per layer and overall: NMSE = Σ||ŷ − y||² / Σ||y − ȳ||² (fraction of
   variance unexplained), explained variance = 1 − NMSE, L0 = active features per token,
   and feature firing frequencies (dead: never fires; dense: fires on > 10 % of tokens).
3. Replacement model: run the model again with every MLP output replaced by the CLT's
   reconstruction, computed from the replacement model's own (drifting) MLP inputs, at
   positions ≥ 1. Compare its next-token loss with the original and with a model whose MLP
   outputs are zero (positions ≥ 1): fraction of loss recovered =
   (L_zero − L_clt) / (L_zero − L_orig); plus the mean KL(original ‖ replacement) and top-1
   agreement with the original's prediction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.hooks import prepare_for_clt
from sae_lens_clt.registry import Transcoder
from sae_lens_clt.replacement import ReplacementHooks, zero_mlp_hooks

DENSE_FREQUENCY = 0.10


@dataclass
class CLTEvalResult:
    """Metrics of a CLT on held-out text (lists are per layer)."""

    n_tokens: int
    nmse: float
    explained_variance: float
    l0: float  # mean active features per layer per token
    nmse_per_layer: list[float]
    l0_per_layer: list[float]
    dead_fraction: float
    dense_fraction: float
    loss_original: float | None = None
    loss_replacement: float | None = None
    loss_zero_ablation: float | None = None
    fraction_loss_recovered: float | None = None
    kl_to_original: float | None = None
    top1_agreement: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def summary(self) -> str:
        lines = [
            f"tokens {self.n_tokens}: NMSE {self.nmse:.4f} (EV {self.explained_variance:.4f}), "
            f"L0 {self.l0:.1f}/layer, dead {self.dead_fraction:.1%}, dense {self.dense_fraction:.1%}",
            "  per layer NMSE " + " ".join(f"{v:.3f}" for v in self.nmse_per_layer),
            "  per layer L0   " + " ".join(f"{v:.1f}" for v in self.l0_per_layer),
        ]
        if self.fraction_loss_recovered is not None:
            lines.append(
                f"  LM loss: original {self.loss_original:.4f}, CLT {self.loss_replacement:.4f}, "
                f"zero-ablated {self.loss_zero_ablation:.4f} -> {self.fraction_loss_recovered:.1%} "
                f"recovered; KL {self.kl_to_original:.4f}; top-1 agreement "
                f"{self.top1_agreement:.1%}"
            )
        return "\n".join(lines)


def cache_clt_io(
    model: HookedTransformer, clt: Transcoder, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass: ``(logits [B, T, V], x [B, T, L, d_in], y [B, T, L, d_out])``."""
    L = clt.cfg.n_layers
    prepare_for_clt(model, clt)
    names = [clt.cfg.hook_in(layer) for layer in range(L)]
    names += [clt.cfg.hook_out(layer) for layer in range(L)]
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    x = torch.stack([cache[clt.cfg.hook_in(layer)] for layer in range(L)], dim=2)
    y = torch.stack([cache[clt.cfg.hook_out(layer)] for layer in range(L)], dim=2)
    return logits, x, y


def _next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token next-token cross-entropy ``[B, T-1]`` (predicting positions 1..T-1)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


@torch.no_grad()
def evaluate_clt(
    model: HookedTransformer,
    clt: Transcoder,
    token_batches: Iterable[torch.Tensor],
    replacement: bool = True,
) -> CLTEvalResult:
    """Reconstruction and replacement-model metrics over ``token_batches`` (each ``[B, T]``)."""
    prepare_for_clt(model, clt, action="evaluate_clt")
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    sq_err = torch.zeros(L, dtype=torch.float64)
    sum_y = sum_y2 = None
    l0_sum = torch.zeros(L, dtype=torch.float64)
    fired = torch.zeros(L, F, dtype=torch.float64)
    n = 0
    losses = {"orig": 0.0, "clt": 0.0, "zero": 0.0, "kl": 0.0, "agree": 0.0}
    n_pred = 0
    for tokens in token_batches:
        tokens = tokens.to(clt.device)
        logits, x, y = cache_clt_io(model, clt, tokens)
        x, y = x[:, 1:].flatten(0, 1), y[:, 1:].flatten(0, 1)  # drop BOS: [N, L, d]
        acts = clt.encode(x)
        y_hat = clt.decode_sparse(acts, x).to(y.dtype)
        y64 = y.double()
        sq_err += (y_hat.double() - y64).pow(2).sum(dim=(0, 2)).cpu()
        s1, s2 = y64.sum(0).cpu(), y64.pow(2).sum(dim=(0, 2)).cpu()  # [L, d], [L]
        sum_y = s1 if sum_y is None else sum_y + s1
        sum_y2 = s2 if sum_y2 is None else sum_y2 + s2
        active = acts != 0
        l0_sum += active.sum(dim=(0, 2)).double().cpu()
        fired += active.sum(0).double().cpu()
        n += x.shape[0]
        if replacement:
            base_loss = _next_token_loss(logits, tokens)[:, 1:]  # predictions from pos >= 1
            replaced = ReplacementHooks(clt, keep_first=1).hooks()
            clt_logits = model.run_with_hooks(tokens, fwd_hooks=replaced)
            zero_logits = model.run_with_hooks(tokens, fwd_hooks=zero_mlp_hooks(clt, keep_first=1))
            losses["orig"] += base_loss.sum().item()
            losses["clt"] += _next_token_loss(clt_logits, tokens)[:, 1:].sum().item()
            losses["zero"] += _next_token_loss(zero_logits, tokens)[:, 1:].sum().item()
            p = logits[:, 1:-1].float().log_softmax(-1)
            q = clt_logits[:, 1:-1].float().log_softmax(-1)
            losses["kl"] += (p.exp() * (p - q)).sum(-1).sum().item()
            agree = logits[:, 1:-1].argmax(-1) == clt_logits[:, 1:-1].argmax(-1)
            losses["agree"] += agree.sum().item()
            n_pred += base_loss.numel()
    if n == 0:
        raise ValueError("evaluate_clt got no tokens: pass at least one batch of token ids")
    assert sum_y is not None and sum_y2 is not None
    variance = sum_y2 - sum_y.pow(2).sum(-1) / n  # Σ||y − ȳ||² per layer
    nmse_layer = sq_err / variance
    freq = fired / n
    result = CLTEvalResult(
        n_tokens=n,
        nmse=(sq_err.sum() / variance.sum()).item(),
        explained_variance=1 - (sq_err.sum() / variance.sum()).item(),
        l0=(l0_sum.sum() / (n * L)).item(),
        nmse_per_layer=nmse_layer.tolist(),
        l0_per_layer=(l0_sum / n).tolist(),
        dead_fraction=(freq == 0).double().mean().item(),
        dense_fraction=(freq > DENSE_FREQUENCY).double().mean().item(),
    )
    if replacement and n_pred:
        o, c, z = losses["orig"] / n_pred, losses["clt"] / n_pred, losses["zero"] / n_pred
        result.loss_original, result.loss_replacement, result.loss_zero_ablation = o, c, z
        result.fraction_loss_recovered = (z - c) / (z - o) if z != o else float("nan")
        result.kl_to_original = losses["kl"] / n_pred
        result.top1_agreement = losses["agree"] / n_pred
    return result


def token_batches_from_texts(
    model: HookedTransformer, texts: Iterable[str], context_size: int, batch_size: int = 16
) -> list[torch.Tensor]:
    """Tokenize texts, pack them into ``context_size`` windows, batch them.

    Texts are joined with BOS between them (as SAELens' store does with
    ``sequence_separator_token="bos"``) and every window starts with BOS, so short documents
    are not lost.
    """
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    stream: list[int] = []
    for text in texts:
        toks = model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()
        stream += ([bos] if stream else []) + toks
    step = context_size - 1
    rows = [
        torch.tensor([bos] + stream[i : i + step]) for i in range(0, len(stream) - step + 1, step)
    ]
    return [torch.stack(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
