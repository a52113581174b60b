"""The architecture matrix: every family people trace, checked against the peer tools.

For each family of ``tests/architectures.py`` (GPT-2, Gemma-2 twice, Llama-3.2, GPT-NeoX,
Qwen3; norm weights away from identity):

1. **Exactness**: every column of our graph equals the move of every target when that
   source's vector is injected under full freeze (the reference of ``test_attribution``).
2. **circuit-tracer, as its user would**: our ``to_circuit_tracer`` export, then
   circuit-tracer 0.5's ``load_clt`` with the hooks *read from the written config.yaml*,
   its TransformerLens replacement model and its ``attribute``: same active features, same
   logit tokens, edges within 1e-5 of the largest (embedding columns excepted only where we
   add learned positions).
3. **Interventions**: ``intervene(..., mlps="model")`` equals circuit-tracer's
   ``feature_intervention`` (frozen and open attention).
4. **Training**: the runner trains a few steps, and the CLT inputs and targets it trains on
   are exactly the tensors attribution reads.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from sae_lens_clt.attribution import attribute, intervene
from sae_lens_clt.attribution.attribute import frozen_forward, to_tokens
from tests.architectures import FAMILIES, build
from tests.test_attribution import check_columns, toy_tokenizer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
NAMES = list(FAMILIES)


def circuit_tracer_model(model, folder):
    """circuit-tracer's replacement model over ``model``'s weights and the CLT in ``folder``,
    loaded with the hooks that the folder's config.yaml names."""
    pytest.importorskip("circuit_tracer")
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    config = yaml.safe_load((folder / "config.yaml").read_text())
    ct_clt = load_clt(
        str(folder), feature_input_hook=config["feature_input_hook"],
        feature_output_hook=config["feature_output_hook"], dtype=torch.float32,
        device=torch.device("cpu"), lazy_decoder=False,
    )  # fmt: skip
    return circuit_tracer_replacement_model(model, ct_clt)


def circuit_tracer_replacement_model(model, ct_clt):
    """circuit-tracer's TransformerLens replacement model over ``model``'s weights."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )

    rm = TransformerLensReplacementModel.from_config(model.cfg, ct_clt, tokenizer=model.tokenizer)
    renamed = {
        k.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): v
        for k, v in model.state_dict().items()
    }
    missing, unexpected = rm.load_state_dict(renamed, strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("transcoders.")]
    return rm


def assert_same_graph(ours, theirs, model) -> None:
    assert torch.equal(theirs.active_features, ours.active_features)
    assert torch.equal(theirs.logit_token_ids, ours.logit_token_ids)
    torch.testing.assert_close(theirs.logit_probabilities, ours.logit_probabilities)
    columns = torch.arange(ours.n_nodes)
    if model.cfg.positional_embedding_type == "standard":  # we add W_pos to the embeddings
        columns = torch.cat([columns[: ours.embedding_offset], columns[ours.logit_offset :]])
    scale = ours.adjacency.abs().max().item()
    torch.testing.assert_close(
        theirs.adjacency_matrix[:, columns], ours.adjacency[:, columns], atol=1e-5 * scale, rtol=0
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_node_type_is_exact(name: str) -> None:
    fam = build(name)
    graph = attribute(fam.model, fam.clt, fam.prompt)
    assert graph.n_features > 10
    check_columns(fam.model, fam.clt, fam.prompt, graph, torch.arange(graph.logit_offset))


@pytest.mark.parametrize("name", NAMES)
def test_equals_circuit_tracer_through_our_export(name: str, tmp_path) -> None:
    import circuit_tracer

    fam = build(name, tokenizer=toy_tokenizer())
    fam.clt.to_circuit_tracer(tmp_path / "clt")
    rm = circuit_tracer_model(fam.model, tmp_path / "clt")
    ours = attribute(fam.model, fam.clt, fam.prompt)
    theirs = circuit_tracer.attribute(fam.prompt, rm, batch_size=64)
    assert_same_graph(ours, theirs, fam.model)


@pytest.mark.parametrize("freeze_attention", [True, False], ids=["frozen", "open"])
@pytest.mark.parametrize("name", NAMES)
def test_intervene_equals_circuit_tracer(name: str, freeze_attention: bool, tmp_path) -> None:
    fam = build(name, tokenizer=toy_tokenizer())
    fam.clt.to_circuit_tracer(tmp_path / "clt")
    rm = circuit_tracer_model(fam.model, tmp_path / "clt")
    graph = attribute(fam.model, fam.clt, fam.prompt)
    (l0, p0, f0), (l1, p1, f1) = graph.active_features[:2].tolist()
    todo = [(l0, p0, f0, 0.0), (l1, p1, f1, 3.0 * float(graph.activation_values[1]))]
    ours = intervene(fam.model, fam.clt, fam.prompt, todo, freeze_attention=freeze_attention,
                     mlps="model")  # fmt: skip
    their_logits, their_acts = rm.feature_intervention(
        fam.prompt, todo, freeze_attention=freeze_attention
    )
    assert (ours.logits - ours.clean_logits).abs().max() > 1e-3  # the interventions do something
    torch.testing.assert_close(ours.logits, their_logits[0], atol=1e-4, rtol=1e-4)
    # circuit-tracer reports the intervened features' own activations as computed, we report
    # the values they were set to; every other activation must agree (BOS aside)
    ours_acts, their_acts = ours.activations.clone(), their_acts.clone()
    for layer, pos, feat, value in todo:
        assert ours_acts[layer, pos, feat] == value
        ours_acts[layer, pos, feat] = their_acts[layer, pos, feat]
    torch.testing.assert_close(ours_acts[:, 1:], their_acts[:, 1:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_runner_trains_on_the_tensors_attribution_reads(name: str, tmp_path) -> None:
    from datasets import Dataset

    from sae_lens_clt import CLTTrainingRunner, CLTTrainingRunnerConfig

    fam = build(name, tokenizer=toy_tokenizer())
    hook_in, hook_out = FAMILIES[name]["hooks"]
    words = " ".join(f"w{i}" for i in range(1, 60))
    cfg = CLTTrainingRunnerConfig(
        model_name="tiny", hook_name=hook_in, hook_name_out=hook_out, d_sae=32, context_size=16,
        training_tokens=256, train_batch_size_tokens=64, store_batch_size_prompts=4,
        n_batches_for_norm_estimate=1, verbose=False, exclude_special_tokens=False,
    )  # fmt: skip
    runner = CLTTrainingRunner(
        cfg, override_model=fam.model, override_dataset=Dataset.from_dict({"text": [words] * 8})
    )
    trained = runner.run()
    assert runner.step == 4 and trained.cfg.metadata.hook_name == hook_in
    md = trained.cfg.metadata  # how the model was loaded, read from the model itself
    assert md.model_processing == dict.fromkeys(
        ("fold_ln", "center_writing_weights", "center_unembed"), False
    )
    assert md.model_from_pretrained_kwargs == {}
    # what the store feeds the trainer for a sequence == what attribution reads for it
    store = runner.make_store()
    tokens = to_tokens(fam.model, fam.prompt)
    acts = store.get_multi_hook_activations(tokens[None])
    L = fam.model.cfg.n_layers
    fwd = frozen_forward(fam.model, trained, tokens)
    x = torch.stack([acts[hook_in.format(layer=s)][0] for s in range(L)], dim=1)
    y = torch.stack([acts[hook_out.format(layer=s)][0] for s in range(L)], dim=1)
    torch.testing.assert_close(x, fwd.x)
    torch.testing.assert_close(y, fwd.y)
