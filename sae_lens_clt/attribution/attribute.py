"""Attribution graphs: exact direct effects over a CLT local replacement model.

Algorithm (one prompt of ``T`` tokens, ``L`` layers; docs/design.md §3):

1. **One forward pass** (:mod:`.forward`) of the model with hooks that (a) detach every attention pattern
   (``hook_pattern``) and every norm scale (``hook_scale`` of ln1 / ln2 / ln_final), so
   gradients see them as constants; (b) replace each MLP output (the CLT's output hook) by
   a fresh leaf tensor with the same value, so no gradient flows through the MLP; a CLT
   skip connection ``x W_skip`` stays as a linear, zero-valued path; (c) make the token
   and positional embeddings leaves too. The values are unchanged (reconstruction +
   error = MLP output), so the logits are the model's own. Under these freezes every
   target is an affine function of the leaves: its gradient *is* the direct effect.
2. **Encode**: the cached CLT inputs give pre-activations and activations of every
   feature; position 0 (BOS) is zeroed. Errors ``e = y - ŷ`` (zero at position 0).
   Source vectors: active feature ``a_s W_dec[s -> t]`` written at every ``t >= s``;
   error ``e_{l,p}`` at layer ``l``; embedding ``W_E[tok_p]`` (+ ``W_pos[p]``).
3. **Targets**: demeaned logits of the most probable tokens (until their probabilities
   sum to ``desired_logit_prob`` or there are ``max_n_logits``): gradient
   ``W_U[:, tok] - mean_v W_U[:, v]`` injected at the unembedding input of the last
   position (so a final logit soft-cap, as in Gemma-2, is outside the linear target); or
   the targets the user names (``targets``, in that order; :mod:`.targets`): tokens, logit
   differences, residual directions at ``blocks.{l}.hook_resid_post`` (or the unembedding
   input) of any position, feature pre-activations (active or not) at the CLT input, each
   a vector injected at its hook and position, with its weight. Active features'
   pre-activations: ``W_enc[l][:, f]`` at the CLT input of layer ``l``, position ``p``.
4. **Batched backward passes**: a batch of ``B`` targets is one vmapped
   ``torch.autograd.grad(..., is_grads_batched=True)`` over the retained graph, asking
   only for the MLP outputs of the layers that can reach a target of the batch (below a
   feature's layer, up to a ``resid_post`` direction's layer); with causal attention,
   sources after the last target position are skipped too (nothing else can reach the
   targets; node order keeps each batch within one or two layers). The
   gradients at the MLP-output leaves ``G [T, B, L, d]`` and the embedding leaves are
   contracted with the source vectors: errors by one einsum, embeddings by one dot
   product per position, active features block by block (features
   sharing a source layer and position are contiguous in node order) with their
   activation-scaled decoder rows, touching only active features. Each batch fills ``B``
   rows of ``A`` (rows = targets, columns = sources).
5. **max_feature_nodes**: logit rows come first; then, every ``update_interval`` batches,
   the influence of every active feature on the logits is re-estimated from the rows
   computed so far (``w (B + B² + …)`` over those rows) and the most influential
   unvisited features get the next rows. Only the visited features become nodes.
6. **Package** an :class:`AttributionGraph` (dense float32 ``[N, N]`` adjacency, or in
   rows form ``[n_kept + k, N]`` under a memory budget).

With ``memory_budget`` (:mod:`.budget`) a plan is made first: the forward of step 1 runs in
query chunks that keep no attention pattern when a one-pass forward would not fit
(:mod:`.chunked_attention`), step 2 encodes a chunk of positions at a time, the decoder
rows of step 4 are gathered per pass when keeping them would not fit, ``B`` follows the
budget, and rows past a third of it live in a memory-mapped file; the estimate is printed
before step 4. Influence ranking (step 5) streams the rows either way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.budget import (
    MemoryPlan,
    parse_bytes,
    plan_forward,
    plan_rows,
    row_buffer,
)
from sae_lens_clt.attribution.forward import (  # noqa: F401  (re-exported)
    RESID_HOOK,
    FrozenForward,
    activations_and_errors,
    chunkable,
    frozen_forward,
    select_logits,
    unembed_input_hook,
)
from sae_lens_clt.attribution.graph import AttributionGraph
from sae_lens_clt.attribution.influence import influence_from_rows
from sae_lens_clt.attribution.inputs import (  # noqa: F401  (re-exported)
    Prompt,
    check_compatible,
    no_param_grads,
    to_tokens,
)
from sae_lens_clt.attribution.targets import (  # noqa: F401  (re-exported)
    TARGET_WEIGHT_FLOOR,
    Direction,
    FeatureTarget,
    LogitDiff,
    ResolvedTargets,
    TargetLike,
    Token,
    finish_targets,
    resolve_targets,
    resolve_targets_full,
    target_json,
    target_label,
)
from sae_lens_clt.registry import Transcoder


# ---------------------------------------------------------------------- steps 2-4
class _RowComputer:
    """Source vectors of one prompt and the batched backward pass that yields rows of A.

    Columns (sources): ``[active features (n), errors (L*T, layer-major), embeddings (T)]``.
    """

    def __init__(
        self,
        model: HookedTransformer,
        clt: Transcoder,
        fwd: FrozenForward,
        encode_chunk: int | None = None,
    ) -> None:
        L, T = clt.cfg.n_layers, fwd.tokens.numel()
        self.fwd, self.L, self.T, self.clt = fwd, L, T, clt
        # causal attention: a target at position p sees no source at a position > p
        self.causal = getattr(model.cfg, "attention_dir", "causal") == "causal"
        # contractions in float32 at least, whatever the CLT's dtype
        dtype = torch.promote_types(fwd.y.dtype, torch.float32)
        sparse = activations_and_errors(clt, fwd, encode_chunk)
        self.active = sparse.active  # [n, 3] (layer, pos, feature), sorted
        layers, pos, feats = self.active.unbind(1)
        self.values = sparse.values.float().cpu()  # [n]
        self.errors = sparse.errors.transpose(0, 1).to(dtype).contiguous()  # [L, T, d_out]
        del sparse
        self.device, self.dtype = fwd.x.device, dtype
        # active features sorted by (layer, pos) form contiguous blocks in node order; per
        # block, the activation-scaled decoder rows, transposed and flattened:
        # dec_t [w_s * d_out, n_block] (target layers s..s+w_s-1, layer-major), kept
        # (keep_decoders) or gathered again by each backward pass
        self.blocks: list[tuple[int, int, int, int, torch.Tensor | None]] = []
        keys, counts = torch.unique_consecutive(layers * T + pos, return_counts=True)
        start = 0
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            s, p = divmod(key, T)
            self.blocks.append((s, p, start, start + count, None))
            start += count
        with torch.no_grad():
            self.embed_vals = fwd.embed_leaf[0].detach().to(dtype)  # [T, d_model]
            self.pos_vals = None if fwd.pos_leaf is None else fwd.pos_leaf[0].detach().to(dtype)
        self.n_features = int(self.active.shape[0])
        self.n_cols = self.n_features + L * T + T
        self.layers, self.positions = layers, pos
        self.bar: Any = None  # a progress bar that counts the rows computed, when set

    def decoder_floats(self) -> int:
        """Floats :meth:`keep_decoders` would keep (every block's ``dec_t``)."""
        d_out = self.errors.shape[-1]
        return sum((e - b) * len(self.clt.targets(s)) * d_out for s, _, b, e, _ in self.blocks)

    def keep_decoders(self) -> None:
        """Gather every block's decoder rows once, for all backward passes."""
        self.blocks = [(s, p, b, e, self._decoder_block(s, b, e)) for s, p, b, e, _ in self.blocks]

    @torch.no_grad()
    def _decoder_block(self, layer: int, start: int, end: int) -> torch.Tensor:
        """``dec_t [w * d_out, end - start]`` of the active features ``start..end-1`` (one
        source layer and position)."""
        feats = self.active[start:end, 2].to(self.device)
        vals = self.values[start:end, None, None].to(device=self.device, dtype=self.dtype)
        rows = self.clt.decoder_rows(layer, feats).to(self.dtype) * vals
        return rows.flatten(1).T.contiguous()

    def encoder_vector(self, layer: int, feature: int) -> torch.Tensor:
        """``W_enc[layer][:, feature]`` ``[d_in]``, as the feature rows use it."""
        idx = torch.tensor([layer], device=self.device), torch.tensor([feature], device=self.device)
        return self.clt.encoder_vectors(*idx)[0]

    @torch.no_grad()
    def feature_state(self, layer: int, pos: int, feature: int) -> tuple[float, float]:
        """``(pre-activation, activation)`` of a feature on this prompt (0 at BOS)."""
        x = self.fwd.x[pos : pos + 1, layer].to(self.clt.dtype)  # [1, d_in]
        pre = self.clt.encode_layer_pre(x, layer)  # [1, F]
        act = 0.0 if pos == 0 else float(self.clt.activation(pre, layer)[0, feature])
        return float(pre[0, feature]), act

    def output(self, read: str) -> torch.Tensor:
        """The graph output a target reads: ``"unembed"``, ``"resid_post.{l}"``,
        ``"clt_in.{l}"`` (``[1, T, d]``)."""
        if read == "unembed":
            return self.fwd.unembed_input
        kind, layer = read.split(".")
        return (self.fwd.resid_post if kind == "resid_post" else self.fwd.clt_inputs)[int(layer)]

    def rows(
        self, feature_ids: torch.Tensor, targets: ResolvedTargets | None, target_ids: Sequence[int]
    ) -> torch.Tensor:
        """Rows of A for some feature targets then some graph targets.

        ``feature_ids``: ``[b_f]`` indices into the active features; ``target_ids``:
        ``b_t`` indices into ``targets`` (each a vector read at one hook and position).
        Returns ``[b_f + b_t, n_cols]``.
        """
        fwd, L, T = self.fwd, self.L, self.T
        target_ids = list(target_ids)
        n_f, n_t = int(feature_ids.numel()), len(target_ids)
        B = n_f + n_t
        if B == 0:
            return torch.zeros(0, self.n_cols)
        d_out = self.errors.shape[-1]
        f_layers, f_pos = self.layers[feature_ids], self.positions[feature_ids]
        # one gradient seed per row: its vector at its read-out and position (a feature at
        # layer l reads clt_in.l)
        grads: dict[str, torch.Tensor] = {}

        def grad_of(read: str) -> torch.Tensor:
            if read not in grads:
                target = self.output(read)
                grads[read] = torch.zeros(
                    B, *target.shape, dtype=target.dtype, device=target.device
                )
            return grads[read]

        for layer in f_layers.unique().tolist():
            sel = (f_layers == layer).nonzero()[:, 0]
            g = grad_of(f"clt_in.{layer}")
            ids = feature_ids[sel]  # (host indices: move only the batch's, not all n)
            vecs = self.clt.encoder_vectors(
                self.layers[ids].to(self.device), self.active[ids, 2].to(self.device)
            )
            g[sel, 0, f_pos[sel]] = vecs.to(g.dtype)
        ends, last = [int(f_layers.max())] if n_f else [], [int(f_pos.max())] if n_f else []
        if n_t and targets is None:
            raise ValueError("rows: target_ids given without the targets they index")
        for row, k in enumerate(target_ids, start=n_f):
            g = grad_of(targets.reads[k])
            pos = int(targets.positions[k])
            g[row, 0, pos] = targets.vectors[k].to(device=g.device, dtype=g.dtype)
            ends.append(targets.src_ends[k])
            last.append(pos)
        # only MLP outputs of layers < src_end, positions < pos_end can reach these targets
        src_end = max(ends)
        pos_end = max(last) + 1 if self.causal else T
        outputs = [self.output(read) for read in grads]
        inputs = fwd.mlp_out_leaves[:src_end] + [fwd.embed_leaf]
        if fwd.pos_leaf is not None:
            inputs.append(fwd.pos_leaf)
        if fwd.ov_state is not None:  # chunked attention skips chunks past the targets
            fwd.ov_state.pos_end = pos_end
        try:
            got = torch.autograd.grad(
                outputs,
                inputs,
                list(grads.values()),
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        finally:  # any other backward through this forward sees every position
            if fwd.ov_state is not None:
                fwd.ov_state.pos_end = None
        kw = {"dtype": self.errors.dtype, "device": self.errors.device}
        G = torch.zeros(pos_end, B, src_end, d_out, **kw)  # grads at the MLP outputs
        for layer in range(src_end):
            if got[layer] is not None:
                G[:, :, layer] = got[layer][:, 0, :pos_end].transpose(0, 1).to(G.dtype)
        out = torch.zeros(B, self.n_cols, dtype=torch.float32, device=G.device)
        # features: one block (source layer s, position p) at a time, target layers
        # s..min(s + w_s, src_end) - 1
        for s, p, start, end, dec_t in self.blocks:
            if s < src_end and p < pos_end:
                if dec_t is None:
                    dec_t = self._decoder_block(s, start, end)
                hi = min(src_end, s + dec_t.shape[0] // d_out)
                g = G[p, :, s:hi].reshape(B, -1)  # [B, (hi - s) * d_out]
                out[:, start:end] = (g @ dec_t[: g.shape[1]]).float()
        # errors
        nf = self.n_features
        err = torch.einsum("tbld,ltd->blt", G, self.errors[:src_end, :pos_end])
        out[:, nf : nf + src_end * T].view(B, src_end, T)[:, :, :pos_end] = err.float()
        # embeddings (+ learned positions)
        emb = out[:, nf + L * T :]
        if got[src_end] is not None:
            emb += (got[src_end][:, 0] * self.embed_vals).sum(-1).float()
        if fwd.pos_leaf is not None and got[src_end + 1] is not None:
            emb += (got[src_end + 1][:, 0] * self.pos_vals).sum(-1).float()
        if self.bar is not None:
            self.bar.update(B)
        return out.cpu()


def _target_rows(rc: _RowComputer, targets: ResolvedTargets, batch_size: int) -> torch.Tensor:
    """Rows ``[k, n_cols]`` of the graph targets, ``batch_size`` per backward pass; batches
    group targets by the layers and positions that reach them (cheapest first)."""
    none = torch.zeros(0, dtype=torch.long)
    k = len(targets.reads)
    order = sorted(range(k), key=lambda i: (targets.src_ends[i], int(targets.positions[i])))
    out = torch.zeros(k, rc.n_cols, dtype=torch.float32)
    for i in range(0, k, batch_size):
        chunk = order[i : i + batch_size]
        out[chunk] = rc.rows(none, targets, chunk)
    return out


def _all_rows(
    rc: _RowComputer, targets: ResolvedTargets, batch_size: int, rows_form: bool, spill: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every active feature gets a row: fill ``A`` in node order, dense ``[N, N]`` or in
    rows form ``[n + k, N]`` (features, then targets).

    Returns ``(adjacency, selected feature indices, backward passes)``."""
    n_logits = len(targets.reads)
    selected = torch.arange(rc.n_features)
    N = rc.n_cols + n_logits
    adjacency = row_buffer(rc.n_features + n_logits if rows_form else N, N, spill)
    target_row0 = rc.n_features if rows_form else rc.n_cols
    adjacency[target_row0:, : rc.n_cols] = _target_rows(rc, targets, batch_size)
    n_batches = -(-n_logits // batch_size)
    for ids in selected.split(batch_size):
        adjacency[ids, : rc.n_cols] = rc.rows(ids, None, ())
        n_batches += 1
    return adjacency, selected, n_batches


def _ranked_rows(
    rc: _RowComputer,
    targets: ResolvedTargets,
    n_keep: int,
    batch_size: int,
    update_interval: int,
    rows_form: bool,
    spill: bool,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Only ``n_keep`` features get rows, the most influential as rows come in (step 5);
    ``A`` dense or in rows form (as :func:`_all_rows`).

    Returns ``(adjacency, selected feature indices, backward passes)``."""
    n_active, n_logits = rc.n_features, len(targets.reads)
    n_full = rc.n_cols + n_logits  # node space before dropping unselected features
    buf = row_buffer(n_logits + n_keep, n_full, spill)
    row_nodes = torch.zeros(n_logits + n_keep, dtype=torch.long)
    logit_nodes = torch.arange(rc.n_cols, n_full)
    buf[:n_logits, : rc.n_cols] = _target_rows(rc, targets, batch_size)
    row_nodes[:n_logits] = logit_nodes
    n_batches, n_rows = -(-n_logits // batch_size), n_logits
    visited = torch.zeros(n_active, dtype=torch.bool)
    while n_rows - n_logits < n_keep:
        infl = influence_from_rows(buf[:n_rows], row_nodes[:n_rows], logit_nodes, targets.weights)
        rank = torch.argsort(infl[:n_active], descending=True, stable=True)
        quota = min(update_interval * batch_size, n_keep - (n_rows - n_logits))
        pending = rank[~visited[rank]][:quota]
        for ids in pending.split(batch_size):
            buf[n_rows : n_rows + ids.numel(), : rc.n_cols] = rc.rows(ids, None, ())
            row_nodes[n_rows : n_rows + ids.numel()] = ids
            visited[ids] = True
            n_rows += ids.numel()
            n_batches += 1
    selected = visited.nonzero()[:, 0]  # sorted: node order
    keep_cols = torch.cat([selected, torch.arange(n_active, n_full)])
    N = keep_cols.numel()
    adjacency = row_buffer(n_keep + n_logits if rows_form else N, N, spill)
    order = torch.argsort(row_nodes[n_logits:]) + n_logits  # feature rows by feature index
    for i in range(0, n_keep, 1024):  # a block of rows at a time: no second full copy
        block = order[i : i + 1024]
        adjacency[i : i + block.numel()] = buf[block][:, keep_cols]
    adjacency[adjacency.shape[0] - n_logits :] = buf[:n_logits][:, keep_cols]
    return adjacency, selected, n_batches


# ---------------------------------------------------------------------- public API
@torch.no_grad()
def attribute(
    model: HookedTransformer,
    clt: Transcoder,
    prompt: Prompt,
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int | None = None,
    update_interval: int = 4,
    targets: Sequence[TargetLike] | None = None,
    head_loadings: bool = False,
    memory_budget: int | str | None = None,
    query_chunk: int | None = None,
    verbose: bool = False,
) -> AttributionGraph:
    """Attribution graph of ``prompt`` over the CLT local replacement model.

    Args:
        model: the ``HookedTransformer`` the CLT was trained on (or a TransformerLens
            ``TransformerBridge``), loaded the same way (unprocessed, as SAELens trains).
        clt: a transcoder (any registered variant, :class:`sae_lens_clt.registry.Transcoder`)
            over every layer of ``model``.
        prompt: a string (needs ``model.tokenizer``) or token ids; BOS is prepended.
        max_n_logits / desired_logit_prob: which output tokens become logit nodes (the most
            probable ones), unless ``targets`` names them.
        max_feature_nodes: if set, only this many features (the most influential ones,
            ranked progressively) become nodes.
        batch_size: target rows per backward pass (default 128, or fewer when that would
            not fit ``memory_budget``).
        update_interval: batches between two re-rankings (with ``max_feature_nodes``).
        targets: what to explain, in this order, instead of the top logits (each named
            once; :mod:`sae_lens_clt.attribution.targets`): token ids or strings of exactly
            one token (``" Austin"``, or ``Token(" Austin", weight=...)``), logit differences
            (``LogitDiff(" Austin", " Sacramento")``), residual directions
            (``Direction(vec, layer=l, position=p, name=...)``, read at
            ``blocks.{l}.hook_resid_post``, or the unembedding input for ``layer=None``),
            feature pre-activations, active or not (``FeatureTarget(layer, pos, feature)``).
            They fill the logit slot of the node table in this order (``target_info``,
            ``target_positions``, ``target_layers`` say what each is). Their weights
            (``logit_probabilities``, what influence, pruning and scores read): ``weight=``
            when given, else a token's probability under the model and ``1 / k`` for the
            other kinds, renormalised to sum 1 when they sum to less than ``1e-6`` (same
            ratios, so the same graph analysis); the model's own probabilities of token
            targets are in ``metadata["target_probabilities"]`` (``None`` for the others).
        head_loadings: also split every cross-position edge kept by the default pruning
            (0.8 / 0.98) by the attention head through which it enters the target's position
            (``graph.edge_heads``, the JSON's links; :mod:`sae_lens_clt.attribution.heads`;
            other thresholds: ``heads.edge_head_loadings(..., node_threshold=...)``); token
            targets only; not saved with the graph.
        memory_budget: bytes (or ``"8GB"``, ``"512MiB"``) the attribution may use besides
            the model's and CLT's weights (:mod:`sae_lens_clt.attribution.budget`): the
            forward runs in query chunks when a one-pass forward would not fit (long
            prompts: memory linear in tokens), the rows per pass follow the budget, rows
            that would not fit spill to a memory-mapped file, and the graph is stored in
            rows form (``[n_features + n_logits, N]``, :mod:`.nodes`). The estimate is
            printed before the backward passes (``metadata["memory"]`` keeps it). Raises
            ``ValueError`` when even one row per pass does not fit.
        query_chunk: run the forward in chunks of this many tokens (set by
            ``memory_budget`` when needed; a ``HookedTransformer`` only).
        verbose: print timings (and the memory estimate).

    Returns:
        An :class:`AttributionGraph` (adjacency rows = targets, columns = sources).
    """
    start = time.perf_counter()
    check_compatible(model, clt)
    settings = _checked_settings(
        max_n_logits, desired_logit_prob, max_feature_nodes, batch_size, update_interval
    )
    tokens = to_tokens(model, prompt)
    L, T = clt.cfg.n_layers, tokens.numel()
    budget = None if memory_budget is None else parse_bytes(memory_budget)
    plan = plan_forward(model, clt, T, budget, query_chunk, chunkable(model))
    if head_loadings and plan.query_chunk is not None:
        raise ValueError(
            "head_loadings runs a one-pass forward (every [heads, T, T] pattern), which this "
            "prompt's memory plan does not fit: drop head_loadings or raise memory_budget"
        )
    entries: list[Any] | None = None
    resolved: ResolvedTargets | None = None
    if targets is not None:  # checked before anything runs
        entries, resolved = resolve_targets_full(
            model, targets, T, L, clt.cfg.d_sae, resid_hook=RESID_HOOK
        )
        if head_loadings and not resolved.only_tokens:
            raise ValueError(
                "head_loadings needs token targets (logits): drop head_loadings or the "
                "LogitDiff / Direction / FeatureTarget targets"
            )
    settings["targets"] = None if entries is None else [target_json(t) for t in entries]
    resid_layers = [] if resolved is None else [
        int(r.split(".")[1]) for r in resolved.reads if r.startswith("resid_post.")
    ]  # fmt: skip
    with no_param_grads(model, clt):
        fwd = frozen_forward(model, clt, tokens, resid_layers, plan.query_chunk)  # step 1
        t_fwd = time.perf_counter()
        rc = _RowComputer(model, clt, fwd, plan.encode_chunk)  # step 2
        if resolved is None:  # step 3: the top logits
            ids, _ = select_logits(
                fwd.last_logits, settings["max_n_logits"], settings["desired_logit_prob"]
            )
            entries, resolved = resolve_targets_full(model, ids.cpu(), T, L, clt.cfg.d_sae)
        finish_targets(entries, resolved, fwd.last_logits, rc.encoder_vector, rc.feature_state)
        n_keep = (
            rc.n_features if max_feature_nodes is None else min(max_feature_nodes, rc.n_features)
        )
        k = len(resolved.reads)
        # rows held: the rows buffer, plus (ranked) the graph's rows packed from it
        n_held = (n_keep + k) * (1 if n_keep == rc.n_features else 2)
        plan = plan_rows(
            plan, model, clt, T, rc.n_features, rc.decoder_floats(), n_held,
            rc.n_cols + k, batch_size,
        )  # fmt: skip
        if budget is not None or verbose:
            print(f"attribute: {T} tokens, {rc.n_features} active features: {plan.describe()}")
        if plan.precompute_decoders:
            rc.keep_decoders()
        rows_form, spill, batch = budget is not None, plan.spill_rows, plan.batch_size
        # long runs (a budget, or asked for) show the rows as they are computed
        rc.bar = tqdm(
            total=n_keep + k, desc="attribution rows", unit="row",
            disable=not (budget is not None or verbose),
        )  # fmt: skip
        settings["batch_size"] = batch
        if n_keep == rc.n_features:  # step 4
            adjacency, selected, n_batches = _all_rows(rc, resolved, batch, rows_form, spill)
        else:  # steps 4-5
            adjacency, selected, n_batches = _ranked_rows(
                rc, resolved, n_keep, batch, update_interval, rows_form, spill
            )
    rc.bar.close()
    del fwd
    timing = {"forward": t_fwd - start, "total": time.perf_counter() - start}
    metadata = _graph_metadata(
        model, clt, prompt, tokens, resolved, settings, rc.n_features, n_batches, timing
    )
    if targets is not None:  # the weights are logit_probabilities; these are the model's
        metadata["target_probabilities"] = resolved.model_probs
    metadata["memory"] = _plan_json(plan)
    graph = AttributionGraph(  # step 6
        adjacency=adjacency,
        active_features=rc.active[selected].long(),
        activation_values=rc.values[selected],
        logit_token_ids=resolved.ids.long(),
        logit_probabilities=resolved.weights.float(),
        input_tokens=tokens,
        n_layers=L,
        metadata=metadata,
        target_positions=resolved.positions.clone(),
        target_layers=resolved.layers.clone(),
        target_info=resolved.info,
    )
    if head_loadings:  # post hoc: split cross-position edges by head (heads.py)
        from sae_lens_clt.attribution.heads import edge_head_loadings

        graph.head_loadings = edge_head_loadings(model, clt, graph, batch_size=batch)
    if verbose:
        print(
            f"attribute: {T} tokens, {rc.n_features} active features "
            f"({selected.numel()} kept), {len(resolved.reads)} targets, {n_batches} backward "
            f"passes; forward {timing['forward']:.3f}s, total {timing['total']:.3f}s"
        )
    return graph


def _checked_settings(
    max_n_logits: int,
    desired_logit_prob: float,
    max_feature_nodes: int | None,
    batch_size: int | None,
    update_interval: int,
) -> dict[str, Any]:
    if (
        (batch_size is not None and batch_size < 1)
        or max_n_logits < 1
        or not (0.0 < desired_logit_prob <= 1.0)
    ):
        raise ValueError(
            f"need batch_size >= 1 (got {batch_size}), max_n_logits >= 1 (got {max_n_logits}) "
            f"and 0 < desired_logit_prob <= 1 (got {desired_logit_prob})"
        )
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 or None, got {max_feature_nodes}")
    return {
        "max_n_logits": max_n_logits,
        "desired_logit_prob": desired_logit_prob,
        "max_feature_nodes": max_feature_nodes,
        "batch_size": batch_size,
        "update_interval": update_interval,
    }


def _plan_json(plan: MemoryPlan) -> dict[str, Any]:
    """What a graph records of how it was computed within memory (JSON)."""
    return {
        "budget_bytes": plan.budget,
        "estimate_bytes": plan.estimate,
        "parts_bytes": plan.parts,
        "query_chunk": plan.query_chunk,
        "batch_size": plan.batch_size,
        "spilled_rows": plan.spill_rows,
    }


def transcoder_summary(clt: Transcoder) -> dict[str, Any]:
    """What a graph records of its transcoder (JSON): architecture, model, shape, hooks."""
    return {
        "architecture": clt.cfg.architecture(),
        "model_name": clt.cfg.metadata.model_name,
        "n_layers": clt.cfg.n_layers,
        "d_sae": clt.cfg.d_sae,
        "activation_fn": clt.cfg.activation_fn,
        "hook_in": clt.cfg.metadata.hook_name,
        "hook_out": clt.cfg.metadata.hook_name_out,
    }


def _graph_metadata(
    model: HookedTransformer,
    clt: Transcoder,
    prompt: Prompt,
    tokens: torch.Tensor,
    targets: ResolvedTargets,
    settings: dict[str, Any],
    n_active: int,
    n_batches: int,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The JSON-serialisable metadata a graph carries (model, transcoder, settings, timing)."""
    tokenizer = getattr(model, "tokenizer", None)

    def tok_str(t: int) -> str:
        return tokenizer.decode([t]) if tokenizer is not None else str(t)

    return {
        "prompt": prompt if isinstance(prompt, str) else None,
        "token_strings": [tok_str(int(t)) for t in tokens],
        # a token target's text; another target's label (what printers of logits show)
        "logit_token_strings": [
            tok_str(i["token"]) if i["kind"] == "token" else target_label(i) for i in targets.info
        ],
        "model_name": str(getattr(model.cfg, "model_name", "")),
        "clt": transcoder_summary(clt),
        "settings": settings,
        "n_active_features": n_active,
        "n_backward_passes": n_batches,
        "timing_s": timing,
    }
