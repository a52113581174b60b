"""The attribution-graph figure, checked on what the renderer actually draws.

The demo graph (the embedded model and CLT, the README's prompt, the CLT's shipped labels)
is drawn; the rendered text and marker boxes are read back in display pixels and checked:
no two labels overlap, no label covers a marker, no two markers touch, every logit is
labelled, at most ``max_edges`` edges are drawn, and the paths / supernode views keep what
they promise.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import sae_lens_clt
from sae_lens_clt import attribute, load_model
from sae_lens_clt.attribution.export import graph_json, node_index
from sae_lens_clt.attribution.prune import prune_graph
from sae_lens_clt.labels import load_with_labels

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The capital of the state containing Dallas is"
Box = tuple[float, float, float, float]
SLACK = 0.5  # pixels of rounding allowed between two boxes that only touch


@pytest.fixture(scope="module")
def demo():
    model = load_model(sae_lens_clt.DEFAULT_MODEL)
    clt, labels, _ = load_with_labels(sae_lens_clt.DEFAULT_CLT)
    graph = attribute(model, clt, PROMPT)
    return graph, labels, prune_graph(graph)


def overlap(a: Box, b: Box) -> bool:
    return (
        a[0] < b[2] - SLACK and b[0] < a[2] - SLACK and a[1] < b[3] - SLACK and b[1] < a[3] - SLACK
    )


def drawn(fig):
    """(label boxes with their text and colour, marker boxes with their kind), in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    labels = [
        (t.get_window_extent(renderer).extents, t.get_text(), t.get_color())
        for t in ax.texts
        if t.get_bbox_patch() is not None  # node labels; the "+n" hidden counts have none
    ]
    markers = []
    for coll in ax.collections:
        if not isinstance(coll, PathCollection):
            continue
        xy = coll.get_offset_transform().transform(coll.get_offsets())
        for (x, y), size in zip(xy, itertools.cycle(coll.get_sizes())):
            r = size**0.5 / 2 * fig.dpi / 72
            markers.append(((x - r, y - r, x + r, y + r), coll.get_label()))
    return labels, markers


def edge_count(fig) -> int:
    from matplotlib.collections import LineCollection

    return sum(
        len(c.get_segments()) for c in fig.axes[0].collections if isinstance(c, LineCollection)
    )


def test_demo_figure_has_no_overlaps_and_labels_every_logit(demo, tmp_path) -> None:
    graph, labels, pruned = demo
    fig = graph.plot(tmp_path / "demo.png", labels=labels, pruned=pruned)
    texts, markers = drawn(fig)
    feature_labels = [t for t in texts if t[2] != "tab:purple"]
    assert len(feature_labels) >= 20, "the demo graph should carry many feature labels"
    for (a, ta, _), (b, tb, _) in itertools.combinations(texts, 2):
        assert not overlap(a, b), f"labels {ta!r} and {tb!r} overlap"
    for box, text, _ in texts:
        for mbox, kind in markers:
            assert not overlap(box, mbox), f"label {text!r} covers a {kind} marker"
    for (a, ka), (b, kb) in itertools.combinations(markers, 2):
        assert not overlap(a, b), f"a {ka} marker touches a {kb} marker"
    logit_texts = [t for _, t, c in texts if c == "tab:purple"]
    assert len(logit_texts) == len(graph.logit_token_ids)
    top = graph.metadata["logit_token_strings"][0].strip()
    assert logit_texts[0].startswith(top)
    assert sum(kind == "logit" for _, kind in markers) == len(graph.logit_token_ids)
    assert int(pruned.edge_mask.sum()) > 250  # so the default bound is what limits the count
    assert edge_count(fig) == 250
    assert (tmp_path / "demo.png").stat().st_size > 50_000


def test_max_edges_bounds_the_drawn_edges_and_the_title_says_so(demo) -> None:
    graph, labels, pruned = demo
    fig = graph.plot(labels=labels, pruned=pruned, max_edges=17)
    assert edge_count(fig) == 17
    assert edge_count(graph.plot(pruned=pruned, max_edges=0)) == 0
    assert any("17 edges drawn" in t.get_text() for t in fig.texts)
    positive = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "feature" in positive and "logit" in positive


def test_paths_view_keeps_only_nodes_on_the_strongest_paths(demo) -> None:
    graph, labels, pruned = demo
    full = drawn(graph.plot(labels=labels, pruned=pruned))[1]
    texts, markers = drawn(graph.plot(labels=labels, pruned=pruned, view="paths", n_paths=5))
    kinds = [k for _, k in markers]
    assert 0 < kinds.count("feature") < [k for _, k in full].count("feature") / 2
    assert "embedding" in kinds and "logit" in kinds
    with pytest.raises(ValueError, match="view"):
        graph.plot(view="tree")


def test_supernode_draws_its_members_as_one_node(demo) -> None:
    graph, labels, pruned = demo
    last = graph.n_pos - 1
    feats = [
        i
        for i in range(graph.n_features)
        if pruned.node_mask[i] and graph.node_layer_pos(i) == (0, last)
    ][:4]
    assert len(feats) == 4
    layer_pos_feat = [tuple(int(v) for v in graph.active_features[i]) for i in feats]
    members = [feats[0], f"{layer_pos_feat[1][0]}_{layer_pos_feat[1][2]}_{last}"]
    members += [layer_pos_feat[2], layer_pos_feat[3]]  # an index, a JSON id, two tuples
    before = [k for _, k in drawn(graph.plot(labels=labels, pruned=pruned))[1]]
    texts, markers = drawn(graph.plot(labels=labels, pruned=pruned, supernodes={"state": members}))
    after = [k for _, k in markers]
    assert after.count("supernode") == 1
    assert after.count("feature") == before.count("feature") - 4
    assert "state" in [t for _, t, _ in texts]
    hidden = next(i for i in range(graph.n_features) if not pruned.node_mask[i])
    with pytest.warns(UserWarning, match="1 of its members are not among the drawn nodes"):
        graph.plot(pruned=pruned, supernodes={"with a pruned one": [feats[0], hidden]})


def test_node_index_round_trips_every_graph_json_id(demo) -> None:
    graph, _, pruned = demo
    data = graph_json(graph, pruned=pruned)
    kinds = {
        "cross layer transcoder": "feature",
        "mlp reconstruction error": "error",
        "embedding": "embedding",
        "logit": "logit",
    }
    seen = set()
    for node in data["nodes"]:
        i = node_index(graph, node["node_id"])
        assert graph.node_kind(i) == kinds[node["feature_type"]]
        assert pruned.node_mask[i]
        layer, pos = graph.node_layer_pos(i)
        assert pos == node["ctx_idx"] or graph.node_kind(i) == "logit"
        seen.add(i)
    assert len(seen) == len(data["nodes"]) == int(pruned.node_mask.sum())
    i = int(torch.nonzero(pruned.node_mask[: graph.n_features])[0])
    assert node_index(graph, tuple(int(v) for v in graph.active_features[i])) == i
    with pytest.raises(ValueError, match="not active"):
        node_index(graph, (0, 0, 10**6))
    with pytest.raises(ValueError, match="node id"):
        node_index(graph, "nonsense")
    with pytest.raises(ValueError, match="outside"):
        node_index(graph, f"E_{int(graph.input_tokens[0])}_{graph.n_pos}")
    wrong = int(graph.input_tokens[1]) + 1
    with pytest.raises(ValueError, match=f"is not {wrong}"):
        node_index(graph, f"E_{wrong}_1")
    with pytest.raises(ValueError, match="outside"):
        node_index(graph, f"{graph.n_layers + 3}_-1_1")
