"""sae_lens_clt: cross-layer transcoders for SAELens.

The public names below are loaded on first use (PEP 562), so ``import sae_lens_clt`` and
the ``sae-lens-clt`` CLI start in a fraction of a second. Importing the package still makes
SAELens know every transcoder architecture: they are registered in SAELens' registry as
soon as ``sae_lens`` is imported (at once if it already is), so
``sae_lens.SAE.load_from_disk(folder)`` returns a :class:`CrossLayerTranscoder` (or the
registered variant the folder holds).
"""

from __future__ import annotations

import importlib
from typing import Any

from sae_lens_clt.registry import register_with_saelens_when_imported

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AttributionGraph": "sae_lens_clt.attribution.graph",
    "GraphScores": "sae_lens_clt.attribution.prune",
    "PruneResult": "sae_lens_clt.attribution.prune",
    "attribute": "sae_lens_clt.attribution.attribute",
    "InterventionResult": "sae_lens_clt.attribution.intervene",
    "intervene": "sae_lens_clt.attribution.intervene",
    "ARCHITECTURE": "sae_lens_clt.transcoders.clt",
    "DEFAULT_INPUT_HOOK": "sae_lens_clt.transcoders.clt",
    "DEFAULT_OUTPUT_HOOK": "sae_lens_clt.transcoders.clt",
    "CrossLayerTranscoder": "sae_lens_clt.transcoders",
    "CrossLayerTranscoderConfig": "sae_lens_clt.transcoders",
    "TrainingCrossLayerTranscoder": "sae_lens_clt.transcoders",
    "TrainingCrossLayerTranscoderConfig": "sae_lens_clt.transcoders",
    "PerLayerTranscoder": "sae_lens_clt.transcoders",
    "PerLayerTranscoderConfig": "sae_lens_clt.transcoders",
    "SkipCrossLayerTranscoder": "sae_lens_clt.transcoders",
    "SkipCrossLayerTranscoderConfig": "sae_lens_clt.transcoders",
    "TopKCrossLayerTranscoder": "sae_lens_clt.transcoders",
    "TopKCrossLayerTranscoderConfig": "sae_lens_clt.transcoders",
    "DEFAULT_MODEL": "sae_lens_clt.default_model",
    "load_default_dataset": "sae_lens_clt.default_model",
    "load_model": "sae_lens_clt.default_model",
    "CLTEvalResult": "sae_lens_clt.evals",
    "evaluate_clt": "sae_lens_clt.evals",
    "push_to_hub": "sae_lens_clt.publish",
    "CLTFormatError": "sae_lens_clt.formats.errors",
    "DEFAULT_CLT": "sae_lens_clt.loading.releases",
    "UnknownCLTError": "sae_lens_clt.loading.releases",
    "load_releases": "sae_lens_clt.loading.releases",
    "register_release": "sae_lens_clt.loading.releases",
    "register_architecture": "sae_lens_clt.registry",
    "CLTTrainingRunner": "sae_lens_clt.training.runner",
    "CLTTrainingRunnerConfig": "sae_lens_clt.training.config",
    "TrainingDivergedError": "sae_lens_clt.training.runner",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sae_lens_clt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


register_with_saelens_when_imported()
