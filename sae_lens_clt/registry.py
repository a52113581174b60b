"""Transcoder registry and the written contract every transcoder variant fulfils.

A *variant* is a pair of classes (inference, and optionally training) registered under an
``architecture`` name, the string ``cfg.json`` stores. Everything in the package looks
classes up here by that name and never names a class itself: loaders
(``from_pretrained``, ``load_from_disk``, SAELens' ``SAE.load_from_disk``), the training
runner, ``to_inference``, attribution, interventions and evals. The contract is
:class:`Transcoder` (inference) and :class:`TrainingTranscoder` (training) below;
``docs/contributing_a_variant.md`` walks through writing one and
:mod:`sae_lens_clt.testing` checks one.

Registration (:func:`register_architecture`):

1. stores ``(class, config class)`` (and the training pair) in this module's tables;
2. registers the *inference* pair with SAELens (``sae_lens.registry.SAE_CLASS_REGISTRY``),
   so ``sae_lens.SAE.load_from_disk`` returns the variant. The training pair is *not* put
   in SAELens' training registry: SAELens' own trainer calls ``training_forward_pass`` /
   ``calculate_aux_loss`` on one hook, which a multi-layer transcoder does not implement;
   our runner trains it;
3. is idempotent for the same classes and refuses a name taken by other classes.

This module imports nothing of the package and no heavy library at import time (the CLI
reads it to start fast); SAELens is imported when a class is registered.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

# built-in architecture names (the strings cfg.json stores)
CLT = "cross_layer_transcoder"
SKIP_CLT = "skip_cross_layer_transcoder"
PLT = "per_layer_transcoder"
TOPK_CLT = "topk_cross_layer_transcoder"
TOPK_PLT = "topk_per_layer_transcoder"
BUILTIN_MODULE = "sae_lens_clt.transcoders"
# where a transcoder reads and writes unless its metadata says otherwise (hook templates)
DEFAULT_INPUT_HOOK = "blocks.{layer}.ln2.hook_normalized"
DEFAULT_OUTPUT_HOOK = "blocks.{layer}.hook_mlp_out"  # importing it registers the built-in variants


@runtime_checkable
class Transcoder(Protocol):
    """What an inference transcoder provides (``x``: inputs ``[..., L, d_in]``).

    Shapes: ``L = cfg.n_layers`` layers, ``F = cfg.d_sae`` features per layer. A feature
    read at layer ``s`` writes to the contiguous target layers ``targets(s)`` (a range
    starting at ``s``: all later layers for a CLT, ``s`` alone for a PLT); ``w_s`` is
    ``len(targets(s))``.

    **Config** (``cfg``, a SAELens ``SAEConfig`` subclass): ``n_layers``, ``d_in``,
    ``d_out``, ``d_sae``, ``activation_fn``, ``dtype``, ``device``, ``metadata``
    (``hook_name`` / ``hook_name_out`` templates with ``{layer}``, ``model_name``), and
    ``hook_in(layer)`` / ``hook_out(layer)``, ``expected_shapes()``, ``to_dict()``,
    ``architecture()``.

    **Encoding**: ``encode_layer_pre(x_l [..., d_in], l) -> [..., F]``,
    ``activation(pre, l)``, ``encode_layer``, ``encode(x) -> [..., L, F]``, and
    ``encoder_vectors(layers [n], features [n]) -> [n, d_in]`` (the direction whose dot
    product with the input is each feature's pre-activation, up to its bias: attribution
    injects it as the gradient of a feature target).

    **Decoding**: ``targets(s)``, ``sources(t)`` (layers whose features write to ``t``),
    ``decoder_rows(s, ids) -> [n, w_s, d_out]``, ``decoder_block(s, t) -> [F, d_out]``,
    ``decoder_norms() -> [L, F]`` (each feature's decoder norm over all its targets, the
    sparsity penalty's weight), ``b_dec [L, d_out]``, ``decode(acts, x)``,
    ``decode_sparse(acts, x)`` (equal to ``decode``, touching active features only),
    ``decode_entries(values, layer, rows, cols, n)``, and ``skip(x_l, l)``: the linear skip
    term ``[..., d_out]`` added to layer ``l``'s output, or ``None``. The replacement model,
    attribution, interventions and evals use only these.

    **Files**: ``save_model(path)`` (SAELens layout), classmethods ``load_from_disk``,
    ``from_pretrained``, ``from_dict_and_state(cfg_dict, state, decoder_sources=None)``,
    ``to_circuit_tracer(path)`` and ``circuit_tracer_exportable() -> str | None`` (``None``
    when circuit-tracer reads the files as this very transcoder, else why not).
    """

    cfg: Any
    dtype: torch.dtype
    b_dec: torch.Tensor

    def encode_layer_pre(self, x: torch.Tensor, layer: int) -> torch.Tensor: ...
    def activation(self, hidden_pre: torch.Tensor, layer: int | None = None) -> torch.Tensor: ...
    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor: ...
    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def encoder_vectors(self, layers: torch.Tensor, features: torch.Tensor) -> torch.Tensor: ...
    def targets(self, source: int) -> range: ...
    def sources(self, target: int) -> range: ...
    def decoder_rows(self, layer: int, feature_ids: torch.Tensor) -> torch.Tensor: ...
    def decoder_block(self, source: int, target: int) -> torch.Tensor: ...
    def decoder_norms(self) -> torch.Tensor: ...
    def decode(self, feature_acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor: ...
    def decode_sparse(
        self, feature_acts: torch.Tensor, x: torch.Tensor | None = None
    ) -> torch.Tensor: ...
    def skip(self, x: torch.Tensor, layer: int) -> torch.Tensor | None: ...
    def save_model(self, path: Any) -> Any: ...
    def circuit_tracer_exportable(self) -> str | None: ...


@runtime_checkable
class TrainingTranscoder(Transcoder, Protocol):
    """What a training transcoder adds (inputs already normalised by ``in_scale``/``out_scale``).

    ``in_scale`` / ``out_scale`` ``[L]`` buffers; ``initialize_from_data(x [N, L, d_in])``;
    ``training_losses(x, y, l0_coefficient) -> TrainingStepOutput`` (``loss``, ``parts``,
    sparse ``acts``, ``y_hat``); ``after_optimizer_step()`` (projections);
    ``replacement_kl(model, tokens)``; ``load_inference_weights(inference)``; and
    ``to_inference()``, which returns the registered inference class of
    ``cfg.get_inference_sae_cfg_dict()["architecture"]`` with the scales folded in.
    """

    def training_losses(self, x: torch.Tensor, y: torch.Tensor, l0_coefficient: float) -> Any: ...
    def after_optimizer_step(self) -> None: ...
    def to_inference(self) -> Transcoder: ...


@dataclass(frozen=True)
class Registration:
    architecture: str
    cls: type
    config_class: type
    training_class: type | None = None
    training_config_class: type | None = None


_TABLE: dict[str, Registration] = {}


def _same(a: type | None, b: type | None) -> bool:
    return a is b or (
        a is not None
        and b is not None
        and (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
    )


def register_architecture(
    architecture: str,
    sae_class: type,
    config_class: type,
    training_class: type | None = None,
    training_config_class: type | None = None,
) -> None:
    """Register a variant's classes under ``architecture`` (see the module docstring)."""
    if (training_class is None) != (training_config_class is None):
        raise ValueError("give both training_class and training_config_class, or neither")
    current = _TABLE.get(architecture)
    if current is not None:
        if training_class is None:  # registering the inference pair again keeps the training pair
            training_class, training_config_class = (
                current.training_class,
                current.training_config_class,
            )
        if not all(
            _same(a, b)
            for a, b in (
                (current.cls, sae_class),
                (current.config_class, config_class),
                (current.training_class, training_class),
                (current.training_config_class, training_config_class),
            )
        ):
            raise ValueError(
                f"architecture {architecture!r} is already registered to "
                f"{current.cls.__module__}.{current.cls.__qualname__}: pick another name"
            )
    new = Registration(architecture, sae_class, config_class, training_class, training_config_class)
    from sae_lens import registry as sae_registry

    taken = sae_registry.SAE_CLASS_REGISTRY.get(architecture)
    if taken is not None and not _same(taken[0], sae_class):
        raise ValueError(
            f"architecture {architecture!r} is already registered in SAELens to "
            f"{taken[0].__module__}.{taken[0].__qualname__}: pick another name"
        )
    sae_registry.SAE_CLASS_REGISTRY[architecture] = (sae_class, config_class)
    _TABLE[architecture] = new


def unregister_architecture(architecture: str) -> None:
    """Forget a variant registered with :func:`register_architecture` (here and in SAELens),
    e.g. to define it again in a notebook. Built-in architectures come back on next use."""
    _TABLE.pop(architecture, None)
    if "sae_lens" in sys.modules:
        from sae_lens import registry as sae_registry

        sae_registry.SAE_CLASS_REGISTRY.pop(architecture, None)


BUILTINS = (CLT, SKIP_CLT, PLT, TOPK_CLT, TOPK_PLT)


def _ensure_builtins() -> None:
    if all(name in _TABLE for name in BUILTINS):
        return
    module = sys.modules.get(BUILTIN_MODULE)
    if module is not None and not hasattr(module, "register_builtins"):
        return  # being imported right now: it registers the built-ins when it finishes
    # first use (or this module was reloaded): register the built-ins
    importlib.import_module(BUILTIN_MODULE).register_builtins()


def registration(architecture: str) -> Registration:
    """The classes registered under ``architecture`` (``ValueError`` naming the known ones)."""
    _ensure_builtins()
    if architecture not in _TABLE:
        raise ValueError(
            f"architecture {architecture!r} is not a registered transcoder (registered: "
            f"{sorted(_TABLE)}); for another kind of SAE use sae_lens.SAE.load_from_disk, for "
            "a variant of your own import the module that calls register_architecture first"
        )
    return _TABLE[architecture]


def registration_of(cls: type) -> Registration:
    """The registration whose inference class is ``cls``."""
    _ensure_builtins()
    for reg in _TABLE.values():
        if reg.cls is cls:
            return reg
    raise ValueError(
        f"{cls.__module__}.{cls.__qualname__} is not registered: call "
        "sae_lens_clt.register_architecture(name, cls, config_cls) first"
    )


def architectures() -> list[str]:
    """Every registered architecture name."""
    _ensure_builtins()
    return sorted(_TABLE)


def register_with_saelens_when_imported() -> None:
    """Register the built-in variants with SAELens now if it is imported, else right after.

    ``import sae_lens_clt`` stays fast (no torch, no SAELens) and still makes
    ``sae_lens.SAE.load_from_disk`` know our architectures whichever is imported first.
    """
    if "sae_lens" in sys.modules and getattr(sys.modules["sae_lens"], "__spec__", None):
        _ensure_builtins()
        return
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        # a new list, never an edit in place: another thread may be walking the old one
        sys.meta_path = [_AfterImport("sae_lens", _ensure_builtins), *sys.meta_path]


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then()`` once, right after module ``name`` has finished executing.

    ``find_spec`` finds the real spec (with itself switched off, so the search does not
    come back here) and wraps its loader; a mere lookup (``importlib.util.find_spec``) does
    not use it up. The finder leaves ``sys.meta_path`` once the module has run.
    """

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then
        self._searching = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or self._searching:
            return None
        self._searching = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None:
            return spec
        loader, finder = spec.loader, self

        class _Loader(importlib.abc.Loader):
            def __getattr__(self, name: str) -> Any:  # resources etc.: the real loader's
                return getattr(loader, name)

            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                sys.meta_path = [f for f in sys.meta_path if f is not finder]
                try:
                    finder.then()
                except Exception as e:  # never break the import of SAELens itself
                    import warnings

                    warnings.warn(
                        f"sae_lens_clt could not register its architectures with SAELens "
                        f"({e}); `import sae_lens_clt.transcoders` registers them",
                        RuntimeWarning,
                        stacklevel=2,
                    )

        spec.loader = _Loader()
        return spec
