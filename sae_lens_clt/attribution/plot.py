"""A matplotlib figure of a pruned attribution graph.

Algorithm (``plot_graph``, one helper per step):

1. ``_select_nodes``: prune (``prune.py``) and keep at most ``max_nodes`` feature / error
   nodes, the most influential ones. Embeddings sit on the bottom row, logits on the top
   row, features and errors on their layer's row; x is the token position.
2. ``_layout``: each position gets a column as wide as its most crowded (position, layer)
   cell needs; nodes of a cell are spread across it, most influential first, crowded cells
   wrapping onto sub-rows. The figure size follows the total width and the layer count.
3. ``_draw_edges``: edges are straight lines, blue for positive and red for negative
   weights, width and opacity growing with ``|weight|`` relative to the target's largest
   input; only the strongest ``max_edges`` are drawn, the weakest first so the strong ones
   stay on top.
4. ``_draw_nodes``: marker area grows with influence; features are circles, errors grey
   squares, embeddings and logits squares / diamonds; the 30 most influential features are
   labelled.
5. ``_draw_axes``: tokens along the bottom, the most probable logits labelled along the
   top, one row per layer.
6. ``_finish``: legend, title, layout, and saving to ``path`` when given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

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
}


def _short(text: str, n: int = 14) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= n else text[: n - 1] + "…"


def _select_nodes(
    graph: GraphData, pruned: PruneResult, max_nodes: int
) -> tuple[torch.Tensor, list[int]]:
    """Step 1: ``(keep [N] bool, indices of the kept nodes in node order)``."""
    influence = pruned.node_influence  # [N]
    keep = pruned.node_mask.clone()  # [N] bool
    inner = keep[: graph.embedding_offset].nonzero()[:, 0]  # [n_inner] kept features / errors
    if inner.numel() > max_nodes:  # keep the most influential feature / error nodes
        drop = inner[torch.argsort(influence[inner], descending=True)[max_nodes:]]
        keep[drop] = False
    return keep, keep.nonzero()[:, 0].tolist()


def _layout(
    graph: GraphData, nodes: list[int], influence: torch.Tensor, per_cell_row: int
) -> tuple[dict[int, tuple[float, float]], list[float], float]:
    """Step 2: ``(node -> (x, y), x of each position's column centre, total width)``.

    Each token position gets a column as wide as its most crowded cell needs (crowded cells
    wrap onto sub-rows); y = row. ``influence`` is ``[N]``.
    """
    T = graph.n_pos
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in nodes:
        layer, pos = graph.node_layer_pos(i)
        cells[(pos, layer)].append(i)
    widest = [1] * T
    for (pos, _), members in cells.items():
        widest[pos] = max(widest[pos], min(len(members), per_cell_row))
    widths = [max(1.0, 0.22 * n) for n in widest]
    left = [sum(widths[:p]) for p in range(T)]
    centers = [left[p] + widths[p] / 2 for p in range(T)]
    xy: dict[int, tuple[float, float]] = {}
    for (pos, layer), members in cells.items():
        members.sort(key=lambda i: -float(influence[i]))
        n_rows = -(-len(members) // per_cell_row)
        for k, member in enumerate(members):
            row, col = divmod(k, per_cell_row)
            n_cols = min(per_cell_row, len(members) - row * per_cell_row)
            span = widths[pos] - 0.35
            dx = 0.0 if n_cols == 1 else span * (col / (n_cols - 1) - 0.5)
            dy = 0.0 if n_rows == 1 else 0.5 * (row / (n_rows - 1) - 0.5)
            xy[member] = (centers[pos] + dx, layer + dy)
    return xy, centers, sum(widths)


def _new_figure(total: float, n_layers: int) -> tuple[Figure, Axes]:
    """Step 2 (end): a figure sized for ``total`` width and ``n_layers`` rows, and its axes."""
    from matplotlib.figure import Figure

    width = min(40.0, max(8.0, 1.1 * total + 2))
    height = min(24.0, max(5.0, 1.2 * n_layers + 4))
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def _draw_edges(
    ax: Axes,
    graph: GraphData,
    pruned: PruneResult,
    keep: torch.Tensor,
    xy: Mapping[int, tuple[float, float]],
    max_edges: int,
) -> int:
    """Step 3: draw the strongest ``max_edges`` edges, weakest first; returns the number of
    pruned edges between kept nodes (``keep`` is ``[N]`` bool)."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    edges = pruned.edge_mask.clone()  # [N, N] bool, rows = targets
    edges[~keep] = False
    edges[:, ~keep] = False
    tgt, src = edges.nonzero(as_tuple=True)  # [E] each
    weights = graph.adjacency[tgt, src]  # [E]
    row_max = graph.adjacency.abs().max(dim=1).values.clamp(min=1e-10)  # [N]
    strength = (weights.abs() / row_max[tgt]).clamp(max=1.0)  # [E] in [0, 1]
    order = torch.argsort(strength)[-max_edges:].tolist()
    segments = [(xy[int(src[e])], xy[int(tgt[e])]) for e in order]
    colors = [
        to_rgba("tab:blue" if weights[e] > 0 else "tab:red", 0.12 + 0.6 * float(strength[e]))
        for e in order
    ]
    widths = [0.3 + 2.2 * float(strength[e]) for e in order]
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=widths, zorder=1))
    return len(tgt)


def _draw_nodes(
    ax: Axes,
    graph: GraphData,
    nodes: list[int],
    influence: torch.Tensor,
    xy: Mapping[int, tuple[float, float]],
    labels: Mapping[tuple[int, int], str],
) -> None:
    """Step 4: one marker per node, the 30 most influential features labelled.
    ``influence`` is ``[N]``."""
    infl_max = float(influence[nodes].max()) if nodes else 1.0
    labelled = sorted(
        (i for i in nodes if graph.node_kind(i) == "feature"),
        key=lambda i: -float(influence[i]),
    )[:30]
    for i in nodes:
        kind = graph.node_kind(i)
        marker, color = _STYLES[kind]
        size = 25 + 260 * (float(influence[i]) / max(infl_max, 1e-10)) ** 0.5
        if kind in ("embedding", "logit"):
            size = 90
        x, y = xy[i]
        ax.scatter([x], [y], s=size, marker=marker, c=color, edgecolors="k", lw=0.5, zorder=3)
        if i in labelled:
            layer, _, feat = (int(v) for v in graph.active_features[i])
            text = labels.get((layer, feat), f"{layer}/{feat}")
            ax.annotate(
                _short(text, 16), (x, y), xytext=(0, 6), textcoords="offset points",
                ha="left", fontsize=5.5, rotation=35, zorder=4,
            )  # fmt: skip


def _draw_axes(
    ax: Axes,
    graph: GraphData,
    nodes: list[int],
    xy: Mapping[int, tuple[float, float]],
    centers: list[float],
    total: float,
) -> None:
    """Step 5: tokens along the bottom, logits along the top, one row per layer."""
    L = graph.n_layers
    tok_strs = graph.metadata.get("token_strings") or [str(int(t)) for t in graph.input_tokens]
    ax.set_xticks(centers)
    ax.set_xticklabels([_short(repr(t)[1:-1]) for t in tok_strs], rotation=45, ha="right")
    logit_strs = graph.metadata.get("logit_token_strings") or [
        str(int(t)) for t in graph.logit_token_ids
    ]
    logit_nodes = [i for i in nodes if graph.node_kind(i) == "logit"]
    for i in logit_nodes[:6]:  # the most probable logits, labelled above their marker
        k = i - graph.logit_offset
        x, y = xy[i]
        prob = float(graph.logit_probabilities[k])
        ax.annotate(
            f"{_short(logit_strs[k])!r} {prob:.2f}", (x, y), xytext=(0, 8),
            textcoords="offset points", fontsize=7, rotation=60, color="tab:purple", zorder=4,
        )  # fmt: skip
    ax.set_yticks(range(-1, L + 1))
    ax.set_yticklabels(["emb"] + [f"L{layer}" for layer in range(L)] + ["logits"])
    ax.set_xlim(-0.2, total + 0.2)
    ax.set_ylim(-1.6, L + 1.4)
    ax.grid(axis="y", color="0.92", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _finish(
    fig: Figure,
    ax: Axes,
    graph: GraphData,
    nodes: list[int],
    n_edges: int,
    title: str | None,
    path: str | Path | None,
) -> None:
    """Step 6: legend, title, layout; save to ``path`` when given."""
    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], marker=m, color="w", markerfacecolor=c, markeredgecolor="k", ms=7, label=k)
        for k, (m, c) in _STYLES.items()
    ] + [
        Line2D([], [], color="tab:blue", label="positive edge"),
        Line2D([], [], color="tab:red", label="negative edge"),
    ]
    ax.legend(handles=legend, loc="upper left", fontsize=7, frameon=False, ncol=3,
              bbox_to_anchor=(0.0, 1.12))  # fmt: skip
    n_feat = sum(graph.node_kind(i) == "feature" for i in nodes)
    prompt = graph.metadata.get("prompt") or ""
    ax.set_title(
        title or f"{_short(prompt, 60)!r}: {n_feat} features, {n_edges} edges", fontsize=9,
        loc="right",
    )  # fmt: skip
    fig.tight_layout()
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
    max_edges: int = 800,
    per_cell_row: int = 12,
) -> Figure:
    """Draw the pruned graph; save it to ``path`` (png / pdf / svg) when given.

    ``labels`` maps ``(layer, feature)`` to a short feature description. Returns the
    matplotlib ``Figure``. Steps 1-6 of the module docstring.
    """
    pruned = pruned if pruned is not None else prune_graph(graph, node_threshold, edge_threshold)
    influence = pruned.node_influence  # [N]
    # 1. the nodes to draw
    keep, nodes = _select_nodes(graph, pruned, max_nodes)
    # 2. positions, and a figure sized for them
    xy, centers, total = _layout(graph, nodes, influence, per_cell_row)
    fig, ax = _new_figure(total, graph.n_layers)
    # 3. edges
    n_edges = _draw_edges(ax, graph, pruned, keep, xy, max_edges)
    # 4. nodes and their labels
    _draw_nodes(ax, graph, nodes, influence, xy, labels or {})
    # 5. token, logit and layer axes
    _draw_axes(ax, graph, nodes, xy, centers, total)
    # 6. legend, title, save
    _finish(fig, ax, graph, nodes, n_edges, title, path)
    return fig
