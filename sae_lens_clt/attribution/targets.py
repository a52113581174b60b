"""Attribution targets: what the target rows of a graph explain (docs/design.md §3).

A target is a linear read-out ``q = v · h`` of one activation ``h`` of the frozen forward
pass at one position; its row in the adjacency matrix is the gradient of ``q`` at the
sources, i.e. the direct effect of each source on ``q``. The kinds (small frozen
dataclasses; a plain string / int is shorthand for :class:`Token`):

- :class:`Token` (``" Austin"`` or a token id): the demeaned logit,
  ``v = W_U[:, t] - mean_v W_U[:, v]`` at the unembedding input of the last position.
- :class:`LogitDiff` (``LogitDiff(" Austin", " Sacramento")``): ``logit_a - logit_b``,
  ``v = W_U[:, a] - W_U[:, b]`` at the unembedding input of the last position.
- :class:`Direction` (``Direction(v, layer=l, position=p, name=...)``): ``v`` read at
  ``blocks.{l}.hook_resid_post`` (the residual stream after layer ``l``'s MLP), or with
  ``layer=None`` / ``-1`` at the unembedding input (after the final norm, what ``W_U``
  reads); ``position`` counts from the end when negative. circuit-tracer's
  ``CustomTarget(token_str, prob, vec)`` (or the plain tuple) is
  ``Direction(vec, name=token_str, weight=prob)``.
- :class:`FeatureTarget` (``FeatureTarget(layer, position, feature)``): the feature's
  pre-activation ``z = x_l,p · W_enc[l][:, f] + b_enc[l, f]`` at the CLT input of layer
  ``l``, active or not. Its row is the direct effects on ``z`` (biases are not nodes);
  for an inactive feature these are the sources that held it below threshold, sign
  included; for an active one the row equals the feature node's own row.

Weights (what influence, pruning and scores read; only their ratios matter): ``weight=``
when given (finite, >= 0); else a token's probability under the model, and ``1 / k`` for
the other kinds (``k`` targets). When the weights sum below :data:`TARGET_WEIGHT_FLOOR`
they are renormalised to sum 1 in the log domain (a softmax over log-weights; for tokens
a softmax over their logits), exact however small each one is.

Graph records (:func:`resolve_targets_full`): per target a read-out (``"unembed"``,
``"resid_post.{l}"`` or ``"clt_in.{l}"``), a position, a vector, the number of MLP layers
that can reach it (sources of higher layers are skipped), a node id (the token id, or the
virtual id ``d_vocab + k`` as in circuit-tracer) and a JSON description (``info``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

TARGET_WEIGHT_FLOOR = 1e-6  # below this total, target weights are renormalised

TokenLike = str | int


@dataclass(frozen=True)
class Token:
    """The demeaned logit of one output token (a string of one token, or an id)."""

    token: TokenLike
    weight: float | None = None


@dataclass(frozen=True)
class LogitDiff:
    """``logit(token) - logit(versus)`` at the last position (e.g. " Austin" vs " Sacramento")."""

    token: TokenLike
    versus: TokenLike
    weight: float | None = None


@dataclass(frozen=True, eq=False)
class Direction:
    """``vector · h`` with ``h`` = ``blocks.{layer}.hook_resid_post`` at ``position``, or the
    unembedding input when ``layer`` is ``None`` / ``-1``. ``vector``: ``[d_model]``."""

    vector: torch.Tensor
    layer: int | None = None
    position: int = -1
    name: str = "direction"
    weight: float | None = None


@dataclass(frozen=True)
class FeatureTarget:
    """The pre-activation of feature ``feature`` of CLT layer ``layer`` at ``position``
    (negative counts from the end), active or not."""

    layer: int
    position: int
    feature: int
    weight: float | None = None


Target = Token | LogitDiff | Direction | FeatureTarget
TargetLike = TokenLike | Target | tuple


@dataclass
class ResolvedTargets:
    """Targets checked against the model and the prompt (``k`` of them), in order."""

    reads: list[str]  # "unembed" | "resid_post.{l}" | "clt_in.{l}"
    positions: torch.Tensor  # [k] int64, non-negative
    layers: torch.Tensor  # [k] int64: n_layers for the unembedding input
    vectors: list[torch.Tensor]  # k x [d] read-out vectors (float32)
    src_ends: list[int]  # MLP layers < src_end can reach the target
    ids: torch.Tensor  # [k] int64 token id, or d_vocab + index for non-token targets
    info: list[dict[str, Any]]  # JSON description of each target
    weights: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [k] float32
    model_probs: list[float | None] = field(default_factory=list)  # tokens' own probability

    @property
    def only_tokens(self) -> bool:
        return all(i["kind"] == "token" for i in self.info)


# ---------------------------------------------------------------------- tokens
def token_id(model: HookedTransformer, entry: Any) -> int:
    """The token id of ``entry``: an id in ``[0, d_vocab)`` or a string of exactly one
    token (tokenized without BOS). A clear ValueError for anything else."""
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(entry, str):
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(
                f"target {entry!r} is a string but the model has no tokenizer: pass its "
                "token id instead"
            )
        toks = model.to_tokens(entry, prepend_bos=False)[0].tolist()
        if len(toks) != 1:
            pieces = [model.tokenizer.decode([t]) for t in toks]
            raise ValueError(
                f"target {entry!r} is {len(toks)} tokens ({toks}: {pieces}), not one: "
                "name a single token (e.g. its first token) or pass a token id"
            )
        return int(toks[0])
    try:
        if isinstance(entry, bool):
            raise TypeError
        token = operator.index(entry)
    except TypeError:
        raise ValueError(
            f"target {entry!r} is neither a token string nor a token id nor a target "
            "(Token, LogitDiff, Direction, FeatureTarget)"
        ) from None
    if not 0 <= token < d_vocab:
        raise ValueError(f"target token id {token} is outside the vocabulary [0, {d_vocab})")
    return int(token)


def _check_list(targets: Any) -> list[Any]:
    if isinstance(targets, str | int | Token | LogitDiff | Direction | FeatureTarget) or not (
        isinstance(targets, Sequence | torch.Tensor)
    ):
        raise ValueError(
            "targets must be a list of token strings / ids or targets (e.g. [' Austin', "
            f"LogitDiff(' Austin', ' Sacramento')]), got {targets!r}"
        )
    entries = list(targets)
    if not entries:
        raise ValueError("targets is empty: name at least one target (or pass None)")
    return entries


def resolve_targets(model: HookedTransformer, targets: Sequence[str | int]) -> torch.Tensor:
    """Token ids ``[k]`` of a list of token targets (strings / ids / :class:`Token`), in
    order. Raises a ValueError naming the entry for anything else, for an empty list and
    for a token named twice."""
    ids: list[int] = []
    for entry in _check_list(targets):
        if isinstance(entry, LogitDiff | Direction | FeatureTarget):
            raise ValueError(
                f"target {entry!r} is a {type(entry).__name__}, not a token: this takes "
                "token targets only (attribute takes any target)"
            )
        token = token_id(model, entry.token if isinstance(entry, Token) else entry)
        if token in ids:
            raise ValueError(
                f"target {entry!r} names token {token} a second time: each target is one "
                "logit node, name each token once"
            )
        ids.append(token)
    return torch.tensor(ids, dtype=torch.long)


def as_target(entry: Any) -> Target:
    """A target dataclass for ``entry`` (a string / int is a :class:`Token`; a
    circuit-tracer ``CustomTarget`` or ``(label, prob, vec)`` tuple a :class:`Direction`)."""
    if isinstance(entry, Token | LogitDiff | Direction | FeatureTarget):
        return entry
    if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[2], torch.Tensor):
        label, prob, vec = entry
        return Direction(vec, name=str(label), weight=float(prob))
    if isinstance(entry, str) or not isinstance(entry, tuple | list | float):
        return Token(entry)
    raise ValueError(
        f"target {entry!r} is neither a token string nor a token id nor a target "
        "(Token, LogitDiff, Direction, FeatureTarget)"
    )


def target_json(target: Target) -> Any:
    """A JSON description of a target as the user gave it (``settings["targets"]``)."""
    if isinstance(target, Token):
        token = target.token if isinstance(target.token, str) else int(target.token)
        return token if target.weight is None else {"kind": "token", "token": token,
                                                    "weight": target.weight}  # fmt: skip
    if isinstance(target, LogitDiff):
        a, b = (t if isinstance(t, str) else int(t) for t in (target.token, target.versus))
        return {"kind": "logit_diff", "token": a, "versus": b, "weight": target.weight}
    if isinstance(target, Direction):
        return {
            "kind": "direction", "name": target.name, "layer": target.layer,
            "position": target.position, "weight": target.weight,
            "vector": target.vector.detach().float().cpu().tolist(),
        }  # fmt: skip
    return {
        "kind": "feature", "layer": target.layer, "position": target.position,
        "feature": target.feature, "weight": target.weight,
    }  # fmt: skip


# ---------------------------------------------------------------------- resolution
def _position(p: int, n_pos: int, what: str) -> int:
    q = p + n_pos if p < 0 else p
    if not 0 <= q < n_pos:
        raise ValueError(f"{what}: position {p} is outside the prompt's {n_pos} tokens")
    return q


def _decode(model: HookedTransformer, token: int) -> str:
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer.decode([token]) if tokenizer is not None else str(token)


def resolve_targets_full(
    model: HookedTransformer,
    targets: Sequence[TargetLike],
    n_pos: int,
    n_layers: int,
    d_sae: int,
    resid_hook: str = "blocks.{layer}.hook_resid_post",
) -> tuple[list[Target], ResolvedTargets]:
    """Check ``targets`` against the model and a prompt of ``n_pos`` tokens; return the
    targets as dataclasses and their read-outs (vectors for tokens / logit differences from
    ``W_U``; feature vectors and weights are filled in by :func:`finish_targets`)."""
    raw = _check_list(targets)
    entries = [as_target(e) for e in raw]
    d_vocab, d_model = int(model.cfg.d_vocab), int(model.cfg.d_model)
    W_U = model.W_U.detach().float()  # [d_model, d_vocab]
    reads: list[str] = []
    positions, layers, src_ends, ids = [], [], [], []
    vectors: list[torch.Tensor] = []
    info: list[dict[str, Any]] = []
    seen: dict[tuple, Any] = {}
    last = n_pos - 1
    for k, t in enumerate(entries):
        if t.weight is not None and not (math.isfinite(t.weight) and t.weight >= 0):
            raise ValueError(f"target {t!r}: weight must be finite and >= 0, got {t.weight}")
        if isinstance(t, Token):
            tok = token_id(model, t.token)
            key: tuple = ("token", tok)
            vec = W_U[:, tok] - W_U.mean(dim=1)
            reads.append("unembed")
            positions.append(last), layers.append(n_layers), src_ends.append(n_layers)
            ids.append(tok)
            info.append({"kind": "token", "token": tok, "token_str": _decode(model, tok)})
        elif isinstance(t, LogitDiff):
            a, b = token_id(model, t.token), token_id(model, t.versus)
            if a == b:
                raise ValueError(f"target {t!r}: a logit difference needs two different tokens")
            key = ("logit_diff", a, b)
            vec = W_U[:, a] - W_U[:, b]
            reads.append("unembed")
            positions.append(last), layers.append(n_layers), src_ends.append(n_layers)
            ids.append(d_vocab + k)
            info.append({"kind": "logit_diff", "tokens": [a, b],
                         "token_strs": [_decode(model, a), _decode(model, b)]})  # fmt: skip
        elif isinstance(t, Direction):
            vec = torch.as_tensor(t.vector).detach().float().cpu()
            if vec.shape != (d_model,) or not torch.isfinite(vec).all():
                raise ValueError(
                    f"direction {t.name!r}: vector must be [d_model={d_model}] and finite, got "
                    f"shape {tuple(vec.shape)}"
                )
            p = _position(t.position, n_pos, f"direction {t.name!r}")
            layer = None if t.layer is None or t.layer == -1 else int(t.layer)
            if layer is None:
                reads.append("unembed")
                layers.append(n_layers), src_ends.append(n_layers)
                hook = "unembedding input"
            else:
                if not 0 <= layer < n_layers:
                    raise ValueError(
                        f"direction {t.name!r}: layer {t.layer} is outside [0, {n_layers}) "
                        "(None or -1: the unembedding input)"
                    )
                hook = resid_hook.format(layer=layer)
                if hook not in model.hook_dict:
                    raise ValueError(f"direction {t.name!r}: the model has no hook {hook}")
                reads.append(f"resid_post.{layer}")
                layers.append(layer), src_ends.append(layer + 1)
            key = ("direction", k)
            positions.append(p)
            ids.append(d_vocab + k)
            info.append({"kind": "direction", "name": str(t.name), "layer": layer,
                         "position": p, "hook": hook, "norm": float(vec.norm())})  # fmt: skip
        elif isinstance(t, FeatureTarget):
            layer, feat = int(t.layer), int(t.feature)
            if not 0 <= layer < n_layers:
                raise ValueError(f"target {t!r}: layer {layer} is outside [0, {n_layers})")
            if not 0 <= feat < d_sae:
                raise ValueError(f"target {t!r}: feature {feat} is outside [0, {d_sae})")
            p = _position(t.position, n_pos, f"target {t!r}")
            if p == 0:
                raise ValueError(
                    f"target {t!r}: position 0 (BOS) is not explained (no features there)"
                )
            key = ("feature", layer, p, feat)
            vec = torch.zeros(0)  # the encoder column, filled in by finish_targets
            reads.append(f"clt_in.{layer}")
            positions.append(p), layers.append(layer), src_ends.append(layer)
            ids.append(d_vocab + k)
            info.append({"kind": "feature", "layer": layer, "position": p, "feature": feat})
        else:  # pragma: no cover - as_target returns one of the kinds
            raise AssertionError(t)
        if key in seen and key[0] == "token":
            raise ValueError(
                f"target {raw[k]!r} names token {key[1]} a second time: each target is one "
                "logit node, name each token once"
            )
        if key in seen:
            raise ValueError(
                f"target {t!r} names the same quantity as {seen[key]!r}: name each target once"
            )
        seen[key] = t
        vectors.append(vec)
    resolved = ResolvedTargets(
        reads=reads,
        positions=torch.tensor(positions, dtype=torch.long),
        layers=torch.tensor(layers, dtype=torch.long),
        vectors=vectors,
        src_ends=src_ends,
        ids=torch.tensor(ids, dtype=torch.long),
        info=info,
    )
    return entries, resolved


def finish_targets(
    entries: list[Target],
    resolved: ResolvedTargets,
    last_logits: torch.Tensor,
    encoder_vector: Any,
    feature_state: Any,
) -> None:
    """Fill in feature targets' vectors and state, and every target's weight.

    ``last_logits [V]``: the model's logits at the last position. ``encoder_vector(layer,
    feature)`` -> ``[d_in]``; ``feature_state(layer, pos, feature)`` -> ``(pre-activation,
    activation)`` on this prompt."""
    k = len(entries)
    logp = torch.log_softmax(last_logits.detach().float().cpu(), dim=-1)  # [V]
    probs = logp.exp()
    weights = torch.zeros(k, dtype=torch.float32)
    log_w = torch.zeros(k, dtype=torch.float64)
    model_probs: list[float | None] = []
    for i, (t, inf) in enumerate(zip(entries, resolved.info, strict=True)):
        if inf["kind"] == "feature":
            resolved.vectors[i] = encoder_vector(inf["layer"], inf["feature"]).float().cpu()
            pre, act = feature_state(inf["layer"], inf["position"], inf["feature"])
            act = float(act) + 0.0  # no -0.0
            inf.update(active=act != 0.0, pre_activation=float(pre), activation=act)
        is_token = inf["kind"] == "token"
        model_probs.append(float(probs[inf["token"]]) if is_token else None)
        if t.weight is not None:
            weights[i] = t.weight
            log_w[i] = math.log(t.weight) if t.weight > 0 else -math.inf
        elif is_token:
            weights[i] = probs[inf["token"]]
            log_w[i] = float(logp[inf["token"]])
        else:
            weights[i] = 1.0 / k
            log_w[i] = -math.log(k)
        inf["weight"] = None if t.weight is None else float(t.weight)
    if not torch.isfinite(log_w).any():
        raise ValueError("the target weights are all 0: give at least one target a weight > 0")
    if float(weights.sum()) < TARGET_WEIGHT_FLOOR:
        weights = torch.softmax(log_w, dim=0).float()
    resolved.weights = weights
    resolved.model_probs = model_probs


def target_label(info: dict[str, Any], short: bool = False) -> str:
    """A readable name of a target from its ``info``: ``' Austin'``, ``logit diff
    " Austin" − " Sacramento"``, ``direction "x" at blocks.1.hook_resid_post @3``,
    ``L2 F905 @5 (inactive) pre-activation``; ``short`` for a figure."""
    kind = info.get("kind", "token")
    if kind == "token":
        return str(info.get("token_str", info.get("token")))
    if kind == "logit_diff":
        a, b = info["token_strs"]
        return f"{a.strip()}−{b.strip()}" if short else f'logit diff "{a}" − "{b}"'
    if kind == "direction":
        if short:
            return str(info["name"])
        return f'direction "{info["name"]}" at {info["hook"]} @{info["position"]}'
    state = {True: "active", False: "inactive"}.get(info.get("active"), "")
    if short:
        return f"L{info['layer']}/{info['feature']} pre" + (" (off)" if state == "inactive" else "")
    return (
        f"L{info['layer']} F{info['feature']} @{info['position']}"
        + (f" ({state})" if state else "")
        + " pre-activation"
    )
