"""The training-time CLT: losses, straight-through JumpReLU, normalization, initialization.

Algorithm (one step on a batch of ``N`` tokens, normalized activations):

1. Normalize: ``x_l <- x_l * in_scale[l]``, ``y_l <- y_l * out_scale[l]`` (per-layer scalars
   estimated from data so that the mean squared norm is ``d``).
2. Encode: ``z = x W_enc + b_enc`` and ``a = JumpReLU_θ(z)`` (SAELens' straight-through
   JumpReLU: rectangle kernel of bandwidth ε gives the threshold its gradient).
   For JumpReLU, steps 2-4 run fused (:class:`_JumpReLUTrainFn`): the activations stay a
   sparse list of the entries with ``z > θ - ε/2`` (active, or inside the threshold's
   window, where the straight-through gradient lives).
3. Decode sparsely when that list holds fewer than ``decode_sparse_below`` of all
   entries, else through dense products (same result).
4. Loss = ``Σ_t ||ŷ_t − y_t||²`` (mean over tokens)
   ``+ λ_S Σ_{s,i} tanh(c · a_{s,i} · ||W_dec[s,i]||)`` (λ_S warmed up linearly from 0)
   ``+ λ_P Σ_{s,i} relu(θ − z)·||W_dec[s,i]||``, where ``||W_dec[s,i]||`` is the norm of
   feature i's decoder concatenated over all its target layers
   ``[+ λ_KL · KL(model ‖ replacement model)]`` (optional, :meth:`replacement_kl`).
5. Saving folds ``in_scale`` / ``out_scale`` into the weights, so the saved inference
   :class:`CrossLayerTranscoder` runs on raw activations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from sae_lens.saes.jumprelu_sae import JumpReLU
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainingSAEConfig
from typing_extensions import override

from sae_lens_clt import registry
from sae_lens_clt.replacement import ReplacementHooks
from sae_lens_clt.transcoders.clt import (
    ARCHITECTURE,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
)
from sae_lens_clt.transcoders.sparse import layer_slices


class SparseActivations(NamedTuple):
    """Feature activations ``[N, L, F]`` as entries sorted by (layer, row, feature).

    ``layer``, ``row``, ``feature``, ``values``: ``[nnz]`` each; ``shape`` = ``(N, L, F)``.
    Every active entry is listed; some listed entries may hold an explicit 0 (the
    training path also lists features just below their threshold).
    """

    layer: torch.Tensor
    row: torch.Tensor
    feature: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int, int]

    def to_dense(self) -> torch.Tensor:
        """``[N, L, F]`` with zeros where no feature fired."""
        out = self.values.new_zeros(self.shape)
        out[self.row, self.layer, self.feature] = self.values
        return out

    def fired(self) -> torch.Tensor:
        """``[L, F]`` bool: which features fired on at least one token."""
        _, L, F = self.shape
        on = (self.values != 0).to(torch.float32)
        counts = torch.bincount(self.layer * F + self.feature, weights=on, minlength=L * F)
        return (counts > 0).view(L, F)

    def l0(self) -> float:
        """Mean number of active features per token and layer."""
        N, L, _ = self.shape
        return (self.values != 0).sum().item() / max(1, N * L)


class TrainingStepOutput(NamedTuple):
    """What :meth:`TrainingCrossLayerTranscoder.training_losses` returns."""

    loss: torch.Tensor  # scalar, differentiable
    parts: dict[str, torch.Tensor]  # mse_loss, l0_loss, pre_act_loss (scalars)
    acts: SparseActivations
    y_hat: torch.Tensor  # [N, L, d_out], detached reconstruction


class _JumpReLUTrainFn(torch.autograd.Function):
    """Encoder, JumpReLU with its straight-through threshold gradient, tanh sparsity and
    pre-activation losses in one function that returns the activations sparse.

    Inputs: ``x [L, N, d_in]`` (layer-major), ``W_enc [L, d_in, F]``, ``b_enc``, ``θ`` and
    the decoder norms ``n`` (``[L, F]`` each), tanh scale ``c``, bandwidth ``ε``, and
    ``sparse_below`` (below this share of pattern entries the encoder's weight gradient
    comes from the sparse pattern rather than a dense product). With ``d = z - θ = x W_enc + b_enc - θ``, the outputs over the
    *pattern* entries ``d > -ε/2`` (the active ones plus those inside the threshold's
    window, sorted by layer, row, feature) are

    - ``values [P]``: ``a = z`` where ``d > 0``, else 0; ``layer, row, col [P]``,
    - ``sparsity = Σ tanh(c · a · n)`` and ``pre_act = Σ_{all entries} relu(-d) · n``
      (sums over the batch; the caller divides by N).

    Backward is SAELens' JumpReLU rule: ``∂a/∂z = 1[z > θ]``,
    ``∂a/∂θ = -(θ/ε) · 1[|z - θ| < ε/2]``; the gradient reaching ``values`` at window
    entries that are off (value 0) is what moves θ down, so those entries are in the
    pattern although they decode to nothing.

    Nothing of size ``L × N × F`` survives the forward pass: the pre-activation term is
    dense, but ``Σ_n relu(-d) = Σ_n max(d, 0) - Σ_n d`` where the first sum runs over the
    pattern and ``Σ_n d = (Σ_n x) W_enc + N (b_enc - θ)``; likewise its gradient
    ``-n · 1[d < 0] = n · 1[d >= 0] - n`` is a sparse part plus a rank-one part. So the
    only dense work is the encoder product, one comparison and one ``nonzero``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        theta: torch.Tensor,
        norms: torch.Tensor,
        c: float,
        eps: float,
        sparse_below: float,
    ) -> tuple[torch.Tensor, ...]:
        L, N, _ = x.shape
        F = W_enc.shape[-1]
        dt = W_enc.dtype
        bias = b_enc - theta.to(dt)  # [L, F]
        # the bias rides in the product as a row of W (x gets a column of ones): one pass
        ones = torch.ones(L, N, 1, dtype=dt, device=x.device)
        d = torch.bmm(torch.cat([x, ones], 2), torch.cat([W_enc, bias[:, None]], 1)).view(-1)
        idx = (d > -eps / 2).nonzero().squeeze(1)  # [P], sorted: (layer, row, col)
        d_p = d[idx]
        del d
        layer = idx // (N * F)
        row = (idx // F) % N
        col = idx % F
        lf = layer * F + col  # [P] index into [L * F]
        theta_p, n_p = theta.reshape(-1)[lf].to(dt), norms.reshape(-1)[lf].to(dt)
        zero = torch.zeros((), dtype=dt, device=x.device)
        active = d_p > 0
        values = torch.where(active, d_p + theta_p, zero)
        t = torch.tanh(c * values * n_p)
        # sums over tokens accumulate in float32 at least (bf16 sums stall near 256)
        acc = torch.promote_types(dt, torch.float32)
        x_sum = x.sum(1, dtype=acc)  # [L, d_in]
        sum_d = torch.bmm(x_sum[:, None, :], W_enc.to(acc)).squeeze(1) + N * bias.to(acc)
        pos_sum = torch.zeros(L * F, dtype=acc, device=x.device)
        pos_sum.index_add_(0, lf, torch.where(active, d_p, zero).to(acc))  # Σ_n max(d, 0)
        relu_sum = pos_sum.view(L, F) - sum_d  # Σ_n relu(θ - z), [L, F] in acc
        pre_act = (relu_sum * norms.to(acc)).sum()
        ctx.mark_non_differentiable(layer, row, col)
        saved = (x, theta, norms, layer, row, col, lf, d_p, theta_p, n_p, t, values, relu_sum)
        ctx.save_for_backward(*saved)
        ctx.c, ctx.eps, ctx.F = c, eps, F
        ctx.sparse_grad = idx.numel() < sparse_below * L * N * F
        return values, layer, row, col, t.sum(), pre_act

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        g_values: torch.Tensor,
        _layer: Any,
        _row: Any,
        _col: Any,
        g_sparsity: torch.Tensor,
        g_pre: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        x, theta, norms, layer, row, col, lf, d_p, theta_p, n_p, t, values, relu_sum = (
            ctx.saved_tensors
        )
        c, eps, F = ctx.c, ctx.eps, ctx.F
        L, N, _ = x.shape
        dt = x.dtype
        acc = relu_sum.dtype  # float32 or wider: the dtype of every sum over tokens
        zero = torch.zeros((), dtype=dt, device=x.device)
        n = norms.to(acc)
        g_sparsity, g_pre = g_sparsity.to(acc), g_pre.to(acc)
        dtanh = (1 - t * t) * c
        g = g_values + g_sparsity.to(dt) * dtanh * n_p  # ∂loss/∂a at the pattern entries
        active, nonneg = d_p > 0, d_p >= 0
        # threshold: straight-through window term + pre-activation term (n · #{d < 0})
        window = d_p.abs() < eps / 2
        g_theta = torch.zeros(L * F, dtype=acc, device=x.device)
        g_theta.index_add_(0, lf, torch.where(window, g * (-theta_p / eps), zero).to(acc))
        n_nonneg = torch.bincount(lf, weights=nonneg.to(acc), minlength=L * F).view(L, F)
        g_theta = g_theta.view(L, F) + g_pre * n * (N - n_nonneg)
        # decoder norms: tanh term on the pattern + pre-activation term
        g_norms = torch.zeros(L * F, dtype=acc, device=x.device)
        g_norms.index_add_(0, lf, g_sparsity * (dtanh * values).to(acc))
        g_norms = g_norms.view(L, F) + g_pre * relu_sum
        # ∂loss/∂z = S - g_pre · n · 1[d < 0] = G - g_pre · n, G sparse on the pattern
        G_p = torch.where(active, g, zero) + torch.where(nonneg, g_pre.to(dt) * n_p, zero)
        g_b = torch.zeros(L * F, dtype=acc, device=x.device)
        g_b.index_add_(0, lf, G_p.to(acc))
        g_b = g_b.view(L, F) - g_pre * N * n
        g_W = -g_pre * x.sum(1, dtype=acc)[:, :, None] * n[:, None, :]  # rank one: [L, d_in, F]
        if ctx.sparse_grad:  # x_lᵀ G_l = (G_lᵀ x_l)ᵀ with G_lᵀ sorted by column
            for s, sl in layer_slices(layer, L):
                perm = torch.argsort(col[sl], stable=True)
                gt = torch.sparse_coo_tensor(
                    torch.stack([col[sl][perm], row[sl][perm]]),
                    G_p[sl][perm],
                    (F, N),
                    check_invariants=False,
                    is_coalesced=True,
                )
                g_W[s] += torch.sparse.mm(gt, x[s]).T
        else:
            G = torch.zeros(L * N * F, dtype=dt, device=x.device)
            G[(layer * N + row) * F + col] = G_p
            g_W += torch.bmm(x.transpose(1, 2), G.view(L, N, F))
        return (
            None,
            g_W.to(dt),
            g_b.to(dt),
            g_theta.to(theta.dtype),
            g_norms.to(norms.dtype),
            None,
            None,
            None,
        )


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
    decode_sparse_below: float = 0.07  # sparse decode + encoder grad below this share

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class TrainingCrossLayerTranscoder(CrossLayerTranscoder, TrainingSAE):  # type: ignore[misc]
    """A :class:`CrossLayerTranscoder` with training losses and normalization buffers."""

    cfg: TrainingCrossLayerTranscoderConfig  # type: ignore[assignment]
    # Feature-sharded training (sae_lens_clt.training.parallel): each rank's module holds a
    # slice of every layer's features; ``shard_sum`` sums the ranks' partial reconstructions
    # ``[N, L, d_out]`` (forward: all-reduce; backward: identity, since every rank computes
    # the same loss from the sum). None: this module holds every feature.
    shard_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Whether the losses stay exact when the features are split across ranks: true when
    # the activation is elementwise (JumpReLU, ReLU); a TopK over a layer's features is not.
    supports_feature_sharding: ClassVar[bool] = True

    def __init__(self, cfg: TrainingCrossLayerTranscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term=use_error_term)
        L = cfg.n_layers
        self.register_buffer("in_scale", torch.ones(L, device=self.device))
        self.register_buffer("out_scale", torch.ones(L, device=self.device))
        if cfg.activation_fn == "jumprelu" and self.device.type != "meta":
            with torch.no_grad():
                self.threshold.fill_(cfg.jumprelu_init_threshold)

    def sum_over_shards(self, partial: torch.Tensor) -> torch.Tensor:
        """The full reconstruction from this shard's features' part (identity unsharded)."""
        return partial if self.shard_sum is None else self.shard_sum(partial)

    # ------------------------------------------------------------------ init

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

    @torch.no_grad()
    def load_inference_weights(self, clt: CrossLayerTranscoder) -> None:
        """Start from a trained inference CLT (weights on raw activations).

        The current ``in_scale`` / ``out_scale`` are unfolded into the weights, so that
        :meth:`to_inference` gives ``clt`` back. Shapes and activation must match.
        """
        mine, theirs = self.cfg, clt.cfg
        fields = ("n_layers", "d_in", "d_out", "d_sae", "activation_fn")
        wrong = [
            f"{f}: {getattr(theirs, f)!r} (run: {getattr(mine, f)!r})"
            for f in fields
            if getattr(mine, f) != getattr(theirs, f)
        ]
        if theirs.architecture() != mine.architecture():
            wrong.append(f"architecture: {theirs.architecture()!r} (run: {mine.architecture()!r})")
        if wrong:
            raise ValueError(
                "from_pretrained_path: the CLT does not fit this run's settings: "
                + "; ".join(wrong)
                + ". Set architecture / d_sae / activation_fn to match, or train from scratch."
            )
        if clt.lazy_decoder is not None:
            raise ValueError("from_pretrained_path: load the CLT eagerly (lazy=False)")
        theirs_state = clt.state_dict()
        for name, t in self.state_dict().items():
            if name in theirs_state:
                t.copy_(theirs_state[name].to(t.device, t.dtype))
        # the inverse of to_inference's folding: weights on normalised activations
        self.fold_input_output_scaling(1 / self.in_scale, 1 / self.out_scale)

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
        return self.training_activation(hidden_pre), hidden_pre

    @override
    def calculate_aux_loss(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError("use TrainingCrossLayerTranscoder.training_losses")

    def training_losses(
        self, x: torch.Tensor, y: torch.Tensor, l0_coefficient: float
    ) -> TrainingStepOutput:
        """Loss on normalized activations.

        ``x [..., L, d_in]`` and ``y [..., L, d_out]`` are already normalized (leading
        dimensions are flattened into ``N`` tokens). Returns a
        :class:`TrainingStepOutput`: ``loss``, ``parts`` (``mse_loss``, ``l0_loss``,
        ``pre_act_loss``, scalars), ``acts`` (:class:`SparseActivations`, the active
        entries of ``[N, L, F]``) and ``y_hat [N, L, d_out]`` (detached).

        JumpReLU CLTs take a fused path (:class:`_JumpReLUTrainFn`) that keeps the
        activations sparse end to end and touches each dense ``[L, N, F]`` tensor only a
        few times; other activations use plain autograd.
        """
        self._check_input(x, self.cfg.d_in, "CLT input")
        self._check_input(y, self.cfg.d_out, "CLT target")
        L = self.cfg.n_layers
        x, y = x.reshape(-1, L, self.cfg.d_in), y.reshape(-1, L, self.cfg.d_out)  # [N, L, d]
        if self.cfg.activation_fn == "jumprelu" and not self.cfg.jumprelu_ste_to_input:
            return self._jumprelu_losses(x, y, l0_coefficient)
        return self._generic_losses(x, y, l0_coefficient)

    def _jumprelu_losses(
        self, x: torch.Tensor, y: torch.Tensor, l0_coefficient: float
    ) -> TrainingStepOutput:
        N = x.shape[0]
        L, F = self.cfg.n_layers, self.cfg.d_sae
        x_t = x.to(self.dtype).transpose(0, 1).contiguous()  # [L, N, d_in]
        dec_norm = self.decoder_norms()  # [L, F]
        values, layer, row, col, sparsity, pre_act = _JumpReLUTrainFn.apply(
            x_t,
            self.W_enc,
            self.b_enc,
            self.threshold,
            dec_norm,
            self.cfg.jumprelu_tanh_scale,
            self.cfg.jumprelu_bandwidth,
            self.cfg.decode_sparse_below,
        )
        dense = values.numel() >= self.cfg.decode_sparse_below * L * N * F
        y_feat = self.decode_entries(values, layer, row, col, N, dense=dense)  # [N, L, d_out]
        y_hat = self.sum_over_shards(y_feat) + self.b_dec
        skip = self.skip_all(x)
        if skip is not None:
            y_hat = y_hat + skip
        mse = (y_hat - y).pow(2).sum(dim=(-1, -2)).mean()
        parts = {"mse_loss": mse, "l0_loss": l0_coefficient * sparsity / N}
        loss = mse + parts["l0_loss"]
        if self.cfg.pre_act_loss_coefficient:
            parts["pre_act_loss"] = self.cfg.pre_act_loss_coefficient * pre_act / N
            loss = loss + parts["pre_act_loss"]
        else:  # still computed: it keeps a NaN in the pre-activations visible in the loss
            loss = loss + 0.0 * pre_act
        acts = SparseActivations(layer, row, col, values.detach(), (N, L, F))  # incl. window 0s
        return TrainingStepOutput(loss, parts, acts, y_hat.detach())

    def _generic_losses(
        self, x: torch.Tensor, y: torch.Tensor, l0_coefficient: float
    ) -> TrainingStepOutput:
        """Plain-autograd path (ReLU, TopK, JumpReLU with the STE to the input)."""
        acts, hidden_pre = self.encode_with_hidden_pre(x)
        return self._losses_from_acts(x, y, acts, hidden_pre, l0_coefficient)

    def sparsity_penalty(self) -> bool:
        """Whether the loss has the tanh sparsity term (a TopK variant fixes L0 instead)."""
        return True

    def _losses_from_acts(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        l0_coefficient: float,
    ) -> TrainingStepOutput:
        y_hat = self.finish_decode(self.sum_over_shards(self.decode_features(acts)), x)
        mse = (y_hat - y).pow(2).sum(dim=(-1, -2)).mean()
        dec_norm = self.decoder_norms()  # [L, F]
        parts = {"mse_loss": mse}
        loss = mse
        if self.sparsity_penalty():
            sparsity = torch.tanh(self.cfg.jumprelu_tanh_scale * acts * dec_norm).sum((-1, -2))
            parts["l0_loss"] = l0_coefficient * sparsity.mean()
            loss = loss + parts["l0_loss"]
        if self.cfg.activation_fn == "jumprelu" and self.cfg.pre_act_loss_coefficient:
            theta = self.threshold.to(hidden_pre.dtype)
            pre_act = ((theta - hidden_pre).relu() * dec_norm).sum((-1, -2)).mean()
            parts["pre_act_loss"] = self.cfg.pre_act_loss_coefficient * pre_act
            loss = loss + parts["pre_act_loss"]
        n, l_, f = acts.detach().nonzero(as_tuple=True)
        order = torch.argsort(
            l_ * acts.shape[0] + n, stable=True
        )  # layer-major like the fused path
        sparse = SparseActivations(
            l_[order], n[order], f[order], acts.detach()[n, l_, f][order], tuple(acts.shape)
        )
        return TrainingStepOutput(loss, parts, sparse, y_hat.detach())

    def replacement_kl(self, model: Any, tokens: torch.Tensor, keep_first: int = 1) -> torch.Tensor:
        """Mean KL(model ‖ replacement model) over predicted tokens; differentiable.

        ``tokens [B, T]``. The replacement model has every MLP output replaced by this CLT's
        reconstruction from the replacement model's own MLP inputs (so errors compound as
        in :func:`sae_lens_clt.evals.evaluate_clt`); positions before ``keep_first`` keep
        the original MLP outputs. Gradients reach the CLT through every layer; the model's
        own parameters should have ``requires_grad=False``.
        """
        with torch.no_grad():
            clean = model(tokens)[:, keep_first:-1].float().log_softmax(-1)
        hooks = ReplacementHooks(
            self,
            keep_first=keep_first,
            in_scale=self.in_scale,
            out_scale=self.out_scale,
            activation=self.training_activation,
        )
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks.hooks())
        replaced = logits[:, keep_first:-1].float().log_softmax(-1)
        return (clean.exp() * (clean - replaced)).sum(-1).mean()

    def training_activation(
        self, hidden_pre: torch.Tensor, layer: int | None = None
    ) -> torch.Tensor:
        """σ with its training-time gradient (JumpReLU: SAELens' straight-through estimator)."""
        if self.cfg.activation_fn == "jumprelu":
            theta = self.threshold if layer is None else self.threshold[layer]
            return JumpReLU.apply(
                hidden_pre,
                theta.to(hidden_pre.dtype),
                self.cfg.jumprelu_bandwidth,
                self.cfg.jumprelu_ste_to_input,
            )
        return self.activation(hidden_pre, layer)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Projections that keep the parameters valid: θ >= 0."""
        if self.cfg.activation_fn == "jumprelu":
            self.threshold.clamp_(min=0.0)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_inference(self) -> CrossLayerTranscoder:
        """The registered inference class of this architecture, on raw activations (scales folded)."""
        return self._inference_from(self.cfg.get_inference_sae_cfg_dict(), {})

    def _inference_from(
        self, cfg_dict: dict[str, Any], extra: dict[str, torch.Tensor]
    ) -> CrossLayerTranscoder:
        reg = registry.registration(cfg_dict["architecture"])
        cfg = reg.config_class.from_dict(cfg_dict)
        expected = cfg.expected_shapes()
        state = {k: v.detach().clone() for k, v in self.state_dict().items() if k in expected}
        state.update(extra)
        clt = reg.cls.from_state_dict(cfg, state)
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
