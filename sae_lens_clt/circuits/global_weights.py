"""Global weights: prompt-independent feature-to-feature weights of a CLT.

A source feature ``(s, f)`` writes ``W_dec[s -> l][f]`` into the MLP output of every layer
``l`` in ``targets(s)``; a target feature ``(t, g)`` reads the residual stream at its CLT
input hook ``cfg.hook_in(t)``. Leave attention out entirely (its patterns change with every
context; global weights keep only the residual-direct path) and freeze the norm's scale σ:
the path from the MLP output of a layer ``l < t`` to the CLT input of layer ``t`` is then a
linear map ``x ↦ x N_t / σ``, with ``N_t`` read off the hook (TransformerLens' own
components, docs/design.md §4 "Which tensor a hook is"):

- ``hook_resid_pre`` / ``hook_resid_mid`` / ``hook_mlp_in``: the residual itself, ``N_t = I``
  and no σ;
- ``ln1.hook_normalized`` / ``ln2.hook_normalized``: TransformerLens hooks ``x / σ`` *before*
  the norm's weight and bias (``LayerNorm.forward``: centre, ``hook_scale``,
  ``hook_normalized(x / scale)``, then ``* w + b``): ``N_t`` = centring for LayerNorm, ``I``
  for RMSNorm;
- ``mlp.hook_in`` (the MLP's input, after the pre-MLP norm's weight): centring (LayerNorm
  only), then ``× w`` (the bias is a constant: no feature-to-feature part).

Any other input hook, an output hook other than ``hook_mlp_out`` / ``mlp.hook_out``, or an
``mlp.hook_out`` behind a post-MLP norm (Gemma-2/3's ``ln2_post``, whose σ differs per source
layer) is refused with a ``ValueError`` saying why. ``b_dec`` / ``b_enc`` are constants and
do not enter feature-to-feature weights; nor does a CLT skip connection (``clt.skip``, a
linear map of a layer's *input*): these are the weights of the features' decoders and
encoders alone. (Attribution keeps the skip path, feature -> MLP output -> a later CLT input
-> ``W_skip`` -> that layer's MLP output, in its edges; for a skip CLT the two differ by it.)

Algorithm (``L`` layers, ``F`` features per layer, ``d`` = d_model):

1. **Map the hooks** (construction): one :class:`ResidualRead` per layer (centre?, the norm
   weight or none, the ``hook_scale`` name or none); refuse what cannot be mapped.
2. **Reading vectors** ``r_{t,g} = N_t W_enc[t][:, g] · norm_scale[t]`` ``[d]``: ``w ⊙ e`` then
   centred (``x P diag(w) · e = x · P (w ⊙ e)``, ``P`` the symmetric centring projection).
   ``norm_scale`` defaults to 1: the weights are **per unit norm scale**; a dataset average of
   ``1/σ_t`` (measured by :meth:`GlobalWeights.fit`) makes them typical sizes.
3. **Writing vectors** ``u^{(t)}_{s,f} = Σ_{l ∈ targets(s), l < t} W_dec[s -> l][f]`` ``[d]``
   (every MLP output the source writes below the target's read).
4. **Virtual weight** ``V[(s,f) -> (t,g)] = u^{(t)}_{s,f} · r_{t,g}`` (0 unless ``s < t``). On
   one prompt with attention's output removed, the attribution edge between two active
   features at the same position ``p`` is exactly ``a_{s,p} · V / σ_{t,p}`` (tested).
   A query touches columns and rows only, never an ``F × F`` block: ``top_inputs((t, g))``
   multiplies each decoder block ``s -> l`` (``s ≤ l < t``) by one ``r`` (``[F]`` per source
   layer; the decoder blocks that reach ``t``); ``top_outputs((s, f))`` multiplies ``t - s``
   summed decoder rows by each later layer's reading matrix ``[d, F]``.
5. **Data** (:meth:`GlobalWeights.fit`): run the model and the CLT on token batches (position
   0 and BOS tokens dropped, at most ``max_tokens`` tokens) and keep the *sparse* activations
   of every layer (token, feature, value), sorted by token, with per-token and per-feature
   offsets, plus ``Σ_tokens a_{t,g}`` and the mean ``1/σ_t``. ``E[a_s a_t]`` is computed only
   for the pairs a query needs, by joining the queried feature's tokens with a layer's entries.
6. **Data-weighted weights** (the paper's "target weighted expected residual attribution",
   TWERA): ``V[(s,f) -> (t,g)] · E[a_{s,f} a_{t,g}] / E[a_{t,g}]`` over the tokens seen, same
   position: the residual-path attribution ``a_s V`` averaged over the data with each token
   weighted by how strongly the *target* is active there; pairs that never co-occur get 0
   (this is what filters out the interference weights of features that never fire together).
   This is the weighting the method's paper proposes (Ameisen et al., 2025, "Circuit
   Tracing", section on global weights) as we read it; the paper's text was not at hand
   offline to check its normalisation word for word (docs/design.md, "Global weights").
7. **Tables** (:meth:`GlobalWeights.top_table`): for each target layer ``t`` the reading
   matrix ``R_t [d, F]`` once; for each source layer ``s < t`` and chunk of ``c`` source
   features, ``R_tᵀ @ Uᵀ -> [F, c]`` (times the co-activation ratio for ``kind="data"``),
   its top-``k`` per target feature, merged into a running top-``k`` ``[F, k]``: peak memory
   ``O(c · F)``, for CLTs of any width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from sae_lens_clt.attribution.inputs import check_compatible
from sae_lens_clt.hooks import block_point, is_bridge
from sae_lens_clt.registry import Transcoder

Kind = Literal["virtual", "data"]
KINDS = ("virtual", "data")

# CLT input hook points (relative to blocks.{t}.) and how each reads the residual stream
IDENTITY_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_mlp_in")
NORM_POINTS = {  # point -> (norm module of the block, hook after the norm's weight?)
    "ln1.hook_normalized": ("ln1", False),
    "ln2.hook_normalized": ("ln2", False),
    "mlp.hook_in": ("ln2", True),
}
OUTPUT_POINTS = ("hook_mlp_out", "mlp.hook_out")
CENTRED_NORMS = ("LayerNorm", "LayerNormPre")
UNCENTRED_NORMS = ("RMSNorm", "RMSNormPre")
POST_NORM_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")  # ln2 after the MLP
MAX_PAIRS = 1 << 22  # (source entry, target entry) pairs joined at once


# ---------------------------------------------------------------------- step 1
@dataclass(frozen=True)
class ResidualRead:
    """How one layer's CLT input reads the residual stream, norm scale frozen at 1."""

    centre: bool  # subtract the mean over d_model (LayerNorm)
    weight: torch.Tensor | None  # [d_model] the norm's weight when the hook is after it
    scale_hook: str | None  # the norm's hook_scale (σ, [batch, pos, 1]); None: no norm

    def apply(self, enc: torch.Tensor) -> torch.Tensor:
        """``N_t e`` for encoder columns ``enc [d, n]``: the vectors whose dot product with
        the residual (divided by σ) is the pre-activation."""
        if self.weight is not None:
            enc = enc * self.weight[:, None]
        if self.centre:
            enc = enc - enc.mean(0, keepdim=True)
        return enc


def residual_reads(
    model: Any,
    clt: Transcoder,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> list[ResidualRead]:
    """One :class:`ResidualRead` per layer for ``clt``'s hooks on ``model`` (a
    ``HookedTransformer``); ``ValueError`` for hooks that have no such linear read."""
    md = clt.cfg.metadata
    in_point, out_point = block_point(md.hook_name), block_point(md.hook_name_out)
    arch = str(getattr(model.cfg, "original_architecture", ""))
    post_mlp_norm = bool(getattr(model.cfg, "use_normalization_before_and_after", False))
    if out_point not in OUTPUT_POINTS:
        raise ValueError(
            f"global weights cannot map the CLT's output hook {md.hook_name_out!r}: a feature "
            f"must write an MLP output ({', '.join(OUTPUT_POINTS)}) that the residual stream adds"
        )
    if out_point == "mlp.hook_out" and (post_mlp_norm or arch in POST_NORM_ARCHITECTURES):
        raise ValueError(
            f"global weights cannot map the CLT's output hook {md.hook_name_out!r} on this "
            f"{arch or 'model'}: a post-MLP norm (ln2_post) sits between mlp.hook_out and the "
            "residual stream, with its own scale at every layer and position, so a feature's "
            "write is not one residual vector; use a CLT that writes hook_mlp_out"
        )
    supported = (*IDENTITY_POINTS, *NORM_POINTS)
    if in_point not in supported:
        raise ValueError(
            f"global weights cannot map the CLT's input hook {md.hook_name!r} to a linear read "
            f"of the residual stream from earlier MLP outputs (supported: {', '.join(supported)})"
        )
    reads = []
    for layer in range(clt.cfg.n_layers):
        if in_point in IDENTITY_POINTS or (
            arch in POST_NORM_ARCHITECTURES and in_point == "mlp.hook_in"  # MLP reads resid_mid
        ):
            reads.append(ResidualRead(centre=False, weight=None, scale_hook=None))
            continue
        if arch in POST_NORM_ARCHITECTURES:
            raise ValueError(
                f"global weights cannot map {md.hook_name!r} on {arch}: its norms come after "
                "attention and the MLP, so they are not the CLT input's read of the residual"
            )
        name, after_weight = NORM_POINTS[in_point]
        norm = getattr(model.blocks[layer], name)
        kind = type(norm).__name__
        if kind == "Identity":  # normalization_type=None: nothing between residual and MLP
            reads.append(ResidualRead(centre=False, weight=None, scale_hook=None))
            continue
        if kind not in CENTRED_NORMS + UNCENTRED_NORMS:
            raise ValueError(
                f"global weights cannot map {md.hook_name!r}: blocks.{layer}.{name} is a "
                f"{kind}, not one of TransformerLens' {', '.join(CENTRED_NORMS + UNCENTRED_NORMS)}"
            )
        w = getattr(norm, "w", None) if after_weight else None
        weight = None if w is None else w.detach().to(device=device, dtype=dtype)
        scale_hook = f"blocks.{layer}.{name}.hook_scale"
        reads.append(ResidualRead(kind in CENTRED_NORMS, weight, scale_hook))
    return reads


# ---------------------------------------------------------------------- step 5
@dataclass
class LayerActivations:
    """The sparse activations of one layer over the tokens seen by ``fit`` (``nnz`` entries
    sorted by token, then feature)."""

    tok: torch.Tensor  # [nnz] int32 token index
    feat: torch.Tensor  # [nnz] int32 feature
    val: torch.Tensor  # [nnz] activation
    tok_ptr: torch.Tensor  # [n_tokens + 1] int64: entries of token i are tok_ptr[i]:tok_ptr[i+1]
    feat_order: torch.Tensor  # [nnz] int64 entries sorted by feature (stable)
    feat_ptr: torch.Tensor  # [F + 1] int64 offsets into feat_order
    totals: torch.Tensor  # [F] Σ_tokens a (n_tokens · E[a])

    @classmethod
    def build(
        cls, tok: torch.Tensor, feat: torch.Tensor, val: torch.Tensor, n_tokens: int, F: int
    ) -> LayerActivations:
        tok_ptr = torch.zeros(n_tokens + 1, dtype=torch.long, device=tok.device)
        tok_ptr[1:] = torch.bincount(tok, minlength=n_tokens).cumsum(0)
        feat_ptr = torch.zeros(F + 1, dtype=torch.long, device=tok.device)
        feat_ptr[1:] = torch.bincount(feat, minlength=F).cumsum(0)
        totals = torch.zeros(F, dtype=val.dtype, device=val.device).index_add_(0, feat, val)
        return cls(
            tok=tok.int(),
            feat=feat.int(),
            val=val,
            tok_ptr=tok_ptr,
            feat_order=torch.argsort(feat, stable=True),
            feat_ptr=feat_ptr,
            totals=totals,
        )

    def entries(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(token [m], feature - start [m], value [m])`` of features ``start..stop-1``."""
        pos = self.feat_order[self.feat_ptr[start] : self.feat_ptr[stop]]
        return self.tok[pos].long(), self.feat[pos].long() - start, self.val[pos]

    def coactivation(
        self, tok: torch.Tensor, row: torch.Tensor, val: torch.Tensor, n_rows: int
    ) -> torch.Tensor:
        """``out[r, g] = Σ_i val_i · a_g(tok_i)`` over given entries ``(tok, row, val) [m]``:
        ``Σ_tokens a_src a_g`` for every feature ``g`` of this layer, ``[n_rows, F]``."""
        F = self.feat_ptr.numel() - 1
        out = torch.zeros(n_rows * F, dtype=self.val.dtype, device=self.val.device)
        start = self.tok_ptr[tok]
        count = self.tok_ptr[tok + 1] - start  # this layer's entries at each entry's token
        ends = count.cumsum(0)
        begin = 0
        while begin < tok.numel():  # pieces of at most MAX_PAIRS joined pairs
            base = int(ends[begin - 1]) if begin else 0
            end = int(torch.searchsorted(ends, base + MAX_PAIRS, right=True))
            end = max(end, begin + 1)
            c = count[begin:end]
            rep = torch.repeat_interleave(torch.arange(begin, end, device=tok.device), c)
            offset = torch.arange(rep.numel(), device=tok.device) - torch.repeat_interleave(
                ends[begin:end] - c - base, c
            )
            j = start[rep] + offset  # [pairs] entries of this layer
            out.index_add_(0, row[rep] * F + self.feat[j].long(), val[rep] * self.val[j])
            begin = end
        return out.view(n_rows, F)


# ---------------------------------------------------------------------- step 7
@dataclass
class TopTable:
    """Top-``k`` inputs of every feature of some target layers, sorted by ``|weight|``.

    ``weights[i, g]`` are the signed weights into feature ``g`` of layer
    ``target_layers[i]`` from sources ``(source_layers[i, g], source_features[i, g])``;
    ``-1`` (weight 0) marks an empty slot (fewer than ``k`` sources, or for ``kind="data"``
    fewer than ``k`` that ever co-occur with the target).
    """

    target_layers: list[int]
    weights: torch.Tensor  # [n_target_layers, F, k] float32
    source_layers: torch.Tensor  # [n_target_layers, F, k] int64
    source_features: torch.Tensor  # [n_target_layers, F, k] int64
    kind: str

    def inputs(self, target: tuple[int, int]) -> list[tuple[int, int, float]]:
        """``(layer, feature, weight)`` of one target's inputs, as :meth:`GlobalWeights.top_inputs`."""
        t, g = target
        if t not in self.target_layers:
            raise KeyError(f"layer {t} is not a target layer of this table ({self.target_layers})")
        i = self.target_layers.index(t)
        if not 0 <= g < self.weights.shape[1]:
            raise IndexError(f"feature {g} out of range [0, {self.weights.shape[1]})")
        rows = zip(
            self.source_layers[i, g].tolist(),
            self.source_features[i, g].tolist(),
            self.weights[i, g].tolist(),
            strict=True,
        )
        return [(s, f, w) for s, f, w in rows if s >= 0]


# ---------------------------------------------------------------------- the class
class GlobalWeights:
    """Virtual weights of a CLT through the residual stream, and their data-weighted version.

    Args:
        model: the ``HookedTransformer`` the CLT reads (loaded as it was trained).
        clt: any registered transcoder over every layer of ``model``.
        norm_scale: ``[L]`` per-layer factor for the frozen ``1/σ_t`` of the target's norm
            (default 1: weights per unit norm scale); e.g. ``gw.measured_norm_scale`` after
            :meth:`fit`. Settable later.
        dtype: compute dtype (default: the CLT's, at least float32). Everything runs on the
            CLT's device (where its encoder is).

    Features are ``(layer, feature)`` pairs; weights are floats, signed.
    """

    def __init__(
        self,
        model: Any,
        clt: Transcoder,
        *,
        norm_scale: float | Sequence[float] | torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if is_bridge(model):
            raise ValueError(
                "global weights read the norms of a HookedTransformer's blocks; this is a "
                "TransformerBridge: load the model with HookedTransformer.from_pretrained_no_processing"
            )
        check_compatible(model, clt, action="global weights")
        d = model.cfg.d_model
        if clt.cfg.d_in != d or clt.cfg.d_out != d:
            raise ValueError(
                f"global weights need a CLT that reads and writes the residual stream (d_model="
                f"{d}); this one has d_in={clt.cfg.d_in}, d_out={clt.cfg.d_out}"
            )
        self.model, self.clt = model, clt
        self.n_layers, self.d_sae = clt.cfg.n_layers, clt.cfg.d_sae
        zero = torch.zeros(1, dtype=torch.long)
        self.device = clt.encoder_vectors(zero, zero).device  # where the CLT's weights are
        self.dtype = dtype or torch.promote_types(clt.dtype, torch.float32)
        self.reads = residual_reads(model, clt, self.device, self.dtype)  # step 1
        self.norm_scale = norm_scale  # checked by the setter
        self.layer_activations: list[LayerActivations] | None = None
        self.n_tokens = 0
        self.measured_norm_scale: torch.Tensor | None = None  # [L] mean 1/σ_t from fit

    # ------------------------------------------------------------------ settings
    @property
    def norm_scale(self) -> torch.Tensor:
        """``[L]`` factor standing for the frozen ``1/σ_t`` of each target layer."""
        return self._norm_scale

    @norm_scale.setter
    def norm_scale(self, value: float | Sequence[float] | torch.Tensor | None) -> None:
        L = self.n_layers
        if value is None:
            scale = torch.ones(L)
        elif isinstance(value, int | float):
            scale = torch.full((L,), float(value))
        else:
            scale = torch.as_tensor(value, dtype=torch.float64).flatten()
        if scale.numel() != L or not bool(torch.isfinite(scale).all()):
            raise ValueError(
                f"norm_scale must be a finite number or {L} finite numbers (one per layer), "
                f"got {value!r}"
            )
        self._norm_scale = scale.to(device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        fitted = f"fitted on {self.n_tokens} tokens" if self.layer_activations else "not fitted"
        return (
            f"GlobalWeights(n_layers={self.n_layers}, d_sae={self.d_sae}, "
            f"hook_in={self.clt.cfg.metadata.hook_name!r}, {fitted})"
        )

    # ------------------------------------------------------------------ checks
    def _feature(self, node: tuple[int, int], what: str) -> tuple[int, int]:
        try:
            layer, feature = (int(v) for v in node)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a (layer, feature) pair, got {node!r}") from None
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"{what} layer {layer} out of range [0, {self.n_layers})")
        if not 0 <= feature < self.d_sae:
            raise IndexError(
                f"{what} feature {feature} out of range [0, {self.d_sae}) (d_sae per layer)"
            )
        return layer, feature

    @staticmethod
    def _check(k: int, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")

    def _fitted(self) -> list[LayerActivations]:
        if self.layer_activations is None:
            raise RuntimeError(
                'kind="data" needs co-activation statistics: call fit(token_batches) first '
                '(or use kind="virtual")'
            )
        return self.layer_activations

    # ------------------------------------------------------------------ steps 2-4
    def _ids(self, ids: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        if ids is None:
            return torch.arange(self.d_sae, device=self.device)
        return torch.as_tensor(ids, dtype=torch.long, device=self.device)

    def _reading(self, t: int, feats: torch.Tensor | None = None) -> torch.Tensor:
        """Step 2: reading vectors of features ``feats`` (all by default) of layer ``t``,
        ``[d, n]``."""
        ids = self._ids(feats)
        enc = self.clt.encoder_vectors(torch.full_like(ids, t), ids).to(self.dtype)  # [n, d]
        return self.reads[t].apply(enc.T) * self.norm_scale[t]

    def _below(self, s: int, t: int) -> list[int]:
        """Indices into ``targets(s)`` of the layers ``l < t``."""
        return [j for j, layer in enumerate(self.clt.targets(s)) if layer < t]

    def _writing(self, s: int, t: int, feats: torch.Tensor) -> torch.Tensor:
        """Step 3: writing vectors of features ``feats`` of layer ``s`` as read at ``t``,
        ``[n, d]``."""
        rows = self.clt.decoder_rows(s, feats)  # [n, w_s, d]
        return rows[:, self._below(s, t)].to(self.dtype).sum(1)

    def _input_weights(self, t: int, g: int) -> torch.Tensor:
        """``V[(s, f) -> (t, g)]`` for every ``s < t``, ``f``: ``[t, F]``."""
        r = self._reading(t, self._ids([g]))[:, 0]  # [d]
        out = torch.zeros(t, self.d_sae, dtype=self.dtype, device=self.device)
        for s in range(t):
            for layer in self.clt.targets(s):
                if layer < t:  # one decoder block [F, d] at a time
                    out[s] += self.clt.decoder_block(s, layer).to(self.dtype) @ r
        return out

    def _output_weights(self, s: int, f: int) -> torch.Tensor:
        """``V[(s, f) -> (t, g)]`` for every ``t > s``, ``g``: ``[L - s - 1, F]``."""
        out = torch.zeros(self.n_layers - s - 1, self.d_sae, dtype=self.dtype, device=self.device)
        for t in range(s + 1, self.n_layers):
            u = self._writing(s, t, self._ids([f]))  # [1, d]
            out[t - s - 1] = (u @ self._reading(t))[0]
        return out

    @torch.no_grad()
    def virtual(self, source: tuple[int, int], target: tuple[int, int]) -> float:
        """Step 4: ``V[source -> target]`` (0.0 unless the source's layer is below the target's)."""
        s, f = self._feature(source, "source")
        t, g = self._feature(target, "target")
        if t <= s:
            return 0.0
        u = self._writing(s, t, self._ids([f]))  # [1, d]
        return float((u @ self._reading(t, self._ids([g])))[0, 0])

    # ------------------------------------------------------------------ step 6
    def _input_ratio(self, t: int, g: int) -> torch.Tensor:
        """``E[a_s a_{t,g}] / E[a_{t,g}]`` for every ``s < t``, ``f``: ``[t, F]``."""
        acts = self._fitted()
        tok, _, val = acts[t].entries(g, g + 1)
        out = torch.zeros(t, self.d_sae, dtype=self.dtype, device=self.device)
        total = float(val.sum())
        if total == 0.0:
            return out
        for s in range(t):
            out[s] = acts[s].coactivation(tok, torch.zeros_like(tok), val, 1)[0] / total
        return out

    def _output_ratio(self, s: int, f: int) -> torch.Tensor:
        """``E[a_{s,f} a_t] / E[a_t]`` for every ``t > s``, ``g``: ``[L - s - 1, F]``."""
        acts = self._fitted()
        tok, _, val = acts[s].entries(f, f + 1)
        out = torch.zeros(self.n_layers - s - 1, self.d_sae, dtype=self.dtype, device=self.device)
        for t in range(s + 1, self.n_layers):
            co = acts[t].coactivation(tok, torch.zeros_like(tok), val, 1)[0]
            out[t - s - 1] = _ratio(co, acts[t].totals)
        return out

    @torch.no_grad()
    def top_inputs(
        self, target: tuple[int, int], k: int = 10, kind: Kind = "virtual"
    ) -> list[tuple[int, int, float]]:
        """The ``k`` sources with the largest ``|weight|`` into ``target``:
        ``[(layer, feature, weight), ...]``, largest first. ``kind="data"`` (after
        :meth:`fit`) weighs them by co-activation and leaves out pairs never seen together."""
        t, g = self._feature(target, "target")
        self._check(k, kind)
        if t == 0:
            return []
        weights = self._input_weights(t, g)
        if kind == "data":
            weights = weights * self._input_ratio(t, g)
        return _top(weights, k, first_layer=0, drop_zeros=kind == "data")

    @torch.no_grad()
    def top_outputs(
        self, source: tuple[int, int], k: int = 10, kind: Kind = "virtual"
    ) -> list[tuple[int, int, float]]:
        """The ``k`` targets with the largest ``|weight|`` from ``source``, as
        :meth:`top_inputs`."""
        s, f = self._feature(source, "source")
        self._check(k, kind)
        if s == self.n_layers - 1:
            return []
        weights = self._output_weights(s, f)
        if kind == "data":
            weights = weights * self._output_ratio(s, f)
        return _top(weights, k, first_layer=s + 1, drop_zeros=kind == "data")

    # ------------------------------------------------------------------ step 7
    @torch.no_grad()
    def top_table(
        self,
        layers: tuple[int, int] | None = None,
        k: int = 10,
        *,
        kind: Kind = "virtual",
        chunk_size: int = 1024,
        progress: bool = True,
    ) -> TopTable:
        """Top-``k`` inputs of every target feature, in bounded memory.

        ``layers=(s, t)``: sources of layer ``s`` into targets of layer ``t`` only; ``None``:
        every target layer ``1..L-1`` from all layers below it. Computed ``chunk_size`` source
        features at a time (peak ``O(chunk_size · F)``; no ``F × F`` block).
        """
        self._check(k, kind)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        L, F = self.n_layers, self.d_sae
        if layers is None:
            plan = {t: list(range(t)) for t in range(1, L)}
        else:
            s, t = (int(v) for v in layers)
            if not 0 <= s < t < L:
                raise ValueError(
                    f"layers=(source, target) needs 0 <= source < target < {L}, got {layers!r}"
                )
            plan = {t: [s]}
        acts = self._fitted() if kind == "data" else None
        n_chunks = math.ceil(F / chunk_size)
        bar = tqdm(
            total=sum(len(v) for v in plan.values()) * n_chunks,
            desc=f"global weights ({kind})",
            disable=not progress,
        )
        weights, sources = [], []
        for t, source_layers in plan.items():
            reading_t = self._reading(t).T.contiguous()  # [F, d]: targets as rows
            best_key = torch.full((F, k), -1.0, dtype=self.dtype, device=self.device)
            best_w = torch.zeros(F, k, dtype=self.dtype, device=self.device)
            best_src = torch.full((F, k), -1, dtype=torch.long, device=self.device)
            for s in source_layers:
                for start in range(0, F, chunk_size):
                    stop = min(F, start + chunk_size)
                    ids = torch.arange(start, stop, device=self.device)
                    w = reading_t @ self._writing(s, t, ids).T  # [F, c]
                    if acts is not None:
                        tok, row, val = acts[s].entries(start, stop)
                        co = acts[t].coactivation(tok, row, val, stop - start)  # [c, F]
                        w = w * _ratio(co, acts[t].totals[None]).T
                    chunk_top = w.abs().topk(min(k, stop - start), dim=1)  # [F, k_c]
                    key = torch.cat([best_key, chunk_top.values], dim=1)  # [F, k + k_c]
                    cand_w = torch.cat([best_w, w.gather(1, chunk_top.indices)], dim=1)
                    cand_src = torch.cat([best_src, s * F + start + chunk_top.indices], dim=1)
                    top = key.topk(k, dim=1)
                    best_key = top.values
                    best_w = cand_w.gather(1, top.indices)
                    best_src = cand_src.gather(1, top.indices)
                    bar.update(1)
            if kind == "data":  # never co-active: no input
                best_src = best_src.masked_fill(best_w == 0, -1)
            weights.append(best_w.float().cpu())  # [F, k]
            sources.append(best_src.cpu())
        bar.close()
        src = torch.stack(sources)  # [n_t, F, k]
        return TopTable(
            target_layers=list(plan),
            weights=torch.stack(weights) * (src >= 0),
            source_layers=torch.where(src >= 0, src // F, -1),
            source_features=torch.where(src >= 0, src % F, -1),
            kind=kind,
        )

    # ------------------------------------------------------------------ step 5
    @torch.no_grad()
    def fit(
        self,
        token_batches: Iterable[torch.Tensor],
        *,
        max_tokens: int = 50_000,
        progress: bool = True,
    ) -> GlobalWeights:
        """Collect what ``kind="data"`` needs from token batches ``[B, T]`` (or ``[T]``), e.g.
        ``sae_lens_clt.evals.token_batches_from_texts(model, texts, context_size)``.

        Keeps the sparse activations of at most ``max_tokens`` tokens (position 0 and BOS
        tokens are not explained and are dropped) and measures ``measured_norm_scale``: the
        mean ``1/σ_t`` of each layer's input norm (1 where the hook has none). Replaces what an
        earlier call collected. Returns ``self``.
        """
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        model, clt, L = self.model, self.clt, self.n_layers
        tokenizer = getattr(model, "tokenizer", None)
        bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
        names = [clt.cfg.hook_in(layer) for layer in range(L)]
        names += [r.scale_hook for r in self.reads if r.scale_hook is not None]
        entries: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [
            [] for _ in range(L)
        ]
        inv_scale = torch.zeros(L, dtype=torch.float64)
        n = 0
        store: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook: Any) -> None:
            store[hook.name] = act.detach()

        bar = tqdm(total=max_tokens, unit="tok", desc="global weights: fit", disable=not progress)
        for batch in token_batches:
            if n >= max_tokens:
                break
            tokens = torch.as_tensor(batch, dtype=torch.long)
            tokens = tokens[None] if tokens.ndim == 1 else tokens
            if tokens.ndim != 2:
                raise ValueError(
                    f"token batches must be [batch, T] or [T], got {tuple(tokens.shape)}"
                )
            keep = torch.ones_like(tokens, dtype=torch.bool)
            keep[:, 0] = False
            if bos is not None:
                keep &= tokens != bos
            store.clear()
            model.run_with_hooks(
                tokens.to(model.cfg.device),
                fwd_hooks=[(name, save) for name in names],
                stop_at_layer=model.cfg.n_layers,
            )
            keep = keep.to(store[names[0]].device)
            n_new = min(int(keep.sum()), max_tokens - n)
            for layer in range(L):
                x = store[names[layer]][keep][:n_new].to(device=self.device)  # [n_new, d]
                a = clt.activation(clt.encode_layer_pre(x, layer), layer)  # [n_new, F]
                row, feat = a.nonzero(as_tuple=True)  # sorted by token, then feature
                entries[layer].append((row + n, feat, a[row, feat].to(self.dtype)))
                hook = self.reads[layer].scale_hook
                if hook is not None:
                    inv_scale[layer] += float((1.0 / store[hook][keep][:n_new].double()).sum())
            n += n_new
            bar.update(n_new)
        bar.close()
        if n == 0:
            raise ValueError(
                "fit saw no tokens to explain (position 0 and BOS tokens are dropped): give it "
                "token batches [batch, T] with T >= 2"
            )
        self.layer_activations = [
            LayerActivations.build(
                *(torch.cat([e[i] for e in entries[layer]]) for i in range(3)), n, self.d_sae
            )
            for layer in range(L)
        ]
        self.n_tokens = n
        self.measured_norm_scale = torch.tensor(
            [float(inv_scale[i]) / n if r.scale_hook else 1.0 for i, r in enumerate(self.reads)]
        )
        return self


def _ratio(co: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """``co / totals`` with 0 where the target never fired."""
    return torch.where(totals > 0, co / totals.clamp(min=torch.finfo(totals.dtype).tiny), 0.0)


def _top(
    weights: torch.Tensor, k: int, first_layer: int, drop_zeros: bool
) -> list[tuple[int, int, float]]:
    """Largest ``|weight|`` entries of ``weights [n_layers, F]`` (row ``i`` = layer
    ``first_layer + i``) as ``(layer, feature, weight)``."""
    F = weights.shape[1]
    flat = weights.flatten()
    idx = flat.abs().topk(min(k, flat.numel())).indices
    rows = [(first_layer + i // F, i % F, float(flat[i])) for i in idx.tolist()]
    return [r for r in rows if r[2] != 0.0] if drop_zeros else rows
