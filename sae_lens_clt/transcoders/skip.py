"""CLT with a linear skip connection: ``ŷ_t = CLT(x)_t + x_t W_skip[t]``.

The skip term is linear in the layer's own input, so in the local replacement model it
is one more linear path (attribution carries it through the MLP-output leaf with value 0
and the gradient of ``x_t W_skip[t]``). ``W_skip [L, d_in, d_out]`` starts at zero.
circuit-tracer's ``load_clt`` reads no skip weights, so exporting to its layout needs
``allow_extensions=True`` (and circuit-tracer then runs the CLT without the skip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from typing_extensions import override

from sae_lens_clt import registry
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.transcoders.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
)


@dataclass
class SkipCrossLayerTranscoderConfig(CrossLayerTranscoderConfig):
    """A :class:`CrossLayerTranscoderConfig` whose transcoder adds ``x_t W_skip[t]``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return registry.SKIP_CLT

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().expected_shapes(), "W_skip": (self.n_layers, self.d_in, self.d_out)}


class SkipCrossLayerTranscoder(CrossLayerTranscoder):
    """A CLT plus ``W_skip [L, d_in, d_out]``."""

    cfg: SkipCrossLayerTranscoderConfig  # type: ignore[assignment]
    W_skip: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        c = self.cfg
        self.W_skip = nn.Parameter(
            torch.zeros(c.n_layers, c.d_in, c.d_out, dtype=self.dtype, device=self.device)
        )

    @override
    def skip(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        return x.to(self.dtype) @ self.W_skip[layer]

    @override
    def skip_all(self, x: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            raise ValueError("this CLT has a skip connection: pass the input x to decode")
        return torch.einsum("...li,lio->...lo", x.to(self.dtype), self.W_skip)

    @override
    @torch.no_grad()
    def fold_input_output_scaling(self, in_scale: torch.Tensor, out_scale: torch.Tensor) -> None:
        super().fold_input_output_scaling(in_scale, out_scale)
        ratio = (in_scale / out_scale).to(self.device, self.dtype)
        self.W_skip.mul_(ratio[:, None, None])

    @override
    def circuit_tracer_exportable(self) -> str | None:
        return super().circuit_tracer_exportable() or (
            "circuit-tracer's load_clt reads no skip-connection weights"
        )

    @override
    def to_circuit_tracer(
        self, path: str | Path, model_name: str | None = None, allow_extensions: bool = False
    ) -> Path:
        """With ``allow_extensions=True``, also write ``W_skip_{i}`` (read back by sae_lens_clt;
        circuit-tracer ignores it and runs the CLT without its skip connection)."""
        reason = super().circuit_tracer_exportable()
        if reason:
            raise CLTFormatError(f"{reason}: share this CLT with save_model")
        return self._write_circuit_tracer(Path(path), model_name, allow_extensions)


@dataclass
class TrainingSkipCrossLayerTranscoderConfig(
    SkipCrossLayerTranscoderConfig, TrainingCrossLayerTranscoderConfig
):
    """Training fields of :class:`~sae_lens_clt.transcoders.clt_training.TrainingCrossLayerTranscoderConfig`."""


class TrainingSkipCrossLayerTranscoder(SkipCrossLayerTranscoder, TrainingCrossLayerTranscoder):  # type: ignore[misc]
    """A skip CLT with the CLT training losses; ``W_skip`` trains with the rest."""

    cfg: TrainingSkipCrossLayerTranscoderConfig  # type: ignore[assignment]
