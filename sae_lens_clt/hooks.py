"""Which tensor a CLT's hook names, on every model and in every file layout.

A CLT is only useful if every tool feeds it the tensor it was trained on. This module is
the one place that says what a hook name means:

1. **Names.** A CLT's ``metadata.hook_name`` / ``hook_name_out`` are TransformerLens hook
   templates ``blocks.{layer}.<point>``. circuit-tracer's ``config.yaml`` names the same
   ``<point>`` relative to ``blocks.{i}.``, and its TransformerLens backend hooks exactly
   ``blocks.{i}.<point>``; so the mapping between the two layouts is the prefix and nothing
   else (:func:`to_circuit_tracer_hook`, :func:`from_circuit_tracer_hook`). ``<point>`` must
   be one of :data:`BLOCK_HOOKS` (the residual-width tensors of a block); anything else is a
   :class:`~sae_lens_clt.formats.errors.CLTFormatError` at export time.
2. **Which tensors.** In TransformerLens ``ln2.hook_normalized`` is ``x / scale`` *before*
   the norm's weight and bias; ``mlp.hook_in`` is the MLP's input *after* them;
   ``hook_resid_mid`` is the residual before the norm; ``mlp.hook_out`` is the MLP's output
   and ``hook_mlp_out`` the block's MLP branch, after the post-MLP norm where the model has
   one (Gemma-2). They are different tensors unless the norm weights are identity.
3. **MLP hook points.** ``HookedTransformer`` has no ``mlp.hook_in`` / ``mlp.hook_out``
   (circuit-tracer adds them by wrapping each MLP; TransformerLens' ``TransformerBridge``
   has them natively). :func:`prepare_model` adds them to a ``HookedTransformer`` in place
   (two ``HookPoint`` s per MLP, no parameters, the state dict unchanged) when a CLT needs
   them, and raises a clear error for any hook the model lacks.
4. **Model processing.** TransformerLens' default ``from_pretrained`` folds the norms' weights
   and centres the writing weights and the unembedding; SAELens trains on unprocessed models
   (``from_pretrained_no_processing``) and circuit-tracer loads with ``fold_ln=False,
   center_writing_weights=False, center_unembed=False``. Folding and centring change
   ``hook_resid_*``, ``hook_mlp_out`` and the norms' inputs. :func:`model_processing` reads
   what was done from the model itself (``normalization_type`` ``LNPre`` / ``RMSPre``;
   writing weights and unembedding centred to float precision), a CLT records it at training
   time (``metadata.model_processing``, next to SAELens' ``model_from_pretrained_kwargs``),
   and :func:`warn_if_processing_differs` warns when they disagree.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import torch

LAYER_PREFIX = "blocks.{layer}."
MLP_HOOK_IN = "mlp.hook_in"
MLP_HOOK_OUT = "mlp.hook_out"

# Residual-width hook points of a block, relative to ``blocks.{layer}.`` (what a CLT can
# read or write, and what circuit-tracer's TransformerLens backend can hook).
BLOCK_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_in",
    "hook_attn_out",
    "hook_mlp_in",
    "hook_mlp_out",
    "ln1.hook_normalized",
    "ln2.hook_normalized",
    "ln1_post.hook_normalized",
    "ln2_post.hook_normalized",
    MLP_HOOK_IN,
    MLP_HOOK_OUT,
)

PROCESSING_KEYS = ("fold_ln", "center_writing_weights", "center_unembed")
UNPROCESSED = dict.fromkeys(PROCESSING_KEYS, False)


class ModelProcessingWarning(UserWarning):
    """The model in hand was processed differently from the model the CLT was trained on."""


# ---------------------------------------------------------------------- names
def block_point(template: str) -> str:
    """``blocks.{layer}.ln2.hook_normalized`` -> ``ln2.hook_normalized`` (checked)."""
    if not template.startswith(LAYER_PREFIX):
        raise ValueError(
            f"hook template {template!r} does not start with {LAYER_PREFIX!r}: a CLT reads "
            "and writes one hook per block, e.g. 'blocks.{layer}.hook_resid_mid'"
        )
    point = template[len(LAYER_PREFIX) :]
    if point not in BLOCK_HOOKS:
        raise ValueError(
            f"hook template {template!r}: {point!r} is not a residual-width hook point of a "
            f"block; use one of {', '.join(BLOCK_HOOKS)}"
        )
    return point


def to_circuit_tracer_hook(template: str) -> str:
    """Our template -> circuit-tracer's ``config.yaml`` name (relative to ``blocks.{i}.``).

    The tensor is the same: circuit-tracer's TransformerLens backend hooks
    ``blocks.{i}.<name>``, and adds ``mlp.hook_in`` / ``mlp.hook_out`` as we do.
    """
    return block_point(template)


def from_circuit_tracer_hook(name: str) -> str:
    """circuit-tracer's hook name (``hook_resid_mid``, ``mlp.hook_in``, ...) -> our template."""
    name = name.strip()
    if name.startswith("blocks."):  # a full name such as blocks.{i}.hook_mlp_out
        parts = name.split(".", 2)
        name = parts[2] if len(parts) == 3 else name
    return LAYER_PREFIX + block_point(LAYER_PREFIX + name)


# ---------------------------------------------------------------------- hook points
def _hooked_mlp_forward(self: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any):
    """An MLP's own forward between ``hook_in`` and ``hook_out`` (bound per instance)."""
    return self.hook_out(type(self).forward(self, self.hook_in(x), *args, **kwargs))


def add_mlp_hook_points(model: Any) -> bool:
    """Give every block's MLP ``hook_in`` / ``hook_out`` hook points (in place).

    ``blocks.{l}.mlp.hook_in`` is then the MLP's input (after the pre-MLP norm's weight and
    bias) and ``blocks.{l}.mlp.hook_out`` its output (before any post-MLP norm), the tensors
    circuit-tracer's names mean. Parameters and the state dict are unchanged. Returns whether
    anything was added (models that already have them, such as ``TransformerBridge`` or a
    circuit-tracer replacement model, are left alone).
    """
    from transformer_lens.hook_points import HookPoint

    added = False
    for block in model.blocks:
        mlp = block.mlp
        if isinstance(getattr(mlp, "hook_in", None), HookPoint) and isinstance(
            getattr(mlp, "hook_out", None), HookPoint
        ):
            continue
        mlp.hook_in = HookPoint()
        mlp.hook_out = HookPoint()
        mlp.forward = types.MethodType(_hooked_mlp_forward, mlp)
        added = True
    if added:
        model.setup()  # re-register hook names (blocks.{l}.mlp.hook_in, ...)
    return added


def prepare_model(model: Any, templates: list[str], n_layers: int, what: str = "the CLT") -> None:
    """Make sure ``model`` has every hook ``templates`` names for layers ``0..n_layers-1``.

    Adds the MLP hook points when a template needs them; raises ``ValueError`` naming the
    missing hooks otherwise.
    """
    names = [t.format(layer=layer) for t in templates for layer in range(n_layers)]
    if any(n not in model.hook_dict for n in names) and any(
        t.endswith((MLP_HOOK_IN, MLP_HOOK_OUT)) for t in templates
    ):
        add_mlp_hook_points(model)
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ValueError(
            f"the model has no hook point(s) {missing[:3]}{'...' if len(missing) > 3 else ''} "
            f"that {what} uses ({', '.join(templates)}); this model's block hooks include "
            f"{sorted(h[len('blocks.0.') :] for h in model.hook_dict if h.startswith('blocks.0.'))[:12]}"
            ": set metadata.hook_name / hook_name_out to hooks the model has"
        )


def prepare_for_clt(model: Any, clt: Any, action: str | None = None) -> None:
    """:func:`prepare_model` for a CLT's two hooks; with ``action``, also warn when the
    model's processing differs from the CLT's record (:func:`warn_if_processing_differs`)."""
    md = clt.cfg.metadata
    prepare_model(model, [md.hook_name, md.hook_name_out], clt.cfg.n_layers)
    if action is not None:
        warn_if_processing_differs(model, clt, action)


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (over a Hugging Face model)."""
    return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)


@torch.no_grad()
def make_norm_scales_hookable(model: Any) -> None:
    """Make a ``TransformerBridge``'s norm-scale hooks act on the computation (in place).

    TransformerLens 3.x bridges run RMSNorm through Hugging Face's own module by default
    (``use_native_layernorm_autograd``), computing ``hook_scale`` beside it and discarding
    what a hook returns: freezing the scale, which attribution and frozen interventions need,
    would silently do nothing. The bridge's hooked path is switched on instead, after checking
    on a probe sequence that it gives the same logits; where it does not (TransformerLens
    3.2's Gemma-2 bridge) the flags are restored and a ``ValueError`` says so.
    """
    if not is_bridge(model):
        return
    native = [m for m in model.modules() if getattr(m, "use_native_layernorm_autograd", False)]
    if not native:
        return
    probe = torch.arange(1, 9, device=model.cfg.device)[None] % model.cfg.d_vocab
    before = model(probe).float()
    for m in native:
        m.use_native_layernorm_autograd = False
    after = model(probe).float()
    if not torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item()):
        for m in native:
            m.use_native_layernorm_autograd = True
        raise ValueError(
            f"this TransformerBridge ({type(native[0]).__name__}) computes its norm scales "
            "outside autograd, so they cannot be frozen, and its hooked path changes the "
            f"model's outputs (max logit change {(after - before).abs().max().item():.3g}); "
            "attribution and frozen interventions would not be exact: use a HookedTransformer "
            "(HookedTransformer.from_pretrained_no_processing) for this architecture"
        )


# ---------------------------------------------------------------------- processing
def _centred(w: torch.Tensor, dim: int) -> bool:
    """Whether every slice of ``w`` along ``dim`` has mean 0 to float precision."""
    w = w.detach()
    mean = w.mean(dim, dtype=torch.float32)  # accumulates in float32, no float copy of w
    scale = w.flatten()[:1_000_000].float().abs().mean()  # a sample is enough for the scale
    return bool(mean.abs().max() <= 1e-3 * scale.clamp(min=1e-30))


def model_processing(model: Any) -> dict[str, bool]:
    """What TransformerLens weight processing ``model`` shows, read from the model itself.

    ``fold_ln``: the norms are ``LNPre`` / ``RMSPre`` (their weights were folded away);
    ``center_writing_weights``: the embedding rows have mean 0 over ``d_model`` (TransformerLens
    centres every matrix that writes to the residual stream, the embedding among them);
    ``center_unembed``: ``W_U`` has mean 0 over the vocabulary for every ``d_model`` row.
    Random or trained weights are never centred to 1e-3 of their scale by chance.
    """
    norm = str(getattr(model.cfg, "normalization_type", None))
    return {
        "fold_ln": norm in ("LNPre", "RMSPre"),
        "center_writing_weights": _centred(model.W_E, dim=-1),
        "center_unembed": _centred(model.W_U, dim=-1),
    }


def recorded_processing(metadata: Any) -> dict[str, bool] | None:
    """The processing recorded for a CLT's model, or ``None`` when nothing was recorded.

    ``metadata.model_processing`` (written by our trainer and the release registry) wins;
    otherwise SAELens' ``model_from_pretrained_kwargs`` is read with SAELens' meaning
    (``from_pretrained_no_processing(**kwargs)``: unprocessed unless a key says otherwise).
    """
    found = metadata.get("model_processing") if metadata is not None else None
    if isinstance(found, dict):
        return {k: bool(found[k]) for k in PROCESSING_KEYS if k in found}
    kwargs = metadata.get("model_from_pretrained_kwargs") if metadata is not None else None
    if isinstance(kwargs, dict):
        return {k: bool(kwargs.get(k, False)) for k in PROCESSING_KEYS}
    return None


def processing_mismatch(model: Any, metadata: Any) -> dict[str, tuple[bool, bool]]:
    """``{key: (recorded, found)}`` for each processing step the model and record disagree on."""
    record = recorded_processing(metadata)
    if not record:
        return {}
    found = model_processing(model)
    return {k: (v, found[k]) for k, v in record.items() if k in found and found[k] != v}


def warn_if_processing_differs(model: Any, clt: Any, action: str) -> None:
    """Warn (:class:`ModelProcessingWarning`) when ``model`` was processed unlike the CLT's."""
    diff = processing_mismatch(model, clt.cfg.metadata)
    if not diff:
        return
    said = ", ".join(f"{k}={rec} (this model: {got})" for k, (rec, got) in diff.items())
    kwargs = "".join(f", {k}=True" for k, (rec, _) in diff.items() if rec)
    warnings.warn(
        f"{action}: the CLT was trained on a model loaded with {said}; the hooks it reads and "
        "writes then hold other tensors than the ones it was trained on. Load the model as the "
        "CLT's was: sae_lens_clt.load_model(name) or "
        f"HookedTransformer.from_pretrained_no_processing(name{kwargs}).",
        ModelProcessingWarning,
        stacklevel=3,
    )
