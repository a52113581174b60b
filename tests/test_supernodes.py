"""Supernodes: finding them over a prompt family, effect shares, validation, JSON, figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_lens_clt.attribution import attribute, intervene
from sae_lens_clt.attribution.nodes import GraphData
from sae_lens_clt.circuits.supernode_graph import (
    effect_shares,
    member_nodes,
    plot_supernode_graph,
    predicted_ablation,
    supernode_json,
    validate_supernode,
)
from sae_lens_clt.circuits.supernodes import (
    Supernode,
    find_supernodes,
    promoted_z_scores,
    role_activations,
    swap_interventions,
)
from tests.test_attribution import random_clt, random_model


def odd_norms(model, seed: int):
    """``model`` with its norm weights drawn in [0.25, 1.75] and biases around 0."""
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln" in name and name.endswith(".w"):
                p.copy_(torch.rand(p.shape, generator=gen) * 1.5 + 0.25)
            elif ".ln" in name and name.endswith(".b"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def setup(seed: int = 0):
    """A random LN model with norm weights away from 1 and a random CLT over it."""
    model = odd_norms(random_model(n_layers=3, d_model=32, seed=seed, tokenizer=True), seed)
    return model, random_clt(model, d_sae=48, active_frac=0.08, seed=seed)


def test_role_activations_equal_single_prompt_runs() -> None:
    model, clt = setup()
    prompts = ["w1 w2 w3", "w4 w5 w6", "w7 w8", "w9 w10 w11 w12", "w13 w14"]
    acts = role_activations(model, clt, prompts, position=-1, batch_size=2)
    assert acts.shape == (5, clt.cfg.n_layers, clt.cfg.d_sae)
    for i, p in enumerate(prompts):
        ref = intervene(model, clt, p, []).clean_activations[:, -1]  # [L, F]
        torch.testing.assert_close(acts[i], ref, rtol=1e-5, atol=1e-5)
    assert (acts > 0).any()


def test_find_supernodes_by_coactivation_and_promoted_tokens() -> None:
    model, clt = setup()
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    P = 9
    groups = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    acts = torch.zeros(P, L, F)
    acts[0:3, 2, 5] = 1.0  # group a only
    acts[0:2, 1, 7] = 2.0  # a: 2 of 3 prompts, never elsewhere
    acts[0:3, 2, 9] = 1.0
    acts[3, 2, 9] = 1.0  # a + one prompt of b: out-share 1/6 > 0.1, not selective
    acts[3:6, 0, 11] = 3.0  # group b only
    acts[:, 1, 13] = 0.5  # every prompt: shared
    acts[:8, 2, 17] = 0.5  # 8 of 9 prompts: below min_shared=0.9
    z = promoted_z_scores(model, clt, [(2, 5), (1, 7)])
    tok_5 = int(z[0].argmax())  # the token (2, 5) promotes most
    tok_7 = int(z[1].argmax())
    assert tok_5 > 1 and tok_7 > 1 and tok_5 != tok_7  # words, not <bos> / <unk>
    min_z = 0.9 * min(float(z[0].max()), float(z[1].max()))  # random weights: small z
    dec = model.tokenizer.decode
    tokens = {"a": {"x": dec([tok_5]), "y": dec([tok_7])}}
    found = find_supernodes(
        model, clt, acts, groups, group_tokens=tokens, role_names={"x": "X of {group}"},
        min_z=min_z,
    )  # fmt: skip
    by_name = {sn.name: sn for sn in found}
    a_feats = {f for sn in found if sn.group == "a" for f in sn.features}
    assert a_feats == {(2, 5), (1, 7)}
    assert by_name["X of a"].features == [(2, 5)] and by_name["X of a"].role == "x"
    assert by_name["X of a"].kind == "group token"
    assert by_name["a y: " + dec([tok_7]).strip()].features == [(1, 7)]  # the default name
    assert [sn.features for sn in found if sn.group == "b"] == [[(0, 11)]]
    assert next(sn for sn in found if sn.group == "b").name == "b (other)"
    shared = [sn for sn in found if sn.kind == "shared"]
    assert [f for sn in shared for f in sn.features] == [(1, 13)]
    sn7 = next(sn for sn in found if (1, 7) in sn.features)
    i = sn7.features.index((1, 7))
    assert sn7.in_share[i] == pytest.approx(2 / 3) and sn7.out_share[i] == 0.0
    assert sn7.mean_activation[i] == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="one per prompt"):
        find_supernodes(model, clt, acts, groups[:-1])


def test_swap_interventions() -> None:
    a = Supernode("A", [(0, 1), (1, 2)], "group", mean_activation=[1.0, 2.0])
    b = Supernode("B", [(1, 2), (2, 3)], "group", mean_activation=[4.0, 5.0])
    todo = swap_interventions([a], [b], position=-1, scale=2.0)
    assert sorted(todo) == [(0, -1, 1, 0.0), (1, -1, 2, 8.0), (2, -1, 3, 10.0)]


def hand_graph() -> GraphData:
    """emb(1) -> f0 -> f1 -> logit, f0 -> logit, emb(1) -> logit; a0 = 2, a1 = 1."""
    n_layers, n_pos = 2, 2
    feats = torch.tensor([[0, 1, 7], [1, 1, 3]])
    n = 2 + n_layers * n_pos + n_pos + 1
    A = torch.zeros(n, n)
    emb1, logit = 2 + 4 + 1, n - 1
    A[0, emb1] = 2.0  # emb -> f0 (into the pre-activation; embedding value 1)
    A[1, 0] = 6.0  # f0 -> f1: 3 per unit of f0, a0 = 2
    A[logit, 1] = 0.5  # f1 -> logit: 0.5 per unit, a1 = 1
    A[logit, 0] = 2.0  # f0 -> logit: 1 per unit
    A[logit, emb1] = 0.25
    return GraphData(
        adjacency=A,
        active_features=feats,
        activation_values=torch.tensor([2.0, 1.0]),
        logit_token_ids=torch.tensor([5]),
        logit_probabilities=torch.tensor([1.0]),
        input_tokens=torch.tensor([0, 4]),
        n_layers=n_layers,
    )


def test_effect_shares_by_hand() -> None:
    g = hand_graph()
    src, dst = g.embedding_offset + 1, g.logit_offset
    es = effect_shares(g, src, dst, {"f0": [0], "f1": [1]})
    # paths: emb->logit 0.25; emb->f0->logit 2*1; emb->f0->f1->logit 2*3*0.5
    assert es.total == pytest.approx(5.25)
    assert es.through == pytest.approx({"f0": 5.0, "f1": 3.0})
    assert es.chain == pytest.approx(3.0) and es.outside == pytest.approx(0.25)
    assert es.share("f1") == pytest.approx(3.0 / 5.25)
    # clamping f0 to 0 removes its 2 * (1 + 3 * 0.5); clamping f1 removes 1 * 0.5
    assert predicted_ablation(g, [0]).tolist() == pytest.approx([-5.0])
    assert predicted_ablation(g, [1]).tolist() == pytest.approx([-0.5])
    # both clamped: f1 no longer responds to f0, so f0 removes only its direct 2 * 1
    assert predicted_ablation(g, [0, 1]).tolist() == pytest.approx([-2.5])


def test_ablation_prediction_equals_the_replacement_model() -> None:
    """Clamping a set of last-position features: where no other feature crosses its
    threshold the graph's prediction is exact (last-layer features feed only the logits,
    so they never cause a crossing); checked on sets spanning two layers too."""
    model, clt = setup(seed=2)
    prompt = "w11 w12 w13 w14"  # a case with enough two-layer sets that cross nothing
    g = attribute(model, clt, prompt)
    L, last = clt.cfg.n_layers, g.n_pos - 1
    at_last = [
        (layer, f) for layer, p, f in g.active_features.tolist() if p == last
    ]  # [(layer, feature)] active at the last position
    by_layer = {layer: [f for lay, f in at_last if lay == layer] for layer in range(L)}
    candidates = [[(L - 1, f)] for f in by_layer[L - 1][:3]]  # last layer: never crosses
    for lo in range(L - 1):  # every pair spanning two layers
        for f in by_layer[lo]:
            for hi in range(lo + 1, L):
                candidates += [[(lo, f), (hi, h)] for h in by_layer[hi]]
    exact, two_layer = 0, 0
    for feats in candidates:
        sn = Supernode("s", feats, "group")
        check = validate_supernode(model, clt, prompt, g, sn, position=last)
        assert check.n_members == len(feats)
        if feats[0][0] == L - 1:
            assert check.crossed == 0
        if check.crossed == 0 and max(abs(p) for p in check.predicted) > 1e-3:
            assert check.replacement == pytest.approx(check.predicted, rel=1e-4, abs=1e-5)
            exact += 1
            two_layer += len({layer for layer, _ in feats}) == 2
        assert len(check.real) == g.n_logits
    assert exact >= 5 and two_layer >= 3, (exact, two_layer, len(candidates))


def test_supernodes_in_the_graph_json_and_figure(tmp_path: Path) -> None:
    model, clt = setup(seed=2)
    prompt = "w3 w14 w15 w9 w26 w5"
    g = attribute(model, clt, prompt)
    last = g.n_pos - 1
    at_last = [tuple(int(v) for v in f) for f in g.active_features if int(f[1]) == last]
    assert len(at_last) >= 2
    a = Supernode("group A", [(at_last[0][0], at_last[0][2])], "group")
    b = Supernode("group B", [(lay, f) for lay, _, f in at_last[1:3]], "group")
    inactive = [
        f for f in range(clt.cfg.d_sae) if (0, last, f) not in {(x[0], x[1], x[2]) for x in at_last}
    ]
    empty = Supernode("nowhere", [(0, inactive[0])], "group")
    assert member_nodes(g, empty) == []
    lists = supernode_json(g, [a, b, empty])
    names = [x[0] for x in lists]
    assert names == ["group A", "group B"]  # no members: left out
    assert lists[0][1:] == [f"{at_last[0][0]}_{at_last[0][2]}_{last}"]
    pruned = g.prune(node_threshold=1.0, edge_threshold=1.0)
    data = g.to_json(tmp_path / "g.json", pruned=pruned, supernodes=lists)
    on_disk = json.loads((tmp_path / "g.json").read_text())
    assert on_disk["qParams"]["supernodes"] == data["qParams"]["supernodes"]
    written = {n["node_id"] for n in on_disk["nodes"]}
    for _name, *members in on_disk["qParams"]["supernodes"]:
        assert members and set(members) <= written
        assert set(members) <= set(on_disk["qParams"]["pinnedIds"])
    assert any(x[0] == "group A" for x in on_disk["qParams"]["supernodes"])
    src, dst = g.embedding_offset + last, g.logit_offset
    fig = plot_supernode_graph(
        g, {"group A": member_nodes(g, a), "group B": member_nodes(g, b)}, src, dst,
        tmp_path / "sn.png", source_name="token", target_name="logit",
    )  # fmt: skip
    assert (tmp_path / "sn.png").stat().st_size > 5000
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.startswith("group A") for t in texts) and "logit" in texts
