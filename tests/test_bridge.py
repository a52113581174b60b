"""TransformerLens 3.x ``TransformerBridge`` over a locally built Hugging Face model.

The same random weights are loaded twice: into a Hugging Face model that a
``TransformerBridge`` wraps, and into a ``HookedTransformer`` (through TransformerLens' own
config and weight conversion, unprocessed). Attribution, interventions, evaluation and
training on the bridge must give what they give on the ``HookedTransformer``. No download:
the tokenizer is built offline and ``boot_transformers`` gets the model object.
"""

from __future__ import annotations

import pytest
import torch

from sae_lens_clt.attribution import attribute, intervene
from sae_lens_clt.evals import evaluate_clt
from tests.architectures import calibrated_clt
from tests.test_attribution import toy_tokenizer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
bridge_mod = pytest.importorskip("transformer_lens.model_bridge")

HOOKS = {
    "gpt2": ("blocks.{layer}.ln2.hook_normalized", "blocks.{layer}.hook_mlp_out"),
    "llama": ("blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out"),
}


def hf_model(kind: str):
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100,
                                      n_positions=64, n_ctx=64)  # fmt: skip
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2,
                                       vocab_size=100, max_position_embeddings=64)  # fmt: skip
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        vocab_size=100, max_position_embeddings=64,
                                        sliding_window=16, query_pre_attn_scalar=8)  # fmt: skip
        model = transformers.Gemma2ForCausalLM(cfg)
    model.config._attn_implementation = "eager"  # attention patterns as tensors
    with torch.no_grad():  # norm weights and biases away from identity
        for name, p in model.named_parameters():
            if "norm" in name or ".ln" in name:
                p.add_(0.3 * torch.randn_like(p))
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def hooked_twin(hf, tokenizer, tmp_path):
    """A HookedTransformer with ``hf``'s weights, unprocessed (TransformerLens' conversion)."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    hf.config.architectures = [type(hf).__name__]
    hf.config.save_pretrained(tmp_path / "tiny")
    cfg_dict = loading.convert_hf_model_config(str(tmp_path / "tiny"))
    cfg_dict.update(init_weights=False, device="cpu", model_name="tiny")
    cfg = HookedTransformerConfig(**cfg_dict)
    state = loading.get_pretrained_state_dict(str(tmp_path / "tiny"), cfg, hf_model=hf)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )  # fmt: skip
    return model.eval()


def pair(kind: str, tmp_path):
    tok = toy_tokenizer()
    hf = hf_model(kind)
    ht = hooked_twin(hf, tok, tmp_path)
    bridge = bridge_mod.TransformerBridge.boot_transformers(
        f"tiny-{kind}", hf_model=hf, tokenizer=tok, device="cpu"
    )
    return ht, bridge


@pytest.mark.parametrize("kind", list(HOOKS))
def test_bridge_equals_hooked_transformer(kind: str, tmp_path) -> None:
    ht, bridge = pair(kind, tmp_path)
    clt = calibrated_clt(ht, HOOKS[kind])
    prompt = torch.tensor([0] + list(range(3, 16)))
    ours, theirs = attribute(bridge, clt, prompt), attribute(ht, clt, prompt)
    assert ours.n_features > 10
    assert torch.equal(ours.active_features, theirs.active_features)
    assert torch.equal(ours.logit_token_ids, theirs.logit_token_ids)
    scale = theirs.adjacency.abs().max()
    torch.testing.assert_close(ours.adjacency, theirs.adjacency, atol=1e-5 * scale, rtol=0)
    # a memory budget works on the bridge (rows form); query chunks need a HookedTransformer
    rows = attribute(bridge, clt, prompt, memory_budget="1GB")
    assert rows.is_rows_form
    torch.testing.assert_close(rows.dense_adjacency(), theirs.adjacency, atol=1e-5 * scale, rtol=0)
    with pytest.raises(ValueError, match="query_chunk .* needs a HookedTransformer"):
        attribute(bridge, clt, prompt, query_chunk=4)
    todo = [(*theirs.active_features[0].tolist(), 0.0), (*theirs.active_features[5].tolist(), 2.0)]
    for mlps in ("replacement", "model"):
        for freeze in (True, False):
            a = intervene(bridge, clt, prompt, todo, freeze_attention=freeze, mlps=mlps)
            b = intervene(ht, clt, prompt, todo, freeze_attention=freeze, mlps=mlps)
            assert (b.logits - b.clean_logits).abs().max() > 1e-2
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    e_bridge, e_ht = (
        evaluate_clt(bridge, clt, [prompt[None]]),
        evaluate_clt(ht, clt, [prompt[None]]),
    )
    assert e_bridge.nmse == pytest.approx(e_ht.nmse, rel=1e-5)
    assert e_bridge.kl_to_original == pytest.approx(e_ht.kl_to_original, rel=1e-4, abs=1e-7)


def test_bridge_trains(tmp_path) -> None:
    from datasets import Dataset

    from sae_lens_clt import CLTTrainingRunner, CLTTrainingRunnerConfig

    ht, bridge = pair("llama", tmp_path)
    hook_in, hook_out = HOOKS["llama"]
    cfg = CLTTrainingRunnerConfig(
        model_name="tiny-llama", hook_name=hook_in, hook_name_out=hook_out, d_sae=32,
        context_size=16, training_tokens=256, train_batch_size_tokens=64,
        store_batch_size_prompts=4, n_batches_for_norm_estimate=1, verbose=False,
        exclude_special_tokens=False,
    )  # fmt: skip
    text = " ".join(f"w{i}" for i in range(1, 60))
    runner = CLTTrainingRunner(cfg, override_model=bridge,
                               override_dataset=Dataset.from_dict({"text": [text] * 8}))  # fmt: skip
    clt = runner.run()
    assert runner.step == 4 and clt.cfg.n_layers == 2
    # what the bridge's store feeds the trainer equals what the HookedTransformer gives
    tokens = torch.tensor([[0] + list(range(3, 16))])
    acts = runner.make_store().get_multi_hook_activations(tokens)
    _, cache = ht.run_with_cache(tokens)
    for layer in range(2):
        for hook in (hook_in, hook_out):
            name = hook.format(layer=layer)
            torch.testing.assert_close(acts[name], cache[name], atol=1e-5, rtol=1e-5)


def test_gemma2_bridge_is_a_clear_error(tmp_path) -> None:
    tok = toy_tokenizer()
    hf = hf_model("gemma2")
    bridge = bridge_mod.TransformerBridge.boot_transformers(
        "tiny-gemma2", hf_model=hf, tokenizer=tok, device="cpu"
    )
    clt = calibrated_clt(bridge, ("blocks.{layer}.hook_resid_mid", "blocks.{layer}.hook_mlp_out"))
    with pytest.raises(ValueError, match="computes its norm scales outside autograd"):
        attribute(bridge, clt, torch.tensor([0] + list(range(3, 12))))
