"""SAELens' multi-hook ``ActivationsStore`` over a CLT's hooks, and its ``(x, y)`` stream.

Algorithm:

1. The hooks are the config's templates (``hook_name`` / ``hook_name_out``, with
   ``{layer}``) at every layer; the model is prepared for them (:func:`~sae_lens_clt.hooks.prepare_model`)
   and each hook's width is read from one forward pass on two tokens.
2. :func:`make_store` builds ``ActivationsStore.from_config_multi_hook`` over the ``2 L``
   hooks with the config's SAELens fields; special tokens (BOS, EOS, PAD, ...) are
   excluded when ``exclude_special_tokens`` is set, as SAELens does it.
3. :func:`stream` stacks each multi-hook batch into ``x [B, L, d_in]`` and
   ``y [B, L, d_out]``. :func:`token_batch_rows` gives the same rows for one token batch,
   unmixed (what the disk cache stores): with ``activations_mixing_fraction = 0`` the
   store's stream is exactly these rows, batch after batch.

``cfg`` is any object with :class:`~sae_lens_clt.training.config.CLTTrainingRunnerConfig`'s
data fields (this module sits below the training package).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.util import get_special_token_ids

from sae_lens_clt.default_model import DEFAULT_MODEL, load_default_dataset, load_model
from sae_lens_clt.hooks import prepare_model


@dataclass(frozen=True)
class StoreHooks:
    """The hooks a CLT reads (``ins``) and writes (``outs``), one per layer, and their widths."""

    ins: list[str]
    outs: list[str]
    d_in: int
    d_out: int


def load_model_for(cfg: Any) -> Any:
    """The config's model (``model_name``, ``model_from_pretrained_kwargs``) on ``cfg.device``."""
    kwargs = cfg.model_from_pretrained_kwargs or {}
    return load_model(cfg.model_name, device=cfg.device, **kwargs)


def load_dataset_for(cfg: Any) -> Any:
    """The config's dataset: ``dataset_path``, or the default model's own training corpus."""
    if cfg.dataset_path:
        return cfg.dataset_path
    if cfg.model_name != DEFAULT_MODEL:
        raise ValueError(
            "dataset_path is empty: set it (a Hugging Face dataset name or path) or pass "
            "override_dataset; only the default model has a built-in dataset"
        )
    return load_default_dataset("train")


def hook_names(model: Any, cfg: Any) -> tuple[list[str], list[str]]:
    """``(inputs, outputs)``: the config's hook templates at every layer (model prepared)."""
    L = model.cfg.n_layers
    ins = [cfg.hook_name.format(layer=layer) for layer in range(L)]
    outs = [cfg.hook_name_out.format(layer=layer) for layer in range(L)]
    prepare_model(model, [cfg.hook_name, cfg.hook_name_out], L, "training")
    return ins, outs


def hook_width(model: Any, name: str) -> int:
    """The last dimension of hook ``name`` (one forward pass on two tokens)."""
    device = next(model.parameters()).device
    tokens = torch.zeros(1, 2, dtype=torch.long, device=device)
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    return int(cache[name].shape[-1])


def store_hooks(model: Any, cfg: Any) -> StoreHooks:
    ins, outs = hook_names(model, cfg)
    return StoreHooks(ins, outs, hook_width(model, ins[0]), hook_width(model, outs[0]))


def excluded_tokens(model: Any, cfg: Any) -> torch.Tensor | None:
    """Token ids dropped from training (SAELens' special tokens), or None."""
    if not cfg.exclude_special_tokens or model.tokenizer is None:
        return None
    special = get_special_token_ids(model.tokenizer)  # BOS, EOS, PAD, SEP, ...
    return torch.tensor(sorted(special), dtype=torch.long, device=cfg.device)


def make_store(
    model: Any,
    dataset: Any,
    cfg: Any,
    mixing_fraction: float | None = None,
    training_tokens: int | None = None,
) -> tuple[ActivationsStore, StoreHooks]:
    """SAELens' multi-hook store over the CLT's hooks (step 2) and the hooks it reads."""
    hooks = store_hooks(model, cfg)
    store = ActivationsStore.from_config_multi_hook(
        model,
        dataset=dataset,
        hook_names=hooks.ins + hooks.outs,
        hook_d_ins={
            **dict.fromkeys(hooks.ins, hooks.d_in),
            **dict.fromkeys(hooks.outs, hooks.d_out),
        },
        streaming=cfg.streaming,
        context_size=cfg.context_size,
        n_batches_in_buffer=cfg.n_batches_in_buffer,
        total_training_tokens=training_tokens or cfg.training_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        prepend_bos=cfg.prepend_bos,
        device=cfg.device,
        dtype=cfg.dtype,
        model_kwargs=cfg.model_kwargs,
        exclude_special_tokens=excluded_tokens(model, cfg),
        activations_mixing_fraction=(
            cfg.activations_mixing_fraction if mixing_fraction is None else mixing_fraction
        ),
    )
    return store, hooks


def stream(
    store: ActivationsStore, hooks: StoreHooks
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x [B, L, d_in], y [B, L, d_out])`` training batches from the store (step 3)."""
    for batch in store.get_multi_hook_data_loader():
        yield (
            torch.stack([batch[h] for h in hooks.ins], dim=1),
            torch.stack([batch[h] for h in hooks.outs], dim=1),
        )


@torch.no_grad()
def token_batch_rows(
    store: ActivationsStore, hooks: StoreHooks, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows one token batch ``[P, T]`` gives, in order, special tokens dropped:
    ``(x [n, L, d_in], y [n, L, d_out])`` with ``n <= P * T``."""
    acts = store.get_multi_hook_activations(tokens)
    x = torch.stack([acts[h].reshape(-1, hooks.d_in) for h in hooks.ins], dim=1)
    y = torch.stack([acts[h].reshape(-1, hooks.d_out) for h in hooks.outs], dim=1)
    exclude = store.exclude_special_tokens
    if exclude is not None:
        keep = ~torch.isin(tokens.reshape(-1).to(exclude.device), exclude)
        x, y = x[keep.to(x.device)], y[keep.to(y.device)]
    return x, y
