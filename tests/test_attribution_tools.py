"""Pruning, scores, graph JSON, figure and interventions of attribution graphs."""

from __future__ import annotations

import json

import pytest
import torch

from sae_lens_clt.attribution import AttributionGraph, attribute, intervene
from sae_lens_clt.attribution.export import (
    GRAPH_JSON_SCHEMA,
    cantor_pairing,
    check_against_schema,
    validate_graph_json,
)
from sae_lens_clt.attribution.prune import node_influence
from tests.test_attribution import build, random_clt, random_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- hand-built graph
def hand_graph() -> AttributionGraph:
    """1 layer, 2 positions. Nodes: f0, f1 (both at layer 0, position 1), errors e00, e01,
    embeddings emb0, emb1, one logit with probability 0.8.

    logit <- f0: 3, f1: -1      (B row: 0.75, 0.25)
    f0    <- emb1: 3, e01: -1   (B row: 0.75, 0.25)
    f1    <- emb0: 2            (B row: 1)

    Influence w(B + B²): f0 0.6, f1 0.2, e01 0.15, e00 0, emb0 0.2, emb1 0.45.
    """
    A = torch.zeros(7, 7)
    f0, f1, e00, e01, emb0, emb1, logit = range(7)
    A[logit, f0], A[logit, f1] = 3.0, -1.0
    A[f0, emb1], A[f0, e01] = 3.0, -1.0
    A[f1, emb0] = 2.0
    return AttributionGraph(
        adjacency=A,
        active_features=torch.tensor([[0, 1, 5], [0, 1, 9]]),
        activation_values=torch.tensor([1.5, 0.5]),
        logit_token_ids=torch.tensor([42]),
        logit_probabilities=torch.tensor([0.8]),
        input_tokens=torch.tensor([0, 7]),
        n_layers=1,
        metadata={"token_strings": ["<bos>", "x"], "logit_token_strings": ["y"]},
    )


def test_influence_by_hand() -> None:
    expected = torch.tensor([0.6, 0.2, 0.0, 0.15, 0.2, 0.45, 0.0])
    torch.testing.assert_close(node_influence(hand_graph()), expected)


def test_scores_by_hand() -> None:
    scores = hand_graph().scores()
    # replacement: embeddings 0.65 / (0.65 + errors 0.15)
    assert scores.replacement == pytest.approx(0.65 / 0.80)
    # completeness over nodes with inputs: f0 (0.75 non-error, weight 0.6),
    # f1 (1.0, 0.2), logit (1.0, 0.8 = its own probability)
    assert scores.completeness == pytest.approx((0.75 * 0.6 + 0.2 + 0.8) / 1.6)


def test_prune_nodes_by_hand() -> None:
    # feature / error influences 0.6, 0.2, 0.15, 0 (total 0.95): half is held by f0 alone
    result = hand_graph().prune(node_threshold=0.5, edge_threshold=0.98)
    assert result.node_mask.tolist() == [True, False, False, False, True, True, True]
    # with f1 and e01 gone, f0 <- emb1 and logit <- f0 are the only edges
    assert sorted(map(tuple, result.edge_mask.nonzero().tolist())) == [(0, 5), (6, 0)]
    # 0.9 of 0.95 needs f0, f1 and e01; the zero-influence error stays out
    result = hand_graph().prune(node_threshold=0.9, edge_threshold=1.0)
    assert result.node_mask.tolist() == [True, True, False, True, True, True, True]


def test_prune_edges_by_hand() -> None:
    # edge scores B[t, s] (I[t] + w[t]): logit<-f0 0.6, f0<-emb1 0.45, logit<-f1 0.2,
    # f1<-emb0 0.2, f0<-e01 0.15 (total 1.6). 0.85 of it needs the first four; e01 then
    # has no outgoing edge left and is dropped.
    result = hand_graph().prune(node_threshold=1.0, edge_threshold=0.85)
    assert sorted(map(tuple, result.edge_mask.nonzero().tolist())) == [
        (0, 5), (1, 4), (6, 0), (6, 1),
    ]  # fmt: skip
    assert result.node_mask.tolist() == [True, True, False, False, True, True, True]
    # cumulative scores follow the influence ranking: f0 first, then emb1
    assert result.cumulative_scores[0] == pytest.approx(0.6 / 1.6)
    assert result.cumulative_scores[5] == pytest.approx(1.05 / 1.6)


def test_prune_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="node_threshold"):
        hand_graph().prune(node_threshold=1.5)


# ---------------------------------------------------------------------- JSON
def test_json_by_hand(tmp_path) -> None:
    data = hand_graph().to_json(tmp_path / "hand.json", node_threshold=1.0, edge_threshold=1.0)
    ids = {n["node_id"]: n for n in data["nodes"]}
    assert set(ids) == {"0_5_1", "0_9_1", "0_-1_1", "E_0_0", "E_7_1", "2_42_1"}
    assert ids["0_5_1"]["feature"] == cantor_pairing(0, 5)
    assert ids["0_5_1"]["feature_type"] == "cross layer transcoder"
    assert ids["0_5_1"]["activation"] == 1.5 and ids["0_5_1"]["layer"] == "0"
    assert ids["0_-1_1"]["feature"] == -1
    assert ids["0_-1_1"]["feature_type"] == "mlp reconstruction error"
    assert ids["E_7_1"]["layer"] == "E" and ids["E_7_1"]["feature"] == 1
    assert ids["2_42_1"]["feature_type"] == "logit" and ids["2_42_1"]["is_target_logit"]
    assert ids["2_42_1"]["token_prob"] == pytest.approx(0.8)
    assert {"source": "0_5_1", "target": "2_42_1", "weight": 3.0} in data["links"]
    assert data["metadata"]["prompt_tokens"] == ["<bos>", "x"]
    assert data["metadata"]["schema_version"] == 1
    on_disk = json.loads((tmp_path / "hand.json").read_text())
    assert on_disk == data
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["hand"]


def test_json_validates_against_schema_and_circuit_tracer(tmp_path) -> None:
    model, clt, prompt = build("rotary")
    graph = attribute(model, clt, prompt)
    data = graph.to_json(tmp_path / "g.json", slug="g", labels={(0, 1): "a label"})
    validate_graph_json(data)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, GRAPH_JSON_SCHEMA)
    problems: list[str] = []
    check_against_schema(data, GRAPH_JSON_SCHEMA, "$", problems)  # the fallback checker agrees
    assert problems == []
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids))
    assert sum(n["feature_type"] == "embedding" for n in data["nodes"]) == graph.n_pos
    assert sum(n["feature_type"] == "logit" for n in data["nodes"]) == graph.n_logits
    graph_models = pytest.importorskip("circuit_tracer.frontend.graph_models")
    graph_models.Model(**json.loads((tmp_path / "g.json").read_text()))


def test_invalid_json_is_reported() -> None:
    with pytest.raises(ValueError, match="metadata"):
        validate_graph_json({})
    good = hand_graph()
    from sae_lens_clt.attribution.export import graph_json

    bad = graph_json(good, node_threshold=1.0, edge_threshold=1.0)
    bad["nodes"][0]["feature"] = "seven"
    bad["links"].append({"source": "nowhere", "target": "2_42_1", "weight": 1.0})
    with pytest.raises(ValueError, match="feature"):
        validate_graph_json(bad)
    problems: list[str] = []
    check_against_schema(bad, GRAPH_JSON_SCHEMA, "$", problems)
    assert any("feature" in p for p in problems)


# ---------------------------------------------------------------------- figure
def test_plot_writes_a_figure(tmp_path) -> None:
    model, clt, prompt = build("standard-pos")
    graph = attribute(model, clt, prompt)
    fig = graph.plot(tmp_path / "g.png", labels={(0, 3): "three"})
    assert (tmp_path / "g.png").stat().st_size > 10_000
    assert fig.axes[0].get_yticklabels()[0].get_text() == "emb"
    hand_graph().plot(tmp_path / "hand.png")


# ---------------------------------------------------------------------- interventions
def test_intervene_without_interventions_is_the_model() -> None:
    model, clt, prompt = build("skip-relu")
    result = intervene(model, clt, prompt, [])
    torch.testing.assert_close(result.logits, result.clean_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.activations, result.clean_activations)
    from sae_lens_clt.attribution import to_tokens

    torch.testing.assert_close(result.clean_logits, model(to_tokens(model, prompt)[None])[0])


@pytest.mark.parametrize("setup", ["standard-pos", "rotary", "skip-relu"])
def test_intervene_with_all_freezes_moves_targets_by_the_graph_column(setup: str) -> None:
    """Ablating / doubling one feature under full freeze = minus / plus its column of A."""
    model, clt, prompt = build(setup)
    graph = attribute(model, clt, prompt)
    layers, pos, feats = graph.active_features.unbind(1)
    for i in torch.randperm(graph.n_features, generator=torch.Generator().manual_seed(0))[:4]:
        s, p, f = graph.active_features[i].tolist()
        a = float(graph.activation_values[i])
        for factor in (0.0, 2.0):
            r = intervene(
                model, clt, prompt, [(s, p, f, factor * a)],
                freeze_attention=True, freeze_layernorm=True, freeze_features=True,
            )  # fmt: skip
            clean = intervene(
                model, clt, prompt, [],
                freeze_attention=True, freeze_layernorm=True, freeze_features=True,
            )  # fmt: skip
            d_pre = (r.pre_activations - clean.pre_activations)[layers, pos, feats]
            last, last0 = r.logits[-1], clean.logits[-1]
            ids = graph.logit_token_ids
            d_logit = (last[ids] - last.mean()) - (last0[ids] - last0.mean())
            rows = torch.cat(
                [torch.arange(graph.n_features), torch.arange(graph.logit_offset, graph.n_nodes)]
            )
            expected = (factor - 1.0) * graph.adjacency[rows, i]
            scale = max(expected.abs().max().item(), 1.0)
            torch.testing.assert_close(
                torch.cat([d_pre, d_logit]), expected, atol=1e-4 * scale, rtol=1e-4
            )


def test_intervene_steers_and_propagates() -> None:
    model, clt, prompt = build("standard-pos")
    graph = attribute(model, clt, prompt)
    s, p, f = graph.active_features[0].tolist()  # a layer-0 feature
    r = intervene(model, clt, prompt, [(s, p, f, 0.0)], freeze_attention=False)
    assert r.activations[s, p, f] == 0.0
    assert not torch.equal(r.logits, r.clean_logits)
    # downstream features (later layers, same or later positions) respond
    later = r.pre_activations[s + 1 :, p:] - model_free_pre(model, clt, prompt)[s + 1 :, p:]
    assert later.abs().max() > 0
    r_neg = intervene(model, clt, prompt, [(s, -1, f, 5.0)])
    assert r_neg.activations[s, graph.n_pos - 1, f] == 5.0
    with pytest.raises(ValueError, match="out of range"):
        intervene(model, clt, prompt, [(graph.n_layers, 1, 0, 0.0)])


def model_free_pre(model, clt, prompt) -> torch.Tensor:
    return intervene(model, clt, prompt, []).pre_activations


def test_intervene_rejects_mismatched_clt() -> None:
    model = random_model(n_layers=2)
    with pytest.raises(ValueError, match="layers"):
        intervene(model, random_clt(random_model(n_layers=3)), [0, 1, 2], [])


# ---------------------------------------------------------------------- CLI
def test_cli_writes_graph_json_and_figure(tmp_path, monkeypatch, capsys) -> None:
    import argparse

    from sae_lens_clt.cli import attribute as cli

    model = random_model(tokenizer=True)
    monkeypatch.setattr(cli, "load_model_by_name", lambda name, device: model)
    random_clt(model).save_model(tmp_path / "clt")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    for clt_arg in (str(tmp_path / "clt"), "random"):
        args = parser.parse_args(
            ["attribute", "--clt", clt_arg, "--prompt", "w1 w2 w3 w4 w5 w6 w7",
             "--out", str(tmp_path / "out"), "--d-sae", "64"]
        )  # fmt: skip
        assert args.func(args) == 0
        printed = capsys.readouterr().out
        assert "top logits" in printed and "replacement score" in printed
        loaded = AttributionGraph.load(tmp_path / "out" / "graph.safetensors")
        assert loaded.n_pos == 8
        validate_graph_json(json.loads((tmp_path / "out" / "graph.json").read_text()))
        assert (tmp_path / "out" / "graph.png").stat().st_size > 10_000


def test_prune_real_graph_invariants() -> None:
    model, clt, prompt = build("rotary")
    graph = attribute(model, clt, prompt)
    result = graph.prune()
    nodes, edges = result.node_mask, result.edge_mask
    assert nodes[graph.embedding_offset :].all(), "embeddings and logits always stay"
    assert not (edges & ~nodes[:, None]).any() and not (edges & ~nodes[None, :]).any()
    inner = nodes[: graph.embedding_offset].nonzero()[:, 0]
    assert edges[:, inner].any(0).all(), "every kept feature / error has an outgoing edge"
    kept_feats = nodes[: graph.n_features].nonzero()[:, 0]
    assert edges[kept_feats].any(1).all(), "every kept feature has an incoming edge"
    assert edges[~(graph.adjacency != 0)].sum() == 0, "only real edges are kept"
    # stricter thresholds keep fewer nodes
    assert graph.prune(0.5, 0.9).node_mask.sum() <= nodes.sum()
    scores = graph.scores()
    assert 0.0 <= scores.replacement <= 1.0 and 0.0 <= scores.completeness <= 1.0


def test_prune_result_prints_in_one_line() -> None:
    from tests.test_attribution import build

    model, clt, prompt = build("standard-pos")
    pruned = attribute(model, clt, prompt).prune()
    text = repr(pruned)
    assert "\n" not in text and text.startswith("PruneResult(nodes kept ")
    assert f"edges kept {int(pruned.edge_mask.sum())}" in text


@pytest.mark.parametrize("mlps", ["replacement", "model"])
def test_a_repeated_intervention_keeps_the_last_value(mlps: str) -> None:
    """As circuit-tracer does: the same (layer, position, feature) twice means the last value,
    not the sum of both changes."""
    model = random_model()
    clt = random_clt(model)
    tokens = torch.tensor([0, 5, 6, 7, 8])
    once = intervene(model, clt, tokens, [(0, 2, 3, 1.5)], mlps=mlps).logits
    twice = intervene(model, clt, tokens, [(0, 2, 3, 9.0), (0, 2, 3, 1.5)], mlps=mlps).logits
    other = intervene(model, clt, tokens, [(0, 2, 3, 9.0)], mlps=mlps).logits
    torch.testing.assert_close(twice, once)
    assert not torch.allclose(other, once)
