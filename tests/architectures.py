"""Tiny random-weight HookedTransformers of each architecture family people trace.

Each family copies the architecture flags of its TransformerLens config (norm type and
placement, gated MLP, grouped-query attention, rotary variant, soft-caps, parallel
attention + MLP) at a size that runs in about a second. Norm weights (and LayerNorm
biases) are set away from identity, so a hook read before the norm's weight is a different
tensor from one read after it: a test that confuses them fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.hooks import prepare_model

D_VOCAB = 100


def _cfg(**kw) -> HookedTransformerConfig:
    base = dict(
        n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=D_VOCAB, n_ctx=64,
        initializer_range=0.15, seed=0, default_prepend_bos=True,
    )  # fmt: skip
    base.update(kw)
    return HookedTransformerConfig(**base)


FAMILIES = {
    # GPT-2: LayerNorm, learned positions, GELU MLP
    "gpt2": dict(
        cfg=dict(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
                 original_architecture="GPT2LMHeadModel"),
        hooks=("blocks.{layer}.ln2.hook_normalized", "blocks.{layer}.hook_mlp_out"),
    ),
    # Gemma-2: RMS norms before *and after* attention and MLP, gated GELU MLP, GQA, rotary,
    # local/global attention, attention and final-logit soft-caps; reads hook_resid_mid like
    # the public Gemma-2 CLTs
    "gemma2": dict(
        cfg=dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", final_rms=True,
                 use_normalization_before_and_after=True, gated_mlp=True, n_key_value_heads=2,
                 positional_embedding_type="rotary", rotary_dim=8, rotary_base=10000,
                 attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0,
                 attn_types=["global", "local"], window_size=6, use_attn_scale=True,
                 original_architecture="Gemma2ForCausalLM"),
        hooks=("blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out"),
    ),
    # Gemma-2 again, through the MLP's own hooks: mlp.hook_out is *before* the post-MLP norm
    "gemma2-mlp-hooks": dict(
        cfg="gemma2",
        hooks=("blocks.{layer}.mlp.hook_in", "blocks.{layer}.mlp.hook_out"),
    ),
    # Gemma-3 (what Gemma Scope 2 CLTs read): Gemma-2's block with RMS norms on queries and
    # keys instead of the soft-caps
    "gemma3": dict(
        cfg=dict(act_fn="gelu_pytorch_tanh", normalization_type="RMS", final_rms=True,
                 use_normalization_before_and_after=True, gated_mlp=True, n_key_value_heads=2,
                 positional_embedding_type="rotary", rotary_dim=8, rotary_base=1000000,
                 use_qk_norm=True, attn_types=["local", "global"], window_size=6,
                 use_attn_scale=True, original_architecture="Gemma3ForCausalLM"),
        hooks=("blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out"),
    ),
    # Llama-3.2: RMS, rotary with NTK-by-parts scaling, GQA, gated SiLU
    "llama3": dict(
        cfg=dict(act_fn="silu", normalization_type="RMS", final_rms=True, gated_mlp=True,
                 n_key_value_heads=2, positional_embedding_type="rotary", rotary_dim=8,
                 rotary_base=500000, use_NTK_by_parts_rope=True, NTK_by_parts_factor=32.0,
                 NTK_by_parts_low_freq_factor=1.0, NTK_by_parts_high_freq_factor=4.0,
                 NTK_original_ctx_len=32, rotary_adjacent_pairs=False,
                 original_architecture="LlamaForCausalLM"),
        hooks=("blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out"),
    ),
    # GPT-NeoX / Pythia: LayerNorm, partial rotary, attention and MLP in parallel
    "neox": dict(
        cfg=dict(act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                 rotary_dim=2, parallel_attn_mlp=True, original_architecture="GPTNeoXForCausalLM"),
        hooks=("blocks.{layer}.mlp.hook_in", "blocks.{layer}.mlp.hook_out"),
    ),
    # Qwen3: RMS, rotary, GQA, gated SiLU, RMS norms on queries and keys
    "qwen3": dict(
        cfg=dict(act_fn="silu", normalization_type="RMS", final_rms=True, gated_mlp=True,
                 n_key_value_heads=2, positional_embedding_type="rotary", rotary_dim=8,
                 rotary_base=1000000, use_qk_norm=True, original_architecture="Qwen3ForCausalLM"),
        hooks=("blocks.{layer}.ln2.hook_normalized", "blocks.{layer}.hook_mlp_out"),
    ),
}  # fmt: skip


@dataclass
class Family:
    name: str
    model: HookedTransformer
    clt: CrossLayerTranscoder
    prompt: torch.Tensor  # [T] token ids, BOS (0) first


@torch.no_grad()
def perturb_norms(model: HookedTransformer, seed: int = 0) -> None:
    """Norm weights 1 + N(0, 0.3²) and LayerNorm biases N(0, 0.2²): far from identity."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.split(".")[-1]
        if ".ln" in name or name.startswith("ln_final") or "q_norm" in name or "k_norm" in name:
            if leaf == "w":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif leaf == "b":
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def build_model(name: str, tokenizer=None, seed: int = 0) -> HookedTransformer:
    spec = FAMILIES[name]
    cfg_kw = FAMILIES[spec["cfg"]]["cfg"] if isinstance(spec["cfg"], str) else spec["cfg"]
    model = HookedTransformer(_cfg(seed=seed, **cfg_kw), tokenizer=tokenizer).eval()
    perturb_norms(model, seed)
    with torch.no_grad():  # non-zero attention output and MLP biases where the model has them
        gen = torch.Generator().manual_seed(seed + 1)
        for name_, p in model.named_parameters():
            if name_.endswith(("b_O", "b_out", "b_in", "b_Q", "b_K", "b_V")):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@torch.no_grad()
def calibrated_clt(
    model: HookedTransformer,
    hooks: tuple[str, str],
    d_sae: int = 64,
    active_frac: float = 0.04,
    seed: int = 0,
    activation_fn: str = "jumprelu",
) -> CrossLayerTranscoder:
    """A random CLT on ``hooks`` whose thresholds leave about ``active_frac`` active."""
    L, d = model.cfg.n_layers, model.cfg.d_model
    cfg = CrossLayerTranscoderConfig(n_layers=L, d_in=d, d_sae=d_sae, activation_fn=activation_fn)
    cfg.metadata.hook_name, cfg.metadata.hook_name_out = hooks
    cfg.metadata.model_name = "tiny-" + str(model.cfg.original_architecture)
    clt = CrossLayerTranscoder(cfg)
    prepare_model(model, list(hooks), L)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, D_VOCAB, (4, 24), generator=gen)
    _, cache = model.run_with_cache(tokens)
    x = torch.stack([cache[cfg.hook_in(s)] for s in range(L)], dim=-2).flatten(0, 1)
    scale = x.norm(dim=-1).mean(0)  # [L]: inputs of very different sizes across hooks
    clt.W_enc.normal_(0, 1.0, generator=gen)
    clt.W_enc.div_(scale[:, None, None] / d**0.5)
    clt.b_enc.normal_(0, 0.1, generator=gen)
    y = torch.stack([cache[cfg.hook_out(s)] for s in range(L)], dim=-2).flatten(0, 1)
    out_scale = y.norm(dim=-1).mean(0)  # [L]
    for s, w in enumerate(clt.W_dec):
        w.normal_(0, 1.0 / d**0.5, generator=gen)
        w.mul_(out_scale[s:, None] * 0.3)
    clt.b_dec.normal_(0, 0.05, generator=gen)
    pre = torch.einsum("nli,lif->nlf", x, clt.W_enc) + clt.b_enc
    if activation_fn == "jumprelu":
        clt.threshold.copy_(pre.quantile(1 - active_frac, dim=0).clamp(min=1e-3))
    else:
        clt.b_enc.sub_(pre.quantile(1 - active_frac, dim=0))
    return clt


def build(name: str, tokenizer=None, seed: int = 0) -> Family:
    model = build_model(name, tokenizer, seed)
    clt = calibrated_clt(model, FAMILIES[name]["hooks"], seed=seed)
    gen = torch.Generator().manual_seed(seed + 3)
    prompt = torch.cat([torch.tensor([0]), torch.randint(1, D_VOCAB, (13,), generator=gen)])
    return Family(name, model, clt, prompt)
