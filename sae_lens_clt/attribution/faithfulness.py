"""Faithfulness of an attribution graph: the feature effects it predicts against the real model.

A graph describes the *frozen replacement model* (MLPs replaced by CLT features plus fixed
errors, attention patterns and norm scales frozen). Whether it also describes the model is
an empirical question; this module asks it feature by feature.

Algorithm (a graph of ``n`` features and ``k`` logit targets; ``K`` = ``top_k``):

1. **Top features**: the ``K`` features with the largest influence on the logits
   (:func:`sae_lens_clt.attribution.prune.node_influence`).
2. **Predicted effects** ``[K, k]``: the total effect of each feature on each logit node's
   demeaned logit over *all* paths of the graph, ``T = Ã_lf (I - Ã_ff)^-1`` ``[k, n]`` with
   ``Ã`` the per-unit direct effects (the blocks of
   :func:`sae_lens_clt.attribution.paths.linear_effects`; ``Ã_ff`` is strictly lower
   triangular in node order, so this is one triangular solve), times the change of the
   feature's activation ``value - a`` (``-a`` for an ablation). Exact for the frozen
   replacement model while no feature crosses its threshold, and only for a full graph:
   with ``max_feature_nodes`` the unvisited features have no rows and cannot respond
   (``FaithfulnessReport.partial_graph``).
3. **Measured effects** ``[K, k]``, each feature intervened on alone by
   :func:`sae_lens_clt.attribution.intervene.intervene` (one clean and one intervened
   forward pass each), as the change of the demeaned logits at the last position (before a
   final soft-cap, which is undone):

   a. ``replacement``: the frozen replacement model (``mlps="replacement"``, attention
      patterns and norm scales frozen): the model the graph describes. It matches the
      prediction up to threshold crossings (counted per feature from the run's feature
      activations) and, for a partial graph, the unvisited features.
   b. ``real_frozen_attn``: the model's own MLPs (``mlps="model"``) with attention patterns
      *and* norm scales frozen, so that (a) -> (b) changes only the MLPs.
   c. ``real``: the model's own MLPs, attention and norms free (``mlps="model"``,
      ``freeze_attention=False``, ``freeze_layernorm=False``): circuit-tracer's
      ``feature_intervention``. The headline.

   Also the change of the top token's log-probability in (c).
4. **Compare** each measurement with the prediction over all (feature, target) pairs:
   Pearson correlation, sign agreement, relative error ``||m - p|| / ||m||`` and the largest
   ``|m - p|``; the worst features by ``max_target |predicted - real|``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.intervene import InterventionResult, intervene
from sae_lens_clt.attribution.nodes import GraphData
from sae_lens_clt.attribution.paths import node_name
from sae_lens_clt.attribution.prune import node_influence
from sae_lens_clt.registry import Transcoder

MEASUREMENTS = ("replacement", "real_frozen_attn", "real")
_DESCRIPTIONS = {
    "replacement": "frozen replacement model (self-check)",
    "real_frozen_attn": "real MLPs, attention + norms frozen",
    "real": "real model, attention + norms free",
}


class Agreement(NamedTuple):
    """How a measured effect ``m`` agrees with the predicted one ``p`` over all pairs."""

    pearson: float  # nan when either side is constant
    sign_agreement: float  # share of pairs with sign(m) == sign(p)
    relative_error: float  # ||m - p|| / ||m||
    max_abs_error: float  # max |m - p|

    def __str__(self) -> str:
        return (
            f"r={self.pearson:+.3f}  sign {self.sign_agreement:.2f}  "
            f"rel.err {self.relative_error:.3f}  max|err| {self.max_abs_error:.3g}"
        )


def agreement(measured: torch.Tensor, predicted: torch.Tensor) -> Agreement:
    """:class:`Agreement` of two equally shaped tensors (flattened, float64)."""
    m, p = measured.double().flatten(), predicted.double().flatten()
    if m.numel() == 0:
        return Agreement(math.nan, math.nan, math.nan, math.nan)
    dm, dp = m - m.mean(), p - p.mean()
    denom = float(dm.norm() * dp.norm())
    pearson = float(dm @ dp) / denom if denom > 0 else math.nan
    sign = float((torch.sign(m) == torch.sign(p)).double().mean())
    err = m - p
    norm = float(m.norm())
    relative = float(err.norm()) / norm if norm > 0 else math.nan
    return Agreement(pearson, sign, relative, float(err.abs().max()))


@dataclass(eq=False)
class FaithfulnessReport:
    """Predicted and measured effects of intervening on a graph's top features.

    Effects are changes of the demeaned logits of the graph's logit nodes (``targets``),
    ``[K, k]`` for ``K`` features and ``k`` targets, in the order of ``nodes`` (most
    influential first).
    """

    nodes: torch.Tensor  # [K] node indices of the features
    features: torch.Tensor  # [K, 3] (layer, pos, feature)
    names: list[str]  # [K] readable names (with labels when given)
    labels: list[str]  # [K] feature labels ("" without)
    activations: torch.Tensor  # [K] clean activations a
    new_values: torch.Tensor  # [K] the values the features were set to
    target_ids: torch.Tensor  # [k] token ids of the targets
    target_tokens: list[str]  # [k]
    predicted: torch.Tensor  # [K, k] graph prediction: total effect x (value - a)
    replacement: torch.Tensor  # [K, k] measured, frozen replacement model
    real_frozen_attn: torch.Tensor  # [K, k] measured, real MLPs, attention + norms frozen
    real: torch.Tensor  # [K, k] measured, real model
    real_logprob: torch.Tensor  # [K] change of the top target's log-probability (real model)
    crossings: torch.Tensor  # [K] features whose active state changed in the replacement run
    partial_graph: bool  # the graph lacks rows for some active features (max_feature_nodes)
    intervention: str  # "ablation (value 0)", "value 1.5" or "scale 2 x activation"
    summary: dict[str, Agreement] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = {m: agreement(getattr(self, m), self.predicted) for m in MEASUREMENTS}

    # ------------------------------------------------------------------ analyses
    @property
    def exact_mask(self) -> torch.Tensor:
        """``[K]`` bool: features whose prediction should equal the replacement run exactly
        (full graph, no threshold crossed)."""
        return (self.crossings == 0) & (not self.partial_graph)

    def self_check_error(self) -> float:
        """``max |replacement - predicted|`` over the exact cases (nan when none)."""
        mask = self.exact_mask
        if not bool(mask.any()):
            return math.nan
        return float((self.replacement[mask] - self.predicted[mask]).abs().max())

    def worst(self, n: int = 5, measurement: str = "real") -> list[tuple[int, int, float]]:
        """The ``n`` features with the largest ``|measured - predicted|`` over targets:
        ``(row in this report, target index, error)``, worst first."""
        err = (getattr(self, measurement) - self.predicted).abs()  # [K, k]
        if err.numel() == 0:
            return []
        per_row, target = err.max(dim=1)
        order = torch.argsort(per_row, descending=True, stable=True)[:n]
        return [(int(i), int(target[i]), float(per_row[i])) for i in order]

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (nan becomes ``None``)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        rows = []
        for i in range(len(self.names)):
            layer, pos, feat = self.features[i].tolist()
            rows.append(
                {
                    "node": int(self.nodes[i]),
                    "layer": layer,
                    "pos": pos,
                    "feature": feat,
                    "name": self.names[i],
                    "label": self.labels[i],
                    "activation": float(self.activations[i]),
                    "new_value": float(self.new_values[i]),
                    "threshold_crossings": int(self.crossings[i]),
                    **{
                        m: [float(v) for v in getattr(self, m)[i]]
                        for m in ("predicted", *MEASUREMENTS)
                    },
                    "real_logprob_top": float(self.real_logprob[i]),
                }
            )
        return {
            "intervention": self.intervention,
            "partial_graph": self.partial_graph,
            "targets": [
                {"token_id": int(t), "token": s}
                for t, s in zip(self.target_ids.tolist(), self.target_tokens, strict=True)
            ],
            "summary": {
                m: {k: num(v) for k, v in a._asdict().items()} for m, a in self.summary.items()
            },
            "self_check_max_error": num(self.self_check_error()),
            "n_exact_cases": int(self.exact_mask.sum()),
            "worst": [
                {"node": int(self.nodes[i]), "target": self.target_tokens[t], "error": e}
                for i, t, e in self.worst()
            ],
            "rows": rows,
        }

    def __str__(self) -> str:
        return self.format()

    def format(self, n_rows: int = 10, n_worst: int = 5) -> str:
        """A compact table: the first ``n_rows`` features (effects on the top target), the
        agreement lines, the ``n_worst`` worst features."""
        K, k = self.predicted.shape
        graph_kind = (
            "PARTIAL graph (max_feature_nodes): unvisited features cannot respond in the prediction"
            if self.partial_graph
            else "full graph"
        )
        lines = [
            f"faithfulness: {K} top features, {self.intervention}, {k} logit targets; {graph_kind}",
            "  predicted = total effect over all graph paths (frozen replacement model, linear)",
        ]
        if K == 0:
            return "\n".join([*lines, "  (no features to intervene on)"])
        top = self.target_tokens[0]
        width = max(len(n) for n in self.names[:n_rows])
        lines.append(
            f"  {'feature':<{width}}  {'act':>7}  {'pred':>8}  {'repl':>8}  {'real-fa':>8}  "
            f"{'real':>8}  {'dlogp':>7}   (change of the demeaned logit of {top!r})"
        )
        for i in range(min(n_rows, K)):
            vals = [self.predicted, self.replacement, self.real_frozen_attn, self.real]
            cross = f"  ({int(self.crossings[i])} crossed)" if self.crossings[i] else ""
            lines.append(
                f"  {self.names[i]:<{width}}  {float(self.activations[i]):7.3f}  "
                + "  ".join(f"{float(v[i, 0]):+8.3f}" for v in vals)
                + f"  {float(self.real_logprob[i]):+7.3f}{cross}"
            )
        if K > n_rows:
            lines.append(f"  ... {K - n_rows} more")
        lines.append(
            f"agreement with the prediction over {K} features x {k} targets "
            "(Pearson r, sign agreement, relative error, max |error|):"
        )
        n_crossed = int((self.crossings > 0).sum())
        for m in MEASUREMENTS:
            note = ""
            if m == "replacement":
                note = (
                    f"  [{n_crossed} of {K} runs crossed a threshold; "
                    f"max |err| where none did: {self.self_check_error():.2g}]"
                )
            lines.append(f"  {_DESCRIPTIONS[m]:<38} {self.summary[m]}{note}")
        lines.append("worst features (largest |predicted - real| over targets):")
        for i, t, err in self.worst(n_worst):
            lines.append(
                f"  {self.names[i]} -> {self.target_tokens[t]!r}: predicted "
                f"{float(self.predicted[i, t]):+.3f}, real {float(self.real[i, t]):+.3f} "
                f"(|err| {err:.3f})"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------- step 2
def total_effects(graph: GraphData) -> torch.Tensor:
    """Total effect of every feature on every logit node over all paths, per unit of the
    feature's activation: ``Ã_lf (I - Ã_ff)^-1`` ``[n_logits, n_features]`` (float64).

    ``Ã_ff`` / ``Ã_lf`` are the feature -> feature and feature -> logit blocks of
    :func:`~sae_lens_clt.attribution.paths.linear_effects` (paths from a feature reach the
    logits through features only: errors and embeddings have no rows, logits no columns),
    built from those blocks alone so that no ``[N, N]`` float64 copy is made.
    """
    nf = graph.n_features
    per_unit = graph.activation_values.double().clamp(min=1e-12)[None, :]  # [1, nf]
    rows = graph.adjacency_rows()  # [nf + k, N]: the feature rows, then the targets'
    b = rows[nf:, :nf].double() / per_unit  # [k, nf]
    if nf == 0:
        return b
    system = rows[:nf, :nf].double().div_(per_unit).neg_()  # -Ã_ff
    system.diagonal().add_(1.0)  # I - Ã_ff
    if not torch.triu(system, diagonal=1).any():  # node order: sources before targets
        return torch.linalg.solve_triangular(system, b, upper=False, left=False)
    return torch.linalg.solve(system, b, left=False)


# ---------------------------------------------------------------------- step 3
def demeaned_targets(
    model: HookedTransformer, logits: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Demeaned logits of ``ids [k]`` at the last position of ``logits [T, V]``, before a
    final soft-cap (undone: ``c·atanh(l / c)``), as the graph's logit nodes are: ``[k]``."""
    last = logits[-1].double()
    cap = float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        last = cap * torch.atanh((last / cap).clamp(-1 + 1e-12, 1 - 1e-12))
    return last[ids.to(last.device)].cpu() - last.mean().cpu()


def _crossings(result: InterventionResult, layer: int, pos: int, feat: int) -> int:
    """Features whose active state differs from the clean run, the intervened one aside."""
    changed = (result.activations != 0) != (result.clean_activations != 0)
    changed[layer, pos, feat] = False
    return int(changed.sum())


# ---------------------------------------------------------------------- public API
@torch.no_grad()
def faithfulness(
    graph: GraphData,
    model: HookedTransformer,
    clt: Transcoder,
    *,
    top_k: int = 20,
    value: float = 0.0,
    scale: float | None = None,
    targets: str | Sequence[int] = "logits",
    labels: dict[tuple[int, int], str] | None = None,
) -> FaithfulnessReport:
    """Compare the graph's predicted feature effects with interventions (module docstring).

    Args:
        graph: an attribution graph of ``model`` and ``clt`` (its prompt is its tokens).
        model / clt: the model and transcoder the graph was built with.
        top_k: how many features, most influential on the logits first.
        value: the value each feature is set to (default 0: ablation).
        scale: instead of ``value``, set each feature to ``scale ×`` its activation.
        targets: ``"logits"`` (every logit node of the graph) or token ids among them.
        labels: ``{(layer, feature): label}`` for the names in the report.

    Returns:
        A :class:`FaithfulnessReport` (``print`` it; ``to_dict()`` for JSON).
    """
    if not graph.only_logit_targets:
        raise ValueError(
            "faithfulness compares logit effects: this graph has non-token targets "
            "(logit differences, directions or features); trace it with token targets"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if scale is not None and value != 0.0:
        raise ValueError("give value or scale, not both")
    if clt.cfg.n_layers != graph.n_layers:
        raise ValueError(
            f"the graph has {graph.n_layers} layers but the CLT has {clt.cfg.n_layers}: "
            "pass the model and CLT the graph was built with"
        )
    target_rows = _target_rows(graph, targets)
    labels = labels or {}

    # 1. top features
    influence = node_influence(graph)[: graph.n_features]
    K = min(top_k, graph.n_features)
    nodes = torch.argsort(influence, descending=True, stable=True)[:K]
    feats = graph.active_features[nodes].long()  # [K, 3]
    acts = graph.activation_values[nodes].double()  # [K]
    new_values = acts * scale if scale is not None else torch.full_like(acts, float(value))

    # 2. predicted effects
    per_unit = total_effects(graph)[target_rows][:, nodes].T  # [K, k]
    predicted = per_unit * (new_values - acts)[:, None]

    # 3. measured effects
    ids = graph.logit_token_ids[target_rows].long()
    top_id = int(ids[0])  # the first of the chosen targets
    runs = {
        "replacement": {"mlps": "replacement", "freeze_attention": True, "freeze_layernorm": True},
        "real_frozen_attn": {"mlps": "model", "freeze_attention": True, "freeze_layernorm": True},
        "real": {"mlps": "model", "freeze_attention": False, "freeze_layernorm": False},
    }
    measured = {m: torch.zeros(K, ids.numel(), dtype=torch.float64) for m in MEASUREMENTS}
    crossings = torch.zeros(K, dtype=torch.long)
    real_logprob = torch.zeros(K, dtype=torch.float64)
    prompt = graph.input_tokens
    for i in range(K):
        layer, pos, feat = feats[i].tolist()
        todo = [(layer, pos, feat, float(new_values[i]))]
        for m, kw in runs.items():
            r = intervene(model, clt, prompt, todo, **kw)
            if i == 0 and m == "replacement":
                _check_graph_matches(graph, r, feats, acts)
            new = demeaned_targets(model, r.logits, ids)
            measured[m][i] = new - demeaned_targets(model, r.clean_logits, ids)
            if m == "replacement":
                crossings[i] = _crossings(r, layer, pos, feat)
            if m == "real":
                logp = r.logits[-1].double().log_softmax(-1)[top_id]
                real_logprob[i] = float(logp - r.clean_logits[-1].double().log_softmax(-1)[top_id])

    # 4. the report (its summary statistics)
    tok_strs = graph.metadata.get("token_strings") or [str(t) for t in graph.input_tokens.tolist()]
    logit_strs = graph.metadata.get("logit_token_strings") or [
        str(t) for t in graph.logit_token_ids.tolist()
    ]
    if scale is not None:
        intervention = f"scale {scale:g} x activation"
    else:
        intervention = "ablation (value 0)" if value == 0.0 else f"value {value:g}"
    return FaithfulnessReport(
        nodes=nodes,
        features=feats,
        names=[node_name(graph, int(n), tok_strs, labels) for n in nodes],
        labels=[labels.get((int(f[0]), int(f[2])), "") for f in feats],
        activations=acts.float(),
        new_values=new_values.float(),
        target_ids=ids,
        target_tokens=[logit_strs[int(j)] for j in target_rows],
        predicted=predicted,
        replacement=measured["replacement"],
        real_frozen_attn=measured["real_frozen_attn"],
        real=measured["real"],
        real_logprob=real_logprob,
        crossings=crossings,
        partial_graph=graph.n_features < int(graph.metadata.get("n_active_features", 0)),
        intervention=intervention,
    )


def _target_rows(graph: GraphData, targets: str | Sequence[int]) -> torch.Tensor:
    """Indices into the graph's logit nodes: ``[k]``."""
    if isinstance(targets, str):
        if targets != "logits":
            raise ValueError(f"targets must be 'logits' or token ids, got {targets!r}")
        return torch.arange(graph.n_logits)
    ids = graph.logit_token_ids.tolist()
    missing = [t for t in targets if int(t) not in ids]
    if missing or not len(targets):
        raise ValueError(
            f"targets {list(targets)!r}: need token ids among the graph's logit nodes {ids}"
        )
    return torch.tensor([ids.index(int(t)) for t in targets], dtype=torch.long)


def _check_graph_matches(
    graph: GraphData, result: InterventionResult, feats: torch.Tensor, acts: torch.Tensor
) -> None:
    """The clean run must reproduce the graph's activations (same prompt, model and CLT)."""
    layers, pos, ids = feats.unbind(1)
    clean = result.clean_activations[layers, pos, ids].double().cpu()
    if not torch.allclose(clean, acts, rtol=1e-3, atol=1e-4):
        raise ValueError(
            "the model and CLT do not reproduce the graph's feature activations "
            f"(max difference {float((clean - acts).abs().max()):.3g}): pass the model and "
            "CLT the graph was built with"
        )
