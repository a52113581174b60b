"""Frozen attention in query chunks: the forward of long prompts in memory linear in tokens.

Algorithm (``T`` tokens, ``L`` layers, ``H`` heads of width ``d_head``, query chunks of
``C`` tokens; used by :func:`sae_lens_clt.attribution.forward.frozen_forward` when it is
given ``query_chunk``):

1. The prompt runs through the model ``C`` tokens at a time with TransformerLens' key /
   value cache (the model's own generation path: every operation but attention is
   position-wise, and a query chunk attends to the cached keys and values of every earlier
   position). No ``[H, T, T]`` score or pattern tensor ever exists, only ``[H, C, T]``.
2. A frozen pattern makes each chunk's attention output ``z_c = P_c v`` linear in the
   values ``v [T_c, H_kv, d_head]`` (``P_c [H, C, T_c]``, ``T_c`` = the chunk's end).
   Autograd would keep every ``P_c`` for the backward (``L · H · T² / 2`` floats); instead
   ``z_c`` is the output of :class:`FrozenOV`, whose value is the module's own ``z_c`` and
   whose backward is ``v̄ = P_cᵀ z̄_c`` with ``P_c`` **recomputed** from the chunk's queries
   and the keys by the module's own ``calculate_attention_scores`` (scale, soft cap,
   grouped keys) and ``apply_causal_mask`` (causal and sliding-window masks), then softmax.
   Queries and keys are constants (the pattern is frozen); the keys of a layer are kept
   once (each chunk reads its prefix), so what is kept is ``[T, H, d_head]`` per layer.
3. The recomputation is checked against the pattern the forward produced, chunk by chunk
   (an attention with a term outside those methods, e.g. ALiBi, fails loudly here).
4. Under causal attention, no gradient reaches a position after the last target's, so the
   backward skips the query chunks past ``OVState.pos_end`` (set per backward pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class OVState:
    """Shared by every :class:`FrozenOV` of one forward: positions ``>= pos_end`` carry no
    gradient in the current backward pass (``None``: all positions may)."""

    pos_end: int | None = None


class _Keys:
    """The latest (full-prefix) keys a layer's attention scored with, detached."""

    k: torch.Tensor | None = None


def _pattern(attn: Any, q: torch.Tensor, k: torch.Tensor, offset: int) -> torch.Tensor:
    """``[1, H, n_q, n_k]`` softmax pattern of queries ``q [1, n_q, H, d]`` at positions
    ``offset..offset+n_q-1`` over keys ``k [1, n_k, H_kv, d]``, by the module's methods."""
    scores = attn.calculate_attention_scores(q, k)
    if attn.cfg.attention_dir == "causal":
        scores = attn.apply_causal_mask(scores, offset, None)
    pattern = torch.softmax(scores, dim=-1)
    return torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)


class FrozenOV(torch.autograd.Function):
    """``z = P v`` for a frozen pattern ``P`` that the backward recomputes (step 2)."""

    generate_vmap_rule = True  # rows are vmapped backward passes (is_grads_batched)

    @staticmethod
    def forward(  # type: ignore[override]
        v: torch.Tensor,  # [1, T_c, H_kv, d_head]
        z: torch.Tensor,  # [1, C, H, d_head], the module's own output (no graph)
        attn: Any,
        q: torch.Tensor,  # [1, C, H, d_head], detached
        keys: _Keys,
        offset: int,
        state: OVState,
    ) -> torch.Tensor:
        return z.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        v, _, attn, q, keys, offset, state = inputs
        ctx.save_for_backward(q)  # (the keys: the layer's shared holder, read as a prefix)
        ctx.attn, ctx.keys, ctx.offset, ctx.state = attn, keys, offset, state
        ctx.v_shape, ctx.v_dtype = v.shape, v.dtype

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> tuple:  # type: ignore[override]
        offset, (q,) = ctx.offset, ctx.saved_tensors
        pos_end = ctx.state.pos_end
        n_q = q.shape[1] if pos_end is None else max(0, min(q.shape[1], pos_end - offset))
        if n_q == 0:  # the whole chunk lies after every target of this pass
            return grad_z.new_zeros(ctx.v_shape), None, None, None, None, None, None
        n_k = offset + n_q
        p = _pattern(ctx.attn, q[:, :n_q], ctx.keys.k[:, :n_k], offset).to(grad_z.dtype)
        if n_q < grad_z.shape[1]:  # (narrow: autograd's batched backward has no alias rule)
            grad_z = grad_z.narrow(1, 0, n_q)
        # (matmul, not einsum: autograd's batched backward has no einsum rule)
        g = (p.transpose(-1, -2) @ grad_z.transpose(1, 2)).transpose(1, 2)  # [1, n_k, H, d]
        h, h_kv = g.shape[2], ctx.v_shape[2]
        if h != h_kv:  # grouped keys / values: head i reads kv head i // (H / H_kv)
            g = g.reshape(1, n_k, h_kv, h // h_kv, g.shape[-1]).sum(3)
        pad = ctx.v_shape[1] - n_k  # keys after the last query with a gradient
        grad_v = torch.nn.functional.pad(g.to(ctx.v_dtype), (0, 0, 0, 0, 0, pad))
        return grad_v, None, None, None, None, None, None


@contextlib.contextmanager
def frozen_chunked_attention(model: Any, state: OVState) -> Iterator[None]:
    """While active, every attention module of ``model`` (a ``HookedTransformer``) outputs
    ``z`` through :class:`FrozenOV` (steps 2-3). Restores the modules on exit."""
    patched: list[Any] = []
    try:
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            keys = _Keys()
            scores_fn, z_fn = attn.calculate_attention_scores, attn.calculate_z_scores
            last_q: dict[str, torch.Tensor] = {}

            def scores(q: torch.Tensor, k: torch.Tensor, _f=scores_fn, _k=keys, _q=last_q):
                _q["q"], _k.k = q.detach(), k.detach()
                return _f(q, k)

            def z_scores(
                v: torch.Tensor,
                pattern: torch.Tensor,
                _f=z_fn,
                _a=attn,
                _k=keys,
                _q=last_q,
                _layer=layer,
            ) -> torch.Tensor:
                with torch.no_grad():
                    z = _f(v, pattern)
                q = _q.pop("q")
                offset = _k.k.shape[1] - q.shape[1]
                with torch.no_grad():
                    again = _pattern(_a, q, _k.k, offset).to(pattern.dtype)
                if not torch.allclose(again, pattern, rtol=1e-4, atol=1e-6):
                    raise NotImplementedError(
                        f"layer {_layer}: this attention's pattern is not the module's "
                        "calculate_attention_scores + apply_causal_mask + softmax (max "
                        f"difference {float((again - pattern).abs().max()):.2e}); long "
                        "prompts in query chunks do not support it: run without "
                        "query_chunk / memory_budget (or with a budget that fits a one-pass "
                        "forward)"
                    )
                return FrozenOV.apply(v, z, _a, q, _k, offset, state)

            attn.calculate_attention_scores, attn.calculate_z_scores = scores, z_scores
            patched.append(attn)
        yield
    finally:
        for attn in patched:  # drop the instance attributes: the class methods show again
            del attn.calculate_attention_scores, attn.calculate_z_scores
