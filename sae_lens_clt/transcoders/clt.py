"""Cross-layer transcoder (CLT): config and inference class, the base of every variant.

A CLT reads the MLP input ``x_s`` of every layer ``s`` and predicts the MLP output
``y_t`` of every layer ``t``. A feature read at layer ``s`` writes to the layers
``targets(s)`` (here every ``t >= s``; a variant narrows this, e.g. a per-layer
transcoder writes to ``s`` only) and never to ``t < s``.

Algorithm (one token, ``L`` layers, ``F = d_sae`` features per layer):

1. Encode each layer on its own: ``z_s = x_s @ W_enc[s] + b_enc[s]`` and ``a_s = σ(z_s)``
   where σ is JumpReLU (``z * 1[z > θ_s]``) or ReLU (variants add others).
2. Decode across layers: ``ŷ_t = Σ_{s ∈ sources(t)} a_s @ W_dec[s][:, t - s] + b_dec[t]
   (+ skip(x_t, t))``.
3. Only the blocks a feature writes are stored: ``W_dec[s]`` has shape
   ``[d_sae, w_s, d_out]`` with ``w_s = len(targets(s))`` (``L - s`` for a CLT, the layout
   circuit-tracer uses), so nothing of the unused half of the ``L x L`` block matrix is
   ever allocated.
4. :meth:`CrossLayerTranscoder.decode_sparse` touches only the decoder rows of active
   features (:mod:`.sparse`) and equals :meth:`CrossLayerTranscoder.decode` to float
   tolerance.
5. Loading dispatches on the file's ``architecture`` through :mod:`sae_lens_clt.registry`:
   ``CrossLayerTranscoder.from_pretrained`` returns whichever registered variant the files
   hold; ``Variant.load_from_disk`` refuses files of a class that is not a ``Variant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from sae_lens.saes.sae import SAE, SAEConfig, SAEMetadata
from sae_lens.util import str_to_dtype
from torch import nn
from typing_extensions import override

from sae_lens_clt import registry
from sae_lens_clt.formats import circuit_tracer, folder, saelens
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.lazy import LazyDecoder
from sae_lens_clt.formats.safetensors import tensor_shapes
from sae_lens_clt.loading import pretrained
from sae_lens_clt.transcoders.sparse import SparseDecode, layer_slices

ARCHITECTURE = registry.CLT
DEFAULT_INPUT_HOOK = registry.DEFAULT_INPUT_HOOK
DEFAULT_OUTPUT_HOOK = registry.DEFAULT_OUTPUT_HOOK

ActivationFn = Literal["jumprelu", "relu"]


@dataclass(frozen=True)
class FeatureShard:
    """Features ``[start, stop)`` of every layer, out of ``total`` per layer."""

    start: int
    stop: int
    total: int

    @classmethod
    def of(cls, rank: int, n_shards: int, total: int) -> FeatureShard:
        """Shard ``rank`` of ``n_shards`` equal shards (``total`` must divide evenly)."""
        if total % n_shards:
            raise ValueError(
                f"d_sae={total} features per layer do not split into {n_shards} equal shards: "
                f"choose a d_sae divisible by tensor_parallel_size={n_shards}"
            )
        size = total // n_shards
        return cls(rank * size, (rank + 1) * size, total)

    @property
    def size(self) -> int:
        return self.stop - self.start


def _uniform(
    param: torch.Tensor,
    bound: float,
    generator: torch.Generator | None,
    shard: FeatureShard | None,
    dim: int,
) -> None:
    """``param ~ U(-bound, bound)``; with a shard, the slice along ``dim`` of a full-size draw."""
    if shard is None or (shard.start == 0 and shard.stop == shard.total):
        param.uniform_(-bound, bound, generator=generator)
        return
    shape = list(param.shape)
    shape[dim] = shard.total
    full = torch.empty(shape, dtype=param.dtype, device=param.device)
    full.uniform_(-bound, bound, generator=generator)
    param.copy_(full.narrow(dim, shard.start, shard.size))


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
    activation_fn: str = "jumprelu"
    apply_b_dec_to_input: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def activation_fns(self) -> tuple[str, ...]:
        """The values ``activation_fn`` may take for this architecture."""
        return ("jumprelu", "relu")

    def __post_init__(self) -> None:
        if isinstance(self.metadata, dict):  # SAEConfig.from_dict passes the raw dict
            self.metadata = SAEMetadata(**self.metadata)
        super().__post_init__()
        if self.d_out == 0:
            self.d_out = self.d_in
        problems = self.problems()
        if problems:
            raise ValueError(f"Invalid {type(self).__name__}: " + "; ".join(problems))
        if self.metadata.hook_name is None:
            self.metadata.hook_name = DEFAULT_INPUT_HOOK
        if self.metadata.hook_name_out is None:
            self.metadata.hook_name_out = DEFAULT_OUTPUT_HOOK

    def problems(self) -> list[str]:
        """What is wrong with the fields (a variant extends the list)."""
        problems = []
        for name in ("n_layers", "d_in", "d_out", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.activation_fn not in self.activation_fns():
            problems.append(
                f"activation_fn must be one of {self.activation_fns()}, got {self.activation_fn!r}"
                + (
                    " (TopK CLTs are TopKCrossLayerTranscoder; a folder written by sae_lens_clt "
                    "0.1 loads with CrossLayerTranscoder.load_from_disk, which upgrades it)"
                    if self.activation_fn == "topk"
                    else ""
                )
            )
        if self.apply_b_dec_to_input:
            problems.append("apply_b_dec_to_input must be False: b_dec lives in output space")
        if self.normalize_activations != "none":
            problems.append(
                "a CrossLayerTranscoder works on raw activations: normalize_activations must "
                f"be 'none' (fold the scaling into the weights), got {self.normalize_activations!r}"
            )
        return problems

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> CrossLayerTranscoderConfig:
        """Build a config from ``cfg.json``'s dict (unknown keys are ignored).

        Files written before the variants were classes are upgraded first; a dict of
        another registered architecture builds that architecture's config (as SAELens'
        ``SAE.load_from_disk`` expects).
        """
        d = saelens.upgrade_cfg_dict(dict(config_dict))
        arch = d.get("architecture", cls.architecture())
        if arch != cls.architecture():
            try:
                other = registry.registration(arch)
            except ValueError as e:
                raise ValueError(
                    f"architecture is {arch!r}, expected {cls.architecture()!r}: {e}"
                ) from e
            return other.config_class.from_dict(d)
        known = {f for f in cls.__dataclass_fields__ if f != "metadata"}
        res = cls(**{k: v for k, v in d.items() if k in known})
        if "metadata" in d:
            res.metadata = SAEMetadata(**d["metadata"])
            res.__post_init__()
        return res

    def n_targets(self, source: int) -> int:
        """How many layers a feature read at ``source`` writes to (``s .. s + n - 1``)."""
        return self.n_layers - source

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
        shapes.update({f"W_dec.{s}": (F, self.n_targets(s), do) for s in range(L)})
        if self.activation_fn == "jumprelu":
            shapes["threshold"] = (L, F)
        return shapes

    def describe(self) -> str:
        """The dimensions, for error messages."""
        return (
            f"architecture={self.architecture()!r}, n_layers={self.n_layers}, d_in={self.d_in}, "
            f"d_out={self.d_out}, d_sae={self.d_sae}, activation_fn={self.activation_fn!r}"
        )


class CrossLayerTranscoder(SAE[CrossLayerTranscoderConfig]):
    """A cross-layer transcoder, usable wherever SAELens expects an ``SAE``.

    Parameters (``L`` layers, ``F`` features per layer)::

        W_enc      [L, d_in, F]
        b_enc      [L, F]
        threshold  [L, F]            (JumpReLU only)
        W_dec[s]   [F, w_s, d_out]   (a ParameterList; block s -> t is W_dec[s][:, t - s])
        b_dec      [L, d_out]
    """

    cfg: CrossLayerTranscoderConfig
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    b_dec: nn.Parameter
    W_dec: nn.ParameterList  # type: ignore[assignment]
    # Set by a lazy load (formats.lazy.LazyDecoder): decoder rows are then read from disk on
    # demand by decoder_rows / decode_sparse, and W_dec holds meta tensors.
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
            [nn.Parameter(torch.empty(F, self.cfg.n_targets(s), do, **kw)) for s in range(L)]
        )
        if self.cfg.activation_fn == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(L, F, **kw))
        if self.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(
        self, generator: torch.Generator | None = None, shard: FeatureShard | None = None
    ) -> None:
        """Random init: uniform encoder / decoder with fan-in scaling, zero biases.

        Decoder entries are U(-1/sqrt(L*F), 1/sqrt(L*F)) (the scheme of Ameisen et al.),
        the encoder U(-1/sqrt(F), 1/sqrt(F)) and thresholds start at 0.

        ``shard``: this module holds features ``[shard.start, shard.stop)`` of a CLT with
        ``shard.total`` features per layer (feature-sharded training). Each tensor is then
        drawn at its full size, in the same order from the same generator, and sliced, so
        the shards of a seeded init are exactly the slices of the unsharded init (peak
        memory: one full tensor).
        """
        L = self.cfg.n_layers
        F = shard.total if shard is not None else self.cfg.d_sae
        bound_enc = 1.0 / math.sqrt(F)
        bound_dec = 1.0 / math.sqrt(L * F)
        _uniform(self.W_enc, bound_enc, generator, shard, dim=2)
        for w in self.W_dec:
            _uniform(w, bound_dec, generator, shard, dim=0)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    def targets(self, source: int) -> range:
        """Layers a feature read at ``source`` writes to."""
        return range(source, source + self.cfg.n_targets(source))

    def sources(self, target: int) -> list[int]:
        """Layers whose features write to ``target``."""
        return [s for s in range(target + 1) if target in self.targets(s)]

    def decoder_block(self, source: int, target: int) -> torch.Tensor:
        """The ``source -> target`` decoder, ``[d_sae, d_out]``; only ``target ∈ targets(source)``."""
        if not 0 <= source < self.cfg.n_layers or target not in self.targets(source):
            raise IndexError(
                f"no decoder from layer {source} to layer {target}: a feature of this "
                f"{type(self).__name__} read at layer {source} writes only to layers "
                f"{list(self.targets(source)) if 0 <= source < self.cfg.n_layers else []}"
            )
        if self.lazy_decoder is not None:
            return self.lazy_decoder.block(source, target)
        return self.W_dec[source][:, target - source]

    def decoder_rows(self, layer: int, feature_ids: torch.Tensor) -> torch.Tensor:
        """Decoder vectors of some features read at ``layer``: ``[n, w_layer, d_out]``."""
        if self.lazy_decoder is not None:
            return self.lazy_decoder.rows(layer, feature_ids)
        return self.W_dec[layer][feature_ids]

    def decoder_norms(self) -> torch.Tensor:
        """Norm of each feature's decoder concatenated over its target layers: ``[L, F]``."""
        if self.lazy_decoder is not None:
            return self.lazy_decoder.norms()
        return torch.stack([w.flatten(1).norm(dim=1) for w in self.W_dec])

    def encoder_vectors(self, layers: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``W_enc[l][:, f]`` for each ``(l, f)``: ``[n, d_in]``."""
        return self.W_enc[layers, :, features]

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
        return torch.relu(hidden_pre)

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
    def skip(self, x: torch.Tensor, layer: int) -> torch.Tensor | None:
        """Linear skip term of layer ``layer`` from its input ``x [..., d_in]`` (None: no skip)."""
        return None

    def skip_all(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Skip terms of all layers ``[..., L, d_out]`` from ``x [..., L, d_in]`` (None: no skip)."""
        return None

    def finish_decode(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """``Σ_s a_s W_dec[s]`` ``[..., L, d_out]`` -> the reconstruction: ``+ b_dec (+ skip)``."""
        out = out + self.b_dec
        skip = self.skip_all(x)
        if skip is not None:
            out = out + skip
        return self.hook_sae_recons(out)

    @override
    def decode(self, feature_acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Dense decode: ``acts [..., L, d_sae] -> [..., L, d_out]``.

        ``x`` (the CLT input ``[..., L, d_in]``) is needed only for a skip connection.
        """
        if self.lazy_decoder is not None:  # the decoder is on disk: read only active rows
            return self.decode_sparse(feature_acts, x)
        return self.finish_decode(self.decode_features(feature_acts), x)

    def decode_features(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """``Σ_s a_s W_dec[s]`` (no bias, no skip), dense: ``[..., L, d_sae] -> [..., L, d_out]``."""
        self._check_input(feature_acts, self.cfg.d_sae, "feature activations")
        L, do = self.cfg.n_layers, self.cfg.d_out
        acts = feature_acts.to(self.dtype)
        out = acts.new_zeros(*acts.shape[:-2], L, do)
        for s in range(L):
            w = self.cfg.n_targets(s)
            # a_s writes to layers s..s+w-1 at once: [..., F] @ [F, w*d_out]
            contrib = acts[..., s, :] @ self.W_dec[s].flatten(1)
            out[..., s : s + w, :] = out[..., s : s + w, :] + contrib.unflatten(-1, (w, do))
        return out

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
        return self.finish_decode(out.reshape(*lead, L, do), x)

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
            width = self.cfg.n_targets(s)
            cols_s = cols[sl]
            if self.lazy_decoder is not None:  # read the active rows only, index into them
                active, cols_s = cols_s.unique(return_inverse=True)
                w = self.lazy_decoder.rows(s, active).flatten(1)  # [n_active, w_s*d_out]
            else:
                w = self.W_dec[s].flatten(1)  # [F, w_s*d_out]
            if dense and self.lazy_decoder is None:
                a = values.new_zeros(n * F).index_put((rows[sl] * F + cols_s,), values[sl])
                contrib = a.view(n, F) @ w
            else:
                contrib = SparseDecode.apply(values[sl], rows[sl], cols_s, w, n)
            out[:, s : s + width] = out[:, s : s + width] + contrib.view(n, width, do)
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
        if "W_skip" in state_dict and "W_skip" not in self.cfg.expected_shapes():
            raise CLTFormatError(
                f"{saelens.WEIGHTS_FILENAME} holds W_skip but cfg.json says "
                f"{self.cfg.architecture()!r}: a skip CLT written by sae_lens_clt 0.1; load it "
                "with CrossLayerTranscoder.load_from_disk (which upgrades it) and save_model it "
                "again to make SAELens' own loader read it"
            )
        saelens.check_state_dict(
            state_dict, self.cfg.expected_shapes(), saelens.WEIGHTS_FILENAME, self.cfg.describe()
        )

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
            w.div_(out_scale[s : s + w.shape[1], None])
        self.b_dec.div_(out_scale[:, None])

    # ------------------------------------------------------------------ I/O
    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        """Write the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) atomically."""
        if self.lazy_decoder is not None:
            raise ValueError(
                "this CLT was loaded with lazy=True, so its decoder is not in memory: load it "
                "with lazy=False to save it"
            )
        return saelens.write(Path(path), self.cfg.to_dict(), dict(self.state_dict()))

    @classmethod
    def from_folder_contents(
        cls, contents: folder.FolderContents, device: str = "cpu"
    ) -> CrossLayerTranscoder:
        """Build the registered class of ``contents.cfg_dict["architecture"]`` (must be ``cls``
        or a subclass of it)."""
        arch = contents.cfg_dict.get("architecture")
        try:
            target = registry.registration(str(arch)).cls
        except ValueError as e:
            raise CLTFormatError(f"{contents.cfg_source}: {e}") from e
        if not issubclass(target, cls):
            raise CLTFormatError(
                f"{contents.cfg_source}: holds a {target.__name__} (architecture {arch!r}), not a "
                f"{cls.__name__}: load it with {target.__name__}.load_from_disk or "
                "CrossLayerTranscoder.from_pretrained"
            )
        cfg_dict = dict(contents.cfg_dict, device=device)
        return target.from_dict_and_state(
            cfg_dict, contents.state_dict, contents.decoder_sources, contents.weights_source
        )

    @classmethod
    def from_dict_and_state(
        cls,
        cfg_dict: dict[str, Any],
        state_dict: dict[str, torch.Tensor],
        decoder_sources: list[tuple[Path, str]] | None = None,
        source: str = "state dict",
    ) -> CrossLayerTranscoder:
        """Build from a config dict and a state dict; with ``decoder_sources`` the decoder
        stays on disk (a :class:`~sae_lens_clt.formats.lazy.LazyDecoder`)."""
        config_class = registry.registration_of(cls).config_class
        try:
            cfg = config_class.from_dict(cfg_dict)
        except (TypeError, ValueError) as e:
            raise CLTFormatError(f"{source}: invalid config ({e})") from e
        if decoder_sources is None:
            return cls.from_state_dict(cfg, state_dict, source)
        return cls._build_lazy(cfg, state_dict, decoder_sources, source)

    @classmethod
    def from_state_dict(
        cls,
        cfg: CrossLayerTranscoderConfig,
        state_dict: dict[str, torch.Tensor],
        source: str = "state dict",
    ) -> CrossLayerTranscoder:
        """Build from a checked state dict without allocating weights twice."""
        saelens.check_state_dict(state_dict, cfg.expected_shapes(), source, cfg.describe())
        device = cfg.device
        cfg.device = "meta"
        clt = cls(cfg)
        clt.cfg.device = device
        clt.load_state_dict(state_dict, assign=True)
        return clt.to(device=device, dtype=clt.dtype)

    @classmethod
    def _build_lazy(
        cls,
        cfg: CrossLayerTranscoderConfig,
        state: dict[str, torch.Tensor],
        sources: list[tuple[Path, str]],
        source: str,
    ) -> CrossLayerTranscoder:
        """``W_dec`` holds meta tensors, rows come from disk."""
        L, F, do = cfg.n_layers, cfg.d_sae, cfg.d_out
        device, dtype = cfg.device, str_to_dtype(cfg.dtype)
        state = dict(state)
        for s in range(L):
            state[f"W_dec.{s}"] = torch.empty(F, cfg.n_targets(s), do, dtype=dtype, device="meta")
        saelens.check_state_dict(state, cfg.expected_shapes(), source, cfg.describe())
        if len(sources) != L:
            raise CLTFormatError(f"{source}: {len(sources)} decoder tensors for {L} layers")
        for s, (path, name) in enumerate(sources):  # the decoders stay on disk: check headers
            shape = tensor_shapes(path).get(name)
            if shape != (F, cfg.n_targets(s), do):
                raise CLTFormatError(
                    f"{path}: decoder tensor {name!r} is "
                    f"{'missing' if shape is None else list(shape)}, expected "
                    f"{[F, cfg.n_targets(s), do]} ({cfg.describe()})"
                )
        lazy = LazyDecoder(sources, F, do, dtype, device)
        cfg.device = "meta"
        clt = cls(cfg)
        cfg.device = device
        clt.device = torch.device(device)
        state = {k: v if v.is_meta else v.to(device=device, dtype=dtype) for k, v in state.items()}
        clt.load_state_dict(state, assign=True)
        clt.lazy_decoder = lazy
        return clt

    @classmethod
    def load_from_disk(  # type: ignore[override]
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str | None = None,
        **_: Any,
    ) -> CrossLayerTranscoder:
        """Load a folder written by :meth:`save_model` (or either other layout)."""
        contents = folder.read_folder(path, dtype=dtype)
        return cls.from_folder_contents(contents, device=device)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        name_or_repo: str,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        lazy: bool = False,
        force_download: bool = False,
    ) -> CrossLayerTranscoder:
        """Load a CLT by release name, ``org/repo[/subfolder]`` Hub id or local folder.

        Args:
            name_or_repo: e.g. ``sae_lens_clt.DEFAULT_CLT``, ``"mntss/clt-gemma-2-2b-426k"``,
                ``"me/my-clts/run-3"`` or ``"./my_clt"``. ``sae-lens-clt list`` shows releases.
            revision: Hub branch, tag or commit (overrides the release's own revision).
            device: where the CLT lives.
            dtype: e.g. ``"float32"``; ``None`` keeps the dtype of the files.
            lazy: leave the decoder on disk and read the rows of active features on demand;
                the CLT then cannot be moved with ``.to()`` or saved.
            force_download: re-download Hub files even if cached.

        Returns the registered class the files hold (a subclass of ``cls``).
        """
        fetched = pretrained.fetch(name_or_repo, revision=revision, force_download=force_download)
        contents = fetched.read(dtype=dtype, lazy=lazy)
        return cls.from_folder_contents(contents, device=device)

    def circuit_tracer_exportable(self) -> str | None:
        """``None`` when circuit-tracer reads our export as this very transcoder, else why not."""
        c = self.cfg
        if c.d_in != c.d_out:
            return f"circuit-tracer's layout needs d_in == d_out (got {c.d_in} and {c.d_out})"
        if c.activation_fn not in ("jumprelu", "relu"):
            return f"circuit-tracer's layout stores JumpReLU or ReLU CLTs, not {c.activation_fn!r}"
        return None

    def to_circuit_tracer(
        self, path: str | Path, model_name: str | None = None, allow_extensions: bool = False
    ) -> Path:
        """Write circuit-tracer's layout (``W_enc_{i}``/``W_dec_{i}`` files + ``config.yaml``).

        ``config.yaml`` names the very tensors this CLT reads and writes, as circuit-tracer's
        TransformerLens backend names them (``blocks.{layer}.X`` -> ``X``). A transcoder
        circuit-tracer would read differently (a skip connection) needs
        ``allow_extensions=True``.
        """
        reason = self.circuit_tracer_exportable()
        if reason:
            raise CLTFormatError(f"{reason}: share this {type(self).__name__} with save_model")
        return self._write_circuit_tracer(Path(path), model_name, allow_extensions)

    def _write_circuit_tracer(
        self, path: Path, model_name: str | None, allow_extensions: bool
    ) -> Path:
        if self.lazy_decoder is not None:
            raise ValueError("load the CLT with lazy=False to export it")
        return circuit_tracer.write(
            path,
            self.cfg.to_dict(),
            dict(self.state_dict()),
            model_name=model_name,
            allow_extensions=allow_extensions,
        )

    @classmethod
    def from_circuit_tracer(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> CrossLayerTranscoder:
        """Load circuit-tracer's layout (as written by :meth:`to_circuit_tracer` or found on
        the Hub). ``dtype=None`` keeps the dtype of the files."""
        contents = folder.read_folder(path, dtype=dtype, layout=folder.CIRCUIT_TRACER)
        return cls.from_folder_contents(contents, device=device)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"{type(self).__name__}(n_layers={c.n_layers}, d_in={c.d_in}, d_out={c.d_out}, "
            f"d_sae={c.d_sae}, activation_fn={c.activation_fn!r}, dtype={c.dtype}, "
            f"device={c.device})"
        )
