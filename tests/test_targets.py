"""``attribute(..., targets=...)``: logit nodes for the tokens a user names.

The exactness check is the one of ``tests/test_attribution.py``: inject a source's vector
under full freeze and the named target's demeaned logit moves by exactly its column, here
for a token far from the top logits.
"""

from __future__ import annotations

import pytest
import torch

from sae_lens_clt.attribution import AttributionGraph, attribute, to_tokens
from sae_lens_clt.attribution.attribute import TARGET_WEIGHT_FLOOR, resolve_targets
from tests.test_attribution import build, check_columns, random_clt, random_model

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
