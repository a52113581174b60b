"""Per-layer transcoders (PLT): one transcoder per layer, each writing to its own layer only.

The same encoder as a CLT; the decoder of layer ``s`` is a single block ``W_dec[s]
[F, 1, d_out]`` (``targets(s) = [s]``), so none of the ``L(L-1)/2`` cross-layer blocks
is ever allocated. Everything else (attribution, interventions, evals, training, both file
layouts) comes from :class:`~sae_lens_clt.transcoders.clt.CrossLayerTranscoder` through
``targets`` / ``sources``. In circuit-tracer's CLT layout the cross-layer blocks are written
as zeros, which circuit-tracer computes with exactly; that layout has no per-layer kind, so
the export reads back as a ``CrossLayerTranscoder`` (the SAELens layout keeps the class).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing_extensions import override

from sae_lens_clt import registry
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.transcoders.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
)


@dataclass
class PerLayerTranscoderConfig(CrossLayerTranscoderConfig):
    @override
    @classmethod
    def architecture(cls) -> str:
        return registry.PLT

    @override
    def n_targets(self, source: int) -> int:
        return 1


class PerLayerTranscoder(CrossLayerTranscoder):
    """``L`` transcoders side by side: ``ŷ_t = a_t W_dec[t] + b_dec[t]``."""

    cfg: PerLayerTranscoderConfig  # type: ignore[assignment]


@dataclass
class TrainingPerLayerTranscoderConfig(
    PerLayerTranscoderConfig, TrainingCrossLayerTranscoderConfig
):
    """Training fields of :class:`~sae_lens_clt.transcoders.clt_training.TrainingCrossLayerTranscoderConfig`."""


class TrainingPerLayerTranscoder(PerLayerTranscoder, TrainingCrossLayerTranscoder):  # type: ignore[misc]
    """A per-layer transcoder with the CLT training losses (no cross-layer block exists)."""

    cfg: TrainingPerLayerTranscoderConfig  # type: ignore[assignment]
