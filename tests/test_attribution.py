"""Attribution graphs: exactness by intervention, a hand-computed case, save / load.

The core check (docs/design.md §3): under full freeze (attention patterns, norm scales and
feature activations all held at their values on the prompt), inject one source's vector in
a separate forward run; every target (active features' pre-activations and the demeaned
logits) must move by exactly that source's column of the adjacency matrix. The reference
run here uses forward hooks only (no autograd), independently of ``attribute``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.attribution import AttributionGraph, attribute, to_tokens
from sae_lens_clt.attribution.attribute import unembed_input_hook
from tests.conftest import has_skip, new_transcoder

# ---------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def toy_tokenizer() -> Any:
    """A word-level tokenizer over ``<bos> <unk> w0 … w97`` (BOS id 0), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<unk>"] + [f"w{i}" for i in range(98)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<bos>",
        unk_token="<unk>", add_bos_token=True, name_or_path="toy",
    )  # fmt: skip


def random_model(
    n_layers: int = 3,
    d_model: int = 32,
    pos: str = "standard",
    seed: int = 0,
    tokenizer: bool = False,
) -> HookedTransformer:
    """A small random LN transformer with non-uniform attention (vocabulary 100)."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=8,
        n_heads=d_model // 8,
        d_mlp=4 * d_model,
        d_vocab=100,
        n_ctx=64,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type=pos,
        initializer_range=0.15,
        seed=seed,
    )
    return HookedTransformer(cfg, tokenizer=toy_tokenizer() if tokenizer else None).eval()


def random_clt(
    model: HookedTransformer,
    d_sae: int = 64,
    active_frac: float = 0.04,
    skip: bool = False,
    activation_fn: str = "jumprelu",
    seed: int = 0,
) -> CrossLayerTranscoder:
    """A random CLT over ``model`` whose thresholds leave about ``active_frac`` active."""
    L, d = model.cfg.n_layers, model.cfg.d_model
    clt = new_transcoder(activation_fn, skip, n_layers=L, d_in=d, d_sae=d_sae)
    cfg = clt.cfg
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clt.W_enc.normal_(0, 1.0, generator=gen)
        clt.b_enc.normal_(0, 0.1, generator=gen)
        for w in clt.W_dec:
            w.normal_(0, 0.5 / d**0.5, generator=gen)
        clt.b_dec.normal_(0, 0.05, generator=gen)
        if skip:
            clt.W_skip.normal_(0, 0.2 / d**0.5, generator=gen)
        tokens = torch.randint(0, model.cfg.d_vocab, (4, 24), generator=gen)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "ln2.hook_normalized" in n)
        x = torch.stack([cache[cfg.hook_in(s)] for s in range(L)], dim=-2).flatten(0, 1)
        pre = torch.einsum("nli,lif->nlf", x, clt.W_enc) + clt.b_enc  # [n, L, F]
        if activation_fn == "jumprelu":
            clt.threshold.copy_(pre.quantile(1 - active_frac, dim=0).clamp(min=1e-3))
        else:  # relu: shift the bias so that the same share is positive
            clt.b_enc.sub_(pre.quantile(1 - active_frac, dim=0))
    return clt


def default_setup() -> tuple[HookedTransformer, CrossLayerTranscoder, Any]:
    """The shipped default model with a random CLT, or skip when it is not there."""
    default_model = pytest.importorskip("sae_lens_clt.default_model")
    try:
        model = default_model.load_model()
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        pytest.skip(f"default model not available: {e}")
    clt = random_clt(model, d_sae=256, active_frac=0.03, seed=1)
    return model, clt, "The capital of the state containing Dallas is"


SETUPS = {
    "standard-pos": lambda: (random_model(pos="standard"), None, None),
    "rotary": lambda: (random_model(pos="rotary", n_layers=4, d_model=48, seed=1), None, None),
    "skip-relu": lambda: (random_model(n_layers=2, seed=2), "skip-relu", None),
    "default-model": default_setup,
}


def build(name: str) -> tuple[HookedTransformer, CrossLayerTranscoder, Any]:
    model, clt, prompt = SETUPS[name]()
    if clt is None:
        clt = random_clt(model)
    elif clt == "skip-relu":
        clt = random_clt(model, d_sae=160, skip=True, activation_fn="relu")
    if prompt is None:
        gen = torch.Generator().manual_seed(3)
        prompt = torch.randint(0, model.cfg.d_vocab, (14,), generator=gen)
    return model, clt, prompt


# ---------------------------------------------------------------------- reference
@dataclass
class Reference:
    """Clean-run values the reference injection needs (all detached)."""

    tokens: torch.Tensor  # [T]
    frozen: dict[str, torch.Tensor]  # hook_pattern / hook_scale values
    x: torch.Tensor  # [L, T, d_in]
    y: torch.Tensor  # [L, T, d_out]
    errors: torch.Tensor  # [L, T, d_out], zero at position 0


@torch.no_grad()
def clean_reference(model: HookedTransformer, clt: CrossLayerTranscoder, tokens) -> Reference:
    L = clt.cfg.n_layers
    _, cache = model.run_with_cache(tokens[None])
    frozen = {n: v for n, v in cache.items() if n.endswith(("hook_pattern", "hook_scale"))}
    x = torch.stack([cache[clt.cfg.hook_in(s)][0] for s in range(L)])
    y = torch.stack([cache[clt.cfg.hook_out(s)][0] for s in range(L)])
    acts = torch.stack([clt.activation(clt.encode_layer_pre(x[s], s), s) for s in range(L)])
    acts[:, 0] = 0
    recon = clt.decode(acts.transpose(0, 1), x.transpose(0, 1)).transpose(0, 1)
    errors = y - recon
    errors[:, 0] = 0
    return Reference(tokens, frozen, x, y, errors)


@torch.no_grad()
def frozen_targets(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    ref: Reference,
    graph: AttributionGraph,
    out_inject: torch.Tensor,  # [K, L, T, d_out] added to the MLP outputs
    embed_inject: torch.Tensor,  # [K, T, d_model] added to the token embeddings
    pos_inject: torch.Tensor | None,  # [K, T, d_model] added to the positional embeddings
) -> torch.Tensor:
    """Targets (feature pre-activations then demeaned logits) ``[K, n_targets]`` of a
    fully frozen forward run with some vectors injected (one injection per batch row)."""
    K, L = out_inject.shape[0], clt.cfg.n_layers
    seen: dict[str, torch.Tensor] = {}

    def freeze(act, hook):
        clean = ref.frozen[hook.name]
        if clean.shape[0] != 1 and clean.shape[0] != act.shape[0]:  # flattened [batch*...]
            return clean.repeat(act.shape[0] // clean.shape[0], *([1] * (clean.ndim - 1)))
        return clean.expand_as(act)

    def mlp_out(act, hook, layer):
        out = ref.y[layer] + out_inject[:, layer]
        if has_skip(clt):  # the skip path stays linear in the current input
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
    unembed_in = unembed_input_hook(model)
    hooks.append((unembed_in, keep))
    model.run_with_hooks(ref.tokens[None].expand(K, -1), fwd_hooks=hooks)
    # logits before any final soft-cap (Gemma-2): the linear targets the graph explains
    last = seen[unembed_in][:, -1] @ model.W_U + model.b_U  # [K, d_vocab]
    demeaned = last[:, graph.logit_token_ids] - last.mean(-1, keepdim=True)  # [K, n_logits]
    layers, pos, feats = graph.active_features.unbind(1)
    x_in = torch.stack([seen[clt.cfg.hook_in(s)] for s in range(L)], 1)  # [K, L, T, d_in]
    pre = torch.einsum("kni,ni->kn", x_in[:, layers, pos], clt.W_enc[layers, :, feats])
    return torch.cat([pre, demeaned], dim=1)


def source_injections(
    model: HookedTransformer,
    clt: CrossLayerTranscoder,
    ref: Reference,
    graph: AttributionGraph,
    columns: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The vectors of the sources ``columns`` (node indices), one per batch row (row 0:
    nothing injected, the baseline)."""
    K, L, T = columns.numel() + 1, clt.cfg.n_layers, graph.n_pos
    out = torch.zeros(K, L, T, clt.cfg.d_out)
    embed = torch.zeros(K, T, model.cfg.d_model)
    has_pos = model.cfg.positional_embedding_type == "standard"
    pos_inj = torch.zeros(K, T, model.cfg.d_model) if has_pos else None
    for k, col in enumerate(columns.tolist(), start=1):
        kind = graph.node_kind(col)
        if kind == "feature":
            s, p, f = graph.active_features[col].tolist()
            out[k, s:, p] = graph.activation_values[col] * clt.W_dec[s][f]
        elif kind == "error":
            s, p = graph.node_layer_pos(col)
            out[k, s, p] = ref.errors[s, p]
        else:
            p = col - graph.embedding_offset
            embed[k, p] = model.W_E[ref.tokens[p]]
            if pos_inj is not None:
                pos_inj[k, p] = model.W_pos[p]
    return out, embed, pos_inj


def check_columns(model, clt, prompt, graph: AttributionGraph, columns: torch.Tensor) -> float:
    """Assert the targets move by exactly the adjacency columns; return the max error."""
    tokens = to_tokens(model, prompt)
    ref = clean_reference(model, clt, tokens)
    out, embed, pos = source_injections(model, clt, ref, graph, columns)
    targets = frozen_targets(model, clt, ref, graph, out, embed, pos)
    moved = (targets[1:] - targets[0]).T  # [n_targets, n_columns]
    target_rows = torch.cat(
        [torch.arange(graph.n_features), torch.arange(graph.logit_offset, graph.n_nodes)]
    )
    expected = graph.adjacency[target_rows][:, columns]
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(moved, expected, atol=1e-4 * scale, rtol=1e-4)
    return (moved - expected).abs().max().item() / scale


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_node_type_moves_targets_by_its_column(setup: str) -> None:
    model, clt, prompt = build(setup)
    graph = attribute(model, clt, prompt, batch_size=64)
    assert graph.n_features >= 100, "want at least 100 features to check"
    gen = torch.Generator().manual_seed(0)
    features = torch.randperm(graph.n_features, generator=gen)[:120]
    errors = torch.arange(graph.error_offset, graph.embedding_offset)
    embeddings = torch.arange(graph.embedding_offset, graph.logit_offset)
    for columns in (features, errors, embeddings):
        check_columns(model, clt, prompt, graph, columns)
    # position 0 (BOS) is not explained: no features there, zero error columns
    assert (graph.active_features[:, 1] > 0).all()
    bos_errors = [graph.error_index(s, 0) for s in range(graph.n_layers)]
    assert graph.adjacency[:, bos_errors].abs().max() == 0


def test_max_feature_nodes_keeps_exact_rows_of_the_most_influential() -> None:
    model, clt, prompt = build("standard-pos")
    full = attribute(model, clt, prompt)
    part = attribute(model, clt, prompt, max_feature_nodes=40, batch_size=16)
    assert part.n_features == 40 and part.metadata["n_active_features"] == full.n_features
    # the kept features are a subset of the full graph's, and their edges are the same
    full_index = {tuple(r): i for i, r in enumerate(full.active_features.tolist())}
    idx = torch.tensor([full_index[tuple(r)] for r in part.active_features.tolist()])
    assert (idx.diff() > 0).all(), "kept features stay in node order"
    rest = torch.arange(full.n_features, full.n_nodes)
    full_cols = torch.cat([idx, rest])
    full_rows = torch.cat([idx, torch.arange(full.logit_offset, full.n_nodes)])
    part_rows = torch.cat([torch.arange(40), torch.arange(part.logit_offset, part.n_nodes)])
    torch.testing.assert_close(
        part.adjacency[part_rows], full.adjacency[full_rows][:, full_cols], atol=1e-5, rtol=1e-5
    )
    # ranked by influence: they carry much more influence than 40 random features would
    from sae_lens_clt.attribution.prune import node_influence

    infl = node_influence(full)[: full.n_features]
    assert infl[idx].sum() > 40 / full.n_features * infl.sum() * 3


# ---------------------------------------------------------------------- by hand
def test_tiny_case_by_hand() -> None:
    """1 layer, d_model 2, attention and MLP weights zero, no norm: everything by hand.

    resid_final[p] = W_E[tok_p] + mlp_out[p]; logits = resid_final @ W_U (b_U = 0).
    Learned positions are zero. The CLT reads the residual (hook_resid_pre) with one feature, W_enc = [1, 0], b = 0,
    ReLU, and writes W_dec = [0, 2] to hook_mlp_out.
    """
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=2, d_head=1, n_heads=1, d_mlp=4, d_vocab=3, n_ctx=4,
        act_fn="relu", normalization_type=None, positional_embedding_type="standard",
    )  # fmt: skip
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E.copy_(torch.tensor([[1.0, 0.0], [3.0, 1.0], [0.0, 1.0]]))
        model.W_U.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
    clt_cfg = CrossLayerTranscoderConfig(n_layers=1, d_in=2, d_sae=1, activation_fn="relu")
    clt_cfg.metadata.hook_name = "blocks.{layer}.hook_resid_pre"
    clt = CrossLayerTranscoder(clt_cfg)
    with torch.no_grad():
        clt.W_enc.copy_(torch.tensor([[[1.0], [0.0]]]))
        clt.W_dec[0].copy_(torch.tensor([[[0.0, 2.0]]]))
    tokens = [0, 1]  # BOS, then token 1 with embedding [3, 1]
    graph = attribute(model, clt, tokens, max_n_logits=3, desired_logit_prob=1.0)
    # the MLP is all zero, so the true output is 0; the feature is active at position 1
    # with a = 3, writes [0, 6]; the error at position 1 is 0 - [0, 6] = [0, -6].
    assert graph.active_features.tolist() == [[0, 1, 0]]
    assert graph.activation_values.tolist() == [3.0]
    # logits at position 1: resid = [3, 1] + [0, 6] + [0, -6] = [3, 1] -> [3, 1, 5]
    assert graph.logit_token_ids.tolist() == [2, 0, 1]
    probs = torch.softmax(torch.tensor([3.0, 1.0, 5.0]), 0)
    torch.testing.assert_close(graph.logit_probabilities, probs[[2, 0, 1]])
    # demeaned unembedding: W_U - mean over vocab = [[0, -1, 1], [0, 1, -1]]
    u = {0: torch.tensor([0.0, 0.0]), 1: torch.tensor([-1.0, 1.0]), 2: torch.tensor([1.0, -1.0])}
    feat_vec, err_vec, emb_vec = torch.tensor([0.0, 6.0]), torch.tensor([0.0, -6.0]), None
    emb_vec = torch.tensor([3.0, 1.0])
    # nodes: [feature, error(0,0), error(0,1), emb 0, emb 1, logit 2, logit 0, logit 1]
    expected = torch.zeros(8, 8)
    expected[0, 4] = 3.0  # feature pre-activation = W_enc . W_E[1] = 3
    for row, tok in zip((5, 6, 7), (2, 0, 1), strict=True):
        expected[row, 0] = u[tok] @ feat_vec
        expected[row, 2] = u[tok] @ err_vec
        expected[row, 4] = u[tok] @ emb_vec
    torch.testing.assert_close(graph.adjacency, expected)


# ---------------------------------------------------------------------- save / load
def test_save_load_roundtrip(tmp_path) -> None:
    model, clt, prompt = build("standard-pos")
    graph = attribute(model, clt, prompt, max_n_logits=3)
    path = graph.save(tmp_path / "graph.safetensors")
    loaded = AttributionGraph.load(path)
    for name in ("adjacency", "active_features", "activation_values", "logit_token_ids",
                 "logit_probabilities", "input_tokens"):  # fmt: skip
        assert torch.equal(getattr(loaded, name), getattr(graph, name)), name
    assert loaded.n_layers == graph.n_layers and loaded.metadata == graph.metadata
    assert loaded.adjacency.dtype == torch.float32
    assert graph.save(tmp_path / "no_suffix").name == "no_suffix.safetensors"
    assert loaded.active_features.dtype == torch.long
    # no pickle anywhere: the file is a safetensors file with a JSON header
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:8] and raw[8:9] == b"{"


def test_load_rejects_other_files(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an attribution graph"):
        AttributionGraph.load(tmp_path / "other.safetensors")


def test_string_prompts_get_one_bos() -> None:
    model = random_model(tokenizer=True)
    clt = random_clt(model)
    assert to_tokens(model, "w3 w5 w7").tolist() == [0, 5, 7, 9]
    assert to_tokens(model, [5, 7, 9]).tolist() == [0, 5, 7, 9]
    assert to_tokens(model, [0, 5, 7, 9]).tolist() == [0, 5, 7, 9]
    graph = attribute(model, clt, "w3 w5 w7 w9 w11 w13")
    assert graph.metadata["token_strings"][:3] == ["<bos>", "w3", "w5"]
    assert graph.metadata["prompt"] == "w3 w5 w7 w9 w11 w13"
    assert abs(graph.logit_probabilities.sum().item()) <= 1.0


def test_prompt_validation() -> None:
    model = random_model(n_layers=2)
    clt = random_clt(random_model(n_layers=3))
    with pytest.raises(ValueError, match="layers"):
        attribute(model, clt, [0, 1, 2])
    with pytest.raises(ValueError, match="tokenizer"):
        attribute(model, random_clt(model), "a string")


def test_no_active_features_still_exact() -> None:
    """With every threshold out of reach the graph has only errors, embeddings, logits."""
    model, clt, prompt = build("standard-pos")
    with torch.no_grad():
        clt.threshold.fill_(1e6)
    graph = attribute(model, clt, prompt, max_feature_nodes=5)
    assert graph.n_features == 0
    check_columns(model, clt, prompt, graph, torch.arange(graph.n_nodes - graph.n_logits))


# ---------------------------------------------------------------------- circuit-tracer
def circuit_tracer_graph(
    model: HookedTransformer, clt: CrossLayerTranscoder, tokens, tmp_path, **kw
):
    """circuit-tracer's own graph of the same model, CLT and tokens, as its user gets it:
    our export, then its ``load_clt`` with the hooks the written ``config.yaml`` names."""
    ct = pytest.importorskip("circuit_tracer")
    from tests.test_architectures import circuit_tracer_model

    folder = tmp_path / "clt"
    clt.to_circuit_tracer(folder)
    return ct.attribute(tokens, circuit_tracer_model(model, folder), **kw)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("pos", ["rotary", "standard"])
def test_matches_circuit_tracer(pos: str, tmp_path) -> None:
    """Same nodes and edges as circuit-tracer 0.5, except that our embedding nodes also
    carry the learned positional embedding (docs/design.md §3), which circuit-tracer leaves out."""
    from tests.architectures import perturb_norms
    from tests.test_architectures import assert_same_graph

    model = random_model(pos=pos, tokenizer=True)
    perturb_norms(model)  # identity norm weights would hide a hook mismatch
    clt = random_clt(model)
    tokens = torch.tensor([0] + list(range(5, 18)))
    ours = attribute(model, clt, tokens)
    theirs = circuit_tracer_graph(model, clt, tokens, tmp_path, batch_size=64)
    assert_same_graph(ours, theirs, model)
    # with max_feature_nodes the progressive ranking picks the same features
    ours = attribute(model, clt, tokens, max_feature_nodes=40, batch_size=16)
    theirs = circuit_tracer_graph(model, clt, tokens, tmp_path, batch_size=16, max_feature_nodes=40)
    picked = theirs.active_features[theirs.selected_features]
    assert torch.equal(picked, ours.active_features)


@pytest.mark.filterwarnings("ignore")
def test_shipped_model_and_clt_match_circuit_tracer(tmp_path) -> None:
    """The demo's case as a circuit-tracer user meets it: the shipped CLT exported, loaded
    with the hooks of its config.yaml, traced by circuit-tracer on the shipped model."""
    import sae_lens_clt
    from tests.test_architectures import assert_same_graph

    model = sae_lens_clt.load_model(sae_lens_clt.DEFAULT_MODEL)
    clt = CrossLayerTranscoder.from_pretrained(sae_lens_clt.DEFAULT_CLT)
    prompt = "The capital of the state containing Dallas is"
    ours = attribute(model, clt, prompt)
    theirs = circuit_tracer_graph(model, clt, to_tokens(model, prompt), tmp_path, batch_size=128)
    assert ours.n_features == 350
    assert_same_graph(ours, theirs, model)


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["rotary", "default-model"])
def test_every_column_of_a_long_prompt(setup: str) -> None:
    """All columns (every active feature, error and embedding) on a 40-token prompt."""
    model, clt, _ = build(setup)
    prompt = torch.randint(1, model.cfg.d_vocab, (40,), generator=torch.Generator().manual_seed(5))
    graph = attribute(model, clt, prompt)
    for columns in torch.arange(graph.logit_offset).split(300):
        check_columns(model, clt, prompt, graph, columns)
