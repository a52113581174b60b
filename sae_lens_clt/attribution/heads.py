"""Head loadings: each cross-position edge of an attribution graph split by the attention
head that carries it into the target's position (issue 14, part 2; docs/design.md §3).

The math. Under the graph's freeze (attention patterns and norm scales detached, MLP
outputs replaced by leaves) the residual stream is a linear function of the sources. With
causal attention a path from a source at position ``s`` to a target at position ``t > s``
only moves forward in position, one attention hop at a time, so it **enters** ``t`` exactly
once: through some head ``(l, h)`` at query ``t`` from a key ``u < t``; afterwards it stays
at ``t`` (MLPs are frozen, the diagonal term ``P[h, t, t] v_t`` keeps it there). Split each
head's output at ``t`` as ``z[l, t, h] = z_off + z_diag`` with
``z_off = Σ_{u<t} P[h, t, u] v[l, u, h]`` and ``z_diag = P[h, t, t] v[l, t, h]`` (patterns
frozen). Then

    part(l, h) = g[l, t, h] · J_off[l, t, h] · source,

``g[l, t, h] = ∂target / ∂z[l, t, h]`` (every path from there to the target stays at
``t``: causal) and ``J_off`` the Jacobian of ``z_off[l, t, h]`` w.r.t. the source's leaves
(values at earlier positions, reached by any path, other heads included). The parts sum to
the edge exactly, and removing ``z_off[l, t, h]`` from the frozen model (that head's
off-diagonal output at query ``t`` only) changes the edge by exactly ``-part(l, h)``.

Algorithm (``K`` distinct targets, ``S`` distinct sources among the edges asked for):

1. One frozen forward (:func:`~sae_lens_clt.attribution.attribute.frozen_forward`) with
   extra hooks: ``hook_v`` is kept and ``hook_z`` is re-expressed as ``z_off + z_diag``
   from ``hook_v`` and the detached pattern (same value; GQA values repeated per head).
2. Targets: one vmapped backward per batch gives ``g [K, L, H, d_head]`` at each target's
   position (feature targets: encoder vector at the CLT input; logits: demeaned
   unembedding at the last position, as in ``attribute``).
3. Sources: the Jacobian-vector products ``J_off · source`` for every layer, position and
   head, by the double-backward trick on the retained graph (one backward builds the
   vector-Jacobian product as a function of a dummy cotangent, a vmapped second backward
   gives ``[S, L, T, H, d_head]``): ``K + S`` passes in all, not ``K · L · H``.
4. ``parts[e, l, h] = g[k_e, l, h] · dz_off[s_e, l, t_e, h]``, one chunk of
   ``batch_size`` sources at a time (memory: ``batch_size · L · T · d_model`` floats for
   the tangents and the target gradients, plus the retained graph of the forward and of
   its vector-Jacobian product).

Only models with causal attention whose blocks expose ``attn.hook_v`` / ``hook_z`` /
``hook_pattern`` (TransformerLens' ``HookedTransformer``, standard, rotary or GQA, with or
without ``use_attn_result``) are supported.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.export import node_id, node_index
from sae_lens_clt.attribution.forward import activations_and_errors, frozen_forward
from sae_lens_clt.attribution.inputs import check_compatible
from sae_lens_clt.attribution.nodes import GraphData
from sae_lens_clt.attribution.prune import prune_graph
from sae_lens_clt.registry import Transcoder

Node = int | str | tuple[int, int, int]


def offdiagonal_mask(n_pos: int, device: Any = None) -> torch.Tensor:
    """``[T, T]`` float mask of the key positions whose values count as *entering* a query
    position: ``u < t`` (strictly below the diagonal)."""
    return torch.ones(n_pos, n_pos, device=device).tril(-1)


def _index(graph: GraphData, node: Node) -> int:
    if isinstance(node, int) and not isinstance(node, bool):
        if not 0 <= node < graph.n_nodes:
            raise ValueError(f"node index {node} is outside the graph's {graph.n_nodes} nodes")
        return node
    return node_index(graph, node)


@dataclass
class HeadLoadings:
    """Per-head parts of cross-position edges (rows of ``edges`` are ``(target, source)``
    node indices of the graph).

    Attributes:
        edges: ``[E, 2]`` int64 ``(target, source)``.
        parts: ``[E, n_layers, n_heads]`` float32; ``parts[e].sum() == weights[e]`` up to
            float error.
        weights: ``[E]`` float32 the graph's ``A[target, source]`` of each edge.
        node_ids: graph-JSON ``node_id`` of every node of the graph (for :meth:`to_json`).
    """

    edges: torch.Tensor
    parts: torch.Tensor
    weights: torch.Tensor
    node_ids: list[str] = field(default_factory=list, repr=False)
    _lookup: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)
    _graph: GraphData | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {(int(t), int(s)): e for e, (t, s) in enumerate(self.edges.tolist())}

    @property
    def n_layers(self) -> int:
        return int(self.parts.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.parts.shape[2])

    def edge_heads(self, target: Node, source: Node) -> torch.Tensor:
        """``[n_layers, n_heads]`` parts of edge ``target <- source`` (node indices,
        graph-JSON node ids or a feature's ``(layer, pos, feature)``)."""
        t, s = target, source
        if self._graph is not None:
            t, s = _index(self._graph, target), _index(self._graph, source)
        key = (int(t), int(s))
        if key not in self._lookup:
            raise KeyError(
                f"edge {target!r} <- {source!r} has no head loadings (only edges whose source "
                "sits at an earlier position than the target, among those computed)"
            )
        return self.parts[self._lookup[key]]

    def top_heads(self, e: int, top_k: int = 5, min_share: float = 0.0) -> list[list[Any]]:
        """``[[layer, head, part], ...]`` of edge ``e``, largest ``|part|`` first, at most
        ``top_k``, each at least ``min_share`` of the edge's total ``Σ |part|``."""
        flat = self.parts[e].flatten()
        total = float(flat.abs().sum())
        order = torch.argsort(flat.abs(), descending=True, stable=True)[:top_k]
        out = []
        for i in order.tolist():
            part = float(flat[i])
            if part == 0.0 or abs(part) < min_share * total:
                continue
            out.append([i // self.n_heads, i % self.n_heads, part])
        return out

    def link_heads(
        self, top_k: int = 5, min_share: float = 0.0
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """What a graph-JSON link gets, keyed by ``(source node_id, target node_id)``:
        ``{"heads": [[layer, head, part], ...], "heads_rest": weight - Σ listed parts}``."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for e, (t, s) in enumerate(self.edges.tolist()):
            heads = self.top_heads(e, top_k, min_share)
            rest = float(self.weights[e]) - sum(h[2] for h in heads)
            out[(self.node_ids[s], self.node_ids[t])] = {"heads": heads, "heads_rest": rest}
        return out

    def to_json(self, top_k: int = 5, min_share: float = 0.0) -> dict[str, Any]:
        """JSON-ready dict: ``{"n_layers", "n_heads", "top_k", "links": [{"source",
        "target", "weight", "heads": [[layer, head, part], ...], "heads_rest"}, ...]}``
        (``heads_rest``: what the heads not listed carry)."""
        links = [
            {"source": src, "target": tgt, "weight": float(self.weights[e]), **value}
            for e, ((src, tgt), value) in enumerate(self.link_heads(top_k, min_share).items())
        ]
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "top_k": top_k,
            "links": links,
        }


def default_edges(graph: GraphData, **prune_kwargs: Any) -> torch.Tensor:
    """``[E, 2]`` ``(target, source)``: the pruned graph's kept non-zero edges with a feature
    or logit target, a feature / error / embedding source and source position < target
    position (``prune_kwargs`` go to :func:`~sae_lens_clt.attribution.prune.prune_graph`)."""
    pruned = prune_graph(graph, **prune_kwargs)
    targets, sources = pruned.edges()
    nonzero = graph.edge_values(targets, sources) != 0
    targets, sources = targets[nonzero], sources[nonzero]
    keep = [
        i
        for i, (t, s) in enumerate(zip(targets.tolist(), sources.tolist(), strict=True))
        if _crosses(graph, t, s)
    ]
    return torch.stack([targets, sources], 1)[keep].long().reshape(-1, 2)


def _crosses(graph: GraphData, target: int, source: int) -> bool:
    if graph.node_kind(target) not in ("feature", "logit") or graph.node_kind(source) == "logit":
        return False
    return graph.node_layer_pos(source)[1] < graph.node_layer_pos(target)[1]


@dataclass
class _Forward:
    fwd: Any  # FrozenForward
    z_off: list[torch.Tensor]  # L x [1, T, H, d_head]
    z_total: list[torch.Tensor]  # L x [1, T, H, d_head]


def _frozen_forward_with_heads(
    model: HookedTransformer, clt: Transcoder, tokens: torch.Tensor
) -> _Forward:
    """Step 1: the frozen forward with ``hook_z`` re-expressed as ``z_off + z_diag``."""
    L = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_{k}" for layer in range(L) for k in ("v", "z", "pattern")]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ValueError(
            f"head loadings need the attention hooks {missing[:3]}...: a TransformerLens "
            "HookedTransformer with standard attention blocks"
        )
    if getattr(model.cfg, "attention_dir", "causal") != "causal":
        raise ValueError("head loadings need causal attention (a path enters a position once)")
    store: dict[str, torch.Tensor] = {}
    z_off: list[torch.Tensor | None] = [None] * L
    z_total: list[torch.Tensor | None] = [None] * L
    H = model.cfg.n_heads

    def keep(act: torch.Tensor, hook: Any, key: str) -> torch.Tensor:
        store[key] = act
        return act

    def split_z(z: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        v = store[f"v{layer}"]  # [1, T, H_kv, d_head]
        if v.shape[2] != H:  # grouped-query attention: each value head serves H / H_kv heads
            v = torch.repeat_interleave(v, H // v.shape[2], dim=2)
        pattern = store[f"p{layer}"].detach().to(v.dtype)  # [1, H, T, T]
        T = pattern.shape[-1]
        off = pattern * offdiagonal_mask(T, pattern.device).to(v.dtype)
        diag = pattern.diagonal(dim1=-2, dim2=-1)  # [1, H, T]
        zo = torch.einsum("bhqk,bkhd->bqhd", off, v)
        zd = diag.transpose(1, 2)[..., None] * v
        total = zo + zd
        total = total + (z - total).detach()  # the model's own value, bit for bit
        z_off[layer], z_total[layer] = zo, total
        return total

    hooks: list[tuple[str, Any]] = []
    for layer in range(L):
        a = f"blocks.{layer}.attn."
        hooks.append((a + "hook_v", functools.partial(keep, key=f"v{layer}")))
        hooks.append((a + "hook_pattern", functools.partial(keep, key=f"p{layer}")))
        hooks.append((a + "hook_z", functools.partial(split_z, layer=layer)))
    with model.hooks(fwd_hooks=hooks):
        fwd = frozen_forward(model, clt, tokens)
    if any(z is None for z in z_off):
        raise RuntimeError("an attention layer's hook_z was not reached in the forward pass")
    return _Forward(fwd, z_off, z_total)  # type: ignore[arg-type]


def _source_vectors(
    clt: Transcoder, graph: GraphData, fwd: Any, errors: torch.Tensor, sources: list[int]
) -> list[torch.Tensor]:
    """Per leaf (MLP outputs of every layer, the token embedding, the learned positions if
    any), the vectors ``[S, 1, T, d]`` the sources write there."""
    L = clt.cfg.n_layers
    leaves = [*fwd.mlp_out_leaves, fwd.embed_leaf]
    if fwd.pos_leaf is not None:
        leaves.append(fwd.pos_leaf)
    S = len(sources)
    out = [torch.zeros(S, *leaf.shape, dtype=leaf.dtype, device=leaf.device) for leaf in leaves]
    for k, src in enumerate(sources):
        kind = graph.node_kind(src)
        if kind == "feature":
            s, p, f = (int(v) for v in graph.active_features[src])
            feat = torch.tensor([f], device=fwd.y.device)
            rows = clt.decoder_rows(s, feat)[0] * graph.activation_values[src].to(fwd.y.device)
            for j in range(rows.shape[0]):
                if s + j < L:
                    out[s + j][k, 0, p] = rows[j].to(out[s + j].dtype)
        elif kind == "error":
            s, p = graph.node_layer_pos(src)
            out[s][k, 0, p] = errors[p, s].to(out[s].dtype)
        elif kind == "embedding":
            p = src - graph.embedding_offset
            out[L][k, 0, p] = fwd.embed_leaf[0, p].detach()
            if fwd.pos_leaf is not None:
                out[L + 1][k, 0, p] = fwd.pos_leaf[0, p].detach()
        else:
            raise ValueError(f"node {src} is a logit: it is never a source")
    return out


def _target_grads(
    model: HookedTransformer,
    clt: Transcoder,
    graph: GraphData,
    hf: _Forward,
    targets: list[int],
    batch_size: int,
) -> torch.Tensor:
    """Step 2: ``g [K, L, H, d_head]``: the target's gradient at each head's output at the
    target's own position."""
    fwd, T = hf.fwd, hf.fwd.tokens.numel()
    W_U = model.W_U.detach()
    demeaned_W_U = W_U - W_U.mean(dim=1, keepdim=True)
    chunks = []
    for start in range(0, len(targets), batch_size):
        batch = targets[start : start + batch_size]
        B = len(batch)
        outputs, grads = [], []
        by_output: dict[int, torch.Tensor] = {}
        positions = []
        for k, t in enumerate(batch):
            if graph.node_kind(t) == "feature":
                layer, pos, f = (int(v) for v in graph.active_features[t])
                out = fwd.clt_inputs[layer]
                vec = clt.encoder_vectors(
                    torch.tensor([layer], device=out.device), torch.tensor([f], device=out.device)
                )[0]
            elif graph.node_kind(t) == "logit":
                out, pos = fwd.unembed_input, T - 1
                tok = int(graph.logit_token_ids[t - graph.logit_offset])
                vec = demeaned_W_U[:, tok]
            else:
                raise ValueError(f"node {t} is a {graph.node_kind(t)} node: it is never a target")
            key = id(out)
            if key not in by_output:
                by_output[key] = torch.zeros(B, *out.shape, dtype=out.dtype, device=out.device)
                outputs.append(out)
                grads.append(by_output[key])
            by_output[key][k, 0, pos] = vec.to(out.dtype)
            positions.append(pos)
        got = torch.autograd.grad(
            outputs, hf.z_total, grads, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        per_layer = []
        for layer, g in enumerate(got):
            z = hf.z_total[layer]
            if g is None:
                per_layer.append(torch.zeros(B, *z.shape[2:], dtype=z.dtype, device=z.device))
            else:
                idx = torch.arange(B, device=g.device)
                pos_t = torch.tensor(positions, device=g.device)
                per_layer.append(g[idx, 0, pos_t])  # [B, H, d_head]
        chunks.append(torch.stack(per_layer, 1))
    return torch.cat(chunks)


class _SourceTangents:
    """Step 3: ``dz_off`` for source vectors by double backward: the vector-Jacobian
    product of ``z_off`` is built once as a function of dummy cotangents; its gradient
    w.r.t. them in the direction of a source's vectors is ``J_off · source``."""

    def __init__(self, hf: _Forward) -> None:
        fwd = hf.fwd
        self.leaves = [*fwd.mlp_out_leaves, fwd.embed_leaf]
        if fwd.pos_leaf is not None:
            self.leaves.append(fwd.pos_leaf)
        self.z_off = hf.z_off
        with torch.enable_grad():
            self.dummies = [torch.zeros_like(z, requires_grad=True) for z in hf.z_off]
            self.vjps = torch.autograd.grad(
                hf.z_off,
                self.leaves,
                self.dummies,
                retain_graph=True,
                create_graph=True,
                allow_unused=True,
            )
        self.used = [i for i, v in enumerate(self.vjps) if v is not None and v.requires_grad]

    def __call__(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """``[S, L, T, H, d_head]`` for ``vectors`` (per leaf ``[S, 1, T, d]``)."""
        S = vectors[0].shape[0]
        got: Sequence[torch.Tensor | None] = [None] * len(self.z_off)
        if self.used:
            got = torch.autograd.grad(
                [self.vjps[i] for i in self.used],
                self.dummies,
                [vectors[i] for i in self.used],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        return torch.stack(
            [
                torch.zeros(S, *z.shape[1:], dtype=z.dtype, device=z.device)
                if g is None
                else g[:, 0]
                for g, z in zip(got, self.z_off, strict=True)
            ],
            1,
        )


def edge_head_loadings(
    model: HookedTransformer,
    clt: Transcoder,
    graph: GraphData,
    edges: Sequence[tuple[Node, Node]] | torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> HeadLoadings:
    """Split edges of ``graph`` by the attention head that carries them into the target's
    position (module docstring). Post hoc: the frozen forward is recomputed from
    ``graph.input_tokens`` with the same ``model`` and ``clt`` the graph was built with.

    Args:
        edges: ``(target, source)`` pairs (node indices, graph-JSON node ids or a feature's
            ``(layer, pos, feature)``), each with source position < target position, a
            feature or logit target and a feature / error / embedding source; by default
            the pruned graph's kept edges of that kind (:func:`default_edges`, with
            ``node_threshold`` / ``edge_threshold``).
        batch_size: targets (and sources) per vmapped backward pass.

    Returns:
        :class:`HeadLoadings`; ``parts[e].sum()`` equals ``graph.adjacency[target, source]``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not graph.only_logit_targets:
        raise ValueError(
            "head loadings need token targets (logits): this graph has logit differences, "
            "directions or feature targets — trace it with token targets"
        )
    check_compatible(model, clt, "head loadings")
    if edges is None:
        pairs = default_edges(
            graph, node_threshold=node_threshold, edge_threshold=edge_threshold
        ).tolist()
    elif isinstance(edges, torch.Tensor):
        pairs = edges.long().reshape(-1, 2).tolist()
    else:
        pairs = [[_index(graph, t), _index(graph, s)] for t, s in edges]
    for t, s in pairs:
        if not _crosses(graph, t, s):
            raise ValueError(
                f"edge {t} <- {s} ({graph.node_kind(t)} <- {graph.node_kind(s)}, positions "
                f"{graph.node_layer_pos(t)[1]} <- {graph.node_layer_pos(s)[1]}) is not split by "
                "heads: needs a feature / logit target at a later position than its source"
            )
    L, H = model.cfg.n_layers, model.cfg.n_heads
    edge_tensor = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    weights = graph.edge_values(edge_tensor[:, 0], edge_tensor[:, 1]).float()
    ids = [node_id(graph, i) for i in range(graph.n_nodes)]
    if not pairs:
        return HeadLoadings(edge_tensor, torch.zeros(0, L, H), weights, ids, _graph=graph)
    targets = sorted({t for t, _ in pairs})
    sources = sorted({s for _, s in pairs})
    params = [p for m in (model, clt) for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():  # (``attribute`` runs under no_grad)
            hf = _frozen_forward_with_heads(model, clt, graph.input_tokens)
            tangents = _SourceTangents(hf)
        g = _target_grads(model, clt, graph, hf, targets, batch_size)  # [K, L, H, dh]
        errors = activations_and_errors(clt, hf.fwd).errors
        t_row = {t: i for i, t in enumerate(targets)}
        src_of = torch.tensor([s for _, s in pairs])
        k_of = torch.tensor([t_row[t] for t, _ in pairs])
        pos_of = torch.tensor([graph.node_layer_pos(t)[1] for t, _ in pairs])
        parts = torch.zeros(len(pairs), L, H)
        for start in range(0, len(sources), batch_size):  # step 4, one chunk of sources
            chunk = sources[start : start + batch_size]
            dz = tangents(_source_vectors(clt, graph, hf.fwd, errors, chunk))  # [b,L,T,H,dh]
            row = {src: i for i, src in enumerate(chunk)}
            sel = torch.isin(src_of, torch.tensor(chunk)).nonzero()[:, 0]
            b = torch.tensor([row[int(src)] for src in src_of[sel]], device=dz.device)
            with torch.no_grad():
                dzs = dz[b, :, pos_of[sel].to(dz.device)].float()  # [e, L, H, dh]
                gk = g[k_of[sel].to(g.device)].float()  # [e, L, H, dh]
                parts[sel] = (gk * dzs).sum(-1).cpu()
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return HeadLoadings(edge_tensor, parts, weights, ids, _graph=graph)
