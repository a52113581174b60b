"""Text generation with feature interventions: steer or ablate CLT features while generating.

Algorithm (prompt of ``T0`` tokens, BOS included; ``n = max_new_tokens``):

1. Resolve every intervention's position against the prompt: an ``int`` is one position
   (constant; negative counts from the prompt's end), a closed ``slice(a, b)`` or a sequence
   of ints a fixed set of positions, an *open-ended* ``slice(a, None)`` (or ``"all"`` =
   ``slice(0, None)``, ``"new"`` = ``slice(T0, None)``) every position from ``a`` on,
   each newly generated position included.
2. Clean run of the prompt: cache the attention patterns (and, when frozen, norm scales).
3. For step ``k = 0 … n-1``: run the *whole* sequence so far (``T0 + k`` tokens, no KV
   cache) with the interventions that cover its positions, the prompt's query rows of every
   attention pattern (and its norm scales) replaced by their clean values when frozen, and
   choose the next token from the last position's logits (greedy, or sampled from
   ``softmax(logits / temperature)`` restricted to the ``top_k`` with a seeded generator).
   - ``mlps="model"``: the model's own MLPs run; an intervened feature adds ``(value -
     its current activation) × its decoder vectors`` to the MLP outputs of its layer and
     every later one (circuit-tracer's ``feature_intervention``).
   - ``mlps="replacement"``: every MLP output is the CLT's reconstruction from the current
     (edited) features plus the error term of a clean run of the same sequence (the model
     the attribution graph describes; :func:`sae_lens_clt.attribution.intervene`).

Equivalence with circuit-tracer 0.5's ``feature_intervention_generate`` (KV-cached): it runs
the prompt once with every intervention and frozen patterns, then feeds each new token
alone with only the open-ended interventions (at that token) and *unfrozen* attention,
reading the prompt's cached keys and values. By causality, re-running the full sequence
with the prompt rows frozen and the generated rows free computes the same numbers, so both
give the same tokens and logits to float tolerance (re-running costs ``O(n (T0 + n))``
token-passes instead of ``O(T0 + n)``, memory bounded by the longest sequence,
``T0 + n - 1`` tokens). Differences, all where circuit-tracer has no defined answer:
circuit-tracer applies *every* open-ended slice at every generated position whatever its
start, here ``slice(a, None)`` starts at ``a`` (the same when ``a <= T0``); an ``int`` or
closed slice may name generated positions here (circuit-tracer indexes the prompt only);
its ``constrained_layers`` (applied to the first new token only) is not offered. As in
circuit-tracer, a repeated ``(layer, position, feature)`` keeps the last value. Returned
activations are dense, with intervened features at their set values (circuit-tracer's
``sparse`` / ``apply_activation_function`` only shape what it returns).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.inputs import Prompt, check_compatible, to_tokens
from sae_lens_clt.registry import Transcoder
from sae_lens_clt.replacement import ReplacementHooks

Position = int | slice | str | Sequence[int] | torch.Tensor
GenIntervention = tuple[int, Position, int, float]  # (layer, position(s), feature, value)
MARKERS = ("all", "new", "prompt")


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate` returns.

    ``tokens``: ``[T0 + n]`` the prompt (BOS included) then the generated ids;
    ``logits``: ``[n, d_vocab]`` the logits each new token was chosen from;
    ``activations``: ``[L, T0 + n - 1, d_sae]`` feature activations of the last forward
    pass (every position the model ran on; intervened features hold their set values), or
    ``None`` with ``return_activations=False``; ``text``: the continuation decoded (``None``
    without a tokenizer).
    """

    tokens: torch.Tensor
    prompt_length: int
    logits: torch.Tensor
    activations: torch.Tensor | None
    text: str | None

    @property
    def new_tokens(self) -> torch.Tensor:
        """``[n]`` the generated token ids."""
        return self.tokens[self.prompt_length :]


@dataclass(frozen=True)
class _Spec:
    layer: int
    feature: int
    value: float
    start: int  # first absolute position
    stop: int | None  # one past the last; None: open-ended
    positions: tuple[int, ...] | None = None  # an explicit set instead of a range

    def covers(self, T: int) -> list[int]:
        if self.positions is not None:
            return [p for p in self.positions if p < T]
        stop = T if self.stop is None else min(self.stop, T)
        return list(range(self.start, stop))


def _resolve_pos(p: Any, T0: int, item: Any) -> int:
    if (
        isinstance(p, bool)
        or not isinstance(p, int | torch.Tensor)
        or (isinstance(p, torch.Tensor) and (p.numel() != 1 or p.is_floating_point()))
    ):
        raise ValueError(f"intervention {item!r}: a position must be an int, got {p!r}")
    p = int(p)
    return p + T0 if p < 0 else p


def _parse(
    interventions: Sequence[GenIntervention], L: int, F: int, T0: int, T_max: int
) -> list[_Spec]:
    """Check each ``(layer, position, feature, value)`` and resolve its positions (``T_max``:
    the number of positions the model ever runs on, ``T0 + max_new_tokens - 1``)."""
    if (
        isinstance(interventions, tuple)
        and len(interventions) == 4
        and isinstance(interventions[0], int)
    ):
        raise ValueError("interventions is a list of (layer, position, feature, value) tuples")
    specs = []
    for item in interventions:
        if not isinstance(item, Sequence) or len(item) != 4:
            raise ValueError(f"an intervention is (layer, position, feature, value), got {item!r}")
        layer, pos, feat, value = item
        layer, feat = int(layer), int(feat)
        if not (0 <= layer < L and 0 <= feat < F):
            raise ValueError(
                f"intervention {item!r} is out of range: layer in [0, {L}), feature in [0, {F})"
            )
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"intervention {item!r}: the value must be finite")
        where = f"the positions the model runs on are [0, {T_max}) (prompt [0, {T0}))"
        if isinstance(pos, str):
            if pos not in MARKERS:
                raise ValueError(
                    f"intervention {item!r}: a position marker is one of {MARKERS}, got {pos!r}"
                )
            start, stop = {"all": (0, None), "new": (T0, None), "prompt": (0, T0)}[pos]
            specs.append(_Spec(layer, feat, value, start, stop))
        elif isinstance(pos, slice):
            if pos.step not in (None, 1):
                raise ValueError(f"intervention {item!r}: slices with a step are not supported")
            start = 0 if pos.start is None else _resolve_pos(pos.start, T0, item)
            stop = None if pos.stop is None else _resolve_pos(pos.stop, T0, item)
            if start < 0 or start >= T_max or (stop is not None and stop <= start):
                raise ValueError(f"intervention {item!r} selects no position: {where}")
            specs.append(_Spec(layer, feat, value, start, stop))
        elif isinstance(pos, torch.Tensor | Sequence) and not (
            isinstance(pos, torch.Tensor) and pos.ndim == 0
        ):
            ps = [
                _resolve_pos(p, T0, item)
                for p in (pos.tolist() if isinstance(pos, torch.Tensor) else pos)
            ]
            if not ps or not all(0 <= p < T_max for p in ps):
                raise ValueError(f"intervention {item!r}: positions out of range: {where}")
            specs.append(_Spec(layer, feat, value, min(ps), max(ps) + 1, tuple(ps)))
        else:
            p = _resolve_pos(pos, T0, item)
            if not 0 <= p < T_max:
                raise ValueError(f"intervention {item!r}: position out of range: {where}")
            specs.append(_Spec(layer, feat, value, p, p + 1))
    return specs


def _expand(
    specs: list[_Spec], T: int, L: int, device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per source layer, ``(positions, features, values)`` of the interventions covering the
    first ``T`` positions; a repeated ``(layer, position, feature)`` keeps the last value."""
    last: dict[tuple[int, int, int], float] = {}
    for s in specs:
        for p in s.covers(T):
            last[(s.layer, p, s.feature)] = s.value
    out = {}
    for layer in range(L):
        items = [(p, f, v) for (lay, p, f), v in last.items() if lay == layer]
        if items:
            p, f, v = zip(*items, strict=True)
            out[layer] = (
                torch.tensor(p, device=device),
                torch.tensor(f, device=device),
                torch.tensor(v, device=device),
            )
    return out


def _choose(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None, gen: Any
) -> torch.Tensor:
    """The next token from the last position's logits ``[d_vocab]``."""
    if not do_sample:
        return logits.argmax()
    z = logits.float() / temperature
    if top_k is not None:
        kth = z.topk(top_k).values[-1]
        z = z.masked_fill(z < kth, -math.inf)
    return torch.multinomial(z.softmax(-1), 1, generator=gen)[0]


@torch.no_grad()
def generate(
    model: HookedTransformer,
    clt: Transcoder,
    prompt: Prompt,
    interventions: Sequence[GenIntervention] = (),
    *,
    max_new_tokens: int = 8,
    freeze_attention: bool = True,
    freeze_layernorm: bool | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    mlps: str = "model",
    stop_at_eos: bool = False,
    return_activations: bool = True,
) -> GenerationResult:
    """Generate a continuation of ``prompt`` with some CLT features set to given values.

    Args:
        model / clt / prompt: as for :func:`sae_lens_clt.attribution.intervene` (BOS is
            prepended).
        interventions: ``(layer, position, feature, value)``. ``position``: an ``int``
            (that position only; negative counts from the prompt's end), a sequence of ints
            or a closed ``slice(a, b)`` (those positions), an open-ended ``slice(a, None)``
            (every position from ``a`` on, every generated one included), or a marker:
            ``"all"`` (every position), ``"new"`` (the generated positions only),
            ``"prompt"`` (the prompt's positions only). Positions are absolute: the first
            generated token sits at ``T0`` (the prompt's length with BOS).
        max_new_tokens: how many tokens to generate.
        freeze_attention: keep the *prompt's* attention patterns at their clean values (the
            generated positions attend freely), as circuit-tracer's
            ``feature_intervention_generate``.
        freeze_layernorm: also keep the prompt's norm scales at their clean values; ``None``
            (default) follows ``freeze_attention`` with ``mlps="replacement"`` and is
            ``False`` with ``mlps="model"`` (as :func:`intervene`).
        do_sample / temperature / top_k / seed: greedy by default; otherwise sampled from
            ``softmax(logits / temperature)`` over the ``top_k`` most likely tokens, with a
            ``torch.Generator`` seeded by ``seed`` (reproducible; ``None``: the global RNG).
        mlps: ``"model"`` (default; circuit-tracer's semantics): the model's own MLPs run and
            each intervened feature adds ``(value - its current activation) × its decoder
            vectors`` to the MLP outputs of its layer and every later one.
            ``"replacement"``: every MLP output is the CLT's reconstruction from the current
            features plus a clean run's error term (the replacement model).
        stop_at_eos: stop early once the tokenizer's EOS token is generated.
        return_activations: return the last pass's feature activations ``[L, T, d_sae]``.

    Returns:
        :class:`GenerationResult`. Each step re-runs the whole sequence (no KV cache), which
        is exact and keeps memory bounded by the longest sequence, ``T0 + n - 1`` tokens.
    """
    check_compatible(model, clt, action="generate")
    if mlps not in ("replacement", "model"):
        raise ValueError(f"mlps must be 'replacement' or 'model', got {mlps!r}")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= model.cfg.d_vocab):
        raise ValueError(f"top_k must be an int in [1, {model.cfg.d_vocab}], got {top_k!r}")
    tokenizer = getattr(model, "tokenizer", None)
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if stop_at_eos and eos is None:
        raise ValueError("stop_at_eos needs a model with a tokenizer that has an EOS token")
    if freeze_layernorm is None:
        freeze_layernorm = freeze_attention and mlps == "replacement"

    device = torch.device(model.cfg.device) if model.cfg.device is not None else clt.b_dec.device
    prompt_tokens = to_tokens(model, prompt).to(device)  # [T0]
    L, F, T0 = clt.cfg.n_layers, clt.cfg.d_sae, prompt_tokens.numel()
    T_max = T0 + max_new_tokens - 1  # positions the model runs on
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and T_max > n_ctx:
        raise ValueError(
            f"the prompt ({T0} tokens, BOS included) plus max_new_tokens={max_new_tokens} runs "
            f"the model on {T_max} positions but its context is {n_ctx}: generate fewer tokens"
        )
    specs = _parse(interventions, L, F, T0, T_max)
    gen = None
    if do_sample and seed is not None:
        gen = torch.Generator(device=device).manual_seed(int(seed))

    # 2. the prompt's clean patterns / norm scales, frozen on its query rows
    frozen_names = [
        n
        for n in model.hook_dict
        if specs
        and (
            (freeze_attention and n.endswith(".hook_pattern"))
            or (freeze_layernorm and n.endswith(".hook_scale"))
        )
    ]
    frozen: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any, name: str, store: dict) -> torch.Tensor:
        store[name] = act.detach()
        return act

    if frozen_names:
        model.run_with_hooks(
            prompt_tokens[None],
            fwd_hooks=[(n, functools.partial(keep, name=n, store=frozen)) for n in frozen_names],
        )

    def freeze(act: torch.Tensor, hook: Any, name: str) -> torch.Tensor:
        act = act.clone()
        cached = frozen[name].to(act.dtype)
        if name.endswith(".hook_pattern"):  # [B, H, q, k]: the prompt's query rows
            act[:, :, :T0, :T0] = cached
            act[:, :, :T0, T0:] = 0
        else:  # norm scales [B, pos, ...]
            act[:, :T0] = cached
        return act

    freeze_hooks = [(n, functools.partial(freeze, name=n)) for n in frozen_names]

    tokens = prompt_tokens
    step_logits: list[torch.Tensor] = []
    acts_out: torch.Tensor | None = None
    for _ in range(max_new_tokens):
        T = tokens.numel()
        todo = _expand(specs, T, L, device)
        # with no interventions this is the model's own forward pass (mlps="model") or the
        # replacement model with the clean error, which equals it
        logits, acts_out = _intervened_pass(
            model, clt, tokens, todo, mlps, freeze_hooks, return_activations
        )
        step_logits.append(logits[-1])
        nxt = _choose(logits[-1], do_sample, temperature, top_k, gen)
        tokens = torch.cat([tokens, nxt.view(1).to(tokens.dtype)])
        if stop_at_eos and int(nxt) == eos:
            break

    new = tokens[T0:]
    text = tokenizer.decode(new.tolist()) if tokenizer is not None else None
    return GenerationResult(
        tokens=tokens,
        prompt_length=T0,
        logits=torch.stack(step_logits),
        activations=acts_out if return_activations else None,
        text=text,
    )


def _intervened_pass(
    model: HookedTransformer,
    clt: Transcoder,
    tokens: torch.Tensor,
    todo: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    mlps: str,
    freeze_hooks: list,
    return_activations: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass over ``tokens [T]`` with the interventions ``todo``: ``(logits [T,
    d_vocab], activations [L, T, F])``."""
    L, T = clt.cfg.n_layers, tokens.numel()
    errors = None
    if mlps == "replacement":  # the clean run's error terms e_l = y_l - ŷ_l
        names = [clt.cfg.hook_in(s) for s in range(L)] + [clt.cfg.hook_out(s) for s in range(L)]
        cache: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any, name: str) -> torch.Tensor:
            cache[name] = act.detach()
            return act

        model.run_with_hooks(
            tokens[None], fwd_hooks=[(n, functools.partial(keep, name=n)) for n in names]
        )
        x = torch.stack([cache[clt.cfg.hook_in(s)][0] for s in range(L)]).to(clt.dtype)
        y = torch.stack([cache[clt.cfg.hook_out(s)][0] for s in range(L)]).to(clt.dtype)
        acts = torch.stack([clt.encode_layer(x[s], s) for s in range(L)])
        errors = (y - clt.decode_sparse(acts.transpose(0, 1), x.transpose(0, 1)).transpose(0, 1))[
            :, None
        ]

    def edit(layer: int, a: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        if layer not in todo:
            return a
        pos, feat, value = todo[layer]
        a = a.clone()
        a[0, pos, feat] = value.to(a.dtype)
        return a

    replacement = ReplacementHooks(clt, edit=edit, errors=errors, sparse=True)

    def model_mlp(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        # the model's own output plus Σ_s (value - a_now) W_dec[s -> layer] over intervened s
        delta = None
        for s in clt.sources(layer):
            if s not in todo:
                continue
            pos, feat, value = todo[s]
            now = clt.activation(replacement.pre[s][0], s)[pos, feat]
            rows = clt.decoder_rows(s, feat)[:, layer - s] * (value.to(now.dtype) - now)[:, None]
            if delta is None:
                delta = act.new_zeros(T, act.shape[-1])
            delta.index_add_(0, pos, rows.to(act.dtype))
        return act if delta is None else act + delta[None]

    hooks: list[tuple[str, Any]] = list(freeze_hooks)
    for name, fn in replacement.hooks():
        if mlps == "model" and fn.func == replacement.write:
            fn = functools.partial(model_mlp, layer=fn.keywords["layer"])
        hooks.append((name, fn))
    logits = model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]
    acts = torch.stack([replacement.acts[s][0] for s in range(L)]) if return_activations else None
    return logits, acts
