"""Head loadings (issue 14 part 2): cross-position edges split by the head entering the
target's position.

Checks: (a) the parts sum to the graph's edges; (b) removing one head's off-diagonal output
at the target position (``Σ_{u<t} P[h, t, u] v_u``, patterns frozen) in an independent
forward run with hooks (no autograd; ``tests.test_attribution``'s frozen injection runs)
moves each edge by exactly minus that head's part; (c) a hand-built two-head model where
every path runs through two heads gives each path to the head entering the target's
position; and a wrong split (the diagonal term counted too) fails (a) and (b).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.attribution import attribute, to_tokens
from sae_lens_clt.attribution import heads as heads_mod
from sae_lens_clt.attribution.export import node_index
from sae_lens_clt.attribution.heads import HeadLoadings, default_edges, edge_head_loadings
from tests.test_attribution import (
    clean_reference,
    frozen_targets,
    random_clt,
    random_model,
    source_injections,
)
from tests.test_supernodes import odd_norms, setup

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 2e-5  # float32 error allowed, relative to the largest edge of the graph


def build(name: str) -> tuple[HookedTransformer, CrossLayerTranscoder, torch.Tensor]:
    """3+ layers, 4 heads, norm weights away from 1, a random CLT, a random prompt."""
    if name == "standard":
        model, clt = setup()
    elif name == "rotary":
        model = odd_norms(random_model(pos="rotary", n_layers=3, d_model=32, seed=1), 1)
        clt = random_clt(model, d_sae=48, active_frac=0.08, seed=1)
    else:  # grouped-query attention: 4 query heads sharing 2 value heads, rotary
        cfg = HookedTransformerConfig(
            n_layers=3, d_model=32, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=64,
            d_vocab=100, n_ctx=64, act_fn="gelu", normalization_type="RMS",
            positional_embedding_type="rotary", initializer_range=0.15, seed=2,
        )  # fmt: skip
        model = odd_norms(HookedTransformer(cfg).eval(), 2)
        clt = random_clt(model, d_sae=48, active_frac=0.08, seed=2)
    prompt = torch.randint(2, model.cfg.d_vocab, (11,), generator=torch.Generator().manual_seed(3))
    return model, clt, prompt


def cross_edges(graph: Any, n_feature_targets: int = 12) -> torch.Tensor:
    """Every non-zero cross-position edge into the logits and into a few late features."""
    late = torch.argsort(graph.active_features[:, 1], descending=True, stable=True)
    targets = [*late[:n_feature_targets].tolist(), *range(graph.logit_offset, graph.n_nodes)]
    pairs = []
    for t in targets:
        t_pos = graph.node_layer_pos(t)[1]
        for s in graph.adjacency[t].nonzero()[:, 0].tolist():
            if graph.node_kind(s) != "logit" and graph.node_layer_pos(s)[1] < t_pos:
                pairs.append([t, s])
    return torch.tensor(pairs)


def sum_error(hl: HeadLoadings, graph: Any) -> float:
    """Largest |Σ parts - edge|, relative to the largest edge of the graph."""
    edge = graph.adjacency[hl.edges[:, 0], hl.edges[:, 1]]
    scale = float(graph.adjacency.abs().max())
    return float((hl.parts.sum((1, 2)) - edge).abs().max()) / scale


def target_column(graph: Any, node: int) -> int:
    """Column of ``frozen_targets``' output: features then logits."""
    if graph.node_kind(node) == "feature":
        return node
    return graph.n_features + node - graph.logit_offset


@torch.no_grad()
def ablation_error(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    graph: Any,
    hl: HeadLoadings,
    heads: list[tuple[int, int]],
    positions: list[int],
) -> float:
    """For each target position ``t`` and head ``(l, h)``: one frozen injection run per
    source with ``Σ_{u<t} P[h, t, u] v[u, h]`` subtracted from head ``h``'s ``hook_z`` at
    layer ``l``, query ``t`` (clean frozen pattern, the run's own values); every edge into
    ``t`` must move by ``-part(l, h)``. Returns the largest error relative to the largest
    edge (also checks the ablation-free run reproduces the edges)."""
    tokens = to_tokens(model, graph.input_tokens)
    ref = clean_reference(model, clt, tokens)
    scale = float(graph.adjacency.abs().max())
    H = model.cfg.n_heads
    worst = 0.0
    target_pos = torch.tensor([graph.node_layer_pos(int(t))[1] for t in hl.edges[:, 0]])
    for t in positions:
        rows = (target_pos == t).nonzero()[:, 0]
        if not rows.numel():
            continue
        edges = hl.edges[rows]
        sources = edges[:, 1].unique()
        col = {int(s): i + 1 for i, s in enumerate(sources)}
        out, embed, pos = source_injections(model, clt, ref, graph, sources)
        for head in [None, *heads]:
            hooks: list[tuple[str, Any]] = []
            if head is not None:
                layer, h = head
                store: dict[str, torch.Tensor] = {}
                pattern = ref.frozen[f"blocks.{layer}.attn.hook_pattern"][0, h, t, :t]  # [t]

                def keep_v(v, hook, store=store):
                    store["v"] = v
                    return v

                def ablate(z, hook, store=store, h=h, t=t, pattern=pattern):
                    v = store["v"]
                    if v.shape[2] != H:  # GQA
                        v = torch.repeat_interleave(v, H // v.shape[2], dim=2)
                    z = z.clone()
                    z[:, t, h] -= torch.einsum("u,bud->bd", pattern, v[:, :t, h])
                    return z

                hooks = [
                    (f"blocks.{layer}.attn.hook_v", keep_v),
                    (f"blocks.{layer}.attn.hook_z", ablate),
                ]
            with model.hooks(fwd_hooks=hooks):
                got = frozen_targets(model, clt, ref, graph, out, embed, pos)
            moved = got[1:] - got[0]  # [S, n_targets]
            for e, (tgt, src) in zip(rows.tolist(), edges.tolist(), strict=True):
                measured = float(moved[col[src] - 1, target_column(graph, tgt)])
                expected = float(graph.adjacency[tgt, src])
                if head is not None:
                    expected -= float(hl.parts[e, head[0], head[1]])
                worst = max(worst, abs(measured - expected) / scale)
    return worst


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", ["standard", "rotary", "gqa"])
def test_parts_sum_to_edges_and_equal_single_head_ablations(name: str) -> None:
    model, clt, prompt = build(name)
    graph = attribute(model, clt, prompt)
    edges = cross_edges(graph)
    assert len(edges) >= 100
    hl = edge_head_loadings(model, clt, graph, edges, batch_size=16)
    assert hl.parts.shape == (len(edges), model.cfg.n_layers, model.cfg.n_heads)
    torch.testing.assert_close(hl.weights, graph.adjacency[edges[:, 0], edges[:, 1]])
    assert sum_error(hl, graph) < TOL  # (a)
    # causality in depth: a head below a source's layer or above a feature target's
    # CLT input (ln2, after the layer's attention) carries nothing
    for e, (tgt, src) in enumerate(edges.tolist()):
        if graph.node_kind(src) in ("feature", "error"):
            assert (hl.parts[e, : graph.node_layer_pos(src)[0] + 1] == 0).all()
        if graph.node_kind(tgt) == "feature":
            assert (hl.parts[e, graph.node_layer_pos(tgt)[0] + 1 :] == 0).all()
    # the split is not trivial: several heads carry most edges
    shares = hl.parts.flatten(1).abs() / hl.parts.flatten(1).abs().sum(1, keepdim=True)
    assert float((shares > 0.05).sum(1).float().mean()) > 2
    T = graph.n_pos
    heads = [(0, 1), (1, 0), (2, 3), (model.cfg.n_layers - 1, 2)]
    assert ablation_error(model, clt, graph, hl, heads, [T - 1, T - 4]) < TOL  # (b)


def test_every_head_at_the_last_position_and_default_edges() -> None:
    model, clt, prompt = build("standard")
    graph = attribute(model, clt, prompt)
    hl = edge_head_loadings(model, clt, graph)  # the pruned graph's cross-position edges
    expected = default_edges(graph)
    assert torch.equal(hl.edges, expected) and len(expected) >= 50
    kinds = {graph.node_kind(int(s)) for s in expected[:, 1]}
    assert kinds == {"feature", "error", "embedding"}
    for t, s in expected.tolist():
        assert graph.node_layer_pos(s)[1] < graph.node_layer_pos(t)[1]
    assert sum_error(hl, graph) < TOL
    all_heads = [(layer, h) for layer in range(model.cfg.n_layers) for h in range(4)]
    assert ablation_error(model, clt, graph, hl, all_heads, [graph.n_pos - 1]) < TOL


def test_use_attn_result_and_no_grad_give_the_same_parts() -> None:
    model, clt, prompt = build("standard")
    graph = attribute(model, clt, prompt)
    edges = cross_edges(graph, 4)
    plain = edge_head_loadings(model, clt, graph, edges)
    model.set_use_attn_result(True)
    with torch.no_grad():  # as inside attribute(): the function turns gradients on itself
        with_result = edge_head_loadings(model, clt, graph, edges, batch_size=7)
    assert not any(p.requires_grad is False for p in model.parameters())  # restored
    torch.testing.assert_close(with_result.parts, plain.parts, atol=1e-5, rtol=1e-5)


def test_a_wrong_split_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting the diagonal term ``P[h, t, t] v_t`` as entering ``t`` breaks (a) and (b)."""
    model, clt, prompt = build("standard")
    graph = attribute(model, clt, prompt)
    edges = cross_edges(graph, 4)
    monkeypatch.setattr(
        heads_mod, "offdiagonal_mask", lambda n, device=None: torch.ones(n, n).tril()
    )
    wrong = edge_head_loadings(model, clt, graph, edges)
    assert sum_error(wrong, graph) > 50 * TOL
    heads = [(1, 0), (2, 3)]
    assert ablation_error(model, clt, graph, wrong, heads, [graph.n_pos - 1]) > 50 * TOL


# ---------------------------------------------------------------------- by hand
def two_head_model() -> tuple[HookedTransformer, CrossLayerTranscoder]:
    """2 layers × 2 heads, no norms, zero MLPs, W_Q = W_K = 0 (uniform causal patterns
    ``P[t, u] = 1 / (t + 1)``). Token ``j`` embeds as ``c_j e0``; head A = (0, 0) moves
    ``e0`` into ``e1``, head B = (1, 1) moves ``e1`` into ``e2``, the other heads are zero;
    logit ``j`` reads ``w_j e2``. Every path from an embedding to a logit runs through A
    and then B. A CLT reading ``hook_resid_mid`` with one dead feature."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=4, d_head=1, n_heads=2, d_mlp=4, d_vocab=5, n_ctx=8,
        act_fn="relu", normalization_type=None, positional_embedding_type="standard",
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, 0] = torch.tensor([0.5, 1.0, 2.0, -1.5, 3.0])
        model.blocks[0].attn.W_V[0, 0, 0] = 1.0
        model.blocks[0].attn.W_O[0, 0, 1] = 1.0
        model.blocks[1].attn.W_V[1, 1, 0] = 1.0
        model.blocks[1].attn.W_O[1, 0, 2] = 1.0
        model.W_U[2] = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])
    clt_cfg = CrossLayerTranscoderConfig(n_layers=2, d_in=4, d_sae=1, activation_fn="relu")
    clt_cfg.metadata.hook_name = "blocks.{layer}.hook_resid_mid"
    clt = CrossLayerTranscoder(clt_cfg)
    with torch.no_grad():
        for p in clt.parameters():
            p.zero_()
        clt.b_enc.fill_(-1.0)  # never active
    return model, clt


def test_two_head_paths_go_to_the_head_entering_the_target_position() -> None:
    model, clt = two_head_model()
    tokens = [0, 1, 2, 3, 4]
    graph = attribute(model, clt, tokens, max_n_logits=5, desired_logit_prob=1.0)
    assert graph.n_features == 0
    T, t = len(tokens), len(tokens) - 1
    c = model.W_E[:, 0].detach()
    w = model.W_U[2].detach()
    P = torch.tensor([[1.0 / (q + 1) if k <= q else 0.0 for k in range(T)] for q in range(T)])
    pairs = [
        (logit, graph.embedding_offset + s)
        for logit in range(graph.logit_offset, graph.n_nodes)
        for s in range(t)  # every embedding but the last one's
    ]
    hl = edge_head_loadings(model, clt, graph, pairs)
    assert hl.edges.tolist() == [list(p) for p in pairs]
    for tgt, src in hl.edges.tolist():
        s = src - graph.embedding_offset
        w_tilde = float(w[int(graph.logit_token_ids[tgt - graph.logit_offset])] - w.mean())
        c_s = float(c[tokens[s]])
        # A enters t (hop s -> t), then B's diagonal keeps it at t
        via_a = w_tilde * c_s * float(P[t, t] * P[t, s])
        # A moves it to some u < t (u = s: A's diagonal), then B hops u -> t
        via_b = w_tilde * c_s * sum(float(P[t, u] * P[u, s]) for u in range(s, t))
        parts = hl.edge_heads(tgt, src)
        expected = torch.zeros(2, 2)
        expected[0, 0], expected[1, 1] = via_a, via_b
        torch.testing.assert_close(parts, expected, atol=1e-6, rtol=1e-5)
        assert graph.adjacency[tgt, src] == pytest.approx(via_a + via_b, rel=1e-5, abs=1e-6)
    # same-position edges (the last embedding) are not split
    with pytest.raises(KeyError, match="no head loadings"):
        hl.edge_heads(graph.logit_offset, graph.embedding_offset + t)
    with pytest.raises(ValueError, match="not split by heads"):
        edge_head_loadings(model, clt, graph, [(graph.logit_offset, graph.embedding_offset + t)])
    ablation = ablation_error(model, clt, graph, hl, [(0, 0), (1, 1), (1, 0)], [t])
    assert ablation < 1e-6


# ---------------------------------------------------------------------- API / JSON
def test_query_api_and_json() -> None:
    model, clt, prompt = build("standard")
    graph = attribute(model, clt, prompt)
    hl = edge_head_loadings(model, clt, graph)
    t, s = hl.edges[0].tolist()
    by_index = hl.edge_heads(t, s)
    assert by_index.shape == (model.cfg.n_layers, model.cfg.n_heads)
    ids = hl.node_ids
    torch.testing.assert_close(hl.edge_heads(ids[t], ids[s]), by_index)
    if graph.node_kind(t) == "feature":
        torch.testing.assert_close(
            hl.edge_heads(tuple(graph.active_features[t].tolist()), ids[s]), by_index
        )
    data = json.loads(json.dumps(hl.to_json(top_k=3)))
    assert data["n_layers"] == model.cfg.n_layers and data["n_heads"] == model.cfg.n_heads
    assert len(data["links"]) == len(hl.edges)
    link = data["links"][0]
    assert link["source"] == ids[s] and link["target"] == ids[t]
    assert len(link["heads"]) <= 3
    layer, head, part = link["heads"][0]
    assert part == pytest.approx(float(by_index[layer, head]))
    assert abs(part) == pytest.approx(float(by_index.abs().max()))
    listed = sum(h[2] for h in link["heads"])
    assert listed + link["heads_rest"] == pytest.approx(link["weight"], abs=1e-5)
    # the default edges are links of the graph JSON, under the same node ids
    from sae_lens_clt.attribution.export import graph_json

    written = {(ln["source"], ln["target"]): ln["weight"] for ln in graph_json(graph)["links"]}
    for link in data["links"]:
        assert written[(link["source"], link["target"])] == pytest.approx(link["weight"])


def test_attribute_with_head_loadings_fills_edge_heads_and_the_json(tmp_path) -> None:
    from sae_lens_clt.attribution import LogitDiff

    model, clt, prompt = build("standard")
    graph = attribute(model, clt, prompt, head_loadings=True)
    alone = edge_head_loadings(model, clt, attribute(model, clt, prompt))
    assert torch.equal(graph.head_loadings.edges, alone.edges)
    for t, s in alone.edges.tolist():
        torch.testing.assert_close(graph.edge_heads(t, s), alone.edge_heads(t, s))
    t, s = alone.edges[0].tolist()
    data = graph.to_json(tmp_path / "g.json")
    with_heads = [ln for ln in data["links"] if "heads" in ln]
    cross = [  # every cross-position link of the default pruning carries its heads
        ln for ln in data["links"]
        if graph.node_layer_pos(node_index(graph, ln["source"]))[1]
        < graph.node_layer_pos(node_index(graph, ln["target"]))[1]
        and graph.node_kind(node_index(graph, ln["source"])) != "logit"
    ]  # fmt: skip
    assert with_heads and len(with_heads) == len(cross)
    for link in with_heads:
        listed = sum(part for _, _, part in link["heads"])
        assert listed + link["heads_rest"] == pytest.approx(link["weight"], abs=1e-5)
    plain = attribute(model, clt, prompt)
    with pytest.raises(ValueError, match="head_loadings=True"):
        plain.edge_heads(t, s)
    dec = model.tokenizer.decode if model.tokenizer is not None else None
    ids = plain.logit_token_ids[:2].tolist()
    a, b = (dec([i]) for i in ids) if dec else ids
    with pytest.raises(ValueError, match="token targets"):
        attribute(model, clt, prompt, targets=[LogitDiff(a, b)], head_loadings=True)
