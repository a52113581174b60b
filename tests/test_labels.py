"""Feature labels: the label rules, labels against brute force, cache round trip."""

from __future__ import annotations

from pathlib import Path

from sae_lens_clt.evals import cache_clt_io, token_batches_from_texts
from sae_lens_clt.labels import (
    compute_labels,
    label_map,
    load_labels,
    make_label,
    save_labels,
)
from tests.conftest import make_clt, make_text_dataset, make_tiny_lm


def test_make_label() -> None:
    assert make_label([" Texas"] * 5 + [" Ohio"], [" Austin"], [6.0]) == "Texas → Austin"
    assert make_label([" a", " b", " a", " b", " c"], [" x"], [1.0]) == "a/b"
    assert make_label([], [" x"], [9.0]) == "(never fires)"
    assert make_label([" a"] * 3, [" x"], [9.0, 8.0], frequency=0.9) == "dense a → x"
    assert (
        make_label([" and"] * 4, [" x"], [1.0], next_tokens=[" then"] * 3 + [" so"]) == "and → then"
    )
    assert make_label([" and"] * 4, [" x"], [1.0], next_tokens=[" is"] * 4) == "and"  # too short
    two = make_label([" is"] * 2, [" Austin", " Texas", " Ohio"], [6.0, 4.5, 4.1])
    assert two == "is → Austin/Texas"


def test_labels_match_brute_force(tmp_path: Path) -> None:
    model = make_tiny_lm()
    clt = make_clt(n_layers=2, d_in=32, d_sae=16, activation_fn="relu", seed=3)
    texts = make_text_dataset(6)["text"]
    labels = compute_labels(model, clt, texts, context_size=32, batch_size=4, top_k=3)
    assert labels["version"] == 2
    assert len(labels["features"]) == 2 * 16

    # brute force: the largest activation of feature (1, 5) and its token
    best, best_tok = -1.0, None
    for tokens in token_batches_from_texts(model, texts, 32, 4):
        _, x, _ = cache_clt_io(model, clt, tokens)
        acts = clt.encode(x)[:, 1:, 1, 5]  # skip BOS
        v, i = acts.flatten().max(0)
        if v > best:
            best, best_tok = v.item(), int(tokens[:, 1:].flatten()[i])
    info = labels["features"]["1:5"]
    assert info["top_activations"][0] == round(best, 4)
    assert info["top_tokens"][0] == model.tokenizer.decode([best_tok])
    assert len(info["promotes"]) == 5

    save_labels(labels, tmp_path)
    again = load_labels(tmp_path)
    assert again == labels
    assert label_map(again)[(1, 5)] == info["label"]
    assert load_labels(tmp_path / "missing") is None
