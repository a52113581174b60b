"""The embedded default model, its corpus and its data, kept apart from the library.

- :mod:`.model`: ``load_model`` (the shipped 4-layer model, or any TransformerLens name),
  its tokenizer, ``load_default_dataset`` and the evaluation prompts;
- :mod:`.corpus`: the deterministic corpus of planted facts and natural text;
- ``model/``: the model's files; ``default_clt/``: the shipped CLT (the release
  ``sae-lens-clt/tiny-states-clt``).

Nothing here imports the rest of the package.
"""

from sae_lens_clt.default_model.model import (
    BOS_TOKEN,
    CONTEXT_SIZE,
    DEFAULT_MODEL,
    DEFAULT_MODEL_DIR,
    EVAL_SEED_OFFSET,
    MLP_IN_HOOK,
    MLP_OUT_HOOK,
    default_documents,
    greedy_accuracy,
    greedy_completions,
    held_out_cities,
    held_out_texts,
    load_default_dataset,
    load_model,
    load_tokenizer,
    model_config,
    one_hop_prompts,
    state_capital_prompts,
    train_tokenizer,
    two_hop_prompts,
)

__all__ = [
    "BOS_TOKEN",
    "CONTEXT_SIZE",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_DIR",
    "EVAL_SEED_OFFSET",
    "MLP_IN_HOOK",
    "MLP_OUT_HOOK",
    "default_documents",
    "greedy_accuracy",
    "greedy_completions",
    "held_out_cities",
    "held_out_texts",
    "load_default_dataset",
    "load_model",
    "load_tokenizer",
    "model_config",
    "one_hop_prompts",
    "state_capital_prompts",
    "train_tokenizer",
    "two_hop_prompts",
]
