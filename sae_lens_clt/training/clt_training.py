"""The training-time CLT: losses, straight-through JumpReLU, normalization, initialization.

Algorithm (one step on a batch of ``N`` tokens, normalized activations):

1. Normalize: ``x_l <- x_l * in_scale[l]``, ``y_l <- y_l * out_scale[l]`` (per-layer scalars
   estimated from data so that the mean squared norm is ``d``).
2. Encode: ``z = x W_enc + b_enc`` and ``a = JumpReLU_θ(z)`` (SAELens' straight-through
   JumpReLU: rectangle kernel of bandwidth ε gives the threshold its gradient).
3. Decode with :meth:`decode_sparse` when the share of active features is below
   ``decode_sparse_below``, else densely.
4. Loss = ``Σ_t ||ŷ_t − y_t||²`` (mean over tokens)
   ``+ λ_S Σ_{s,i} tanh(c · a_{s,i} · ||W_dec[s,i]||)`` (λ_S warmed up linearly from 0)
   ``+ λ_P Σ_{s,i} relu(θ − z)·||W_dec[s,i]||``, where ``||W_dec[s,i]||`` is the norm of
   feature i's decoder concatenated over all its target layers.
5. Saving folds ``in_scale`` / ``out_scale`` into the weights, so the saved inference
   :class:`CrossLayerTranscoder` runs on raw activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.jumprelu_sae import JumpReLU
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainingSAEConfig
from typing_extensions import override

from sae_lens_clt.clt import ARCHITECTURE, CrossLayerTranscoder, CrossLayerTranscoderConfig


@dataclass
class TrainingCrossLayerTranscoderConfig(CrossLayerTranscoderConfig, TrainingSAEConfig):
    """Training configuration; field names follow SAELens' ``JumpReLUTrainingSAEConfig``.

    ``l0_coefficient`` is λ_S of the tanh sparsity loss and ``jumprelu_tanh_scale`` its c;
    ``pre_act_loss_coefficient`` is λ_P (None disables it).
    """

    jumprelu_init_threshold: float = 0.03
    jumprelu_bandwidth: float = 0.1
    jumprelu_tanh_scale: float = 4.0
    jumprelu_ste_to_input: bool = False
    l0_coefficient: float = 0.15
    l0_warm_up_steps: int = 0
    pre_act_loss_coefficient: float | None = 3e-6
    init_active_fraction: float = 0.05  # share of tokens each feature fires on at init
    decode_sparse_below: float = 0.05  # use the sparse decode below this share active
    cross_layer_decoders: bool = True  # False: per-layer transcoders (only s -> s blocks)
    decoder_init_norm: float | None = None

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TrainingCrossLayerTranscoder(CrossLayerTranscoder, TrainingSAE):  # type: ignore[misc]
    """A :class:`CrossLayerTranscoder` with training losses and normalization buffers."""

    cfg: TrainingCrossLayerTranscoderConfig  # type: ignore[assignment]

    def __init__(self, cfg: TrainingCrossLayerTranscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term=use_error_term)
        L = cfg.n_layers
        self.register_buffer("in_scale", torch.ones(L, device=self.device))
        self.register_buffer("out_scale", torch.ones(L, device=self.device))
        if cfg.activation_fn == "jumprelu" and self.device.type != "meta":
            with torch.no_grad():
                self.threshold.fill_(cfg.jumprelu_init_threshold)
        if not cfg.cross_layer_decoders and self.device.type != "meta":
            self.zero_cross_layer_blocks()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def zero_cross_layer_blocks(self) -> None:
        """Per-layer-transcoder mode: keep only the ``s -> s`` decoder blocks."""
        for w in self.W_dec:
            w[:, 1:].zero_()
            if w.grad is not None:
                w.grad[:, 1:].zero_()

    @torch.no_grad()
    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Set ``b_enc`` so each feature starts firing on ``init_active_fraction`` of ``x``.

        ``x``: normalized inputs ``[N, L, d_in]``. Starting every feature alive avoids
        features that never fire and so never learn.
        """
        z = torch.einsum("nli,lif->nlf", x.to(self.dtype), self.W_enc)  # [N, L, F]
        k = max(1, round((1 - self.cfg.init_active_fraction) * z.shape[0]))
        q = z.float().kthvalue(k, dim=0).values  # [L, F]: the (1 - fraction) quantile
        theta = self.threshold if self.cfg.activation_fn == "jumprelu" else 0.0
        self.b_enc.copy_((theta - q + 1e-3).to(self.dtype))

    # ------------------------------------------------------------------ losses
    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "l0": TrainCoefficientConfig(
                value=self.cfg.l0_coefficient, warm_up_steps=self.cfg.l0_warm_up_steps
            )
        }

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., L, d_in] -> (acts, hidden_pre)``, with the straight-through JumpReLU."""
        self._check_input(x, self.cfg.d_in, "CLT input")
        hidden_pre = torch.einsum("...li,lif->...lf", x.to(self.dtype), self.W_enc) + self.b_enc
        if self.cfg.activation_fn == "jumprelu":
            acts = JumpReLU.apply(
                hidden_pre,
                self.threshold.to(hidden_pre.dtype),
                self.cfg.jumprelu_bandwidth,
                self.cfg.jumprelu_ste_to_input,
            )
        else:
            acts = self.activation(hidden_pre)
        return acts, hidden_pre

    @override
    def calculate_aux_loss(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError("use TrainingCrossLayerTranscoder.training_losses")

    def training_losses(
        self, x: torch.Tensor, y: torch.Tensor, l0_coefficient: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Loss on normalized activations.

        ``x [N, L, d_in]`` and ``y [N, L, d_out]`` are already normalized. Returns
        ``(loss, parts, acts)`` with ``parts`` holding ``mse_loss``, ``l0_loss``,
        ``pre_act_loss`` (scalars) and ``acts [N, L, F]`` the feature activations.
        """
        acts, hidden_pre = self.encode_with_hidden_pre(x)
        density = (acts.detach() != 0).float().mean().item()
        if density < self.cfg.decode_sparse_below:
            y_hat = self.decode_sparse(acts, x)
        else:
            y_hat = self.decode(acts, x)
        mse = (y_hat - y).pow(2).sum(dim=(-1, -2)).mean()
        dec_norm = self.decoder_norms()  # [L, F]
        parts = {"mse_loss": mse}
        loss = mse
        if self.cfg.activation_fn != "topk":
            sparsity = torch.tanh(self.cfg.jumprelu_tanh_scale * acts * dec_norm).sum((-1, -2))
            parts["l0_loss"] = l0_coefficient * sparsity.mean()
            loss = loss + parts["l0_loss"]
        if self.cfg.activation_fn == "jumprelu" and self.cfg.pre_act_loss_coefficient:
            theta = self.threshold.to(hidden_pre.dtype)
            pre_act = ((theta - hidden_pre).relu() * dec_norm).sum((-1, -2)).mean()
            parts["pre_act_loss"] = self.cfg.pre_act_loss_coefficient * pre_act
            loss = loss + parts["pre_act_loss"]
        return loss, parts, acts

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Projections that keep the parameters valid: θ >= 0, per-layer mode blocks."""
        if self.cfg.activation_fn == "jumprelu":
            self.threshold.clamp_(min=0.0)
        if not self.cfg.cross_layer_decoders:
            self.zero_cross_layer_blocks()

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_inference(self) -> CrossLayerTranscoder:
        """An inference :class:`CrossLayerTranscoder` on raw activations (scales folded)."""
        cfg_dict = self.cfg.get_inference_sae_cfg_dict()
        cfg = CrossLayerTranscoderConfig.from_dict(cfg_dict)
        state = {
            k: v.detach().clone()
            for k, v in self.state_dict().items()
            if k in cfg.expected_shapes()
        }
        clt = CrossLayerTranscoder.from_state_dict(cfg, state)
        clt.fold_input_output_scaling(self.in_scale, self.out_scale)
        return clt

    @override
    def save_inference_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write the inference CLT (SAELens layout, scales folded) to ``path``."""
        return self.to_inference().save_model(path)

    @override
    @torch.no_grad()
    def log_histograms(self) -> dict[str, Any]:
        return {"weights/W_dec_norms": self.decoder_norms().flatten().float().cpu().numpy()}
