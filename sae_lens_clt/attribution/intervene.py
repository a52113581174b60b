"""Interventions on the CLT replacement model: ablate or steer features, read the logits.

Algorithm (one prompt, ``L`` layers):

1. Clean run of the model: cache the CLT inputs ``x_l``, MLP outputs ``y_l``, and (when
   frozen) attention patterns and norm scales. Encode the clean activations and the
   error vectors ``e_l = y_l - ŷ_l`` (held fixed from here on).
2. Intervened run through the replacement model's hooks (:mod:`sae_lens_clt.replacement`):
   at each layer's CLT input hook, encode the features from the *current* input (or keep
   the clean activations with ``freeze_features``), then set every intervened
   ``(layer, position, feature)`` to its value. At each layer's MLP output hook, write the
   replacement ``Σ_{s ∈ sources(t)} a_s W_dec[s -> t] + b_dec[t] + skip(x_t, t) + e_t``,
   so a feature changed at layer ``s`` changes its writes to every layer it writes to.
   With no interventions this reproduces the clean run exactly.
3. Return the new logits and feature activations (and the clean ones to compare).

This runs the *replacement* model (MLPs replaced by CLT + fixed error), the model the
attribution graph describes, so downstream MLPs respond through CLT features only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.inputs import Prompt, check_compatible, to_tokens
from sae_lens_clt.registry import Transcoder
from sae_lens_clt.replacement import ReplacementHooks

Intervention = tuple[int, int, int, float]  # (layer, position, feature, value)


class InterventionResult(NamedTuple):
    logits: torch.Tensor  # [T, d_vocab] after the interventions
    activations: torch.Tensor  # [L, T, d_sae] feature activations after the interventions
    pre_activations: torch.Tensor  # [L, T, d_sae] pre-activations after the interventions
    clean_logits: torch.Tensor  # [T, d_vocab]
    clean_activations: torch.Tensor  # [L, T, d_sae]


def _check(interventions: Sequence[Intervention], L: int, T: int, F: int) -> list:
    checked = []
    for item in interventions:
        if len(item) != 4:
            raise ValueError(f"an intervention is (layer, position, feature, value), got {item!r}")
        layer, pos, feat, value = item
        pos = int(pos) + T if int(pos) < 0 else int(pos)
        if not (0 <= int(layer) < L and 0 <= pos < T and 0 <= int(feat) < F):
            raise ValueError(
                f"intervention {item!r} is out of range: layer in [0, {L}), position in "
                f"[-{T}, {T}), feature in [0, {F})"
            )
        checked.append((int(layer), pos, int(feat), float(value)))
    last = {(layer, pos, feat): value for layer, pos, feat, value in checked}  # last one wins
    return [(*key, value) for key, value in last.items()]


def _intervention_delta(
    clt: Transcoder,
    acts: list[torch.Tensor],
    pres: list[torch.Tensor],
    todo: list[tuple[int, int, int, float]],
    target: int,
    T: int,
) -> torch.Tensor:
    """``Σ (value - a_now) W_dec[s -> target][f]`` at each intervened ``(s <= target, p, f)``:
    ``[T, d_out]``. ``acts[s]`` holds the set values; the current ones are ``σ(pres[s])``."""
    out = clt.b_dec.new_zeros(T, clt.cfg.d_out)
    for s, pos, feat, value in todo:
        if target in clt.targets(s):
            now = clt.activation(pres[s], s)[pos, feat]
            out[pos] += (value - now) * clt.decoder_rows(
                s, torch.tensor([feat], device=out.device)
            )[0, target - s]
    return out


@torch.no_grad()
def intervene(
    model: HookedTransformer,
    clt: Transcoder,
    prompt: Prompt,
    interventions: Sequence[Intervention],
    *,
    freeze_attention: bool = True,
    freeze_layernorm: bool | None = None,
    freeze_features: bool = False,
    mlps: str = "replacement",
) -> InterventionResult:
    """Run the replacement model (or the model itself) with some features set to given values.

    Args:
        model / clt / prompt: as for :func:`sae_lens_clt.attribute` (BOS is prepended).
        interventions: ``(layer, position, feature, value)``; ablate with value 0, steer
            with a multiple of the clean activation. Negative positions count from the end.
        freeze_attention: keep attention patterns at their clean values.
        freeze_layernorm: keep norm scales at their clean values; ``None`` (default)
            follows ``freeze_attention`` with ``mlps="replacement"`` and is ``False`` with
            ``mlps="model"`` (circuit-tracer's ``feature_intervention`` freezes only the
            attention patterns).
        freeze_features: keep every other feature at its clean activation (direct effects
            only); by default downstream features respond to the change.
        mlps: ``"replacement"`` (default): every MLP output is the CLT's reconstruction from
            the current features plus the clean error, so downstream MLPs respond through
            CLT features only (the model the graph describes). ``"model"``: the model's own
            MLPs run, and each intervened feature adds ``(value - its current activation) ×
            its decoder vectors`` to the MLP outputs of its layer and every later one, exactly
            circuit-tracer's ``feature_intervention``.

    Returns:
        :class:`InterventionResult` with logits ``[T, d_vocab]`` and activations
        ``[L, T, d_sae]``, after and before the interventions.
    """
    check_compatible(model, clt, action="intervene")
    if mlps not in ("replacement", "model"):
        raise ValueError(f"mlps must be 'replacement' or 'model', got {mlps!r}")
    if mlps == "model" and freeze_features:
        raise ValueError(
            "freeze_features needs mlps='replacement' (the model's MLPs do not read features)"
        )
    if freeze_layernorm is None:
        freeze_layernorm = freeze_attention and mlps == "replacement"
    tokens = to_tokens(model, prompt)[None].to(model.cfg.device)  # [1, T]
    L, T, F = clt.cfg.n_layers, tokens.shape[1], clt.cfg.d_sae
    todo = _check(interventions, L, T, F)

    # 1. clean run
    cache: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any, name: str) -> torch.Tensor:
        cache[name] = act.detach()  # under the name asked for (bridge aliases differ)
        return act

    frozen = [
        n
        for n in model.hook_dict
        if (freeze_attention and n.endswith(".hook_pattern"))
        or (freeze_layernorm and n.endswith(".hook_scale"))
    ]
    names = (
        frozen + [clt.cfg.hook_in(s) for s in range(L)] + [clt.cfg.hook_out(s) for s in range(L)]
    )
    clean_hooks = [(n, functools.partial(keep, name=n)) for n in names]
    clean_logits = model.run_with_hooks(tokens, fwd_hooks=clean_hooks)[0]
    x = torch.stack([cache[clt.cfg.hook_in(s)][0] for s in range(L)]).to(clt.dtype)  # [L,T,d]
    y = torch.stack([cache[clt.cfg.hook_out(s)][0] for s in range(L)]).to(clt.dtype)
    clean_pre = torch.stack([clt.encode_layer_pre(x[s], s) for s in range(L)])  # [L, T, F]
    clean_acts = torch.stack([clt.activation(clean_pre[s], s) for s in range(L)])
    clean_recon = clt.decode_sparse(clean_acts.transpose(0, 1), x.transpose(0, 1))
    errors = y - clean_recon.transpose(0, 1)  # [L, T, d_out]

    # 2. intervened run: the replacement model's hooks, with the interventions as an edit
    def edit(layer: int, a: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        a = clean_acts[layer][None].clone() if freeze_features else a.clone()  # [1, T, F]
        for lay, pos, feat, value in todo:
            if lay == layer:
                a[0, pos, feat] = value
        return a

    replacement = ReplacementHooks(clt, edit=edit, errors=errors[:, None], sparse=True)

    def model_mlp(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        # the model's own output plus the intervened features' change
        acts = [replacement.acts[s][0] for s in range(layer + 1)]
        pres = [replacement.pre[s][0] for s in range(layer + 1)]
        return act + _intervention_delta(clt, acts, pres, todo, layer, T).to(act.dtype)[None]

    def replace(act: torch.Tensor, hook: Any, name: str) -> torch.Tensor:
        return cache[name].to(act.dtype)

    hooks: list[tuple[str, Any]] = [(n, functools.partial(replace, name=n)) for n in frozen]
    for name, fn in replacement.hooks():
        if mlps == "model" and fn.func == replacement.write:
            fn = functools.partial(model_mlp, layer=fn.keywords["layer"])
        hooks.append((name, fn))
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[0]
    return InterventionResult(
        logits=logits,
        activations=torch.stack([replacement.acts[s][0] for s in range(L)]),
        pre_activations=torch.stack([replacement.pre[s][0] for s in range(L)]),
        clean_logits=clean_logits,
        clean_activations=clean_acts,
    )
