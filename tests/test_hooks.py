"""One meaning per hook name, and the model processing a CLT needs (sae_lens_clt.hooks)."""

from __future__ import annotations

import warnings

import pytest
import torch

import sae_lens_clt
from sae_lens_clt import CrossLayerTranscoder, attribute, evaluate_clt, intervene
from sae_lens_clt.hooks import (
    UNPROCESSED,
    ModelProcessingWarning,
    add_mlp_hook_points,
    from_circuit_tracer_hook,
    model_processing,
    to_circuit_tracer_hook,
)

PROMPT = "The capital of the state containing Dallas is"


@pytest.mark.parametrize(
    "name",
    ["mlp.hook_in", "mlp.hook_out", "hook_resid_mid", "hook_mlp_out", "ln2.hook_normalized"],
)
def test_circuit_tracer_names_map_to_the_same_hook(name: str) -> None:
    template = from_circuit_tracer_hook(name)
    assert template == "blocks.{layer}." + name
    assert to_circuit_tracer_hook(template) == name
    assert from_circuit_tracer_hook("blocks.3." + name) == template  # full names too


def test_unknown_hooks_are_refused() -> None:
    with pytest.raises(ValueError, match="not a residual-width hook point"):
        from_circuit_tracer_hook("attn.hook_pattern")
    with pytest.raises(ValueError, match="does not start with"):
        to_circuit_tracer_hook("hook_embed")


def test_mlp_hook_points_are_the_mlp_input_and_output() -> None:
    from tests.architectures import build_model

    model = build_model("gemma2")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.tensor([[0, 5, 6, 7, 8]])
    before = model(tokens)
    assert add_mlp_hook_points(model) and not add_mlp_hook_points(model)  # once
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(tokens), before)
    _, cache = model.run_with_cache(tokens)
    block = model.blocks[0]
    mlp_in = block.ln2(cache["blocks.0.hook_resid_mid"])  # after the norm's weight
    torch.testing.assert_close(cache["blocks.0.mlp.hook_in"], mlp_in)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_out"], block.mlp(mlp_in))
    # Gemma-2: hook_mlp_out is after the post-MLP norm, mlp.hook_out before it
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], block.ln2_post(block.mlp(mlp_in)))
    assert not torch.allclose(cache["blocks.0.hook_mlp_out"], cache["blocks.0.mlp.hook_out"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_processed_model_gets_a_warning_unprocessed_none() -> None:
    model = sae_lens_clt.load_model(sae_lens_clt.DEFAULT_MODEL)
    clt = CrossLayerTranscoder.from_pretrained(sae_lens_clt.DEFAULT_CLT)
    assert clt.cfg.metadata.model_processing == UNPROCESSED
    assert model_processing(model) == UNPROCESSED
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelProcessingWarning)
        attribute(model, clt, PROMPT)  # as trained: no warning
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert model_processing(model) == dict.fromkeys(UNPROCESSED, True)
    tokens = model.to_tokens(PROMPT)
    for run in (
        lambda: attribute(model, clt, PROMPT),
        lambda: intervene(model, clt, PROMPT, []),
        lambda: evaluate_clt(model, clt, [tokens]),
    ):
        with pytest.warns(ModelProcessingWarning, match="from_pretrained_no_processing"):
            run()


def test_load_model_loads_hub_models_unprocessed(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformer_lens import HookedTransformer

    calls = []

    def no_processing(name, **kwargs):
        calls.append((name, kwargs))
        return "model"

    def processing(*args, **kwargs):
        raise AssertionError("load_model must not use the processing from_pretrained")

    monkeypatch.setattr(HookedTransformer, "from_pretrained_no_processing", no_processing)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", processing)
    assert sae_lens_clt.load_model("gpt2", fold_ln=True) == "model"
    assert calls == [("gpt2", {"device": "cpu", "dtype": torch.float32, "fold_ln": True})]
