"""``attribute(..., targets=...)``: tokens, logit differences, directions, features.

The exactness check is the one of ``tests/test_attribution.py``: inject a source's vector
under full freeze and the named target moves by exactly its column: a token far from the
top logits, and (on a random LN model with norm weights and biases far from identity) a
logit difference, a residual direction at a middle layer and position, a direction at the
unembedding input, an active and an inactive feature's pre-activation. An inactive
feature's row explains its pre-activation: the row's sum plus the pre-activation of the
frozen model with *every* source removed (``b_enc`` plus what biases and the BOS position
carry, none of them nodes) is the pre-activation the model gives.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sae_lens_clt.attribution import AttributionGraph, attribute, to_tokens
from sae_lens_clt.attribution.attribute import (
    TARGET_WEIGHT_FLOOR,
    unembed_input_hook,
)
from sae_lens_clt.attribution.targets import (
    Direction,
    FeatureTarget,
    LogitDiff,
    Token,
    resolve_targets,
)
from tests.architectures import perturb_norms
from tests.conftest import has_skip
from tests.test_attribution import (
    build,
    check_columns,
    clean_reference,
    random_clt,
    random_model,
    source_injections,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def last_probs(model, prompt) -> torch.Tensor:
    """The model's next-token distribution ``[V]`` at the prompt's last position."""
    with torch.no_grad():
        return model(to_tokens(model, prompt)[None])[0, -1].softmax(-1)


def test_a_token_far_from_the_top_moves_by_its_column() -> None:
    model, clt, prompt = build("standard-pos")
    top = attribute(model, clt, prompt)
    order = last_probs(model, prompt).argsort(descending=True)
    far = int(order[60])  # rank 60 of 100: not among the top logits
    assert far not in top.logit_token_ids.tolist()
    graph = attribute(model, clt, prompt, targets=[far], batch_size=64)
    assert graph.logit_token_ids.tolist() == [far]
    torch.testing.assert_close(
        graph.logit_probabilities, last_probs(model, prompt)[[far]], rtol=1e-5, atol=0
    )
    gen = torch.Generator().manual_seed(1)
    features = torch.randperm(graph.n_features, generator=gen)[:120]
    errors = torch.arange(graph.error_offset, graph.embedding_offset)
    embeddings = torch.arange(graph.embedding_offset, graph.logit_offset)
    for columns in (features, errors, embeddings):
        check_columns(model, clt, prompt, graph, columns)
    # the logit row is not a copy of a top logit's row
    n = graph.logit_offset  # same sources (features, errors, embeddings) in both graphs
    assert not torch.allclose(graph.adjacency[-1, :n], top.adjacency[n, :n], atol=1e-3)
    # the feature rows do not depend on which logits are targets
    f = graph.n_features
    torch.testing.assert_close(graph.adjacency[:f, :n], top.adjacency[:f, :n])


def test_targets_equal_to_the_top_logits_give_the_top_logit_graph() -> None:
    model, clt, prompt = build("standard-pos")
    top = attribute(model, clt, prompt, max_n_logits=4)
    ids = top.logit_token_ids.tolist()
    named = attribute(model, clt, prompt, targets=ids)
    torch.testing.assert_close(named.adjacency, top.adjacency)
    torch.testing.assert_close(named.logit_probabilities, top.logit_probabilities)
    assert named.prune().node_mask.tolist() == top.prune().node_mask.tolist()
    # reversed order: logit nodes in the order given
    rev = attribute(model, clt, prompt, targets=ids[::-1])
    assert rev.logit_token_ids.tolist() == ids[::-1]
    torch.testing.assert_close(
        rev.adjacency[rev.logit_offset :], top.adjacency[top.logit_offset :].flip(0)
    )


def test_string_targets_and_their_errors() -> None:
    model = random_model(tokenizer=True)
    clt = random_clt(model)
    prompt = "w3 w5 w7 w9 w11 w13"
    graph = attribute(model, clt, prompt, targets=["w40", " w41", 7])
    assert graph.logit_token_ids.tolist() == [42, 43, 7]  # w{i} has id i + 2
    assert graph.metadata["settings"]["targets"] == ["w40", " w41", 7]
    assert graph.metadata["logit_token_strings"] == ["w40", "w41", "w5"]
    probs = last_probs(model, prompt)[[42, 43, 7]]
    torch.testing.assert_close(torch.tensor(graph.metadata["target_probabilities"]), probs)
    torch.testing.assert_close(graph.logit_probabilities, probs)
    with pytest.raises(ValueError, match=r"'w40 w41' is 2 tokens \(\[42, 43\]"):
        attribute(model, clt, prompt, targets=["w40 w41"])
    with pytest.raises(ValueError, match=r"100 is outside the vocabulary \[0, 100\)"):
        attribute(model, clt, prompt, targets=[100])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        resolve_targets(model, [-1])
    with pytest.raises(ValueError, match="'w5' names token 7 a second time"):
        attribute(model, clt, prompt, targets=[7, "w5"])
    with pytest.raises(ValueError, match="empty"):
        resolve_targets(model, [])
    with pytest.raises(ValueError, match="list of token strings"):
        resolve_targets(model, "w5")
    with pytest.raises(ValueError, match="neither a token string nor a token id"):
        resolve_targets(model, [1.5])
    with pytest.raises(ValueError, match="is a LogitDiff, not a token"):
        resolve_targets(model, [LogitDiff(7, 8)])
    no_tok = random_model()
    with pytest.raises(ValueError, match="no tokenizer"):
        resolve_targets(no_tok, ["w5"])
    assert resolve_targets(no_tok, [torch.tensor(3), 4]).tolist() == [3, 4]


def test_improbable_targets_are_weighted_renormalised(tmp_path) -> None:
    """Targets the model all but rules out still get weight (their probabilities
    renormalised, exactly, by a softmax over their own logits), so prune and scores work."""
    model, clt, prompt = build("standard-pos")
    with torch.no_grad():
        model.b_U[[11, 12]] = torch.tensor([-150.0, -151.0])  # exp(-150) is 0 in float32
    probs = last_probs(model, prompt)
    assert probs[[11, 12]].sum() < TARGET_WEIGHT_FLOOR
    graph = attribute(model, clt, prompt, targets=[11, 12])
    w = graph.logit_probabilities
    assert (w > 0).all() and abs(float(w.sum()) - 1.0) < 1e-6
    with torch.no_grad():
        logits = model(to_tokens(model, prompt)[None])[0, -1]
    torch.testing.assert_close(w, logits[[11, 12]].softmax(-1))
    assert float(w[0] / w[1]) == pytest.approx(float((logits[11] - logits[12]).exp()), rel=1e-4)
    assert max(graph.metadata["target_probabilities"]) < TARGET_WEIGHT_FLOOR
    # the graph analysis sees the weights: something is kept and the scores are real numbers
    pruned = graph.prune()
    assert pruned.node_mask[: graph.n_features].any()
    scores = graph.scores()
    assert 0.0 < scores.replacement <= 1.0 and 0.0 < scores.completeness <= 1.0
    # the same analysis as the weights scaled by any factor: the ratios are what counts
    scaled = AttributionGraph(**{**vars(graph), "logit_probabilities": w * 1e-3})
    assert scaled.prune().node_mask.tolist() == pruned.node_mask.tolist()
    assert scaled.scores().replacement == pytest.approx(scores.replacement, rel=1e-4)
    loaded = AttributionGraph.load(graph.save(tmp_path / "g"))
    assert loaded.metadata["settings"]["targets"] == [11, 12]
    assert torch.equal(loaded.logit_probabilities, w)


def test_targets_with_max_feature_nodes_keep_the_exact_rows() -> None:
    model, clt, prompt = build("standard-pos")
    far = int(last_probs(model, prompt).argsort()[5])  # among the least probable
    full = attribute(model, clt, prompt, targets=[far])
    part = attribute(model, clt, prompt, targets=[far], max_feature_nodes=30, batch_size=8)
    assert part.n_features == 30 and part.logit_token_ids.tolist() == [far]
    index = {tuple(r): i for i, r in enumerate(full.active_features.tolist())}
    idx = torch.tensor([index[tuple(r)] for r in part.active_features.tolist()])
    cols = torch.cat([idx, torch.arange(full.n_features, full.n_nodes)])
    torch.testing.assert_close(part.adjacency[:30], full.adjacency[idx][:, cols])
    torch.testing.assert_close(part.adjacency[-1], full.adjacency[-1, cols])
    # ranked by influence on that target: far more than 30 random features would carry
    from sae_lens_clt.attribution.prune import node_influence

    infl = node_influence(full)[: full.n_features]
    assert infl[idx].sum() > 30 / full.n_features * infl.sum() * 3


# ---------------------------------------------------------------------- custom targets
def ln_setup():
    """A random LN model (tokenizer ``w{i}`` = id i + 2) with norm weights and biases far
    from identity, a random CLT over it, and a 14-token prompt."""
    model = random_model(n_layers=3, d_model=32, seed=4, tokenizer=True)
    with torch.no_grad():
        perturb_norms(model, seed=4)
    clt = random_clt(model, d_sae=64, active_frac=0.06, seed=4)
    prompt = " ".join(f"w{i}" for i in (3, 17, 5, 40, 8, 22, 61, 9, 30, 12, 77, 2, 50))
    return model, clt, prompt


@torch.no_grad()
def frozen_run(model, clt, ref, out_inject, embed_inject, pos_inject) -> dict[str, torch.Tensor]:
    """Every hook's value ``[K, T, d]`` in a fully frozen forward run with vectors added to
    the MLP outputs / embeddings (one injection per batch row), as ``frozen_targets``."""
    K, L = out_inject.shape[0], clt.cfg.n_layers
    seen: dict[str, torch.Tensor] = {}

    def freeze(act, hook):
        return ref.frozen[hook.name].expand_as(act)

    def mlp_out(act, hook, layer):
        out = ref.y[layer] + out_inject[:, layer]
        if has_skip(clt):
            out = out + (seen[clt.cfg.hook_in(layer)] - ref.x[layer]) @ clt.W_skip[layer]
        return out

    def keep(act, hook):
        seen[hook.name] = act
        return act

    hooks: list[tuple[str, Any]] = [(n, freeze) for n in ref.frozen]
    hooks.append(("hook_embed", lambda a, hook: a + embed_inject))
    if pos_inject is not None:
        hooks.append(("hook_pos_embed", lambda a, hook: a + pos_inject))
    for s in range(L):
        hooks.append((clt.cfg.hook_in(s), keep))
        hooks.append((clt.cfg.hook_out(s), lambda a, hook, s=s: mlp_out(a, hook, s)))
        hooks.append((f"blocks.{s}.hook_resid_post", keep))
    hooks.append((unembed_input_hook(model), keep))
    model.run_with_hooks(ref.tokens[None].expand(K, -1), fwd_hooks=hooks)
    return seen


@torch.no_grad()
def target_values(model, clt, graph: AttributionGraph, seen) -> torch.Tensor:
    """Each target quantity of ``graph`` read off a frozen run: ``[K, n_targets]``."""
    last = seen[unembed_input_hook(model)][:, -1] @ model.W_U + model.b_U  # [K, V]
    cols = []
    for k, info in enumerate(graph.target_info):
        if info["kind"] == "token":
            cols.append(last[:, info["token"]] - last.mean(-1))
        elif info["kind"] == "logit_diff":
            a, b = info["tokens"]
            cols.append(last[:, a] - last[:, b])
        elif info["kind"] == "direction":
            vec = torch.tensor(graph.metadata["settings"]["targets"][k]["vector"])
            hook = info["hook"]
            name = unembed_input_hook(model) if hook == "unembedding input" else hook
            cols.append(seen[name][:, info["position"]] @ vec)
        else:
            layer, pos, f = info["layer"], info["position"], info["feature"]
            x = seen[clt.cfg.hook_in(layer)][:, pos]  # [K, d_in]
            cols.append(x @ clt.W_enc[layer][:, f] + clt.b_enc[layer, f])
    return torch.stack(cols, dim=1)


def check_target_columns(model, clt, prompt, graph, columns: torch.Tensor) -> None:
    """Every target moves by exactly its row's entries when a source is injected."""
    ref = clean_reference(model, clt, to_tokens(model, prompt))
    out, embed, pos = source_injections(model, clt, ref, graph, columns)
    values = target_values(model, clt, graph, frozen_run(model, clt, ref, out, embed, pos))
    moved = (values[1:] - values[0]).T  # [n_targets, n_columns]
    expected = graph.adjacency[graph.logit_offset :][:, columns]
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(moved, expected, atol=1e-4 * scale, rtol=1e-4)


def pick_features(model, clt, prompt, layer: int, pos: int) -> tuple[int, int]:
    """An active feature and an inactive one (the nearest to its threshold) at ``(layer, pos)``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(to_tokens(model, prompt)[None])
        pre = clt.encode_layer_pre(cache[clt.cfg.hook_in(layer)][0, pos], layer)  # [F]
    theta = clt.threshold[layer]
    active = (pre > theta).nonzero()[:, 0]
    below = torch.where(pre <= theta, pre - theta, torch.tensor(-1e9))
    assert active.numel() > 0
    return int(active[0]), int(below.argmax())


def mixed_targets(model, clt, prompt) -> list:
    gen = torch.Generator().manual_seed(11)
    on, off = pick_features(model, clt, prompt, layer=2, pos=8)
    return [
        "w40",
        LogitDiff("w41", "w9", weight=0.5),
        Direction(torch.randn(32, generator=gen), layer=1, position=6, name="probe"),
        Direction(torch.randn(32, generator=gen), layer=None, position=-3, name="final"),
        FeatureTarget(2, 8, on),
        FeatureTarget(2, -6, off),  # position 14 - 6 = 8
    ]


@pytest.fixture(scope="module")
def mixed():
    torch.set_num_threads(1)
    model, clt, prompt = ln_setup()
    targets = mixed_targets(model, clt, prompt)
    graph = attribute(model, clt, prompt, targets=targets, batch_size=32)
    return model, clt, prompt, targets, graph


def test_every_target_kind_moves_by_its_column(mixed) -> None:
    model, clt, prompt, targets, graph = mixed
    L, T = graph.n_layers, graph.n_pos
    assert T == 14 and graph.n_logits == 6 and graph.n_features >= 40
    assert [graph.target_kind(k) for k in range(6)] == [
        "token", "logit_diff", "direction", "direction", "feature", "feature",
    ]  # fmt: skip
    assert graph.target_positions.tolist() == [13, 13, 6, 11, 8, 8]
    assert graph.target_layers.tolist() == [L, L, 1, L, 2, 2]
    assert [graph.node_layer_pos(graph.logit_offset + k) for k in range(6)] == [
        (L, 13), (L, 13), (1, 6), (L, 11), (2, 8), (2, 8),
    ]  # fmt: skip
    assert graph.target_info[4]["active"] and not graph.target_info[5]["active"]
    assert graph.logit_token_ids.tolist() == [42] + [100 + k for k in range(1, 6)]
    # every source column of every target row, against the frozen model
    for columns in torch.arange(graph.logit_offset).split(200):
        check_target_columns(model, clt, prompt, graph, columns)
    # the sources that cannot reach a target are skipped: zero columns
    feats = graph.active_features
    rows = graph.adjacency[graph.logit_offset :]
    unreachable = {
        2: (feats[:, 0] >= 2) | (feats[:, 1] > 6),  # resid_post of layer 1 at position 6
        3: feats[:, 1] > 11,
        4: (feats[:, 0] >= 2) | (feats[:, 1] > 8),
    }
    for k, mask in unreachable.items():
        assert rows[k, : graph.n_features][mask].abs().max() == 0, k
    err = graph.adjacency[graph.logit_offset + 2, graph.error_offset : graph.embedding_offset]
    assert err.view(L, T)[2:].abs().max() == 0 and err.view(L, T)[:, 7:].abs().max() == 0
    # an active feature's target row is its node row
    on = int(((feats == torch.tensor([2, 8, targets[4].feature])).all(1)).nonzero()[0, 0])
    torch.testing.assert_close(
        rows[4, : graph.logit_offset], graph.adjacency[on, : graph.logit_offset],
        rtol=1e-6, atol=1e-7,
    )  # fmt: skip


def test_an_inactive_feature_row_explains_its_pre_activation(mixed) -> None:
    model, clt, prompt, targets, graph = mixed
    info = graph.target_info[5]
    layer, pos, f = info["layer"], info["position"], info["feature"]
    assert info["activation"] == 0.0 and info["pre_activation"] < float(
        clt.threshold[layer, f].detach()
    )
    ref = clean_reference(model, clt, to_tokens(model, prompt))
    with torch.no_grad():  # the pre-activation as the model gives it
        pre_model = float(clt.encode_layer_pre(ref.x[layer, pos], layer)[f])
    assert info["pre_activation"] == pytest.approx(pre_model, abs=1e-5)
    # the frozen model with every source removed at once: the constant (b_enc, plus what
    # attention / norm biases, b_dec and the BOS position's MLP outputs carry)
    every = torch.arange(graph.logit_offset)
    out, embed, pos_inj = source_injections(model, clt, ref, graph, every)
    out, embed = -out.sum(0, keepdim=True), -embed.sum(0, keepdim=True)
    pos_inj = None if pos_inj is None else -pos_inj.sum(0, keepdim=True)
    seen = frozen_run(model, clt, ref, out, embed, pos_inj)
    constant = float(target_values(model, clt, graph, seen)[0, 5])
    row = graph.adjacency[graph.logit_offset + 5, : graph.logit_offset].double()
    assert float(row.sum()) + constant == pytest.approx(pre_model, abs=1e-4)
    # the same holds for every target (the model is affine in the sources under freeze)
    clean = target_values(model, clt, graph, frozen_run(model, clt, ref, *[
        torch.zeros_like(t[:1]) if t is not None else None for t in (out, embed, pos_inj)
    ]))[0]  # fmt: skip
    sums = graph.adjacency[graph.logit_offset :, : graph.logit_offset].double().sum(1)
    removed = target_values(model, clt, graph, seen)[0]
    torch.testing.assert_close(sums.float() + removed, clean, atol=1e-4, rtol=1e-4)
    # inhibition shows, sign included: some sources push it down
    assert row.min() < 0 and row.max() > 0


def test_custom_targets_with_max_feature_nodes_keep_exact_rows(mixed) -> None:
    model, clt, prompt, targets, full = mixed
    part = attribute(model, clt, prompt, targets=targets, max_feature_nodes=15, batch_size=8)
    index = {tuple(r): i for i, r in enumerate(full.active_features.tolist())}
    idx = torch.tensor([index[tuple(r)] for r in part.active_features.tolist()])
    cols = torch.cat([idx, torch.arange(full.n_features, full.n_nodes)])
    torch.testing.assert_close(part.adjacency[part.logit_offset :], full.adjacency[
        full.logit_offset :][:, cols])  # fmt: skip
    assert part.target_info == full.target_info


def test_target_weights_given_default_and_renormalised() -> None:
    model, clt, prompt = ln_setup()
    probs = last_probs(model, prompt)
    d = Direction(torch.ones(32), name="ones")
    graph = attribute(model, clt, prompt, targets=["w40", d, FeatureTarget(1, 5, 3)])
    w = graph.logit_probabilities
    torch.testing.assert_close(w, torch.tensor([float(probs[42]), 1 / 3, 1 / 3]))
    assert graph.metadata["target_probabilities"] == [pytest.approx(float(probs[42])), None, None]
    given = attribute(model, clt, prompt, targets=[Token("w40", weight=2.0), LogitDiff(
        "w40", "w41", weight=6.0)])  # fmt: skip
    assert given.logit_probabilities.tolist() == [2.0, 6.0]
    tiny = attribute(model, clt, prompt, targets=[Direction(torch.ones(32), weight=1e-9),
                                                  LogitDiff("w40", "w41", weight=3e-9)])  # fmt: skip
    torch.testing.assert_close(tiny.logit_probabilities, torch.tensor([0.25, 0.75]))
    assert tiny.prune().node_mask[: tiny.n_features].any()
    # circuit-tracer's CustomTarget (label, prob, vec) is a direction at the unembedding input
    vec = torch.randn(32, generator=torch.Generator().manual_seed(2))
    ct = attribute(model, clt, prompt, targets=[("my dir", 0.7, vec)])
    ours = attribute(model, clt, prompt, targets=[Direction(vec, name="my dir", weight=0.7)])
    assert torch.equal(ct.adjacency, ours.adjacency) and ct.target_info == ours.target_info
    assert ct.logit_probabilities.tolist() == pytest.approx([0.7])
    with pytest.raises(ValueError, match="weights are all 0"):
        attribute(model, clt, prompt, targets=[Token(7, weight=0.0)])
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        attribute(model, clt, prompt, targets=[Token(7, weight=-1.0)])


def test_target_errors() -> None:
    model, clt, prompt = ln_setup()  # 14 tokens, 3 layers, 64 features
    cases = [
        (Direction(torch.ones(31)), r"vector must be \[d_model=32\]"),
        (Direction(torch.ones(32), layer=3), r"layer 3 is outside \[0, 3\)"),
        (Direction(torch.ones(32), position=14), "position 14 is outside the prompt's 14"),
        (FeatureTarget(1, 0, 3), r"position 0 \(BOS\) is not explained"),
        (FeatureTarget(1, -15, 3), "position -15 is outside"),
        (FeatureTarget(3, 2, 3), r"layer 3 is outside \[0, 3\)"),
        (FeatureTarget(1, 2, 64), r"feature 64 is outside \[0, 64\)"),
        (LogitDiff("w4", 6), "two different tokens"),
        (LogitDiff("w4", "w4 w5"), "is 2 tokens"),
        (1.5, "neither a token string nor a token id"),
    ]
    for target, match in cases:
        with pytest.raises(ValueError, match=match):
            attribute(model, clt, prompt, targets=[target])
    with pytest.raises(ValueError, match="names the same quantity"):
        attribute(model, clt, prompt, targets=[FeatureTarget(1, 2, 3), FeatureTarget(1, -12, 3)])
    with pytest.raises(ValueError, match="list of token strings / ids or targets"):
        attribute(model, clt, prompt, targets=LogitDiff("w4", "w5"))


def test_mixed_graph_prunes_scores_exports_and_draws(mixed, tmp_path) -> None:
    import json

    from sae_lens_clt.attribution.export import node_index
    from sae_lens_clt.attribution.paths import node_name

    model, clt, prompt, targets, graph = mixed
    pruned = graph.prune()
    assert pruned.node_mask[graph.logit_offset :].all()
    assert pruned.node_mask[: graph.n_features].any()
    scores = graph.scores()
    assert 0.0 < scores.replacement <= 1.0 and 0.0 < scores.completeness <= 1.0
    # the weights drive the analysis: all weight on the inactive feature changes the ranking
    one = AttributionGraph(**{**vars(graph), "logit_probabilities": torch.tensor(
        [0.0, 0, 0, 0, 0, 1.0])})  # fmt: skip
    assert not torch.equal(one.prune().node_influence, pruned.node_influence)
    data = graph.to_json(tmp_path / "mixed.json")
    json.loads((tmp_path / "mixed.json").read_text())
    logit_nodes = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(logit_nodes) == 6 and len({n["node_id"] for n in logit_nodes}) == 6
    assert [n["ctx_idx"] for n in logit_nodes] == [13, 13, 6, 11, 8, 8]
    assert [n["target_kind"] for n in logit_nodes] == [  # the viewer: probability or weight
        "token", "logit_diff", "direction", "direction", "feature", "feature"]  # fmt: skip
    f_on, f_off = targets[4].feature, targets[5].feature
    assert [n["clerp"] for n in logit_nodes] == [
        'Output "w40" (p=' + f"{float(graph.logit_probabilities[0]):.3f})",
        f'logit diff "w41" − "w9" (w={float(graph.logit_probabilities[1]):.3f})',
        f'direction "probe" at blocks.1.hook_resid_post @6 (w={1 / 6:.3f})',
        f'direction "final" at unembedding input @11 (w={1 / 6:.3f})',
        f"L2 F{f_on} @8 (active) pre-activation (w={1 / 6:.3f})",
        f"L2 F{f_off} @8 (inactive) pre-activation (w={1 / 6:.3f})",
    ]
    for k, node in enumerate(logit_nodes):
        assert node_index(graph, node["node_id"]) == graph.logit_offset + k
    assert node_name(graph, graph.logit_offset + 5, [], {}) == (
        f"target L2 F{f_off} @8 (inactive) pre-activation"
    )
    into = {ln["target"] for ln in data["links"]}
    assert {n["node_id"] for n in logit_nodes} <= into  # every target has incoming links
    fig = graph.plot(tmp_path / "mixed.png")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    for want in (
        "w40",
        "w41−w9",
        "probe @6",
        "final @11",
        f"L2/{f_on} pre",
        f"L2/{f_off} pre (off)",
    ):
        assert any(want in t for t in texts), (want, texts)
    assert fig.axes[0].get_yticklabels()[-1].get_text() == "targets"
    assert (tmp_path / "mixed.png").stat().st_size > 0


def test_targets_save_load_and_old_files(mixed, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from sae_lens_clt.formats.safetensors import file_metadata

    *_, graph = mixed
    path = graph.save(tmp_path / "mixed")
    loaded = AttributionGraph.load(path)
    for name in ("adjacency", "target_positions", "target_layers", "logit_token_ids"):
        assert torch.equal(getattr(loaded, name), getattr(graph, name)), name
    assert loaded.target_info == graph.target_info and loaded.metadata == graph.metadata
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:8] and raw[8:9] == b"{"
    # a file written before targets had positions / layers / info: logits at the last position
    header = {k: v for k, v in file_metadata(path).items() if k != "targets"}
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("target_")}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=header)
    old = AttributionGraph.load(tmp_path / "old.safetensors")
    assert old.target_positions.tolist() == [graph.n_pos - 1] * 6
    assert old.target_layers.tolist() == [graph.n_layers] * 6
    assert [i["kind"] for i in old.target_info] == ["token"] * 6
    assert old.node_layer_pos(old.logit_offset + 2) == (graph.n_layers, graph.n_pos - 1)
    assert torch.equal(old.adjacency, graph.adjacency)


def test_tools_that_read_logits_refuse_other_targets(mixed) -> None:
    """Faithfulness, supernode validation and aggregation compare or align token logits:
    a graph with other targets is refused in one clear line, not misread."""
    from sae_lens_clt.circuits import aggregate_graphs, validate_supernode
    from sae_lens_clt.circuits.supernodes import Supernode

    model, clt, prompt, _, graph = mixed
    with pytest.raises(ValueError, match="non-token targets"):
        graph.faithfulness(model, clt)
    layer, _, feat = graph.active_features[0].tolist()
    with pytest.raises(ValueError, match="non-token targets"):
        validate_supernode(model, clt, prompt, graph, Supernode("s", [(layer, feat)], "group"))
    roles = [[f"p{i}" for i in range(graph.n_pos)]]
    with pytest.raises(ValueError, match="non-token targets"):
        aggregate_graphs([graph], roles)
    from sae_lens_clt.attribution.heads import edge_head_loadings

    with pytest.raises(ValueError, match="token targets"):
        edge_head_loadings(model, clt, graph)


def test_cli_targets_and_head_loadings(tmp_path, monkeypatch, capsys) -> None:
    """``sae-lens-clt attribute --target/--logit-diff/--feature-target/--head-loadings``."""
    import argparse
    import json

    from sae_lens_clt.cli import attribute as cli
    from sae_lens_clt.cli import main

    model = random_model(tokenizer=True)
    monkeypatch.setattr(cli, "load_model_by_name", lambda name, device: model)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    base = ["attribute", "--clt", "random", "--prompt", "w1 w2 w3 w4 w5 w6 w7", "--d-sae", "64"]
    args = parser.parse_args(
        [*base, "--out", str(tmp_path / "t"), "--target", "w5", "--logit-diff", "w5", "w9",
         "--feature-target", "2:-1:3"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "targets (influence weight):" in capsys.readouterr().out
    graph = AttributionGraph.load(tmp_path / "t" / "graph.safetensors")
    assert [i["kind"] for i in graph.target_info] == ["token", "logit_diff", "feature"]
    args = parser.parse_args([*base, "--out", str(tmp_path / "h"), "--head-loadings"])
    assert args.func(args) == 0
    links = json.loads((tmp_path / "h" / "graph.json").read_text())["links"]
    assert any("heads" in link for link in links)
    status = main([*base[:1], "--prompt", "hi", "--out", str(tmp_path / "e"),
                   "--feature-target", "3:x:1"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "LAYER:POS:FEATURE" in err and len(err.strip().splitlines()) == 1
