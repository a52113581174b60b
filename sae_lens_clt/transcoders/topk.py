"""TopK and BatchTopK CLTs: a fixed number of active features instead of a sparsity penalty.

1. **TopK** (inference and training): at each layer and token only the ``k`` largest
   pre-activations stay (ReLU'd); the loss is the reconstruction error alone.
2. **BatchTopK** (training, ``batch_topk=True``): at each layer the ``k · N`` largest
   pre-activations of the whole batch of ``N`` tokens stay, so ``k`` is the *mean* L0 and
   tokens share the budget. While training, the smallest activation kept at each layer is
   tracked as an exponential moving average ``θ_l`` (momentum ``threshold_momentum``).
3. **Conversion for inference** (``to_inference`` of a BatchTopK run): a batch-level rule
   cannot run on one token, so the result is a JumpReLU
   :class:`~sae_lens_clt.transcoders.clt.CrossLayerTranscoder` with threshold ``θ_l`` for
   every feature of layer ``l`` (the conversion of crosslayer-coding and Llamascopium; a
   per-layer TopK run becomes a JumpReLU ``PerLayerTranscoder``):
   ``z · 1[z > θ_l]`` keeps what BatchTopK keeps on a typical batch, token by token, and
   exports to circuit-tracer. A TopK run stays a :class:`TopKCrossLayerTranscoder`.
4. :class:`TopKPerLayerTranscoder`: the same activation on per-layer decoders (to compare
   CLTs and per-layer transcoders at equal L0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from typing_extensions import override

from sae_lens_clt import registry
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.transcoders.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
    TrainingStepOutput,
)


@dataclass
class TopKCrossLayerTranscoderConfig(CrossLayerTranscoderConfig):
    activation_fn: str = "topk"
    k: int = 32  # features kept per layer and token

    @override
    @classmethod
    def architecture(cls) -> str:
        return registry.TOPK_CLT

    @override
    def activation_fns(self) -> tuple[str, ...]:
        return ("topk",)

    @override
    def problems(self) -> list[str]:
        problems = super().problems()
        if not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
            problems.append(f"TopK needs 0 < k <= d_sae, got k={self.k!r}")
        return problems


class TopKCrossLayerTranscoder(CrossLayerTranscoder):
    """A CLT whose activation keeps the ``k`` largest features per layer and token."""

    cfg: TopKCrossLayerTranscoderConfig  # type: ignore[assignment]

    @override
    def activation(self, hidden_pre: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        top = hidden_pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(hidden_pre).scatter(-1, top.indices, top.values.relu())

    @override
    def circuit_tracer_exportable(self) -> str | None:
        return "circuit-tracer's layout stores JumpReLU or ReLU CLTs, not TopK"

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "folding decoder norms into a TopK CLT's encoder would change which k features "
            "win (the outputs would change): a TopK CLT keeps its decoder norms"
        )


@dataclass
class TrainingTopKCrossLayerTranscoderConfig(
    TopKCrossLayerTranscoderConfig, TrainingCrossLayerTranscoderConfig
):
    batch_topk: bool = False  # True: k is the mean L0 over the batch (BatchTopK)
    threshold_momentum: float = 0.99  # EMA of the smallest kept activation (BatchTopK)


class TrainingTopKCrossLayerTranscoder(TopKCrossLayerTranscoder, TrainingCrossLayerTranscoder):  # type: ignore[misc]
    """TopK / BatchTopK training; ``to_inference`` converts BatchTopK to JumpReLU (step 3)."""

    cfg: TrainingTopKCrossLayerTranscoderConfig  # type: ignore[assignment]
    jumprelu_architecture = registry.CLT  # what a BatchTopK run becomes for inference
    supports_feature_sharding = False  # the top k of a layer needs all its features

    def __init__(self, cfg: TrainingTopKCrossLayerTranscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term=use_error_term)
        L = cfg.n_layers
        self.register_buffer("kept_threshold", torch.zeros(L, device=self.device))
        self.register_buffer(
            "threshold_updates", torch.zeros((), dtype=torch.long, device=self.device)
        )

    @override
    def sparsity_penalty(self) -> bool:
        return False

    @override
    def training_activation(
        self, hidden_pre: torch.Tensor, layer: int | None = None
    ) -> torch.Tensor:
        if not self.cfg.batch_topk:
            return self.activation(hidden_pre, layer)
        # [..., L, F] (all layers) or [..., F] (one layer): top k·N per layer over the batch
        per_layer = hidden_pre[..., None, :] if layer is not None else hidden_pre
        flat = per_layer.movedim(-2, 0).flatten(1)  # [L', N * F]
        n_tokens = flat.shape[1] // self.cfg.d_sae
        top = flat.relu().topk(min(flat.shape[1], self.cfg.k * n_tokens), dim=1)
        kept = torch.zeros_like(flat).scatter(1, top.indices, top.values)
        return kept.view(per_layer.movedim(-2, 0).shape).movedim(0, -2).reshape(hidden_pre.shape)

    @override
    def training_losses(
        self, x: torch.Tensor, y: torch.Tensor, l0_coefficient: float
    ) -> TrainingStepOutput:
        self._check_input(x, self.cfg.d_in, "CLT input")
        self._check_input(y, self.cfg.d_out, "CLT target")
        L = self.cfg.n_layers
        x, y = x.reshape(-1, L, self.cfg.d_in), y.reshape(-1, L, self.cfg.d_out)
        acts, hidden_pre = self.encode_with_hidden_pre(x)
        if self.cfg.batch_topk:
            self._track_threshold(acts.detach())
        return self._losses_from_acts(x, y, acts, hidden_pre, l0_coefficient)

    @torch.no_grad()
    def _track_threshold(self, acts: torch.Tensor) -> None:
        """EMA of the smallest positive activation kept at each layer (acts ``[N, L, F]``)."""
        positive = torch.where(acts > 0, acts, torch.full_like(acts, float("inf")))
        smallest = positive.amin(dim=(0, 2)).float()  # [L]
        smallest = torch.where(torch.isfinite(smallest), smallest, self.kept_threshold)
        m = self.cfg.threshold_momentum if int(self.threshold_updates) else 0.0
        self.kept_threshold.mul_(m).add_((1 - m) * smallest)
        self.threshold_updates += 1

    @override
    @torch.no_grad()
    def to_inference(self) -> CrossLayerTranscoder:
        cfg_dict = self.cfg.get_inference_sae_cfg_dict()
        if not self.cfg.batch_topk:
            return self._inference_from(cfg_dict, {})
        cfg_dict.update(architecture=self.jumprelu_architecture, activation_fn="jumprelu")
        cfg_dict.pop("k", None)
        threshold = self.kept_threshold.to(self.dtype)[:, None].expand(-1, self.cfg.d_sae)
        return self._inference_from(cfg_dict, {"threshold": threshold.clone()})

    def batch_topk_thresholds(self) -> dict[str, Any]:
        """The tracked per-layer thresholds θ_l and how many batches they average."""
        return {"threshold": self.kept_threshold.tolist(), "updates": int(self.threshold_updates)}


@dataclass
class TopKPerLayerTranscoderConfig(TopKCrossLayerTranscoderConfig):
    """TopK features that write to their own layer only (per-layer transcoders at fixed L0)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return registry.TOPK_PLT

    @override
    def n_targets(self, source: int) -> int:
        return 1


class TopKPerLayerTranscoder(TopKCrossLayerTranscoder):
    cfg: TopKPerLayerTranscoderConfig  # type: ignore[assignment]


@dataclass
class TrainingTopKPerLayerTranscoderConfig(
    TopKPerLayerTranscoderConfig, TrainingTopKCrossLayerTranscoderConfig
):
    pass


class TrainingTopKPerLayerTranscoder(TopKPerLayerTranscoder, TrainingTopKCrossLayerTranscoder):  # type: ignore[misc]
    """TopK / BatchTopK per-layer training (BatchTopK converts to a JumpReLU PLT)."""

    cfg: TrainingTopKPerLayerTranscoderConfig  # type: ignore[assignment]
    jumprelu_architecture = registry.PLT
