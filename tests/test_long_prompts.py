"""Long prompts in bounded memory: the query-chunked forward, rows-form graphs, the budget.

1. The forward in query chunks (key / value cache + FrozenOV) gives the same graph as the
   one-pass forward on every architecture family (rotary, grouped keys, Gemma-2's soft cap
   and sliding window, QK-norm), for chunk sizes that do and do not divide the prompt.
2. It keeps no ``[H, T, T]`` tensor for the backward (the one-pass forward does).
3. ``memory_budget``: the graph comes in rows form and equals the unbounded one (edges,
   pruning, scores, JSON links, save / load), also when its rows spill to a memory-mapped
   file; the estimate is printed; a budget too small is refused naming what to change.
"""

from __future__ import annotations

import pytest
import torch

from sae_lens_clt.attribution import AttributionGraph, attribute
from sae_lens_clt.attribution.budget import fmt_bytes, parse_bytes, row_buffer
from sae_lens_clt.attribution.forward import frozen_forward
from sae_lens_clt.attribution.inputs import no_param_grads
from tests.architectures import FAMILIES, build
from tests.test_attribution import check_columns, random_clt, random_model

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def assert_same(a: AttributionGraph, b: AttributionGraph, tol: float = 2e-5) -> None:
    assert torch.equal(a.active_features, b.active_features)
    assert torch.equal(a.logit_token_ids, b.logit_token_ids)
    da, db = a.dense_adjacency(), b.dense_adjacency()
    scale = float(db.abs().max())
    torch.testing.assert_close(da, db, atol=tol * scale, rtol=0)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_chunked_forward_gives_the_same_graph(name: str) -> None:
    fam = build(name)
    full = attribute(fam.model, fam.clt, fam.prompt)
    for chunk in (1, 4, 5):  # 14 tokens: 14 chunks, 4 uneven chunks, 3 uneven chunks
        assert_same(attribute(fam.model, fam.clt, fam.prompt, query_chunk=chunk), full)


def test_chunked_graph_is_exact_by_intervention() -> None:
    fam = build("gemma2")  # sliding window 6 < 14 tokens, soft cap, grouped keys
    graph = attribute(fam.model, fam.clt, fam.prompt, query_chunk=4)
    check_columns(fam.model, fam.clt, fam.prompt, graph, torch.arange(graph.logit_offset))


def _largest_saved(model, clt, tokens, query_chunk) -> int:
    """Largest tensor (elements) the forward's autograd graph saves for the backward."""
    sizes = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with no_param_grads(model, clt), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        frozen_forward(model, clt, tokens, query_chunk=query_chunk)
    return max(sizes)


def test_chunked_forward_keeps_no_pattern() -> None:
    model = random_model(n_layers=2, d_model=32)  # 4 heads
    clt = random_clt(model)
    T = 60
    tokens = torch.randint(1, 100, (T,), generator=torch.Generator().manual_seed(0))
    H = model.cfg.n_heads
    one_pass = _largest_saved(model, clt, tokens, None)
    chunked = _largest_saved(model, clt, tokens, 8)
    assert one_pass >= H * T * T  # the frozen patterns
    assert chunked < T * model.cfg.d_mlp  # nothing quadratic: at most a [T, d]-sized tensor


@pytest.mark.parametrize(("max_feature_nodes", "budget"), [(None, "4MB"), (25, "1.5MB")])
def test_budget_graph_in_rows_form_equals_the_unbounded_one(
    max_feature_nodes, budget, tmp_path, capsys
) -> None:
    model = random_model(n_layers=3, d_model=32)
    clt = random_clt(model)
    prompt = torch.randint(1, 100, (40,), generator=torch.Generator().manual_seed(1))
    prompt[0] = 0
    kw = {"max_feature_nodes": max_feature_nodes}
    full = attribute(model, clt, prompt, **kw)
    small = attribute(model, clt, prompt, memory_budget=budget, **kw)
    out, err = capsys.readouterr()
    assert "attribution rows" in err  # the progress bar of the backward passes
    assert "memory estimate" in out and f"for budget {fmt_bytes(parse_bytes(budget))};" in out
    assert small.is_rows_form and not full.is_rows_form
    assert small.adjacency.shape == (small.n_features + small.n_logits, small.n_nodes)
    memory = small.metadata["memory"]
    assert memory["batch_size"] < 128 and memory["estimate_bytes"] <= parse_bytes(budget)
    if max_feature_nodes is not None:
        assert memory["query_chunk"] == 20
    assert_same(small, full)
    p, q = small.prune(), full.prune()
    assert torch.equal(p.node_mask, q.node_mask)
    assert all(torch.equal(a, b) for a, b in zip(p.edges(), q.edges(), strict=True))
    assert small.scores() == pytest.approx(full.scores(), rel=1e-5)
    links = {(k["source"], k["target"]) for k in small.to_json(tmp_path / "a.json")["links"]}
    assert links == {(k["source"], k["target"]) for k in full.to_json(tmp_path / "b.json")["links"]}
    loaded = AttributionGraph.load(small.save(tmp_path / "g"))
    assert loaded.is_rows_form and torch.equal(loaded.adjacency, small.adjacency)


def test_rows_spill_to_a_memory_mapped_file() -> None:
    buf = row_buffer(3, 5, spill=True)
    assert not buf.any() and buf.shape == (3, 5)
    buf[1, 2] = 4.0
    assert float(buf.sum()) == 4.0
    model = random_model(n_layers=3, d_model=32)
    clt = random_clt(model)
    prompt = torch.randint(1, 100, (40,), generator=torch.Generator().manual_seed(1))
    prompt[0] = 0
    full = attribute(model, clt, prompt)
    spilled = [
        g
        for budget in ("2.5MB", "3MB", "3.5MB")
        for g in [_try(model, clt, prompt, budget)]
        if g is not None and g.metadata["memory"]["spilled_rows"]
    ]
    assert spilled, "no budget made the rows spill"
    for g in spilled:
        assert_same(g, full)


def _try(model, clt, prompt, budget):
    try:
        return attribute(model, clt, prompt, memory_budget=budget)
    except ValueError:
        return None


def test_query_chunks_need_causal_attention_and_head_loadings_one_pass() -> None:
    model = random_model(n_layers=2, d_model=32)
    clt = random_clt(model)
    prompt = torch.randint(1, 100, (40,), generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="one-pass forward .* drop head_loadings"):
        attribute(model, clt, prompt, query_chunk=8, head_loadings=True)
    model.cfg.attention_dir = "bidirectional"  # a chunk would need later positions
    with pytest.raises(ValueError, match="causal attention"):
        attribute(model, clt, prompt, query_chunk=8)
    with pytest.raises(ValueError, match="cannot run in query chunks"):
        attribute(model, clt, prompt, memory_budget=300_000)


def test_too_small_a_budget_is_refused() -> None:
    model = random_model(n_layers=3, d_model=32)
    clt = random_clt(model)
    with pytest.raises(ValueError, match="raise memory_budget or lower max_feature_nodes"):
        attribute(model, clt, torch.randint(1, 100, (40,)), memory_budget=10_000)
    with pytest.raises(ValueError, match="is not a size"):
        parse_bytes("lots")
    assert parse_bytes("8GB") == 8 * 2**30 and parse_bytes("512 MiB") == 2**29
    assert parse_bytes(1e6) == 1_000_000
