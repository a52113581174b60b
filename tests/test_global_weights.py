"""Global weights of a CLT (``sae_lens_clt.circuits.global_weights``).

1. **Direct effects where attention plays no part**: on tiny random models of four families
   (LayerNorm read before its weight, RMSNorm, LayerNorm read after its weight through
   ``mlp.hook_in``, Gemma-2's residual read with post-norms; norm weights away from identity)
   with every attention output matrix ``W_O`` zeroed, every feature-to-feature edge of an
   attribution graph is ``a_s · V / σ_t`` at the same position (σ from the target layer's
   ``hook_scale``) and 0 across positions; ``virtual``, ``top_inputs``, ``top_outputs`` and
   ``top_table`` give the same ``V``.
2. **Data-weighted weights** equal ``V · E[a_s a_t] / E[a_t]`` computed densely from a cache.
3. **top_table** equals the top-k of a dense ``V`` built with explicit norm matrices, and no
   tensor it makes has two dimensions of size ``F`` (chunk smaller than ``F``).
4. **Errors** say what was wrong.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from sae_lens_clt import attribute
from sae_lens_clt.circuits import global_weights as gw_module
from sae_lens_clt.circuits.global_weights import GlobalWeights
from tests.architectures import build, build_model, calibrated_clt
from tests.conftest import make_clt, make_tiny_lm

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

# (family, what its CLT input hook exercises)
FAMILIES = [
    pytest.param("gpt2", id="layernorm-ln2.hook_normalized"),
    pytest.param("qwen3", id="rmsnorm-ln2.hook_normalized"),
    pytest.param("neox", id="layernorm-mlp.hook_in-weight"),
    pytest.param("gemma2", id="rmsnorm-post-norms-hook_resid_mid"),
]


def no_attention(model) -> None:
    """Attention writes nothing that depends on the residual (``W_O = 0``, ``b_O`` kept)."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()


def norm_matrix(model, clt, t: int) -> torch.Tensor:
    """``N_t [d, d]`` (row vectors, ``x ↦ x N_t``) written out from the hook's meaning."""
    d = model.cfg.d_model
    point = clt.cfg.metadata.hook_name.split(".", 2)[2]
    if point in ("hook_resid_pre", "hook_resid_mid", "hook_mlp_in"):
        return torch.eye(d)
    norm = model.blocks[t].ln2
    centre = torch.eye(d) - torch.full((d, d), 1.0 / d)
    N = centre if type(norm).__name__.startswith("LayerNorm") else torch.eye(d)
    if point == "mlp.hook_in":
        N = N @ torch.diag(norm.w.detach())
    return N


def dense_virtual(model, clt) -> torch.Tensor:
    """``V [L, F, L, F]`` (source layer, feature, target layer, feature), per unit scale."""
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    V = torch.zeros(L, F, L, F)
    with torch.no_grad():
        for s in range(L):
            for t in range(s + 1, L):
                write = sum(
                    clt.W_dec[s][:, j] for j, layer in enumerate(clt.targets(s)) if layer < t
                )  # [F, d]
                V[s, :, t] = write @ norm_matrix(model, clt, t) @ clt.W_enc[t]
    return V


def as_dict(rows):
    return {(s, f): w for s, f, w in rows}


# ---------------------------------------------------------------------- 1
@pytest.mark.parametrize("family", FAMILIES)
def test_virtual_weights_are_direct_effects_without_attention(family):
    fam = build(family)
    model, clt = fam.model, fam.clt
    no_attention(model)
    graph = attribute(model, clt, fam.prompt)
    gw = GlobalWeights(model, clt)
    _, cache = model.run_with_cache(fam.prompt[None])
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    if family == "neox":  # the read is after a norm weight far from identity
        assert (gw.reads[1].weight - 1).abs().max() > 0.3
    table = gw.top_table(k=(L - 1) * F, chunk_size=16, progress=False)
    active = graph.active_features.tolist()
    values = graph.activation_values.tolist()
    A = graph.adjacency
    scale = float(A[: len(active), : len(active)].abs().max())
    n_checked = 0
    inputs: dict = {}
    outputs: dict = {}
    for j, (t, q, g) in enumerate(active):
        hook = gw.reads[t].scale_hook
        inv_sigma = 1.0 / float(cache[hook][0, q, 0]) if hook else 1.0
        for i, (s, p, f) in enumerate(active):
            if p != q or s >= t:  # attention moved nothing; no path down or sideways
                assert abs(float(A[j, i])) <= 1e-6 * scale
                continue
            V = gw.virtual((s, f), (t, g))
            assert float(A[j, i]) == pytest.approx(values[i] * V * inv_sigma, abs=1e-6 * scale)
            if (t, g) not in inputs:
                inputs[(t, g)] = as_dict(gw.top_inputs((t, g), k=t * F))
                tol = 1e-5 * max(abs(w) for w in inputs[(t, g)].values())
                assert as_dict(table.inputs((t, g))) == pytest.approx(inputs[(t, g)], abs=tol)
            if (s, f) not in outputs:
                outputs[(s, f)] = {
                    (tt, gg): w for tt, gg, w in gw.top_outputs((s, f), k=(L - 1 - s) * F)
                }
            tol = 1e-5 * max(abs(w) for w in inputs[(t, g)].values())
            assert inputs[(t, g)][(s, f)] == pytest.approx(V, abs=tol)
            assert outputs[(s, f)][(t, g)] == pytest.approx(V, abs=tol)
            n_checked += 1
    assert n_checked > 100  # enough active pairs at shared positions to mean something


def test_norm_scale_multiplies_target_layer():
    fam = build("gpt2")
    gw = GlobalWeights(fam.model, fam.clt)
    base = gw.virtual((0, 3), (2, 5))
    gw.norm_scale = [1.0, 1.0, 0.25]
    assert gw.virtual((0, 3), (2, 5)) == pytest.approx(0.25 * base)
    assert GlobalWeights(fam.model, fam.clt, norm_scale=2.0).virtual((0, 3), (2, 5)) == (
        pytest.approx(2 * base)
    )


# ---------------------------------------------------------------------- 2
@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_data_weights_match_brute_force(family, monkeypatch):
    fam = build(family)
    model, clt = fam.model, fam.clt
    L, F = clt.cfg.n_layers, clt.cfg.d_sae
    gen = torch.Generator().manual_seed(5)
    batches = [torch.randint(1, 100, (3, 12), generator=gen) for _ in range(2)]
    gw = GlobalWeights(model, clt).fit(batches, progress=False)
    # brute force: dense activations of every token but position 0
    acts, inv_sigma = [], []
    with torch.no_grad():
        for tokens in batches:
            _, cache = model.run_with_cache(tokens)
            x = torch.stack([cache[clt.cfg.hook_in(s)][:, 1:] for s in range(L)], dim=2)
            acts.append(clt.encode(x.flatten(0, 1)))  # [N_b, L, F]
            inv_sigma.append(
                torch.stack([1 / cache[r.scale_hook][:, 1:, 0].flatten() for r in gw.reads], 1)
            )
    a = torch.cat(acts)  # [N, L, F]
    N = a.shape[0]
    assert gw.n_tokens == N == 2 * 3 * 11
    assert torch.allclose(gw.measured_norm_scale, torch.cat(inv_sigma).mean(0), rtol=1e-5)
    co = torch.einsum("nsf,ntg->sftg", a, a) / N  # E[a_s a_t]
    mean = a.mean(0)  # [L, F]  E[a_t]
    ratio = torch.where(mean > 0, co / mean.clamp(min=1e-30), 0.0)  # [L, F, L, F]
    twera = dense_virtual(model, clt) * ratio
    assert (twera != 0).sum() > 100
    for t, g in [(1, int(mean[1].argmax())), (2, int(mean[2].argmax())), (2, 7)]:
        expect = {(s, f): float(twera[s, f, t, g]) for s in range(t) for f in range(F)}
        expect = {key: w for key, w in expect.items() if w != 0}
        got = as_dict(gw.top_inputs((t, g), k=t * F, kind="data"))
        assert got.keys() == expect.keys()
        assert got == pytest.approx(expect, rel=1e-4, abs=1e-6)
    for s, f in [(0, int(mean[0].argmax())), (1, int(mean[1].argmax()))]:
        expect = {(t, g): float(twera[s, f, t, g]) for t in range(s + 1, L) for g in range(F)}
        expect = {key: w for key, w in expect.items() if w != 0}
        got = {(t, g): w for t, g, w in gw.top_outputs((s, f), k=L * F, kind="data")}
        assert got == pytest.approx(expect, rel=1e-4, abs=1e-6)
    # the table, with the join cut into pieces of a few pairs
    monkeypatch.setattr(gw_module, "MAX_PAIRS", 7)
    table = gw.top_table(k=4, kind="data", chunk_size=8, progress=False)
    for i, t in enumerate(table.target_layers):
        dense = twera[:t, :, t].reshape(t * F, F)  # [sources, targets]
        top = dense.abs().topk(4, dim=0)
        assert torch.allclose(table.weights[i].abs(), top.values.T, rtol=1e-4, atol=1e-6)
        nonzero = top.values.T > 0
        assert torch.equal(table.source_layers[i][nonzero], (top.indices.T // F)[nonzero])
        assert torch.equal(table.source_features[i][nonzero], (top.indices.T % F)[nonzero])
        assert (table.source_layers[i][~nonzero] == -1).all()


def test_fit_stops_at_max_tokens():
    fam = build("gpt2")
    model, clt = fam.model, fam.clt
    batches = [torch.randint(1, 100, (4, 10), generator=torch.Generator().manual_seed(1))]
    gw = GlobalWeights(model, clt).fit(batches, max_tokens=13, progress=False)
    assert gw.n_tokens == 13
    with torch.no_grad():
        _, cache = model.run_with_cache(batches[0])
        x = torch.stack([cache[clt.cfg.hook_in(s)][:, 1:] for s in range(3)], dim=2)
        a = clt.encode(x.flatten(0, 1)[:13])  # the first 13 explained tokens, in order
    for layer, acts in enumerate(gw.layer_activations):
        assert torch.allclose(acts.totals, a[:, layer].sum(0), rtol=1e-5, atol=1e-6)


def test_fit_drops_bos_tokens():
    model = make_tiny_lm(n_layers=2)  # word-level tokenizer, BOS id 0
    clt = make_clt(n_layers=2, d_in=32, d_sae=16)
    tokens = torch.tensor([[0, 5, 6, 0, 7], [0, 8, 9, 10, 11]])  # a BOS inside the first row
    gw = GlobalWeights(model, clt).fit([tokens], progress=False)
    assert gw.n_tokens == 3 + 4
    with pytest.raises(ValueError, match=r"\[batch, T\] or \[T\], got \(1, 1, 2, 5\)"):
        gw.fit([tokens[None, None]], progress=False)


# ---------------------------------------------------------------------- 3
class ShapeWatch(TorchFunctionMode):
    """Records the shape of every tensor a torch function returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, tuple | list) else (out,):
            if isinstance(item, torch.Tensor):
                self.shapes.append(tuple(item.shape))
        return out


@pytest.mark.parametrize("variant", ["clt", "plt", "neox-clt"])
def test_top_table_equals_dense_in_bounded_memory(variant):
    F, k, chunk = 128, 5, 8
    if variant == "neox-clt":
        model = build_model("neox")
        clt = calibrated_clt(
            model, ("blocks.{layer}.mlp.hook_in", "blocks.{layer}.mlp.hook_out"), d_sae=F
        )
    else:
        model = build_model("gpt2")
        clt = make_clt(n_layers=3, d_in=32, d_sae=F, plt=variant == "plt")
    gw = GlobalWeights(model, clt)
    with ShapeWatch() as watch:
        table = gw.top_table(k=k, chunk_size=chunk, progress=False)
        pair = gw.top_table((0, 2), k=k, chunk_size=chunk, progress=False)
    # never an F x F block; nothing bigger than a [d, F] reading matrix or a [k + chunk, F] merge
    d = model.cfg.d_model
    assert watch.shapes and all(sum(n >= F for n in shape) < 2 for shape in watch.shapes)
    assert max(torch.Size(shape).numel() for shape in watch.shapes) <= max(d, k + chunk) * F
    V = dense_virtual(model, clt)
    assert table.target_layers == [1, 2] and pair.target_layers == [2]
    for i, t in enumerate(table.target_layers):
        dense = V[:t, :, t].reshape(t * F, F)  # [sources, targets]
        top = dense.abs().topk(k, dim=0)
        assert torch.allclose(table.weights[i].abs(), top.values.T, rtol=1e-4, atol=1e-6)
        signs = torch.gather(dense, 0, top.indices).T.sign()
        assert torch.equal(table.weights[i].sign(), signs)
        assert torch.equal(table.source_layers[i], top.indices.T // F)
        assert torch.equal(table.source_features[i], top.indices.T % F)
    top = V[0, :, 2].abs().topk(k, dim=0)
    assert torch.allclose(pair.weights[0].abs(), top.values.T, rtol=1e-4, atol=1e-6)
    assert (pair.source_layers == 0).all()
    assert torch.equal(pair.source_features[0], top.indices.T)
    # the single queries agree with the dense matrix too
    t, g = 2, 17
    expect = [divmod(int(i), F) for i in V[:2, :, t, g].flatten().abs().topk(k).indices]
    got = gw.top_inputs((t, g), k=k)
    assert [(s, f) for s, f, _ in got] == expect
    assert [w for *_, w in got] == pytest.approx(
        [float(V[s, f, t, g]) for s, f in expect], rel=1e-4
    )
    out = gw.top_outputs((0, 3), k=k)
    flat = V[0, 3, 1:].flatten()
    idx = flat.abs().topk(k).indices
    assert [(tt, gg) for tt, gg, _ in out] == [(1 + int(i) // F, int(i) % F) for i in idx]


# ---------------------------------------------------------------------- 4
def test_errors_say_what_is_wrong():
    fam = build("gemma2-mlp-hooks")
    with pytest.raises(ValueError, match="post-MLP norm"):
        GlobalWeights(fam.model, fam.clt)
    fam = build("gpt2")
    model, clt = fam.model, fam.clt
    clt.cfg.metadata.hook_name = "blocks.{layer}.hook_resid_post"
    with pytest.raises(ValueError, match="cannot map the CLT's input hook"):
        GlobalWeights(model, clt)
    clt.cfg.metadata.hook_name = "blocks.{layer}.ln2.hook_normalized"
    clt.cfg.metadata.hook_name_out = "blocks.{layer}.hook_resid_post"
    with pytest.raises(ValueError, match="cannot map the CLT's output hook"):
        GlobalWeights(model, clt)
    clt.cfg.metadata.hook_name_out = "blocks.{layer}.hook_mlp_out"
    gw = GlobalWeights(model, clt)
    F = clt.cfg.d_sae
    with pytest.raises(RuntimeError, match=r"call fit\(token_batches\) first"):
        gw.top_inputs((1, 0), kind="data")
    with pytest.raises(RuntimeError, match="fit"):
        gw.top_table(kind="data", progress=False)
    with pytest.raises(IndexError, match=rf"target feature {F} out of range \[0, {F}\)"):
        gw.virtual((0, 0), (1, F))
    with pytest.raises(IndexError, match=r"source layer 3 out of range \[0, 3\)"):
        gw.top_outputs((3, 0))
    with pytest.raises(ValueError, match=r"\(layer, feature\) pair"):
        gw.top_inputs(5)
    with pytest.raises(ValueError, match="kind must be one of"):
        gw.top_inputs((1, 0), kind="global")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        gw.top_inputs((1, 0), k=0)
    with pytest.raises(ValueError, match="0 <= source < target < 3"):
        gw.top_table((2, 1), progress=False)
    with pytest.raises(ValueError, match="norm_scale must be"):
        gw.norm_scale = [1.0, 2.0]
    with pytest.raises(ValueError, match="saw no tokens"):
        gw.fit([torch.zeros(2, 1, dtype=torch.long)], progress=False)
    with pytest.raises(KeyError, match="not a target layer"):
        gw.top_table((0, 1), k=2, progress=False).inputs((2, 0))
    # the trivial cases are answers, not errors
    assert gw.virtual((2, 0), (1, 0)) == 0.0 and gw.virtual((1, 0), (1, 1)) == 0.0
    assert gw.top_inputs((0, 0)) == [] and gw.top_outputs((2, 0)) == []
