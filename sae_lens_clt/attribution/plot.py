"""A matplotlib figure of a pruned attribution graph that reads at a glance.

The figure is laid out in inches, not in data units, so that what must not touch can be
checked before anything is drawn: one data unit along x is one inch, one row is
``row_height`` inches.

Algorithm (``plot_graph``, one helper per step):

1. ``_display_graph``: prune (``prune.py``), keep at most ``max_nodes`` feature / error
   nodes (the most influential) and at most ``max_per_cell`` per (layer, position) cell,
   then build the *display graph*: one display node per kept node, or, with ``view="paths"``,
   only the nodes and edges of the ``n_paths`` strongest paths into the top logit
   (``paths.py``), and, with ``supernodes``, one display node per named group (its
   members' edges summed). Display edges are the pruned edges between display nodes.
2. ``_layout``: one row per layer (embeddings below, logits above). Each position gets a
   column as wide as its most crowded cell needs at ``node_gap`` inches per node, so no two
   markers touch; the logits sit at the last position, spaced for their labels on two
   alternating tiers.
3. ``_draw_edges``: the ``max_edges`` strongest edges (``|weight|`` relative to the
   target's largest input among the display edges), weakest first; blue positive, red negative; width and
   opacity grow with strength, so weak edges fade.
4. ``_draw_nodes``: marker area grows with influence; features circles, errors grey
   squares, embeddings green squares, logits purple diamonds, supernodes gold squares.
   Every target (logit, logit difference, direction, feature pre-activation) sits in
   the top row at its own position, labelled by its short name and weight.
5. ``_place_labels``: every logit is labelled (two tiers); feature and supernode labels are
   placed greedily, most influential first, at the first of a few spots around the node
   whose box overlaps no marker and no label already placed; a label with no free spot is
   left out (the viewer shows every label).
6. ``_finish``: token and layer axes, legend, title; saving to ``path`` when given.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from sae_lens_clt.attribution.export import node_index
from sae_lens_clt.attribution.paths import linear_effects, strongest_paths
from sae_lens_clt.attribution.prune import PruneResult, prune_graph

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from sae_lens_clt.attribution.nodes import GraphData

# node kind -> (marker, colour); also the order of the legend
_STYLES = {
    "feature": ("o", "tab:orange"),
    "error": ("s", "0.6"),
    "embedding": ("s", "tab:green"),
    "logit": ("D", "tab:purple"),
    "supernode": ("s", "gold"),
}
_FONT = 7.0  # label font size, points
_LEFT, _RIGHT, _BOTTOM, _TOP = 0.8, 0.3, 1.0, 0.8  # figure margins, inches
_COL_MIN = 0.75  # narrowest position column, inches
_GAP = 3.0 / 72  # least horizontal space between two labels, inches

Member = int | str | tuple[int, int, int]  # node index, JSON node id, or (layer, pos, feature)


@dataclass
class _Node:
    """A display node: one graph node or a supernode (several)."""

    kind: str
    row: int  # -1 embeddings, 0..L-1 layers, L logits
    pos: int
    influence: float
    members: list[int]
    label: str = ""
    size: float = 0.0  # marker area, points^2
    xy: tuple[float, float] = (0.0, 0.0)  # (inches, row)


@dataclass
class _Display:
    nodes: list[_Node]
    edges: dict[tuple[int, int], float]  # (target display node, source display node) -> weight
    n_hidden: dict[tuple[int, int], int] = field(default_factory=dict)  # (pos, row) -> dropped


def _short(text: str, n: int = 18) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= n else text[: n - 1] + "…"


def _text_width(text: str, size: float = _FONT) -> float:
    """Width of ``text`` in points at font ``size`` (the renderer's own glyph metrics)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    return float(TextPath((0, 0), text, size=size, prop=FontProperties()).get_extents().width)


def _target_labels(graph: GraphData) -> list[str]:
    """One short label per target: a token with its probability, another target (logit
    difference, direction, feature pre-activation) by its short name, its weight and,
    when not at the last position, its position."""
    logit_strs = graph.metadata.get("logit_token_strings") or [
        str(int(t)) for t in graph.logit_token_ids
    ]
    labels = []
    for k, w in enumerate(graph.logit_probabilities.tolist()):
        if graph.target_kind(k) == "token":
            s = logit_strs[k]
            labels.append(f"{_short(s.strip() or repr(s), 14)} {float(w):.0%}")
            continue
        _, pos = graph.node_layer_pos(graph.logit_offset + k)
        where = "" if pos == graph.n_pos - 1 else f" @{pos}"
        labels.append(f"{_short(graph.target_label(k, short=True), 16)}{where} w{float(w):.2f}")
    return labels


# ---------------------------------------------------------------------- 1. display graph
def _kept_nodes(
    graph: GraphData, pruned: PruneResult, max_nodes: int, max_per_cell: int
) -> tuple[list[int], dict[tuple[int, int], int]]:
    """Kept node indices (at most ``max_nodes`` features / errors, ``max_per_cell`` per cell)
    and the number dropped per ``(pos, row)`` cell."""
    influence = pruned.node_influence  # [N]
    keep = pruned.node_mask.clone()  # [N] bool
    inner = keep[: graph.embedding_offset].nonzero()[:, 0]  # kept features / errors
    inner = inner[torch.argsort(influence[inner], descending=True)].tolist()
    per_cell: dict[tuple[int, int], int] = defaultdict(int)
    hidden: dict[tuple[int, int], int] = defaultdict(int)
    for rank, i in enumerate(inner):
        layer, pos = graph.node_layer_pos(i)
        if rank >= max_nodes or per_cell[(pos, layer)] >= max_per_cell:
            keep[i] = False
            hidden[(pos, layer)] += 1
        else:
            per_cell[(pos, layer)] += 1
    return keep.nonzero()[:, 0].tolist(), dict(hidden)


def _path_subgraph(
    graph: GraphData, pruned: PruneResult, nodes: list[int], n_paths: int
) -> tuple[set[int], set[tuple[int, int]]]:
    """Nodes and ``(target, source)`` edges on the ``n_paths`` strongest paths from any
    embedding into the most probable logit, among ``nodes``."""
    mask = torch.zeros(graph.n_nodes, dtype=torch.bool)
    mask[nodes] = True
    effects = linear_effects(graph)  # [N, N]
    kept = torch.zeros_like(effects, dtype=torch.bool)
    kept[pruned.edges()] = True
    effects *= kept  # only pruned edges
    target = graph.logit_offset
    paths = []
    for src in range(graph.embedding_offset, graph.logit_offset):
        if mask[src]:
            paths += strongest_paths(effects, mask, src, target, k=n_paths)
    paths.sort(key=lambda p: -abs(p[0]))
    on_path, edges = {target}, set()
    for _, path in paths[:n_paths]:
        on_path.update(path)
        edges.update(zip(path[1:], path[:-1], strict=False))
    return on_path, edges


def _display_graph(
    graph: GraphData,
    pruned: PruneResult,
    nodes: list[int],
    hidden: dict[tuple[int, int], int],
    labels: Mapping[tuple[int, int], str],
    view: str,
    n_paths: int,
    supernodes: Mapping[str, Sequence[Member]] | None,
) -> _Display:
    """Step 1: display nodes (graph nodes or supernodes) and their summed edges."""
    influence = pruned.node_influence  # [N]
    allowed: set[tuple[int, int]] | None = None
    if view == "paths":
        on_path, allowed = _path_subgraph(graph, pruned, nodes, n_paths)
        nodes = [i for i in nodes if i in on_path or graph.node_kind(i) == "embedding"]
        hidden = {}
    group_of: dict[int, str] = {}
    for name, members in (supernodes or {}).items():
        for m in members:
            group_of[node_index(graph, m)] = name
    display: list[_Node] = []
    where: dict[int, int] = {}  # graph node -> display node
    groups: dict[str, int] = {}
    for i in nodes:
        kind = graph.node_kind(i)
        layer, pos = graph.node_layer_pos(i)
        row = {"embedding": -1, "logit": graph.n_layers}.get(kind, layer)
        if i in group_of:
            name = group_of[i]
            if name not in groups:
                groups[name] = len(display)
                display.append(_Node("supernode", row, pos, 0.0, [], label=name))
            d = display[groups[name]]
            d.members.append(i)
            d.influence += float(influence[i])
            where[i] = groups[name]
            continue
        label = ""
        if kind == "feature":
            layer, _, feat = (int(v) for v in graph.active_features[i])
            label = labels.get((layer, feat), f"L{layer}/{feat}")
        where[i] = len(display)
        display.append(_Node(kind, row, pos, float(influence[i]), [i], label=label))
    missing = Counter(name for i, name in group_of.items() if i not in where)
    for name, n in missing.items():  # said aloud, never silently dropped
        warnings.warn(
            f"supernode {name!r}: {n} of its members are not among the drawn nodes (pruned, "
            "hidden, or off the paths view) and are left out",
            stacklevel=3,
        )
    for d in display:  # a supernode sits in its members' median row and position
        if d.kind == "supernode":
            rows = sorted(graph.node_layer_pos(i)[0] for i in d.members)
            poss = sorted(graph.node_layer_pos(i)[1] for i in d.members)
            d.row, d.pos = rows[len(rows) // 2], poss[len(poss) // 2]
    edges: dict[tuple[int, int], float] = defaultdict(float)
    drawn = torch.zeros(graph.n_nodes, dtype=torch.bool)
    drawn[torch.tensor(nodes, dtype=torch.long)] = True
    targets, sources = pruned.edges()
    both = drawn[targets] & drawn[sources]
    targets, sources = targets[both], sources[both]
    values = graph.edge_values(targets, sources).tolist()
    for gt, gs, value in zip(targets.tolist(), sources.tolist(), values, strict=True):
        if allowed is not None and (gt, gs) not in allowed:
            continue
        if where[gt] != where[gs]:
            edges[(where[gt], where[gs])] += float(value)
    return _Display(display, dict(edges), hidden)


# ---------------------------------------------------------------------- 2. layout
def _layout(
    disp: _Display, graph: GraphData, node_gap: float, logit_labels: list[str]
) -> tuple[list[float], float]:
    """Step 2: set every display node's ``xy`` and marker ``size``; returns each position's
    column centre (inches) and the total width."""
    T = graph.n_pos
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k, d in enumerate(disp.nodes):
        cells[(d.pos, d.row)].append(k)
    infl_max = max((d.influence for d in disp.nodes if d.kind != "logit"), default=1.0)
    for d in disp.nodes:
        if d.kind in ("embedding", "logit"):
            d.size = 60.0
        elif d.kind == "supernode":
            d.size = 130.0
        else:  # largest marker: sqrt(140) ~ 12 pt, below the smallest gap (14.4 pt)
            d.size = 16.0 + 124.0 * (d.influence / max(infl_max, 1e-10)) ** 0.5
    logit_gap = node_gap
    if logit_labels:  # two alternating tiers: neighbours two apart must not touch
        logit_gap = max(node_gap, (max(map(_text_width, logit_labels)) / 72 + 0.08) / 2)
    widths = [_COL_MIN] * T
    for (pos, row), members in cells.items():
        gap = logit_gap if row == graph.n_layers else node_gap
        widths[pos] = max(widths[pos], gap * (len(members) + 0.6))
    left = [sum(widths[:p]) for p in range(T)]
    centers = [left[p] + widths[p] / 2 for p in range(T)]
    for (pos, row), members in cells.items():
        gap = logit_gap if row == graph.n_layers else node_gap
        if row != graph.n_layers:  # logits keep their probability order
            members.sort(key=lambda k: -disp.nodes[k].influence)
        for j, k in enumerate(members):
            disp.nodes[k].xy = (centers[pos] + gap * (j - (len(members) - 1) / 2), float(row))
    return centers, sum(widths)


def _new_figure(total: float, n_rows: int, row_height: float) -> tuple[Figure, Axes]:
    """Step 2 (end): a figure whose axes map one x unit to one inch and one row to
    ``row_height`` inches."""
    from matplotlib.figure import Figure

    ax_w, ax_h = total + 0.4, row_height * (n_rows + 0.4)  # rows -1.5 .. L + 0.9
    fig = Figure(figsize=(ax_w + _LEFT + _RIGHT, ax_h + _BOTTOM + _TOP))
    W, H = fig.get_size_inches()
    ax = fig.add_axes((_LEFT / W, _BOTTOM / H, ax_w / W, ax_h / H))
    return fig, ax


# ---------------------------------------------------------------------- 3. edges, 4. nodes
def _draw_edges(ax: Axes, disp: _Display, max_edges: int) -> tuple[int, set[bool]]:
    """Step 3: draw the strongest ``max_edges`` display edges.

    Returns how many were drawn and the signs among them (``True`` for positive).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    if not disp.edges:
        return 0, set()
    keys = list(disp.edges)
    weights = torch.tensor([disp.edges[k] for k in keys])  # [E]
    row_max: dict[int, float] = defaultdict(float)
    for (t, _), w in zip(keys, weights.tolist(), strict=True):
        row_max[t] = max(row_max[t], abs(w))
    strength = torch.tensor(
        [abs(w) / max(row_max[t], 1e-10) for (t, _), w in zip(keys, weights.tolist(), strict=True)]
    )  # [E] in [0, 1]
    order = torch.argsort(strength)[len(keys) - max_edges :].tolist() if max_edges > 0 else []
    nodes = disp.nodes
    segments = [(nodes[keys[e][1]].xy, nodes[keys[e][0]].xy) for e in order]
    colors = [
        to_rgba(
            "tab:blue" if weights[e] > 0 else "tab:red", 0.06 + 0.64 * float(strength[e]) ** 1.5
        )
        for e in order
    ]
    widths = [0.25 + 2.0 * float(strength[e]) ** 1.5 for e in order]
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=widths, zorder=1))
    return len(order), {bool(weights[e] > 0) for e in order}


def _draw_nodes(ax: Axes, disp: _Display) -> None:
    """Step 4: one marker per display node (one scatter call per kind)."""
    for kind, (marker, color) in _STYLES.items():
        group = [d for d in disp.nodes if d.kind == kind]
        if not group:
            continue
        xs, ys = [d.xy[0] for d in group], [d.xy[1] for d in group]
        ax.scatter(
            xs, ys, s=[d.size for d in group], marker=marker, c=color, edgecolors="k",
            linewidths=0.5, zorder=3, label=kind,
        )  # fmt: skip


# ---------------------------------------------------------------------- 5. labels
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in inches from the axes' corner


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(
    ax: Axes,
    disp: _Display,
    graph: GraphData,
    logit_labels: list[str],
    row_height: float,
    total: float,
) -> None:
    """Step 5: every logit labelled; other labels greedily where nothing is in the way."""
    h = _FONT * 1.2 / 72  # label height, inches
    pad = 1.0 / 72

    def inch_y(row: float) -> float:
        return (row + 1.5) * row_height  # axes' bottom is at row -1.5

    occupied: list[Box] = []
    for d in disp.nodes:  # marker boxes
        r = (d.size**0.5) / 2 / 72
        x, y = d.xy[0], inch_y(d.xy[1])
        occupied.append((x - r, y - r, x + r, y + r))

    def put(text: str, x: float, y0: float, color: str, weight: str = "normal") -> None:
        """Text centred at ``x`` inches, bottom at ``y0`` inches."""
        ax.annotate(
            text, (x, -1.5), xytext=(0, y0 * 72), textcoords="offset points", ha="center",
            va="bottom", fontsize=_FONT, color=color, fontweight=weight, zorder=5,
            bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.75},
            annotation_clip=False,
        )  # fmt: skip

    logits = [d for d in disp.nodes if d.kind == "logit"]
    for j, d in enumerate(logits):
        text = logit_labels[d.members[0] - graph.logit_offset]
        w = _text_width(text) / 72
        r = (d.size**0.5) / 2 / 72
        y0 = inch_y(d.xy[1]) + r + pad + (j % 2) * (h + pad)
        occupied.append((d.xy[0] - w / 2, y0, d.xy[0] + w / 2, y0 + h))
        put(text, d.xy[0], y0, "tab:purple")

    named = [d for d in disp.nodes if d.kind in ("feature", "supernode") and d.label]
    named.sort(key=lambda d: (d.kind != "supernode", -d.influence))
    for d in named:
        text = _short(d.label)
        w = _text_width(text) / 72 + 2 * _GAP  # keep a gap to the neighbours' labels
        r = (d.size**0.5) / 2 / 72
        x, y = d.xy[0], inch_y(d.xy[1])
        spots = [(0.0, r + pad), (0.0, -r - pad - h)]  # above, below
        spots += [(0.0, r + 2 * pad + h), (0.0, -r - 2 * pad - 2 * h)]  # one tier further
        spots += [(dx * (w / 2 + r), r + pad) for dx in (1, -1)]  # above right / left
        for dx, dy in spots:
            box = (x + dx - w / 2, y + dy, x + dx + w / 2, y + dy + h)
            inside = box[0] >= 0 and box[2] <= total + 0.4
            if inside and not any(_overlaps(box, o) for o in occupied):
                occupied.append(box)
                weight = "bold" if d.kind == "supernode" else "normal"
                put(text, x + dx, y + dy, "0.15", weight)
                break


# ---------------------------------------------------------------------- 6. axes, legend
def _finish(
    fig: Figure,
    ax: Axes,
    graph: GraphData,
    disp: _Display,
    centers: list[float],
    total: float,
    n_edges: int,
    edge_signs: set[bool],
    title: str | None,
    path: str | Path | None,
) -> None:
    """Step 6: tokens along the bottom, one row per layer, legend, title; save."""
    from matplotlib.lines import Line2D

    L = graph.n_layers
    tok_strs = graph.metadata.get("token_strings") or [str(int(t)) for t in graph.input_tokens]
    ax.set_xticks(centers)
    ax.set_xticklabels([_short(repr(t)[1:-1], 14) for t in tok_strs], rotation=40, ha="right")
    ax.set_yticks(range(-1, L + 1))
    top = "logits" if graph.only_logit_targets else "targets"
    ax.set_yticklabels(["emb"] + [f"L{layer}" for layer in range(L)] + [top])
    ax.set_xlim(0, total + 0.4)
    ax.set_ylim(-1.5, L + 0.9)
    ax.grid(axis="y", color="0.93", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for (pos, row), n in sorted(disp.n_hidden.items()):  # said aloud, never silently dropped
        ax.annotate(
            f"+{n}", (centers[pos], row), xytext=(0, -9), textcoords="offset points",
            ha="center", fontsize=5.5, color="0.45",
        )  # fmt: skip
    kinds = {d.kind for d in disp.nodes}
    legend = [
        Line2D([], [], marker=m, color="w", markerfacecolor=c, markeredgecolor="k", ms=6, label=k)
        for k, (m, c) in _STYLES.items()
        if k in kinds
    ] + [
        Line2D([], [], color=color, label=f"{sign} edge")
        for positive, color, sign in (
            (True, "tab:blue", "positive"),
            (False, "tab:red", "negative"),
        )
        if positive in edge_signs
    ]
    W, H = fig.get_size_inches()
    fig.legend(handles=legend, loc="upper left", fontsize=7, frameon=False, ncol=len(legend),
               bbox_to_anchor=(_LEFT / W, 1 - 0.05 / H))  # fmt: skip
    n_feat = sum(len(d.members) for d in disp.nodes if d.kind in ("feature", "supernode"))
    prompt = graph.metadata.get("prompt") or ""
    head = title or repr(_short(prompt, 70))
    fig.text(
        _LEFT / W, 1 - 0.35 / H, f"{head}   ({n_feat} features, {n_edges} edges drawn)",
        fontsize=9, va="top",
    )  # fmt: skip
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path), dpi=150)


def plot_graph(
    graph: GraphData,
    path: str | Path | None = None,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_nodes: int = 200,
    labels: Mapping[tuple[int, int], str] | None = None,
    pruned: PruneResult | None = None,
    title: str | None = None,
    max_edges: int = 250,
    max_per_cell: int = 24,
    view: Literal["graph", "paths"] = "graph",
    n_paths: int = 10,
    supernodes: Mapping[str, Sequence[Member]] | None = None,
    node_gap: float = 0.2,
    row_height: float = 0.9,
) -> Figure:
    """Draw the pruned graph; save it to ``path`` (png / pdf / svg) when given.

    ``labels`` maps ``(layer, feature)`` to a short feature description. ``view="paths"``
    draws only the ``n_paths`` strongest embedding-to-top-logit paths; ``supernodes`` maps a
    name to its members (node indices, graph-JSON node ids such as ``"0_253_8"``, or
    ``(layer, pos, feature)``), drawn as one node each. At most ``max_edges`` edges are
    drawn, the strongest. Returns the matplotlib ``Figure``. Steps 1-6 of the module
    docstring.
    """
    if view not in ("graph", "paths"):
        raise ValueError(f"view must be 'graph' or 'paths', got {view!r}")
    if max_edges < 0:
        raise ValueError(f"max_edges must be >= 0, got {max_edges}")
    pruned = pruned if pruned is not None else prune_graph(graph, node_threshold, edge_threshold)
    logit_labels = _target_labels(graph)
    # 1. the display graph
    nodes, hidden = _kept_nodes(graph, pruned, max_nodes, max_per_cell)
    disp = _display_graph(graph, pruned, nodes, hidden, labels or {}, view, n_paths, supernodes)
    # 2. positions, and a figure sized for them
    centers, total = _layout(disp, graph, node_gap, logit_labels)
    fig, ax = _new_figure(total, graph.n_layers + 2, row_height)
    # 3. edges, 4. nodes, 5. labels
    n_edges, edge_signs = _draw_edges(ax, disp, max_edges)
    _draw_nodes(ax, disp)
    _place_labels(ax, disp, graph, logit_labels, row_height, total)
    # 6. axes, legend, title, save
    _finish(fig, ax, graph, disp, centers, total, n_edges, edge_signs, title, path)
    return fig
