"""Small random models and data for tests: a word-level language model and its corpus.

Random weights at the usual initialisation scale (not identity-like), a real tokenizer
(``tokenizers`` word level, BOS id 0) so strings, SAELens' ``ActivationsStore`` and
attribution prompts all work offline.
"""

from __future__ import annotations

import random
from typing import Any

WORDS = (
    "the a of to and in is was it that he she they we you capital state city river "
    "north south east west big small red blue green one two three four five day night "
    "cat dog bird fish runs walks sees eats loves house tree road water fire stone"
).split()


def tiny_lm(n_layers: int = 2, d_model: int = 32, seed: int = 0, **overrides: Any) -> Any:
    """A random ``HookedTransformer`` (LayerNorm, GELU, learned positions unless overridden)
    with a word-level tokenizer over :data:`WORDS`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|bos|>": 0, "<|unk|>": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|bos|>",
        pad_token="<|bos|>",
        unk_token="<|unk|>",
        add_bos_token=True,  # TransformerLens: do not re-load a BOS-adding tokenizer by name
        name_or_path="tiny-word-level",
    )
    cfg = HookedTransformerConfig(
        **{
            "n_layers": n_layers,
            "d_model": d_model,
            "n_heads": 4,
            "d_head": d_model // 4,
            "d_mlp": 4 * d_model,
            "n_ctx": 64,
            "d_vocab": len(vocab),
            "act_fn": "gelu",
            "normalization_type": "LN",
            "default_prepend_bos": True,
            "seed": seed,
            **overrides,
        }
    )
    return HookedTransformer(cfg, tokenizer=hf_tok).eval()


def text_dataset(n_docs: int = 200, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` of ``n_docs`` random documents of :data:`WORDS` (``text`` column)."""
    from datasets import Dataset

    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(n_docs)]
    return Dataset.from_dict({"text": docs})
