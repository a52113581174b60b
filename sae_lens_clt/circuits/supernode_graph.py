"""One graph seen through its supernodes: effect shares, validation by ablation, JSON, figure.

Algorithm (graph ``A [N, N]`` of one prompt, supernodes found by :mod:`.supernodes`):

1. **Members** (:func:`member_nodes`): a supernode's features active in the graph at the
   role position, as node indices.
2. **Effect shares** (:func:`effect_shares`): with ``Ã`` the per-unit direct effects
   (:func:`sae_lens_clt.attribution.paths.linear_effects`), the total effect of a source on
   a target is ``[(I - Ã)^-1]_ts`` (every path), and the effect of the paths that *avoid* a
   node set ``S`` is the same solve with the rows and columns of ``S`` zeroed. The paths
   through ``S`` carry ``total - avoid(S)``; the paths through *every* set (e.g. Texas and
   say Austin) carry ``Σ_{U ⊆ sets} (-1)^|U| avoid(∪U)`` (inclusion-exclusion). That counts
   the sets in any order a path meets them; when each set's layers lie below the next
   one's (e.g. a state group in layer 2, its capital group in layer 3) it is the chain.
3. **Validation by ablation** (:func:`validate_supernode`): the graph predicts that
   clamping a supernode's members to 0 changes each logit node's (demeaned) logit by
   ``-Σ_{i∈S} M_S[logit, i] a_i`` with ``M_S = (I - Ã_S)^-1`` and ``Ã_S`` = ``Ã`` with the
   rows of ``S`` zeroed (clamped nodes do not respond). The same intervention is run on the
   replacement model (frozen attention, :func:`sae_lens_clt.intervene`; equal to the
   prediction while no other feature crosses its threshold, counted in ``crossed``) and on
   the real model (the members' decoder vectors subtracted from the real MLP outputs,
   attention free). Logits are compared demeaned and before a final soft-cap, as the
   graph's logit nodes are.
4. **JSON** (:func:`supernode_json`): ``[name, node_id, ...]`` lists for the graph JSON's
   ``qParams.supernodes`` (Neuronpedia's viewer groups them), members kept by pruning only.
5. **Figure** (:func:`plot_supernode_graph`): the source, the supernodes and the target as
   boxes (x = mean layer), arrows for the summed direct edges between them (width ∝ size,
   blue positive, red negative), each box with its share of the source → target effect.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.export import node_id
from sae_lens_clt.attribution.faithfulness import demeaned_targets
from sae_lens_clt.attribution.intervene import intervene
from sae_lens_clt.attribution.nodes import GraphData
from sae_lens_clt.attribution.paths import linear_effects
from sae_lens_clt.circuits.supernodes import Supernode
from sae_lens_clt.registry import Transcoder


# ---------------------------------------------------------------------- step 1
def member_nodes(graph: GraphData, supernode: Supernode, position: int = -1) -> list[int]:
    """Node indices of ``supernode``'s features active in ``graph`` at ``position``."""
    pos = position + graph.n_pos if position < 0 else position
    wanted = set(supernode.features)
    return [
        i
        for i, (layer, p, feat) in enumerate(graph.active_features.tolist())
        if p == pos and (layer, feat) in wanted
    ]


# ---------------------------------------------------------------------- step 2
def _solve_from(effects: torch.Tensor, source: int, avoid: Sequence[int] = ()) -> torch.Tensor:
    """Total effect of ``source`` on every node over the paths that avoid ``avoid``: ``[N]``."""
    at = effects.clone()
    if avoid:
        idx = torch.tensor(list(avoid))
        at[idx] = 0.0
        at[:, idx] = 0.0
    n = at.shape[0]
    e = torch.zeros(n, dtype=at.dtype)
    e[source] = 1.0
    return torch.linalg.solve(torch.eye(n, dtype=at.dtype) - at, e)


@dataclass
class EffectShares:
    total: float  # source -> target over every path (target units per unit of source)
    through: dict[str, float]  # per set: the part of `total` whose paths pass through it
    chain: float  # the part whose paths pass through every set
    outside: float  # the part whose paths pass through none of the sets

    def share(self, name: str | None = None) -> float:
        """``through[name] / total`` (or ``chain / total``)."""
        part = self.chain if name is None else self.through[name]
        return part / self.total if self.total else 0.0


def effect_shares(
    graph: GraphData, source: int, target: int, sets: Mapping[str, Sequence[int]]
) -> EffectShares:
    """Step 2: how much of the source → target effect passes through each node set."""
    effects = linear_effects(graph)
    total = float(_solve_from(effects, source)[target])
    through = {
        name: total - float(_solve_from(effects, source, nodes)[target])
        for name, nodes in sets.items()
    }
    names = list(sets)
    chain = 0.0
    for k in range(len(names) + 1):
        for subset in itertools.combinations(names, k):
            avoid = sorted({n for name in subset for n in sets[name]})
            chain += (-1) ** k * float(_solve_from(effects, source, avoid)[target])
    every = sorted({n for nodes in sets.values() for n in nodes})
    outside = float(_solve_from(effects, source, every)[target])
    return EffectShares(total=total, through=through, chain=chain, outside=outside)


# ---------------------------------------------------------------------- step 3
@dataclass
class SupernodeCheck:
    name: str
    n_members: int  # features of the supernode active in the graph at the position
    logit_tokens: list[str]
    predicted: list[float]  # Δ demeaned logit per logit node, from the graph
    replacement: list[float]  # the same ablation on the replacement model (frozen attention)
    real: list[float]  # the same ablation on the real model (attention free)
    crossed: int = 0  # other features whose active state changed in the replacement run

    def agrees(self, rel_tol: float = 0.25) -> bool:
        """The replacement-model change of the first logit within ``rel_tol`` of the
        prediction, with the same sign."""
        p, r = self.predicted[0], self.replacement[0]
        return p * r > 0 and abs(p - r) <= rel_tol * abs(p)

    def __str__(self) -> str:
        crossed = f" ({self.crossed} crossed a threshold)" if self.crossed else ""
        return (
            f"{self.name}: {self.n_members} feature{'' if self.n_members == 1 else 's'}; "
            f"Δ logit {self.logit_tokens[0]!r}: graph {self.predicted[0]:+.3f}, replacement "
            f"model {self.replacement[0]:+.3f}{crossed}, real model {self.real[0]:+.3f}"
        )


def predicted_ablation(graph: GraphData, nodes: Sequence[int]) -> torch.Tensor:
    """Δ of every logit node when the feature nodes ``nodes`` are clamped to 0: ``[n_logits]``."""
    if not nodes:
        return torch.zeros(graph.n_logits, dtype=torch.float64)
    effects = linear_effects(graph)
    idx = torch.tensor(list(nodes))
    effects[idx] = 0.0  # clamped: they do not respond to each other
    n = effects.shape[0]
    rhs = torch.zeros(n, idx.numel(), dtype=effects.dtype)
    rhs[idx, torch.arange(idx.numel())] = 1.0
    per_unit = torch.linalg.solve(torch.eye(n, dtype=effects.dtype) - effects, rhs)  # [N, k]
    values = graph.activation_values.double()[idx]
    return -(per_unit[graph.logit_offset :] @ values)


def validate_supernode(
    model: HookedTransformer,
    clt: Transcoder,
    prompt: Any,
    graph: GraphData,
    supernode: Supernode,
    position: int = -1,
) -> SupernodeCheck:
    """Step 3: ablate the supernode's members at ``position``; prediction vs measurements."""
    if not graph.only_logit_targets:
        raise ValueError(
            "validate_supernode compares logit effects: this graph has non-token targets; "
            "trace it with token targets"
        )
    nodes = member_nodes(graph, supernode, position)
    ids = graph.logit_token_ids
    tokens = graph.metadata.get("logit_token_strings") or [str(int(t)) for t in ids]
    todo = [tuple(int(v) for v in graph.active_features[i]) + (0.0,) for i in nodes]
    if not todo:
        zeros = [0.0] * len(tokens)
        return SupernodeCheck(supernode.name, 0, list(tokens), zeros, zeros, zeros)
    predicted = predicted_ablation(graph, nodes)
    rep = intervene(model, clt, prompt, todo)
    real = intervene(model, clt, prompt, todo, mlps="model", freeze_attention=False)
    changed = (rep.activations != 0) != (rep.clean_activations != 0)  # [L, T, F]
    for layer, pos, feat, _ in todo:
        changed[layer, pos, feat] = False  # the clamped members themselves

    def delta(res: Any) -> list[float]:
        return (
            demeaned_targets(model, res.logits, ids)
            - demeaned_targets(model, res.clean_logits, ids)
        ).tolist()

    return SupernodeCheck(
        name=supernode.name,
        n_members=len(nodes),
        logit_tokens=list(tokens),
        predicted=predicted.tolist(),
        replacement=delta(rep),
        real=delta(real),
        crossed=int(changed.sum()),
    )


# ---------------------------------------------------------------------- step 4
def supernode_json(
    graph: GraphData,
    supernodes: Sequence[Supernode],
    position: int = -1,
    keep: torch.Tensor | None = None,
) -> list[list[str]]:
    """Step 4: ``[[name, node_id, ...], ...]`` for ``qParams.supernodes``; with ``keep``
    (the pruned node mask) only kept members; supernodes without members are left out."""
    out = []
    for sn in supernodes:
        ids = [
            node_id(graph, i)
            for i in member_nodes(graph, sn, position)
            if keep is None or bool(keep[i])
        ]
        if ids:
            out.append([sn.name, *ids])
    return out


# ---------------------------------------------------------------------- step 5
_BOX_W, _SLOT = 0.8, 0.9  # box width (layers) and vertical distance between stacked boxes


def plot_supernode_graph(
    graph: GraphData,
    groups: Mapping[str, Sequence[int]],
    source: int,
    target: int,
    path: str | Path | None = None,
    *,
    source_name: str = "source",
    target_name: str = "target",
    title: str = "",
    inactive: Mapping[str, float] | None = None,
) -> Any:
    """Step 5: the supernode-level figure; returns the matplotlib figure (saved to ``path``).

    ``inactive``: supernodes with no member active on this prompt, drawn as dashed boxes at
    the given layer (e.g. their members' mean layer), so that their absence shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    shares = effect_shares(graph, source, target, groups)
    boxes: dict[str, tuple[list[int], float]] = {source_name: ([source], -1.0)}
    for name, nodes in groups.items():
        if nodes:
            layers = [graph.node_layer_pos(i)[0] for i in nodes]
            boxes[name] = (list(nodes), sum(layers) / len(layers))
    for name, layer in (inactive or {}).items():
        boxes[name] = ([], float(layer))
    boxes[target_name] = ([target], float(graph.n_layers))
    xy: dict[str, tuple[float, float]] = {}  # boxes closer than a box width get stacked
    for name, (_, x) in sorted(boxes.items(), key=lambda kv: kv[1][1]):
        taken = {y for other, (ox, y) in xy.items() if abs(ox - x) < _BOX_W + 0.1}
        slot = next(k for k in itertools.count() if k * _SLOT not in taken)
        xy[name] = (x, slot * _SLOT)
    A = graph.dense_adjacency().double()
    edges = []
    for (a, (na, _)), (b, (nb, _)) in itertools.permutations(boxes.items(), 2):
        if not na or not nb:
            continue
        w = float(A[nb][:, na].sum())
        if w != 0.0 and xy[a][0] < xy[b][0]:
            edges.append((a, b, w))
    wmax = max((abs(w) for *_, w in edges), default=1.0)
    n_slots = 1 + round(max(y for _, y in xy.values()) / _SLOT)
    fig, ax = plt.subplots(figsize=(11, 2.2 + 1.4 * n_slots))
    for a, b, w in edges:
        if abs(w) < 0.05 * wmax:
            continue
        (xa, ya), (xb, yb) = xy[a], xy[b]
        if xb - xa < _BOX_W + 0.1:  # stacked boxes: from one's top or bottom to the other's
            side = 0.3 if yb > ya else -0.3
            start, end = (xa, ya + side), (xb, yb - side)
        else:
            start, end = (xa + _BOX_W / 2, ya), (xb - _BOX_W / 2, yb)
        ax.add_patch(
            FancyArrowPatch(
                start, end, arrowstyle="-|>",
                mutation_scale=12, lw=0.6 + 5 * abs(w) / wmax,
                color="#2b6cb0" if w > 0 else "#c53030", alpha=0.75, zorder=3,
                shrinkA=1, shrinkB=1,
                connectionstyle=f"arc3,rad={0.3 if xb - xa > 2.5 and ya == yb else 0.06}",
            )
        )  # fmt: skip
    for name, (nodes, _) in boxes.items():
        x, y = xy[name]
        style = "solid"
        if name in groups:
            text = f"{name}\n{len(nodes)} features · {shares.share(name):.0%} of effect"
            face = "#fefcbf"
        elif not nodes:
            text, face, style = f"{name}\nnot active here", "white", "dashed"
        else:
            text = name
            face = "#e2e8f0"
        ax.add_patch(
            FancyBboxPatch((x - _BOX_W / 2, y - 0.3), _BOX_W, 0.6, boxstyle="round,pad=0.04",
                           fc=face, ec="#4a5568", lw=1.0, ls=style)
        )  # fmt: skip
        ax.text(x, y, text, ha="center", va="center", fontsize=8)
    xs = [p[0] for p in xy.values()]
    ys = [p[1] for p in xy.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.set_xticks(range(-1, graph.n_layers + 1))
    ax.set_xticklabels(["emb"] + [f"L{i}" for i in range(graph.n_layers)] + ["logit"])
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        (title + "\n" if title else "")
        + f"{source_name} → {target_name}: total effect {shares.total:+.2f}; "
        f"paths through no supernode {shares.outside / shares.total if shares.total else 0:.0%}",
        fontsize=10,
    )
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig
