"""Step 1 of attribution: one forward pass of the model with everything nonlinear frozen.

Hooks (one prompt, batch of 1): (a) detach every attention pattern (``hook_pattern``) and
every norm scale (``hook_scale``), so gradients see them as constants; (b) replace each MLP
output (the CLT's output hook) by a fresh leaf with the same value, so no gradient flows
through an MLP (a CLT skip connection ``x W_skip`` stays as a linear, zero-valued path);
(c) make the token (and learned positional) embeddings leaves; (d) keep the CLT inputs, the
unembedding input and the residual stream after the layers direction targets read. The
values are the model's own; under the freezes every target is an affine function of the
leaves, so its gradient *is* the direct effect (:mod:`sae_lens_clt.attribution.attribute`
computes rows from it; :mod:`sae_lens_clt.attribution.heads` splits it by head).

With ``query_chunk`` the pass runs in chunks of that many tokens through the key / value
cache and attention keeps no pattern (:mod:`.chunked_attention`): memory linear in tokens.
Each leaf is then one ``[1, T, d]`` tensor all the same (every chunk reads its slice), and
each kept output is the concatenation of the chunks' outputs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.chunked_attention import OVState, frozen_chunked_attention
from sae_lens_clt.registry import Transcoder


def unembed_input_hook(model: HookedTransformer) -> str:
    """Name of the hook whose output the unembedding reads."""
    if "unembed.hook_in" in model.hook_dict:
        return "unembed.hook_in"
    if "ln_final.hook_normalized" in model.hook_dict:
        return "ln_final.hook_normalized"
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def select_logits(
    last_logits: torch.Tensor, max_n_logits: int, desired_logit_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Most probable tokens until their total reaches ``desired_logit_prob`` (at most
    ``max_n_logits``): ``(token_ids [k], probabilities [k])`` from ``last_logits [V]``."""
    probs = torch.softmax(last_logits.float(), dim=-1)
    top_p, top_ids = probs.topk(min(max_n_logits, probs.numel()))
    k = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_logit_prob))) + 1
    k = min(k, top_ids.numel())
    return top_ids[:k], top_p[:k]


# ---------------------------------------------------------------------- step 1
@dataclass
class FrozenForward:
    """The retained autograd graph of one frozen forward pass (batch of 1).

    Tensors with a leading ``1`` are graph nodes; the rest are detached values.
    """

    tokens: torch.Tensor  # [T]
    last_logits: torch.Tensor  # [d_vocab] at the last position, detached
    clt_inputs: list[torch.Tensor]  # L x [1, T, d_in], graph outputs (feature targets)
    unembed_input: torch.Tensor  # [1, T, d_model], graph output (logit targets)
    mlp_out_leaves: list[torch.Tensor]  # L x [1, T, d_out], graph inputs
    embed_leaf: torch.Tensor  # [1, T, d_model]
    pos_leaf: torch.Tensor | None  # [1, T, d_model] when the model adds learned positions
    x: torch.Tensor  # [T, L, d_in] CLT inputs, detached
    y: torch.Tensor  # [T, L, d_out] true MLP outputs, detached
    resid_post: dict[int, torch.Tensor] = field(default_factory=dict)  # l -> [1, T, d_model]
    # with query_chunk: tells the attention backward where gradients end (chunked_attention)
    ov_state: OVState | None = None


RESID_HOOK = "blocks.{layer}.hook_resid_post"  # where a Direction target at layer l reads


def chunkable(model: Any) -> bool:
    """Whether the forward can run in query chunks: a ``HookedTransformer`` (its key/value
    cache) with causal attention (a chunk must not need later positions)."""
    causal = getattr(model.cfg, "attention_dir", "causal") == "causal"
    return isinstance(model, HookedTransformer) and causal


def frozen_forward(
    model: HookedTransformer,
    clt: Transcoder,
    tokens: torch.Tensor,
    resid_layers: Sequence[int] = (),
    query_chunk: int | None = None,
) -> FrozenForward:
    """Run the model once with the freezes of step 1 and keep the graph (and the residual
    stream after the layers ``resid_layers``, graph outputs for direction targets).

    ``query_chunk``: run in chunks of that many tokens with attention that keeps no
    pattern (a ``HookedTransformer`` only; see the module docstring)."""
    L, T = clt.cfg.n_layers, int(tokens.numel())
    chunk = T if query_chunk is None else max(1, min(int(query_chunk), T))
    if chunk < T and not chunkable(model):
        raise ValueError(
            f"query_chunk (long prompts in bounded memory) needs a HookedTransformer with "
            f"causal attention, got {type(model).__name__} (attention "
            f"{getattr(model.cfg, 'attention_dir', 'causal')}): load the model with "
            "HookedTransformer.from_pretrained, or drop query_chunk / raise memory_budget"
        )
    store: dict[str, Any] = {}  # name -> [chunk outputs] or a full-prompt leaf
    at = [0]  # first position of the current chunk

    def detach(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act.detach()

    # hooks store under the name asked for (a TransformerBridge alias such as hook_embed
    # reaches the hook under its own name, embed.hook_out)
    def keep(act: torch.Tensor, hook: Any, name: str) -> torch.Tensor:
        store.setdefault(name, []).append(act)
        return act

    def full_leaf(act: torch.Tensor, name: str) -> torch.Tensor:
        """This chunk's slice of the ``[1, T, d]`` leaf ``name``, with ``act``'s value."""
        if name not in store:
            shape = (1, T, *act.shape[2:])
            store[name] = torch.zeros(shape, dtype=act.dtype, device=act.device)
            store[name].requires_grad_(True)
        part = store[name][:, at[0] : at[0] + act.shape[1]]
        with torch.no_grad():  # the leaf holds the values (no graph node saves it)
            part.copy_(act)
        if chunk == T:  # one pass: the leaf itself
            return store[name]
        return act.detach() + (part - part.detach())  # value act, gradient to the leaf

    def leaf(act: torch.Tensor, hook: Any, name: str) -> torch.Tensor:
        return full_leaf(act, name)

    def mlp_out(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        out = full_leaf(act, f"leaf_{layer}")
        skip = clt.skip(store[clt.cfg.hook_in(layer)][-1], layer)
        if skip is not None:  # a linear skip path: value 0, the gradient of x W_skip
            return out + (skip - skip.detach()).to(out.dtype)
        return out

    pos_type = getattr(model.cfg, "positional_embedding_type", "standard")
    learned_pos = pos_type in ("standard", "shortformer")
    hooks: list[tuple[str, Any]] = [
        (name, detach)
        for name in model.hook_dict
        if name.endswith(".hook_scale") or name.endswith(".hook_pattern")
    ]
    hooks.append(("hook_embed", functools.partial(leaf, name="hook_embed")))
    if learned_pos:  # (a rotary TransformerBridge names its rotary tables hook_pos_embed)
        hooks.append(("hook_pos_embed", functools.partial(leaf, name="hook_pos_embed")))
    for layer in range(L):
        hooks.append((clt.cfg.hook_in(layer), functools.partial(keep, name=clt.cfg.hook_in(layer))))
        hooks.append((clt.cfg.hook_out(layer), functools.partial(mlp_out, layer=layer)))
    unembed_hook = unembed_input_hook(model)
    hooks.append((unembed_hook, functools.partial(keep, name=unembed_hook)))
    resid_names = {layer: RESID_HOOK.format(layer=layer) for layer in sorted(set(resid_layers))}
    for name in resid_names.values():
        hooks.append((name, functools.partial(keep, name=name)))
    hooks = [(n, f) for n, f in hooks if n in model.hook_dict]
    device = model.cfg.device
    state = OVState() if chunk < T else None
    with torch.enable_grad(), contextlib.ExitStack() as stack:
        kwargs: dict[str, Any] = {}
        if state is not None:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            stack.enter_context(frozen_chunked_attention(model, state))
            kwargs["past_kv_cache"] = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
        for start in range(0, T, chunk):
            at[0] = start
            part = tokens[None, start : start + chunk].to(device)
            if state is not None:  # every token attended (the cache's own default would
                # mask tokens equal to the pad token, e.g. GPT-2's <|endoftext|>)
                kwargs["attention_mask"] = torch.ones_like(part)
            logits = model.run_with_hooks(part, fwd_hooks=hooks, **kwargs)
    last_logits = logits[0, -1].detach()
    del logits

    def joined(name: str) -> torch.Tensor:  # one graph output over every chunk
        parts = store[name]
        if len(parts) == 1:
            return parts[0]
        with torch.enable_grad():
            return torch.cat(parts, dim=1)

    clt_inputs = [joined(clt.cfg.hook_in(layer)) for layer in range(L)]
    leaves = [store[f"leaf_{layer}"] for layer in range(L)]
    return FrozenForward(
        tokens=tokens,
        last_logits=last_logits,
        clt_inputs=clt_inputs,
        unembed_input=joined(unembed_hook),
        mlp_out_leaves=leaves,
        embed_leaf=store["hook_embed"],
        pos_leaf=store.get("hook_pos_embed") if learned_pos else None,
        x=torch.stack([a[0].detach() for a in clt_inputs], dim=1),
        y=torch.stack([a[0].detach() for a in leaves], dim=1),
        resid_post={layer: joined(name) for layer, name in resid_names.items()},
        ov_state=state,
    )


@dataclass
class SparseActivations:
    """The CLT's active features on one prompt and its error vectors (step 2)."""

    active: torch.Tensor  # [n, 3] int64 (layer, pos, feature), sorted in that order
    values: torch.Tensor  # [n] activations, the CLT's dtype
    errors: torch.Tensor  # [T, L, d_out] y - ŷ, zero at position 0


def activations_and_errors(
    clt: Transcoder, fwd: FrozenForward, chunk: int | None = None
) -> SparseActivations:
    """Step 2 of attribution: the CLT's active features of the cached inputs and the error
    vectors ``y - ŷ``, both zero at position 0 (BOS is not explained), in the CLT's dtype.

    Encodes ``chunk`` positions at a time (default: all), so the dense ``[chunk, L, F]``
    pre-activations are the largest tensor made."""
    L, T = clt.cfg.n_layers, int(fwd.x.shape[0])
    chunk = T if chunk is None else max(1, int(chunk))
    actives, values, errors = [], [], []
    with torch.no_grad():
        for start in range(0, T, chunk):
            x = fwd.x[start : start + chunk].to(clt.dtype)  # [c, L, d_in]
            acts = torch.stack(
                [clt.activation(clt.encode_layer_pre(x[:, s], s), s) for s in range(L)], dim=1
            )  # [c, L, F]
            if start == 0:
                acts[0] = 0.0
            err = fwd.y[start : start + chunk].to(clt.dtype) - clt.decode_sparse(acts, x)
            if start == 0:
                err[0] = 0.0
            pos, layer, feat = acts.nonzero(as_tuple=True)
            actives.append(torch.stack([layer, pos + start, feat], dim=1).cpu())
            values.append(acts[pos, layer, feat])
            errors.append(err)
            del acts
        active = torch.cat(actives)
        F = clt.cfg.d_sae
        order = torch.argsort((active[:, 0] * T + active[:, 1]) * F + active[:, 2])
        value = torch.cat(values)[order.to(values[0].device)]
    return SparseActivations(active[order], value, torch.cat(errors))
