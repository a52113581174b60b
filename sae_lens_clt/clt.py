"""Cross-layer transcoder (CLT): config and inference class, registered with SAELens.

A CLT reads the MLP input ``x_s`` of every layer ``s`` and predicts the MLP output
``y_t`` of every layer ``t``. A feature read at layer ``s`` writes to every layer
``t >= s`` and never to ``t < s``.

Algorithm (one token, ``L`` layers, ``F = d_sae`` features per layer):

1. Encode each layer on its own: ``z_s = x_s @ W_enc[s] + b_enc[s]`` and ``a_s = σ(z_s)``
   where σ is JumpReLU (``z * 1[z > θ_s]``), ReLU, or TopK (per layer).
2. Decode across layers: ``ŷ_t = Σ_{s <= t} a_s @ W_dec[s][:, t - s] + b_dec[t]``
   (plus ``x_t @ W_skip[t]`` when the CLT has a linear skip connection).
3. Only the ``s <= t`` decoder blocks are stored: ``W_dec[s]`` has shape
   ``[d_sae, L - s, d_out]``, the layout circuit-tracer uses, so nothing of the unused
   half of the ``L x L`` block matrix is ever allocated.
4. :meth:`CrossLayerTranscoder.decode_sparse` touches only the decoder rows of active
   features (a CSR product, with a custom backward that also stays sparse) and equals
   :meth:`CrossLayerTranscoder.decode` to float tolerance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from sae_lens.saes.sae import SAE, SAEConfig, SAEMetadata
from torch import nn
from typing_extensions import override

from sae_lens_clt import io as clt_io

ARCHITECTURE = "cross_layer_transcoder"
DEFAULT_INPUT_HOOK = "blocks.{layer}.ln2.hook_normalized"
DEFAULT_OUTPUT_HOOK = "blocks.{layer}.hook_mlp_out"

ActivationFn = Literal["jumprelu", "relu", "topk"]


@dataclass
class CrossLayerTranscoderConfig(SAEConfig):
    """Configuration of a :class:`CrossLayerTranscoder`.

    ``d_in`` and ``d_sae`` come from SAELens' :class:`SAEConfig`; ``d_sae`` is the number
    of features *per layer* (the CLT has ``n_layers * d_sae`` features in all).
    Where the CLT reads and writes lives in ``metadata`` in SAELens' conventions:
    ``metadata.hook_name`` / ``metadata.hook_name_out`` are hook *templates* with a
    ``{layer}`` placeholder, and ``metadata.model_name`` names the model.
    """

    n_layers: int = 1
    d_out: int = 0  # 0 means "same as d_in"
    activation_fn: ActivationFn = "jumprelu"
    k: int | None = None  # features kept per layer and token when activation_fn == "topk"
    skip_connection: bool = False
    apply_b_dec_to_input: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        if isinstance(self.metadata, dict):  # SAEConfig.from_dict passes the raw dict
            self.metadata = SAEMetadata(**self.metadata)
        super().__post_init__()
        if self.d_out == 0:
            self.d_out = self.d_in
        problems = []
        for name in ("n_layers", "d_in", "d_out", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.activation_fn not in ("jumprelu", "relu", "topk"):
            problems.append(
                f"activation_fn must be 'jumprelu', 'relu' or 'topk', got {self.activation_fn!r}"
            )
        if self.activation_fn == "topk" and (self.k is None or not 0 < self.k <= self.d_sae):
            problems.append(f"activation_fn='topk' needs 0 < k <= d_sae, got k={self.k!r}")
        if self.apply_b_dec_to_input:
            problems.append("apply_b_dec_to_input must be False: b_dec lives in output space")
        if self.normalize_activations != "none":
            problems.append(
                "a CrossLayerTranscoder works on raw activations: normalize_activations must "
                f"be 'none' (fold the scaling into the weights), got {self.normalize_activations!r}"
            )
        if problems:
            raise ValueError("Invalid CrossLayerTranscoderConfig: " + "; ".join(problems))
        if self.metadata.hook_name is None:
            self.metadata.hook_name = DEFAULT_INPUT_HOOK
        if self.metadata.hook_name_out is None:
            self.metadata.hook_name_out = DEFAULT_OUTPUT_HOOK

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> CrossLayerTranscoderConfig:
        """Build a config from ``cfg.json``'s dict (unknown keys are ignored)."""
        arch = config_dict.get("architecture", ARCHITECTURE)
        if arch != ARCHITECTURE:
            raise ValueError(
                f"architecture is {arch!r}, expected {ARCHITECTURE!r}: this config describes "
                "another SAE type; load it with sae_lens.SAE.load_from_disk instead"
            )
        known = {f for f in cls.__dataclass_fields__ if f != "metadata"}
        res = cls(**{k: v for k, v in config_dict.items() if k in known})
        if "metadata" in config_dict:
            res.metadata = SAEMetadata(**config_dict["metadata"])
            res.__post_init__()
        return res

    def hook_in(self, layer: int) -> str:
        """Name of the hook this CLT reads at ``layer`` (e.g. ``blocks.3.ln2.hook_normalized``)."""
        return self.metadata.hook_name.format(layer=layer)

    def hook_out(self, layer: int) -> str:
        """Name of the hook this CLT writes at ``layer`` (e.g. ``blocks.3.hook_mlp_out``)."""
        return self.metadata.hook_name_out.format(layer=layer)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the SAELens layout and its shape."""
        L, F, di, do = self.n_layers, self.d_sae, self.d_in, self.d_out
        shapes: dict[str, tuple[int, ...]] = {
            "W_enc": (L, di, F),
            "b_enc": (L, F),
            "b_dec": (L, do),
        }
        shapes.update({f"W_dec.{s}": (F, L - s, do) for s in range(L)})
        if self.activation_fn == "jumprelu":
            shapes["threshold"] = (L, F)
        if self.skip_connection:
            shapes["W_skip"] = (L, di, do)
        return shapes


class _SparseDecode(torch.autograd.Function):
    """``out = A @ W`` for a sparse ``A`` given as (rows, cols, values), sparse both ways.

    Forward is a sparse x dense product. Backward gives ``dL/dvalues`` by a sampled
    dense-dense product (only at the active entries) and ``dL/dW`` by ``Aᵀ @ grad``
    (sparse again), so no step costs ``n_rows * d_sae * D``. Where the sparse kernels lack a
    dtype (half precision on CPU) the same products are done by gathering rows in chunks.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        values: torch.Tensor,  # [nnz]
        rows: torch.Tensor,  # [nnz], sorted
        cols: torch.Tensor,  # [nnz]
        weight: torch.Tensor,  # [F, D]
        n_rows: int,
    ) -> torch.Tensor:  # [n_rows, D]
        if _has_sparse_kernels(weight):
            a = _coo(rows, cols, values, (n_rows, weight.shape[0]), row_sorted=True)
            return torch.sparse.mm(a, weight)
        return _scatter_rows(weight, cols, rows, values, n_rows)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        values, rows, cols, weight, n_rows = inputs
        ctx.save_for_backward(values, rows, cols, weight)
        ctx.n_rows = n_rows

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        values, rows, cols, weight = ctx.saved_tensors
        fast = _has_sparse_kernels(weight)
        grad_values = grad_weight = None
        if ctx.needs_input_grad[0]:
            if fast:
                pattern = _csr(rows, cols, torch.zeros_like(values), (ctx.n_rows, weight.shape[0]))
                grad_values = torch.sparse.sampled_addmm(pattern, grad_out, weight.T).values()
            else:
                grad_values = torch.cat(
                    [
                        (grad_out[rows[i : i + _CHUNK]] * weight[cols[i : i + _CHUNK]]).sum(-1)
                        for i in range(0, rows.numel(), _CHUNK)
                    ]
                )
        if ctx.needs_input_grad[3]:
            if fast:
                transposed = _coo(cols, rows, values, (weight.shape[0], ctx.n_rows))
                grad_weight = torch.sparse.mm(transposed, grad_out)
            else:
                grad_weight = _scatter_rows(grad_out, rows, cols, values, weight.shape[0])
        return grad_values, None, None, grad_weight, None


_CHUNK = 4096  # rows gathered at once on the fallback path (bounds its memory)


def layer_slices(layer: torch.Tensor, n_layers: int) -> list[tuple[int, slice]]:
    """``(s, slice)`` of each non-empty layer in entries sorted by layer (``layer [nnz]``)."""
    counts = torch.bincount(layer, minlength=n_layers).tolist()
    ends = [sum(counts[: s + 1]) for s in range(n_layers)]
    return [(s, slice(ends[s] - counts[s], ends[s])) for s in range(n_layers) if counts[s]]


def _has_sparse_kernels(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64) or t.device.type == "cuda"


def _scatter_rows(
    src: torch.Tensor, src_idx: torch.Tensor, dst_idx: torch.Tensor, values: torch.Tensor, n: int
) -> torch.Tensor:
    """``out[dst_idx[k]] += values[k] * src[src_idx[k]]`` for all k: ``[n, D]``."""
    out = src.new_zeros(n, src.shape[1])
    for i in range(0, values.numel(), _CHUNK):
        sl = slice(i, i + _CHUNK)
        out.index_add_(0, dst_idx[sl], src[src_idx[sl]] * values[sl, None])
    return out


def _coo(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    size: tuple[int, int],
    row_sorted: bool = False,
) -> torch.Tensor:
    """Coalesced COO matrix (on CPU its products beat the CSR ones for this shape).

    ``row_sorted=True`` promises the (row, col) pairs are unique and sorted row-major (as
    ``nonzero`` returns them), which skips the sort.
    """
    indices = torch.stack([rows, cols])
    if row_sorted:
        return torch.sparse_coo_tensor(
            indices, values, size, check_invariants=False, is_coalesced=True
        )
    return torch.sparse_coo_tensor(indices, values, size, check_invariants=False).coalesce()


def _csr(
    rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """CSR matrix from row-sorted COO indices."""
    crow = torch.zeros(size[0] + 1, dtype=torch.int64, device=values.device)
    crow[1:] = torch.bincount(rows, minlength=size[0]).cumsum(0)
    with warnings.catch_warnings():  # "CSR support is in beta": we rely only on stable ops
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)


class CrossLayerTranscoder(SAE[CrossLayerTranscoderConfig]):
    """A cross-layer transcoder, usable wherever SAELens expects an ``SAE``.

    Parameters (``L`` layers, ``F`` features per layer)::

        W_enc      [L, d_in, F]
        b_enc      [L, F]
        threshold  [L, F]            (JumpReLU only)
        W_dec[s]   [F, L - s, d_out] (a ParameterList; block s -> t is W_dec[s][:, t - s])
        b_dec      [L, d_out]
        W_skip     [L, d_in, d_out]  (only with skip_connection)
    """

    cfg: CrossLayerTranscoderConfig
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    W_dec: nn.ParameterList  # type: ignore[assignment]
    # Set by a lazy load (sae_lens_clt.pretrained.LazyDecoder): decoder rows are then read
    # from disk on demand by decoder_rows / decode_sparse, and W_dec holds meta tensors.
    lazy_decoder: Any = None

    def __init__(self, cfg: CrossLayerTranscoderConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term=use_error_term)

    # ------------------------------------------------------------------ weights
    @override
    def initialize_weights(self) -> None:
        L, F, di, do = self.cfg.n_layers, self.cfg.d_sae, self.cfg.d_in, self.cfg.d_out
        kw = {"dtype": self.dtype, "device": self.device}
        self.W_enc = nn.Parameter(torch.empty(L, di, F, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, F, **kw))
        self.b_dec = nn.Parameter(torch.zeros(L, do, **kw))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(F, L - s, do, **kw)) for s in range(L)]
        )
        if self.cfg.activation_fn == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(L, F, **kw))
        if self.cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(L, di, do, **kw))
        if self.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random init: uniform encoder / decoder with fan-in scaling, zero biases.

        Decoder entries are U(-1/sqrt(L*F), 1/sqrt(L*F)) (the scheme of Ameisen et al.),
        the encoder U(-1/sqrt(F), 1/sqrt(F)) and thresholds start at 0.
        """
        L, F = self.cfg.n_layers, self.cfg.d_sae
        bound_enc = 1.0 / math.sqrt(F)
        bound_dec = 1.0 / math.sqrt(L * F)
        self.W_enc.uniform_(-bound_enc, bound_enc, generator=generator)
        for w in self.W_dec:
            w.uniform_(-bound_dec, bound_dec, generator=generator)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    def decoder_block(self, source: int, target: int) -> torch.Tensor:
        """The ``source -> target`` decoder, ``[d_sae, d_out]``; only ``source <= target``."""
        if not 0 <= source <= target < self.cfg.n_layers:
            raise IndexError(
                f"no decoder from layer {source} to layer {target}: a CLT feature read at "
                f"layer s writes only to layers s..{self.cfg.n_layers - 1}"
            )
        if self.lazy_decoder is not None:
            return self.lazy_decoder.block(source, target)
        return self.W_dec[source][:, target - source]

    def decoder_rows(self, layer: int, feature_ids: torch.Tensor) -> torch.Tensor:
        """Decoder vectors of some features read at ``layer``: ``[n, L - layer, d_out]``."""
        if self.lazy_decoder is not None:
            return self.lazy_decoder.rows(layer, feature_ids)
        return self.W_dec[layer][feature_ids]

    def decoder_norms(self) -> torch.Tensor:
        """Norm of each feature's decoder concatenated over its target layers: ``[L, F]``."""
        if self.lazy_decoder is not None:
            return self.lazy_decoder.norms()
        return torch.stack([w.flatten(1).norm(dim=1) for w in self.W_dec])

    # ------------------------------------------------------------------ encode
    def _check_input(self, x: torch.Tensor, width: int, what: str) -> None:
        if x.ndim < 2 or x.shape[-2] != self.cfg.n_layers or x.shape[-1] != width:
            raise ValueError(
                f"{what} must have shape [..., n_layers={self.cfg.n_layers}, {width}], "
                f"got {tuple(x.shape)}"
            )

    def encode_layer_pre(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Pre-activations of one layer: ``[..., d_in] -> [..., d_sae]``."""
        x = x.to(self.dtype)
        return x @ self.W_enc[layer] + self.b_enc[layer]

    def activation(self, hidden_pre: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """σ applied to pre-activations ``[..., L, F]`` (or ``[..., F]`` of one ``layer``)."""
        if self.cfg.activation_fn == "jumprelu":
            theta = self.threshold if layer is None else self.threshold[layer]
            return hidden_pre * (hidden_pre > theta)
        if self.cfg.activation_fn == "relu":
            return torch.relu(hidden_pre)
        assert self.cfg.k is not None
        top = hidden_pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(hidden_pre).scatter(-1, top.indices, top.values.relu())

    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Feature activations of one layer: ``[..., d_in] -> [..., d_sae]``."""
        return self.activation(self.encode_layer_pre(x, layer), layer)

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [..., L, d_in] -> (acts [..., L, d_sae], hidden_pre [..., L, d_sae])``."""
        self._check_input(x, self.cfg.d_in, "CLT input")
        x = self.hook_sae_input(x.to(self.dtype))
        hidden_pre = torch.einsum("...li,lif->...lf", x, self.W_enc) + self.b_enc
        hidden_pre = self.hook_sae_acts_pre(hidden_pre)
        return self.hook_sae_acts_post(self.activation(hidden_pre)), hidden_pre

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations: ``x [..., L, d_in] -> [..., L, d_sae]``."""
        return self.encode_with_hidden_pre(x)[0]

    # ------------------------------------------------------------------ decode
    def _finish(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        out = out + self.b_dec
        if self.cfg.skip_connection:
            if x is None:
                raise ValueError("this CLT has a skip connection: pass the input x to decode")
            out = out + torch.einsum("...li,lio->...lo", x.to(self.dtype), self.W_skip)
        return self.hook_sae_recons(out)

    @override
    def decode(self, feature_acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Dense decode: ``acts [..., L, d_sae] -> [..., L, d_out]``.

        ``x`` (the CLT input ``[..., L, d_in]``) is needed only for a skip connection.
        """
        if self.lazy_decoder is not None:  # the decoder is on disk: read only active rows
            return self.decode_sparse(feature_acts, x)
        self._check_input(feature_acts, self.cfg.d_sae, "feature activations")
        L, do = self.cfg.n_layers, self.cfg.d_out
        acts = feature_acts.to(self.dtype)
        out = acts.new_zeros(*acts.shape[:-2], L, do)
        for s in range(L):
            # a_s writes to layers s..L-1 at once: [..., F] @ [F, (L-s)*d_out]
            contrib = acts[..., s, :] @ self.W_dec[s].flatten(1)
            out[..., s:, :] = out[..., s:, :] + contrib.unflatten(-1, (L - s, do))
        return self._finish(out, x)

    def decode_sparse(
        self, feature_acts: torch.Tensor, x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode touching only active features; equals :meth:`decode`.

        ``feature_acts`` is dense ``[..., L, d_sae]`` (zeros are skipped) or a sparse COO
        tensor of that shape. Differentiable with respect to the activations and the
        decoder weights; the backward pass is sparse too.
        """
        if feature_acts.is_sparse:
            feature_acts = feature_acts.to_dense()
        self._check_input(feature_acts, self.cfg.d_sae, "feature activations")
        L, do = self.cfg.n_layers, self.cfg.d_out
        lead = feature_acts.shape[:-2]
        acts = feature_acts.to(self.dtype).reshape(-1, L, self.cfg.d_sae)  # [N, L, F]
        # one nonzero() and one gather for all layers, grouped by source layer
        layer_idx, rows, cols = acts.detach().transpose(0, 1).nonzero(as_tuple=True)
        values = acts[rows, layer_idx, cols]  # [nnz]
        out = self.decode_entries(values, layer_idx, rows, cols, acts.shape[0])
        return self._finish(out.reshape(*lead, L, do), x)

    def decode_entries(
        self,
        values: torch.Tensor,
        layer: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        n: int,
        dense: bool = False,
    ) -> torch.Tensor:
        """``Σ_s a_s W_dec[s]`` (no bias, no skip) from activations given as entries.

        ``values``, ``layer``, ``rows``, ``cols`` (``[nnz]``) are sorted by (layer, row,
        col), as ``acts.transpose(0, 1).nonzero()`` returns them; entries may hold 0.
        Returns ``[n, L, d_out]``. ``dense=True`` scatters each layer into a dense
        ``[n, d_sae]`` block and multiplies (faster when many entries are on); otherwise
        only the listed decoder rows are touched, forward and backward.
        """
        L, F, do = self.cfg.n_layers, self.cfg.d_sae, self.cfg.d_out
        out = values.new_zeros(n, L, do)
        for s, sl in layer_slices(layer, L):
            cols_s = cols[sl]
            if self.lazy_decoder is not None:  # read the active rows only, index into them
                active, cols_s = cols_s.unique(return_inverse=True)
                w = self.lazy_decoder.rows(s, active).flatten(1)  # [n_active, (L-s)*d_out]
            else:
                w = self.W_dec[s].flatten(1)  # [F, (L-s)*d_out]
            if dense and self.lazy_decoder is None:
                a = values.new_zeros(n * F).index_put((rows[sl] * F + cols_s,), values[sl])
                contrib = a.view(n, F) @ w
            else:
                contrib = _SparseDecode.apply(values[sl], rows[sl], cols_s, w, n)
            out[:, s:] = out[:, s:] + contrib.view(n, L - s, do)
        return out

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., L, d_in] -> [..., L, d_out]`` (dense decode)."""
        return self.hook_sae_output(self.decode(self.encode(x), x))

    # ------------------------------------------------------------------ SAELens hooks
    @override
    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        return self.hook_sae_input(sae_in.to(self.dtype))

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        clt_io.check_state_dict(state_dict, self.cfg, source="sae_weights.safetensors")

    @override
    @torch.no_grad()
    def get_W_dec_norm(self) -> torch.Tensor:
        return self.decoder_norms().clamp(min=1e-8)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Scale each feature so its concatenated decoder norm is 1 (outputs unchanged)."""
        norms = self.get_W_dec_norm()  # [L, F]
        for s, w in enumerate(self.W_dec):
            w.div_(norms[s][:, None, None])
        self.W_enc.mul_(norms[:, None, :])
        self.b_enc.mul_(norms)
        if self.cfg.activation_fn == "jumprelu":
            self.threshold.mul_(norms)

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        raise NotImplementedError(
            "use CrossLayerTranscoder.fold_input_output_scaling (per-layer in/out scales)"
        )

    @torch.no_grad()
    def fold_input_output_scaling(self, in_scale: torch.Tensor, out_scale: torch.Tensor) -> None:
        """Fold per-layer normalization into the weights so the CLT runs on raw activations.

        The CLT was trained on ``x * in_scale[l]`` and predicts ``y * out_scale[l]``
        (``in_scale``, ``out_scale``: ``[L]``). Afterwards it takes raw ``x`` and returns raw ``y``.
        """
        in_scale = in_scale.to(self.device, self.dtype)
        out_scale = out_scale.to(self.device, self.dtype)
        self.W_enc.mul_(in_scale[:, None, None])
        for s, w in enumerate(self.W_dec):
            w.div_(out_scale[s:, None])
        self.b_dec.div_(out_scale[:, None])
        if self.cfg.skip_connection:
            self.W_skip.mul_((in_scale / out_scale)[:, None, None])

    # ------------------------------------------------------------------ I/O
    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) atomically."""
        return clt_io.save_saelens(self, Path(path))

    @classmethod
    def load_from_disk(  # type: ignore[override]
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str | None = None,
        **_: Any,
    ) -> CrossLayerTranscoder:
        """Load the SAELens layout written by :meth:`save_model`, validating every tensor."""
        cfg_dict, state_dict = clt_io.read_saelens(Path(path))
        if dtype is not None:
            cfg_dict["dtype"] = dtype
        cfg_dict["device"] = device
        return cls.from_state_dict(CrossLayerTranscoderConfig.from_dict(cfg_dict), state_dict)

    @classmethod
    def from_state_dict(
        cls, cfg: CrossLayerTranscoderConfig, state_dict: dict[str, torch.Tensor]
    ) -> CrossLayerTranscoder:
        """Build a CLT from a checked state dict without allocating weights twice."""
        clt_io.check_state_dict(state_dict, cfg, source="state dict")
        device = cfg.device
        cfg.device = "meta"
        clt = cls(cfg)
        clt.cfg.device = device
        clt.load_state_dict(state_dict, assign=True)
        return clt.to(device=device, dtype=clt.dtype)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        name_or_repo: str,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        lazy: bool = False,
    ) -> CrossLayerTranscoder:
        """Load a CLT by registry name, ``org/repo[/subfolder]`` Hub id or local folder.

        See :func:`sae_lens_clt.pretrained.from_pretrained` (``lazy=True`` reads decoder
        rows from disk on demand instead of loading the decoder).
        """
        from sae_lens_clt.pretrained import from_pretrained

        return from_pretrained(
            name_or_repo, revision=revision, device=device, dtype=dtype, lazy=lazy
        )

    def to_circuit_tracer(
        self, path: str | Path, model_name: str | None = None, allow_extensions: bool = False
    ) -> Path:
        """Write circuit-tracer's layout (``W_enc_{i}``/``W_dec_{i}`` files + ``config.yaml``).

        ``config.yaml`` names the very tensors this CLT reads and writes, as circuit-tracer's
        TransformerLens backend names them (``blocks.{layer}.X`` -> ``X``). A skip CLT needs
        ``allow_extensions=True`` (circuit-tracer does not read skip weights).
        """
        return clt_io.save_circuit_tracer(
            self, Path(path), model_name=model_name, allow_extensions=allow_extensions
        )

    @classmethod
    def from_circuit_tracer(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> CrossLayerTranscoder:
        """Load circuit-tracer's layout (as written by :meth:`to_circuit_tracer` or found on the Hub).

        ``dtype=None`` keeps the dtype of the files.
        """
        from sae_lens_clt.pretrained import CIRCUIT_TRACER_LAYOUT, load_folder

        return load_folder(path, device=device, dtype=dtype, layout=CIRCUIT_TRACER_LAYOUT)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"CrossLayerTranscoder(n_layers={c.n_layers}, d_in={c.d_in}, d_out={c.d_out}, "
            f"d_sae={c.d_sae}, activation_fn={c.activation_fn!r}, "
            f"skip={c.skip_connection}, dtype={c.dtype}, device={c.device})"
        )
