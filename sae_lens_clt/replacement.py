"""The replacement model's read and write hooks: the MLPs replaced by a transcoder.

One set of hooks serves every user: evaluation (``evaluate_clt``: loss recovered, KL), the
training KL term (``replacement_kl``, with normalisation scales and the straight-through
activation) and interventions (edited features, fixed error terms).

Algorithm (``L`` layers; ``x_l`` read at ``hook_in(l)``, output written at ``hook_out(l)``):

1. Read: ``x̃_l = x_l · in_scale[l]``, ``z_l = encode_layer_pre(x̃_l, l)``,
   ``a_l = activation(z_l, l)`` and, when given, ``a_l = edit(l, a_l, z_l)``.
2. Write: ``ŷ_l = b_dec[l] + Σ_{s ∈ sources(l)} a_s W_dec[s -> l] + skip(x̃_l, l)``, then
   ``+ errors[l]`` (when given) and ``/ out_scale[l]``; positions before ``keep_first``
   keep the model's own MLP output. ``sparse=True`` decodes from the active features'
   decoder rows only (what a lazy decoder needs); otherwise dense block products
   (differentiable, what training needs).

:func:`zero_mlp_hooks` writes zeros instead (the zero-ablation baseline).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from sae_lens_clt.registry import Transcoder

HookList = list[tuple[str, Callable[..., torch.Tensor]]]


class ReplacementHooks:
    """Forward hooks turning a model into its replacement model (see the module docstring).

    After a run, ``inputs[l]`` holds ``x̃_l`` ``[..., d_in]`` and ``acts[l]`` / ``pre[l]``
    the activations and pre-activations ``[..., F]`` of every layer, in the model's leading
    shape (``[B, T, ...]``).
    """

    def __init__(
        self,
        clt: Transcoder,
        *,
        keep_first: int = 0,
        in_scale: torch.Tensor | None = None,
        out_scale: torch.Tensor | None = None,
        activation: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        edit: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        errors: torch.Tensor | None = None,  # [L, ..., d_out] added to each layer's output
        sparse: bool = False,
    ) -> None:
        self.clt = clt
        self.keep_first = keep_first
        self.in_scale, self.out_scale = in_scale, out_scale
        self.activation = activation or clt.activation
        self.edit, self.errors, self.sparse = edit, errors, sparse
        self.inputs: dict[int, torch.Tensor] = {}
        self.acts: dict[int, torch.Tensor] = {}
        self.pre: dict[int, torch.Tensor] = {}

    def read(self, value: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        x = value.to(self.clt.dtype)
        if self.in_scale is not None:
            x = x * self.in_scale[layer]
        self.inputs[layer] = x
        pre = self.clt.encode_layer_pre(x, layer)
        acts = self.activation(pre, layer)
        if self.edit is not None:
            acts = self.edit(layer, acts, pre)
        self.pre[layer], self.acts[layer] = pre, acts
        return value

    def decode_layer(self, target: int) -> torch.Tensor:
        """``b_dec[t] + Σ_s a_s W_dec[s -> t] + skip`` from the stored activations ``[..., d_out]``."""
        clt = self.clt
        lead = self.acts[target].shape[:-1]
        out = clt.b_dec[target].expand(*lead, -1).clone()
        for s in clt.sources(target):
            a = self.acts[s]
            if self.sparse:
                flat = a.reshape(-1, a.shape[-1])
                rows, feats = flat.nonzero(as_tuple=True)
                if rows.numel():
                    vecs = clt.decoder_rows(s, feats)[:, target - s] * flat[rows, feats, None]
                    out = out.reshape(-1, out.shape[-1]).index_add(0, rows, vecs.to(out.dtype))
                    out = out.reshape(*lead, -1)
            else:
                out = out + a @ clt.decoder_block(s, target)
        skip = clt.skip(self.inputs[target], target)
        return out if skip is None else out + skip

    def write(self, value: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        new = self.decode_layer(layer)
        if self.errors is not None:
            new = new + self.errors[layer].to(new.dtype)
        if self.out_scale is not None:
            new = new / self.out_scale[layer]
        new = new.view_as(value).to(value.dtype)
        if self.keep_first:
            new = torch.cat([value[:, : self.keep_first], new[:, self.keep_first :]], dim=1)
        return new

    def hooks(self) -> HookList:
        """``(hook name, function)`` pairs for ``model.run_with_hooks(..., fwd_hooks=...)``."""
        out: HookList = []
        for layer in range(self.clt.cfg.n_layers):
            out.append((self.clt.cfg.hook_in(layer), functools.partial(self.read, layer=layer)))
            out.append((self.clt.cfg.hook_out(layer), functools.partial(self.write, layer=layer)))
        return out


def zero_mlp_hooks(clt: Transcoder, keep_first: int = 0) -> HookList:
    """Hooks that set every layer's output (the CLT's output hook) to zero from ``keep_first`` on."""

    def write(value: torch.Tensor, hook: Any) -> torch.Tensor:
        new = torch.zeros_like(value)
        new[:, :keep_first] = value[:, :keep_first]
        return new

    return [(clt.cfg.hook_out(layer), write) for layer in range(clt.cfg.n_layers)]
