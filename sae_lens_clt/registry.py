"""Registration of this package's architectures in SAELens' registries.

SAELens dispatches on ``cfg.json``'s ``architecture`` through
``sae_lens.registry.SAE_CLASS_REGISTRY`` (inference) and
``SAE_TRAINING_CLASS_REGISTRY`` (training). Importing ``sae_lens_clt`` registers the CLT
classes there; registering the same classes again is a no-op, so importing twice (or
reloading) never raises. Contributors add a transcoder variant by calling
:func:`register_architecture` with their own classes.
"""

from __future__ import annotations

from typing import Any

from sae_lens import registry as _sae_registry


def _register(table: dict[str, tuple[Any, Any]], architecture: str, pair: tuple[Any, Any]) -> None:
    current = table.get(architecture)
    if current is not None:
        same = all(
            a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
            for a, b in zip(current, pair, strict=True)
        )
        if not same:
            raise ValueError(
                f"architecture {architecture!r} is already registered in SAELens to "
                f"{current[0].__module__}.{current[0].__qualname__}: pick another name"
            )
    table[architecture] = pair


def register_architecture(
    architecture: str,
    sae_class: type,
    config_class: type,
    training_class: type | None = None,
    training_config_class: type | None = None,
) -> None:
    """Register an inference (and optionally a training) class pair with SAELens, idempotently."""
    _register(_sae_registry.SAE_CLASS_REGISTRY, architecture, (sae_class, config_class))
    if training_class is not None:
        if training_config_class is None:
            raise ValueError("training_class needs its training_config_class")
        _register(
            _sae_registry.SAE_TRAINING_CLASS_REGISTRY,
            architecture,
            (training_class, training_config_class),
        )


def register_all() -> None:
    """Register every architecture this package ships."""
    from sae_lens_clt.clt import ARCHITECTURE, CrossLayerTranscoder, CrossLayerTranscoderConfig
    from sae_lens_clt.training.clt_training import (
        TrainingCrossLayerTranscoder,
        TrainingCrossLayerTranscoderConfig,
    )

    register_architecture(
        ARCHITECTURE,
        CrossLayerTranscoder,
        CrossLayerTranscoderConfig,
        TrainingCrossLayerTranscoder,
        TrainingCrossLayerTranscoderConfig,
    )
