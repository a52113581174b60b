"""Prompt sets: ``attribute_many`` (saved, resumable) and ``aggregate_graphs`` (one circuit
over a prompt family, nodes aligned by role).

The aggregate is checked against graphs built by hand (every entry of the expected mean /
std worked out below), against real graphs of prompts of different lengths (an edge's
mean / std / share from the two graphs' own entries) and against itself (one graph, two
identical graphs); the shipped model and CLT trace the two-hop family end to end.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Sequence

import pytest
import torch

from sae_lens_clt.attribution import AttributionGraph, attribute
from sae_lens_clt.attribution.export import node_index, validate_graph_json
from sae_lens_clt.circuits import many
from sae_lens_clt.circuits.aggregate import (
    GlobalCircuit,
    aggregate_graphs,
    role_order,
    template_roles,
)
from sae_lens_clt.circuits.many import MANIFEST_NAME, attribute_many, graph_path
from sae_lens_clt.testing.models import tiny_lm
from tests.test_attribution import random_clt

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATE = "the capital of the {place} is the"


@pytest.fixture(scope="module")
def tiny():
    """A word-level model (whitespace pre-tokenizer) and a random CLT over it."""
    model = tiny_lm(n_layers=2, d_model=32)
    return model, random_clt(model, d_sae=64, active_frac=0.1)


def family(model, clt, values, targets=("river",)):
    """Graphs and roles of ``TEMPLATE`` filled with ``values``, one target each."""
    prompts = [TEMPLATE.format(place=v) for v in values]
    roles = [template_roles(model, TEMPLATE, {"place": v}) for v in values]
    graphs = [attribute(model, clt, p, targets=list(targets)) for p in prompts]
    return graphs, roles


# ---------------------------------------------------------------------- roles
def test_template_roles_with_a_two_token_slot(tiny) -> None:
    model, _ = tiny
    head = ["BOS", "the", "capital", "of", "the@2"]
    assert template_roles(model, TEMPLATE, {"place": "city"}) == head + ["place", "is", "the@3"]
    two = template_roles(model, TEMPLATE, {"place": "big city"})
    assert two == head + ["place-1", "place", "is", "the@3"]
    assert len(two) == model.to_tokens(TEMPLATE.format(place="big city")).shape[1]
    three = template_roles(model, TEMPLATE, {"place": "big red city"})
    assert three[5:8] == ["place-2", "place-1", "place"] and three[-1] == "the@3"
    # a slot first, a slot used twice, template text that names a slot's role
    assert template_roles(model, "{a} of {a}", {"a": "red fish"}) == [
        "BOS", "a-1", "a", "of", "a-1@2", "a@2",
    ]  # fmt: skip
    assert template_roles(model, "the city of {city} is", {"city": "big city"}) == [
        "BOS", "the", '"city"', "of", "city-1", "city", "is",
    ]  # fmt: skip
    assert template_roles(model, "{a} a of {a}", {"a": "red fish"}) == [
        "BOS", "a-1", "a", '"a"', "of", "a-1@2", "a@2",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"needs a value for \{place\}"):
        template_roles(model, TEMPLATE, {"city": "x"})
    with pytest.raises(ValueError, match="plain named fields"):
        template_roles(model, "the {place!r} is", {"place": "x"})


def default_model():
    demo = pytest.importorskip("sae_lens_clt.cli.demo")
    try:
        model, clt, *_ = demo.load_default(None)
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        pytest.skip(f"default model not available: {e}")
    return model, clt, demo.PROMPT


@pytest.fixture(scope="module")
def shipped():
    return default_model()


def test_template_roles_on_the_default_tokenizer(shipped) -> None:
    """BPE: the space before a slot goes with the slot; a token across a boundary is refused."""
    model, _, prompt = shipped
    roles = ["BOS", "The", "capital", "of", "the", "state", "containing", "city", "is"]
    for city in ("Dallas", "Los Angeles", "San Jose"):
        assert template_roles(model, prompt, {"city": city}) == roles
    four = template_roles(model, prompt, {"city": "Dal las"})  # ' D', 'al', ' l', 'as'
    assert four[7:11] == ["city-3", "city-2", "city-1", "city"] and four[-1] == "is"
    with pytest.raises(ValueError, match=r"straddles a slot boundary") as err:
        template_roles(model, "The {city}s capital is", {"city": "Dallas"})
    assert "'ass'" in str(err.value) and "'allas'" in str(err.value)


def test_role_order_merges_prompts_and_refuses_conflicts() -> None:
    short = ["BOS", "a", "x", "end"]
    long = ["BOS", "a", "x-1", "x", "end"]
    assert role_order([short, long]) == ["BOS", "a", "x-1", "x", "end"]
    assert role_order([short, [None, "a", "y", None, "x", "end"]]) == [
        "BOS", "a", "y", "x", "end",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"different orders"):
        role_order([["BOS", "a", "b"], ["BOS", "b", "a"]])
    with pytest.raises(ValueError, match=r"uses the roles \['a'\] at more than one"):
        role_order([["BOS", "a", "a"]])


# ---------------------------------------------------------------------- by hand
def hand_graphs() -> tuple[list[AttributionGraph], list[list[str | None]]]:
    """Two 1-layer graphs of different lengths, every edge set by hand.

    A: positions [BOS, x, last]; feature 5 at x (a = 1). Edges: logit <- f5 = 2,
       f5 <- emb(x) = 1, logit <- err(last) = 0.5; P = 0.2.
    B: positions [BOS, y, x, (dropped), last]; f7 at y (a = 5), f5 at x (a = 3), f9 at the
       dropped position (a = 8). Edges: logit <- f5 = 4, logit <- f7 = 6, f5 <- emb(x) = 3,
       logit <- f9 = 100 and logit <- err(dropped) = 50 (both dropped); P = 0.6.
    """
    a = torch.zeros(8, 8)  # [f5 | err 0..2 | emb 0..2 | logit]
    a[7, 0], a[0, 5], a[7, 3] = 2.0, 1.0, 0.5
    ga = AttributionGraph(
        adjacency=a, active_features=torch.tensor([[0, 1, 5]]),
        activation_values=torch.tensor([1.0]), logit_token_ids=torch.tensor([20]),
        logit_probabilities=torch.tensor([0.2]), input_tokens=torch.tensor([0, 10, 11]),
        n_layers=1,
    )  # fmt: skip
    b = torch.zeros(14, 14)  # [f7 f5 f9 | err 0..4 | emb 0..4 | logit]
    b[13, 1], b[13, 0], b[1, 10], b[13, 2], b[13, 6] = 4.0, 6.0, 3.0, 100.0, 50.0
    gb = AttributionGraph(
        adjacency=b, active_features=torch.tensor([[0, 1, 7], [0, 2, 5], [0, 3, 9]]),
        activation_values=torch.tensor([5.0, 3.0, 8.0]), logit_token_ids=torch.tensor([21]),
        logit_probabilities=torch.tensor([0.6]), input_tokens=torch.tensor([0, 12, 10, 13, 11]),
        n_layers=1,
    )  # fmt: skip
    return [ga, gb], [["BOS", "x", "last"], ["BOS", "y", "x", None, "last"]]


def test_hand_built_graphs_of_different_lengths() -> None:
    graphs, roles = hand_graphs()
    c = aggregate_graphs(graphs, roles)
    # roles [BOS, y, x, last]; nodes [f7@y, f5@x | err BOS y x last | emb BOS y x last | logit]
    assert c.role_names == ["BOS", "y", "x", "last"] == c.metadata["token_strings"]
    assert c.active_features.tolist() == [[0, 1, 7], [0, 2, 5]]
    mean, std = torch.zeros(11, 11), torch.zeros(11, 11)
    mean[10, 1], std[10, 1] = 3.0, 1.0  # logit <- f5: (2 + 4) / 2, values {2, 4}
    mean[10, 0], std[10, 0] = 3.0, 3.0  # logit <- f7: (0 + 6) / 2, values {0, 6}
    mean[1, 8], std[1, 8] = 2.0, 1.0  # f5 <- emb(x): values {1, 3}
    mean[10, 5], std[10, 5] = 0.25, 0.25  # logit <- err(last): values {0.5, 0}
    assert torch.equal(c.adjacency, mean) and torch.equal(c.adjacency_std, std)
    share = [0.5, 1] + [1, 0.5, 1, 1] * 2 + [1]
    assert c.node_share.tolist() == share
    assert c.activation_values.tolist() == [5.0, 2.0]  # mean where present
    assert c.logit_probabilities.tolist() == pytest.approx([0.4])
    assert c.input_tokens.tolist() == [0, 12, 10, 11]  # first prompt with the role
    assert c.metadata["prompt_logit_token_strings"] == [["20"], ["21"]]
    assert c.metadata["logit_token_strings"] == ["20|21"] and c.n_prompts == 2
    assert c.node_layer_pos(c.logit_offset) == (1, 3)  # logits at the last role
    # min_share = 1: f7 and role y (seen in one prompt of two) go; the rest is unchanged
    kept = aggregate_graphs(graphs, roles, min_share=1.0)
    assert kept.role_names == ["BOS", "x", "last"]
    assert kept.active_features.tolist() == [[0, 1, 5]] and kept.n_nodes == 8
    assert kept.adjacency[7, 0] == 3.0 and kept.adjacency_std[7, 0] == 1.0
    assert kept.adjacency[0, 5] == 2.0 and kept.adjacency[7, 3] == 0.25
    assert kept.adjacency.abs().sum() == 3.0 + 2.0 + 0.25


def test_aggregate_refuses_what_it_cannot_align() -> None:
    graphs, roles = hand_graphs()
    two_logits = AttributionGraph(
        **{
            **vars(graphs[0]),
            "adjacency": torch.zeros(9, 9),
            "logit_token_ids": torch.tensor([20, 22]),
            "logit_probabilities": torch.tensor([0.2, 0.1]),
        }
    )
    with pytest.raises(ValueError, match="graph 1 has 2 logit nodes, graph 0 has 1.*targets"):
        aggregate_graphs([graphs[0], two_logits], [roles[0], roles[0]])
    with pytest.raises(ValueError, match="last position.*'end' in prompt 1"):
        aggregate_graphs(graphs, [roles[0], ["BOS", "y", "x", None, "end"]])
    with pytest.raises(ValueError, match="graph 1 has 5 positions but 3 roles"):
        aggregate_graphs(graphs, [roles[0], roles[0]])
    with pytest.raises(ValueError, match="different orders"):
        aggregate_graphs(graphs, [roles[0], ["x", "BOS", "y", None, "last"]])
    with pytest.raises(ValueError, match="min_share"):
        aggregate_graphs(graphs, roles, min_share=1.5)
    with pytest.raises(ValueError, match="at least one graph"):
        aggregate_graphs([], [])


# ---------------------------------------------------------------------- real graphs
def test_one_graph_aggregates_to_itself(tiny) -> None:
    model, clt = tiny
    (graph,), roles = family(model, clt, ["big city"])
    c = aggregate_graphs([graph], roles)
    for name in ("adjacency", "active_features", "activation_values", "logit_token_ids",
                 "logit_probabilities", "input_tokens"):  # fmt: skip
        assert torch.equal(getattr(c, name), getattr(graph, name)), name
    assert c.adjacency_std.abs().max() == 0 and (c.node_share == 1).all()
    p, q = c.prune(), graph.prune()
    assert torch.equal(p.node_mask, q.node_mask) and torch.equal(p.edge_mask, q.edge_mask)
    assert c.scores() == graph.scores()
    assert c.metadata["token_strings"] == roles[0] != graph.metadata["token_strings"]


def test_two_identical_graphs(tiny) -> None:
    model, clt = tiny
    graphs, roles = family(model, clt, ["big city", "big city"])
    c = aggregate_graphs(graphs, roles)
    assert torch.equal(c.adjacency, graphs[0].adjacency)
    assert c.adjacency_std.abs().max() == 0 and (c.node_share == 1).all()
    assert torch.equal(c.activation_values, graphs[0].activation_values)


def test_real_graphs_of_different_lengths_align_by_role(tiny) -> None:
    """The aggregate's entries are the means / stds of the graphs' own entries, looked up
    in each graph by (layer, that graph's position of the role, feature)."""
    model, clt = tiny
    values = ["city", "big city"]
    graphs, roles = family(model, clt, values)
    assert [g.n_pos for g in graphs] == [8, 9]
    c = aggregate_graphs(graphs, roles)
    assert c.role_names == ["BOS", "the", "capital", "of", "the@2", "place-1", "place", "is",
                            "the@3"]  # fmt: skip

    def node(g, rs, kind, layer, role, feat=None):
        pos = rs.index(role)
        if kind == "feature":
            return node_index(g, (layer, pos, feat))
        return g.error_index(layer, pos) if kind == "error" else g.embedding_offset + pos

    def features_at(g, rs, role):
        pos = rs.index(role)
        return {(lay, f) for lay, p, f in g.active_features.tolist() if p == pos}

    cr = c.role_names

    # a feature at "the@2" or "is" in both prompts -> a feature at "is" (position 6 in one
    # prompt, 7 in the other) in both: mean, std, share 1
    def common(role):
        return sorted(
            features_at(graphs[0], roles[0], role) & features_at(graphs[1], roles[1], role)
        )

    pairs = [(r, s, d) for r in ("the@2", "is") for s in common(r) for d in common("is")
             if s[0] < d[0]]  # fmt: skip
    vals = torch.tensor(
        [[float(g.adjacency[node(g, rs, "feature", d[0], "is", d[1]),
                            node(g, rs, "feature", s[0], r, s[1])])
          for g, rs in zip(graphs, roles, strict=True)] for r, s, d in pairs]
    )  # fmt: skip
    k = int(vals.abs().min(1).values.argmax())  # the edge strongest in both prompts
    (r, s, d), v = pairs[k], vals[k].double()
    assert v.abs().min() > 1e-3, "want an edge present in both prompts"
    t_c = node(c, cr, "feature", d[0], "is", d[1])
    s_c = node(c, cr, "feature", s[0], r, s[1])
    assert c.adjacency[t_c, s_c].item() == pytest.approx(v.mean().item(), rel=1e-6)
    assert c.adjacency_std[t_c, s_c].item() == pytest.approx(v.std(unbiased=False).item(), rel=1e-5)
    assert c.node_share[s_c] == 1 and c.node_share[t_c] == 1
    # a feature at "place-1" exists in the 2-token prompt only: share 1/2, half its weight
    only = sorted(features_at(graphs[1], roles[1], "place-1"))
    assert only
    g, rs = graphs[1], roles[1]
    w = torch.tensor([float(g.adjacency[g.logit_offset, node(g, rs, "feature", lay, "place-1", f)])
                      for lay, f in only])  # fmt: skip
    j = int(w.abs().argmax())
    lay, f = only[j]
    col = node(c, cr, "feature", lay, "place-1", f)
    assert c.node_share[col] == 0.5
    assert c.adjacency[c.logit_offset, col].item() == pytest.approx(w[j].item() / 2, rel=1e-6)
    assert c.adjacency_std[c.logit_offset, col].item() == pytest.approx(
        abs(w[j].item()) / 2, rel=1e-6
    )
    # the error at ("is", layer 1) into the logit: both prompts
    v = torch.tensor([float(g.adjacency[g.logit_offset, node(g, rs, "error", 1, "is")])
                      for g, rs in zip(graphs, roles, strict=True)], dtype=torch.float64)  # fmt: skip
    e = node(c, cr, "error", 1, "is")
    assert c.adjacency[c.logit_offset, e].item() == pytest.approx(v.mean().item(), rel=1e-6)
    # the embedding of "place-1" has share 1/2, the others 1
    emb_share = c.node_share[c.embedding_offset : c.logit_offset].tolist()
    assert emb_share == [1.0 if r != "place-1" else 0.5 for r in cr]
    # the representative token of each role is its token in the first prompt that has it
    tok = model.tokenizer.convert_tokens_to_ids
    assert c.input_tokens[cr.index("place")].item() == tok("city")
    assert c.input_tokens[cr.index("place-1")].item() == tok("big")


def test_global_circuit_saves_loads_exports_and_plots(tiny, tmp_path) -> None:
    model, clt = tiny
    graphs, roles = family(model, clt, ["city", "big city", "red fish"])
    c = aggregate_graphs(graphs, roles)
    path = c.save(tmp_path / "circuit")
    assert path.name == "circuit.safetensors"
    back = GlobalCircuit.load(path)
    for name in ("adjacency", "active_features", "activation_values", "logit_token_ids",
                 "logit_probabilities", "input_tokens", "adjacency_std", "node_share"):  # fmt: skip
        assert torch.equal(getattr(back, name), getattr(c, name)), name
    assert (back.n_prompts, back.role_names, back.metadata) == (3, c.role_names, c.metadata)
    assert b"\x80\x04" not in path.read_bytes()[:8]  # no pickle
    # the same file as a plain graph: the mean graph, prunes the same
    plain = AttributionGraph.load(path)
    assert type(plain) is AttributionGraph and torch.equal(plain.adjacency, c.adjacency)
    assert torch.equal(plain.prune().node_mask, c.prune().node_mask)
    # a single-prompt graph file is refused by GlobalCircuit.load, clearly
    graphs[0].save(tmp_path / "one")
    with pytest.raises(ValueError, match="single-prompt attribution graph.*AttributionGraph.load"):
        GlobalCircuit.load(tmp_path / "one.safetensors")
    # JSON (validated on write) shows the roles; the figure draws
    data = c.to_json(tmp_path / "circuit.json")
    validate_graph_json(json.loads((tmp_path / "circuit.json").read_text()))
    assert data["metadata"]["prompt_tokens"] == c.role_names
    assert any(n["feature_type"] == "cross layer transcoder" for n in data["nodes"])
    ids = {f"{lay}_{f}_{p}": i for i, (lay, p, f) in enumerate(c.active_features.tolist())}
    for n in data["nodes"]:  # each node carries its share of prompts
        if n["feature_type"] == "cross layer transcoder":
            share = float(c.node_share[ids[n["node_id"]]])
            assert n["prompt_share"] == pytest.approx(share)
            assert n["clerp"].endswith(f"(in {share:.0%} of prompts)")
    with pytest.raises(ValueError, match="cannot be intervened on"):
        c.faithfulness(None, None)
    fig = c.plot(tmp_path / "circuit.png", max_nodes=20)
    assert (tmp_path / "circuit.png").stat().st_size > 0 and fig is not None
    assert 0 < c.scores().replacement <= 1


def test_accumulates_one_graph_at_a_time(tiny, tmp_path) -> None:
    """Graphs handed over lazily are never in memory together (at most the one being
    accumulated and the next); graph files give the same circuit as the graphs."""
    model, clt = tiny
    graphs, roles = family(model, clt, ["city", "big city", "red fish", "dog", "big dog"])
    paths = [g.save(tmp_path / f"g{i}") for i, g in enumerate(graphs)]
    refs: list[weakref.ref] = []  # graphs are unhashable (dataclass eq): no WeakSet
    most = []

    class Lazy(Sequence):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i):
            if isinstance(i, slice):
                raise TypeError("no slices")
            if not -len(paths) <= i < len(paths):
                raise IndexError(i)
            g = AttributionGraph.load(paths[i])
            refs.append(weakref.ref(g))
            most.append(sum(r() is not None for r in refs))
            return g

    lazy = aggregate_graphs(Lazy(), roles)
    assert len(most) == 2 * len(paths) and max(most) <= 2
    eager = aggregate_graphs(graphs, roles)
    from_files = aggregate_graphs(paths, roles)
    for c in (lazy, from_files):
        assert torch.equal(c.adjacency, eager.adjacency)
        assert torch.equal(c.adjacency_std, eager.adjacency_std)
        assert torch.equal(c.active_features, eager.active_features)
        assert c.metadata == eager.metadata


# ---------------------------------------------------------------------- attribute_many
def test_attribute_many_equals_attribute_and_resumes(tiny, tmp_path, monkeypatch) -> None:
    model, clt = tiny
    prompts = [TEMPLATE.format(place=v) for v in ("city", "big city", "red fish", "dog")]
    targets = [["river"], ["road"], ["river"], [7]]
    direct = [
        attribute(model, clt, p, targets=t, batch_size=32)
        for p, t in zip(prompts, targets, strict=True)
    ]
    calls: list[str] = []
    real = many.attribute

    def dies_at_third(model, clt, prompt, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(prompt)
        return real(model, clt, prompt, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(many, "attribute", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        attribute_many(
            model, clt, prompts, targets=targets, out_dir=out, progress=False, batch_size=32
        )
    assert sorted(p.name for p in out.iterdir()) == [
        "graph_00000.safetensors", "graph_00001.safetensors", MANIFEST_NAME,
    ]  # fmt: skip
    # the rerun computes only the missing graphs; a deleted one is recomputed
    calls.clear()
    monkeypatch.setattr(many, "attribute", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    graph_path(out, 0).unlink()
    graphs = attribute_many(
        model, clt, prompts, targets=targets, out_dir=out, progress=False, batch_size=32
    )
    assert calls == [prompts[0], prompts[2], prompts[3]]
    for g, d in zip(graphs, direct, strict=True):
        assert torch.equal(g.adjacency, d.adjacency)
        assert g.logit_token_ids.tolist() == d.logit_token_ids.tolist()
    # everything done: nothing computed, all loaded (batch_size spelled out = the default)
    calls.clear()
    again = attribute_many(
        model, clt, prompts, targets=targets, out_dir=out, progress=False, batch_size=32
    )
    assert calls == [] and all(
        torch.equal(a.adjacency, b.adjacency) for a, b in zip(again, graphs, strict=True)
    )
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["prompts"] == prompts and manifest["targets"] == targets
    assert manifest["attribute_kwargs"]["batch_size"] == 32
    assert manifest["attribute_kwargs"]["desired_logit_prob"] == 0.95  # defaults recorded
    assert manifest["clt"]["d_sae"] == 64 and "verbose" not in manifest["attribute_kwargs"]
    # appending a prompt computes only that one
    calls.clear()
    more = attribute_many(model, clt, prompts + ["the river"], targets=targets + [["road"]],
                          out_dir=out, progress=False, batch_size=32)  # fmt: skip
    assert calls == ["the river"] and len(more) == 5
    assert json.loads((out / MANIFEST_NAME).read_text())["prompts"][-1] == "the river"


def test_attribute_many_refuses_another_run(tiny, tmp_path) -> None:
    model, clt = tiny
    prompts = ["the city is", "the big city is"]
    out = tmp_path / "run"
    graphs = attribute_many(model, clt, prompts, out_dir=out, progress=False, max_n_logits=3)
    assert [g.n_logits for g in graphs] == [3, 3]

    def refused(match, *args, **kw):
        kw = {"out_dir": out, "progress": False, "max_n_logits": 3, **kw}
        with pytest.raises(ValueError, match=match):
            attribute_many(model, *args, **kw)

    refused(r"prompts\[1\] is 'the big city is' in the folder, 'the red city is' now",
            clt, ["the city is", "the red city is"])  # fmt: skip
    refused(r"attribute_kwargs\['max_n_logits'\]: 3 in the folder, 4 now", clt, prompts,
            max_n_logits=4)  # fmt: skip
    refused(r"targets: none in the folder, per-prompt targets now", clt, prompts,
            targets=[["river"], ["road"]])  # fmt: skip
    refused(r"clt\['d_sae'\]: 64 in the folder, 32 now", random_clt(model, d_sae=32), prompts)
    refused(r"holds 2 prompts, these are only its first 1", clt, prompts[:1])
    # a graph file that is not this prompt's is refused by name
    graph_path(out, 0).write_bytes(graph_path(out, 1).read_bytes())
    refused(r"graph_00000.safetensors holds the graph of other tokens", clt, prompts)
    # the folder is untouched by the refusals
    assert json.loads((out / MANIFEST_NAME).read_text())["prompts"] == prompts


def test_attribute_many_checks_its_arguments(tiny, tmp_path, capsys) -> None:
    model, clt = tiny
    with pytest.raises(ValueError, match="one entry per prompt: 1 for 2 prompts"):
        attribute_many(model, clt, ["the city", "the dog"], targets=[["river"]])
    with pytest.raises(TypeError, match=r"no keyword argument\(s\) \['max_logits'\]"):
        attribute_many(model, clt, ["the city"], max_logits=3)
    with pytest.raises(ValueError, match="'river road' is 2 tokens"):
        attribute_many(model, clt, ["the city"], targets=[["river road"]], out_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "a bad target is refused before anything is written"
    graphs = attribute_many(model, clt, ["the city", [0, 5, 6, 7]], progress=True, max_n_logits=2)
    assert len(graphs) == 2 and graphs[1].input_tokens.tolist() == [0, 5, 6, 7]
    assert "attribution graphs" in capsys.readouterr().err  # the tqdm bar


# ---------------------------------------------------------------------- the shipped model
def city_family(shipped, states):
    model, clt, prompt = shipped
    cities = [(c, s) for s in states for c in s.cities]
    first = [model.to_tokens(" " + s.capital, prepend_bos=False)[0, 0].item() for _, s in cities]
    targets = [[model.tokenizer.decode([t])] for t in first]  # " " + the capital's first token
    prompts = [prompt.format(city=c) for c, _ in cities]
    roles = [template_roles(model, prompt, {"city": c}) for c, _ in cities]
    graphs = attribute_many(model, clt, prompts, targets=targets, progress=False)
    return graphs, roles, targets


def check_city_circuit(c: GlobalCircuit, graphs, roles, targets) -> None:
    n = len(graphs)
    assert c.n_prompts == n and c.metadata["prompt_logit_token_strings"] == targets
    assert c.role_names == ["BOS", "The", "capital", "of", "the", "state", "containing",
                            "city", "is"]  # fmt: skip
    probs = torch.tensor([g.metadata["target_probabilities"][0] for g in graphs])
    assert torch.equal(torch.cat([g.logit_probabilities for g in graphs]), probs.float())
    assert c.logit_probabilities.item() == pytest.approx(probs.double().mean().item(), rel=1e-5)
    # the strongest edge into the logit: the mean / std of each prompt's own entry (0 if absent)
    col = int(c.adjacency[c.logit_offset, : c.logit_offset].abs().argmax())
    kind = c.node_kind(col)
    vals = []
    for g, rs in zip(graphs, roles, strict=True):
        layer, pos = c.node_layer_pos(col)
        gpos = rs.index(c.role_names[pos])
        if kind == "feature":
            feat = int(c.active_features[col, 2])
            hit = (g.active_features == torch.tensor([layer, gpos, feat])).all(1).nonzero()
            vals.append(float(g.adjacency[g.logit_offset, int(hit[0])]) if len(hit) else 0.0)
        elif kind == "error":
            vals.append(float(g.adjacency[g.logit_offset, g.error_index(layer, gpos)]))
        else:
            vals.append(float(g.adjacency[g.logit_offset, g.embedding_offset + gpos]))
    v = torch.tensor(vals, dtype=torch.float64)
    assert c.adjacency[c.logit_offset, col].item() == pytest.approx(v.mean().item(), rel=1e-5)
    assert c.adjacency_std[c.logit_offset, col].item() == pytest.approx(
        v.std(unbiased=False).item(), rel=1e-4, abs=1e-6
    )
    assert c.node_share[col].item() == pytest.approx(float((v != 0).double().mean()))
    # features that every city prompt uses at the city position exist (the two-hop family)
    city = c.role_position("city")
    shared = (c.active_features[:, 1] == city) & (c.node_share[: c.n_features] == 1)
    assert shared.any()
    scores = c.scores()
    assert 0 < scores.replacement <= 1 and 0 < scores.completeness <= 1


def test_shipped_model_six_city_prompts(shipped, tmp_path) -> None:
    from sae_lens_clt.default_model.corpus import STATES

    by_name = {s.name: s for s in STATES}
    states = [by_name["Texas"], by_name["California"]]
    graphs, roles, targets = city_family(shipped, states)
    assert targets == [[" Austin"]] * 3 + [[" Sacramento"]] * 3
    c = aggregate_graphs(graphs, roles)
    check_city_circuit(c, graphs, roles, targets)
    assert c.metadata["logit_token_strings"] == [" Austin| Sacramento"]
    data = c.to_json(tmp_path / "cities.json")  # validated on write
    assert data["metadata"]["prompt_tokens"] == c.role_names


def test_shipped_model_all_150_city_prompts(shipped) -> None:
    """All 50 states x 3 cities (measured: ~16 s to trace, ~2 s to aggregate, 1 CPU thread)."""
    from sae_lens_clt.default_model.corpus import STATES

    start = time.perf_counter()
    graphs, roles, targets = city_family(shipped, STATES)
    traced = time.perf_counter()
    c = aggregate_graphs(graphs, roles)
    print(f"150 prompts: traced in {traced - start:.1f}s, aggregated in "
          f"{time.perf_counter() - traced:.1f}s; {c}")  # fmt: skip
    assert len(graphs) == 150
    check_city_circuit(c, graphs, roles, targets)
    half = aggregate_graphs(graphs, roles, min_share=0.5)
    assert (half.node_share[: half.n_features] >= 0.5).all()
    assert 0 < half.n_features < c.n_features
