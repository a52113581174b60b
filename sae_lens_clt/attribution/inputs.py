"""What every analysis of one prompt starts from: the prompt's tokens and a model / CLT check.

:func:`to_tokens` turns a string or token ids into ``[T]`` tokens with BOS first (nothing
truncated silently); :func:`check_compatible` checks that a CLT fits a model and adds the
hook points it needs; :func:`no_param_grads` turns parameter gradients off for a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.hooks import make_norm_scales_hookable, prepare_for_clt
from sae_lens_clt.registry import Transcoder

Prompt = str | Sequence[int] | torch.Tensor


def to_tokens(model: HookedTransformer, prompt: Prompt) -> torch.Tensor:
    """Prompt (string or token ids) -> ``[T]`` int64 tokens with BOS first.

    Strings need ``model.tokenizer``. BOS is prepended when the model has a BOS token and
    the prompt does not start with it; without a tokenizer, ids are taken as given
    (position 0 is still treated as BOS).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(
                "prompt is a string but the model has no tokenizer: pass token ids instead"
            )
        tokens = model.to_tokens(prompt, prepend_bos=True, truncate=False)[0].cpu()
    else:
        tokens = torch.as_tensor(prompt, dtype=torch.long).flatten().cpu()
    bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if bos is not None and (tokens.numel() == 0 or int(tokens[0]) != bos):
        tokens = torch.cat([torch.tensor([bos]), tokens])
    if tokens.numel() < 2:
        raise ValueError("the prompt is empty: it needs at least one token after BOS")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.numel() > n_ctx:
        raise ValueError(
            f"the prompt is {tokens.numel()} tokens (BOS included) but the model's context is "
            f"{n_ctx} tokens — shorten the prompt (nothing is truncated silently)"
        )
    return tokens


def check_compatible(model: HookedTransformer, clt: Transcoder, action: str = "attribute") -> None:
    """Raise a ValueError if the CLT does not fit the model's layers and hooks.

    Adds the MLP hook points (``mlp.hook_in`` / ``mlp.hook_out``) to the model when the CLT
    reads or writes them, and warns when the model was processed (folded / centred) unlike
    the model the CLT was trained on (:mod:`sae_lens_clt.hooks`).
    """
    if clt.cfg.n_layers != model.cfg.n_layers:
        raise ValueError(
            f"the CLT has {clt.cfg.n_layers} layers but the model has {model.cfg.n_layers}: "
            "attribution needs a CLT over every layer of the model"
        )
    prepare_for_clt(model, clt, action)
    make_norm_scales_hookable(model)  # a TransformerBridge's RMS norm scales, so they can freeze


@contextlib.contextmanager
def no_param_grads(*modules: torch.nn.Module) -> Iterator[None]:
    """Temporarily turn off ``requires_grad`` on every parameter (restored afterwards)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
