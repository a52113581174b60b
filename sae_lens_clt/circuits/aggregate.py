"""One circuit from the graphs of a prompt family: nodes aligned by role, edges averaged.

Prompts of one family (a template filled with different values) differ in tokens and
length, so their graphs' nodes are aligned by **role**, a name per token position
(:func:`template_roles`: ``"BOS"``, the template's own tokens, ``city-1`` / ``city`` for a
slot's tokens), not by position.

Algorithm (:func:`aggregate_graphs`, ``n`` graphs with roles):

1. **Role order**: the roles of all prompts merged into one order that keeps every
   prompt's order (a topological merge, ties broken by first appearance: prompt, then
   position). Roles that two prompts order differently are refused, as are a role used
   twice in one prompt and prompts whose last positions (where the logits are read) have
   different roles. Positions with role ``None`` are dropped, with their nodes and edges.
2. **Node table**, :class:`~sae_lens_clt.attribution.nodes.GraphData`'s layout over
   ``R`` role positions: features ``(layer, role, feature)`` sorted by (layer, role
   position, feature), every feature active at that role in any prompt; errors
   ``(layer, role)`` layer-major; embeddings per role; logit nodes by index (every graph
   needs the same number, e.g. each traced with ``targets=[its answer]``). A node's
   **share** is the fraction of prompts it occurs in; with ``min_share``, features and
   roles (their errors and embeddings) below it are dropped (logits always stay).
3. **Accumulate**, one graph at a time: its nodes are mapped into the table and its
   adjacency added into a float64 sum and sum of squares ``[N, N]`` (never all graphs at
   once: memory is those two matrices plus one graph).
4. **Statistics**: edge weight = the mean over all ``n`` prompts, an edge absent from a
   prompt (either end missing, or no edge) counting as 0; ``adjacency_std`` = the
   population standard deviation (ddof 0) of the same ``n`` values; a feature's activation
   = its mean over the prompts where it occurs; logit probabilities (the weights influence
   and pruning use) = their mean over prompts.

The result, a :class:`GlobalCircuit`, is an
:class:`~sae_lens_clt.attribution.graph.AttributionGraph` whose positions are roles, so
prune / scores / to_json / plot work on it unchanged; it saves to one safetensors file that
``AttributionGraph.load`` also reads (as the mean graph).
"""

from __future__ import annotations

import heapq
import json
import re
import string
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.graph import AttributionGraph
from sae_lens_clt.attribution.inputs import to_tokens
from sae_lens_clt.attribution.nodes import GraphData

CIRCUIT_FORMAT = "sae_lens_clt.global_circuit"
CIRCUIT_FORMAT_VERSION = 1
BOS_ROLE = "BOS"


# ---------------------------------------------------------------------- the circuit
@dataclass(kw_only=True)
class GlobalCircuit(AttributionGraph):
    """An :class:`AttributionGraph` over roles, aggregated from ``n_prompts`` graphs.

    Positions are roles (``role_names``, also ``metadata["token_strings"]``);
    ``active_features`` rows are ``(layer, role position, feature)``; ``adjacency`` is the
    mean edge weight, ``activation_values`` and ``logit_probabilities`` means (module
    docstring, step 4); ``input_tokens`` holds one representative token per role (from the
    first prompt that has the role).

    Path analyses (``paths.linear_effects``, ``effect_shares``) read it as one graph: with
    absent edges counted as 0 and activations averaged where present they are approximate
    here; interventions (``faithfulness``) need one prompt and are refused.

    Attributes (besides ``GraphData``'s):
        adjacency_std: ``[N, N]`` float32 population std of each edge over the prompts.
        node_share: ``[N]`` float32 fraction of the prompts in which each node occurs.
        n_prompts: number of graphs aggregated.
        role_names: ``[n_pos]`` the role of each position.
    """

    adjacency_std: torch.Tensor
    node_share: torch.Tensor
    n_prompts: int
    role_names: list[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.n_nodes
        if self.adjacency_std.shape != (n, n) or self.node_share.shape != (n,):
            raise ValueError(
                f"adjacency_std must be [{n}, {n}] and node_share [{n}], got "
                f"{tuple(self.adjacency_std.shape)} and {tuple(self.node_share.shape)}"
            )
        if len(self.role_names) != self.n_pos:
            raise ValueError(f"{len(self.role_names)} role names for {self.n_pos} positions")

    def faithfulness(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: interventions need one prompt. Check a prompt's own graph instead."""
        raise ValueError(
            "a GlobalCircuit averages many prompts, so it cannot be intervened on: run "
            "faithfulness on one prompt's graph (attribute_many's graphs)"
        )

    def role_position(self, role: str) -> int:
        """The position (index into ``role_names``) of ``role``."""
        try:
            return self.role_names.index(role)
        except ValueError:
            raise ValueError(f"no role {role!r}; the roles are {self.role_names}") from None

    # ------------------------------------------------------------------ I/O
    # save / load are GraphData's: a plain graph file (``AttributionGraph.load`` reads it as
    # the mean graph) plus ``adjacency_std``, ``node_share`` and, in the header,
    # ``n_prompts`` and ``role_names``
    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = (
        *GraphData.TENSOR_FIELDS,
        "adjacency_std",
        "node_share",
    )

    def header_fields(self) -> dict[str, str]:
        return {
            "circuit_format": CIRCUIT_FORMAT,
            "circuit_version": str(CIRCUIT_FORMAT_VERSION),
            "n_prompts": str(self.n_prompts),
            "role_names": json.dumps(self.role_names),
        }

    @classmethod
    def fields_from_header(cls, header: dict[str, str], path: Path) -> dict[str, Any]:
        if header.get("circuit_format") != CIRCUIT_FORMAT:
            raise ValueError(
                f"{path} is not a GlobalCircuit written by GlobalCircuit.save: a single-prompt "
                "attribution graph (load it with AttributionGraph.load)"
            )
        return {
            "n_prompts": int(header["n_prompts"]),
            "role_names": json.loads(header["role_names"]),
        }

    def __repr__(self) -> str:
        return (
            f"GlobalCircuit(n_prompts={self.n_prompts}, roles={len(self.role_names)}, "
            f"n_layers={self.n_layers}, n_features={self.n_features}, "
            f"n_logits={self.n_logits}, n_nodes={self.n_nodes})"
        )


# ---------------------------------------------------------------------- roles
def template_roles(
    model: HookedTransformer, template: str, values: dict[str, str]
) -> list[str | None]:
    """The role of every token position of ``template.format(**values)`` (BOS included).

    - BOS is ``"BOS"``.
    - A token of the template's own text is named after it: the token's text stripped of
      whitespace (its ``repr`` if nothing is left; in double quotes if it would read as
      ``"BOS"`` or a slot's role), with ``@2``, ``@3``, … for the second, third, … token of
      that name.
      The template's text tokenizes the same in every prompt, so these names are the same
      in every prompt of the template, the last position's role included.
    - The tokens of slot ``{name}``: ``name`` for its last token, ``name-1``, ``name-2``, …
      for the ones before it (a slot used twice: ``name@2``, ``name-1@2``, … the second time).

    The pieces (template text and slot values) are tokenized separately, and only if their
    concatenation is exactly the prompt's tokenization; whitespace just before a slot is
    tried with the slot first (" Dallas" is one token for most tokenizers), then as written.
    Otherwise (a token that straddles a slot boundary) a ValueError shows both tokenizations.
    """
    segments = _template_segments(template, values)
    prompt = "".join(text for _, text in segments)
    tokens = to_tokens(model, prompt).tolist()
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    n_bos = 1 if bos is not None and tokens[0] == bos else 0
    tried = []
    for attach in (True, False):
        pieces = _split_pieces(segments, attach)
        piece_tokens = [
            (slot, model.to_tokens(text, prepend_bos=False)[0].tolist() if text else [])
            for slot, text in pieces
        ]
        flat = [t for _, toks in piece_tokens for t in toks]
        if flat == tokens[n_bos:]:
            break
        tried.append(piece_tokens)
    else:
        dec = model.tokenizer.decode
        raise ValueError(
            f"template {template!r} with {values!r}: the prompt's tokens "
            f"{[dec([t]) for t in tokens[n_bos:]]} are not its pieces' tokens "
            f"{[[dec([t]) for t in toks] for _, toks in tried[-1]]} (a token straddles a "
            "slot boundary): put each slot between whole words, so that no token joins a "
            "slot's text to the template's"
        )
    slot_names = {slot for slot, _ in pieces if slot is not None}
    used: dict[str, int] = defaultdict(int)
    roles: list[str | None] = [BOS_ROLE] * n_bos
    slot_uses: dict[str, int] = defaultdict(int)
    for slot, toks in piece_tokens:
        if slot is not None:
            slot_uses[slot] += 1
            suffix = "" if slot_uses[slot] == 1 else f"@{slot_uses[slot]}"
            roles += [
                (slot if j == len(toks) - 1 else f"{slot}-{len(toks) - 1 - j}") + suffix
                for j in range(len(toks))
            ]
            continue
        for t in toks:
            text = model.tokenizer.decode([t]) if model.tokenizer is not None else str(t)
            name = text.strip() or repr(text)
            if _reserved(name, slot_names):
                name = f'"{name}"'
            used[name] += 1
            roles.append(name if used[name] == 1 else f"{name}@{used[name]}")
    if len(set(roles)) != len(roles):
        raise ValueError(f"template {template!r} gives the same role twice: {roles}")
    assert len(roles) == len(tokens)
    return roles


def _reserved(name: str, slots: set[str]) -> bool:
    """Whether a template-text role name would read as BOS's or a slot's role."""
    return name == BOS_ROLE or any(
        re.fullmatch(re.escape(s) + r"(-\d+)?(@\d+)?", name) for s in slots
    )


def _template_segments(template: str, values: dict[str, str]) -> list[tuple[str | None, str]]:
    """``[(None, literal text) | (slot name, value)]`` of a ``str.format`` template."""
    segments: list[tuple[str | None, str]] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if literal:
            segments.append((None, literal))
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"template {template!r}: slots must be plain named fields like {{city}}, "
                f"got {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}"
            )
        if name not in values:
            raise ValueError(f"template {template!r} needs a value for {{{name}}}")
        segments.append((name, str(values[name])))
    return segments


def _split_pieces(
    segments: list[tuple[str | None, str]], attach: bool
) -> list[tuple[str | None, str]]:
    """The pieces to tokenize; with ``attach``, whitespace ending a literal right before a
    slot moves into the slot."""
    pieces = [list(s) for s in segments]
    if attach:
        for prev, nxt in zip(pieces, pieces[1:], strict=False):
            if prev[0] is None and nxt[0] is not None:
                stripped = prev[1].rstrip()
                nxt[1] = prev[1][len(stripped) :] + nxt[1]
                prev[1] = stripped
    return [(slot, text) for slot, text in pieces if text or slot is not None]


def role_order(roles: Sequence[Sequence[str | None]]) -> list[str]:
    """Step 1: one order of all roles that keeps each prompt's order (ties: first seen)."""
    first: dict[str, tuple[int, int]] = {}
    succ: dict[str, set[str]] = defaultdict(set)
    indegree: dict[str, int] = defaultdict(int)
    for g, prompt_roles in enumerate(roles):
        named = [r for r in prompt_roles if r is not None]
        dup = sorted({r for r in named if named.count(r) > 1})
        if dup:
            raise ValueError(f"prompt {g} uses the roles {dup} at more than one position")
        for p, r in enumerate(named):
            first.setdefault(r, (g, p))
        for a, b in zip(named, named[1:], strict=False):
            if b not in succ[a]:
                succ[a].add(b)
                indegree[b] += 1
    heap = [(first[r], r) for r in first if indegree[r] == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, r = heapq.heappop(heap)
        order.append(r)
        for b in succ[r]:
            indegree[b] -= 1
            if indegree[b] == 0:
                heapq.heappush(heap, (first[b], b))
    if len(order) < len(first):
        left = sorted(set(first) - set(order), key=first.__getitem__)
        raise ValueError(
            f"the roles {left} come in different orders in different prompts; roles must "
            "keep one order (e.g. all from one template)"
        )
    return order


# ---------------------------------------------------------------------- aggregate
GraphSource = GraphData | str | Path
_FEATURE_IDS = 1 << 32  # feature ids below this: (layer, role, feature) -> one int64 key


def _graphs(graphs: Sequence[GraphSource]) -> Iterator[GraphData]:
    """The graphs one at a time (a path is loaded when its turn comes)."""
    for g in graphs:
        yield g if isinstance(g, GraphData) else AttributionGraph.load(g)


@dataclass
class _FirstGraph:
    """What every graph must share with the first."""

    n_layers: int
    n_logits: int
    logit_token_ids: torch.Tensor
    model_name: Any
    clt: Any

    def check(self, g: GraphData, i: int) -> None:
        if not g.only_logit_targets:
            raise ValueError(
                f"graph {i} has non-token targets (logit differences, directions or features): "
                "aggregate_graphs aligns token targets only; trace with targets=[token]"
            )
        if g.n_layers != self.n_layers:
            raise ValueError(f"graph {i} has {g.n_layers} layers, graph 0 has {self.n_layers}")
        if g.n_logits != self.n_logits:
            raise ValueError(
                f"graph {i} has {g.n_logits} logit nodes, graph 0 has {self.n_logits}: logit "
                "nodes are aligned by index, so trace every prompt with the same number of "
                "targets (e.g. attribute(..., targets=[its answer]))"
            )
        for key in ("model_name", "clt"):
            if g.metadata.get(key) != getattr(self, key):
                raise ValueError(
                    f"graph {i} comes from another {key} than graph 0: "
                    f"{g.metadata.get(key)!r} vs {getattr(self, key)!r}"
                )


def aggregate_graphs(
    graphs: Sequence[GraphSource],
    roles: Sequence[Sequence[str | None]],
    *,
    min_share: float = 0.0,
) -> GlobalCircuit:
    """One :class:`GlobalCircuit` from graphs of a prompt family (module docstring).

    Args:
        graphs: attribution graphs of the same model and CLT with the same number of
            logit nodes (e.g. each from ``attribute(..., targets=[its answer])``), or paths
            of graph files (``AttributionGraph.save``), loaded one at a time (twice: once
            for the node table, once to accumulate), so that the graphs of a large prompt
            set never need to be in memory together.
        roles: for each graph, the role of each of its positions (e.g.
            :func:`template_roles`); ``None`` drops a position.
        min_share: drop features and roles that occur in fewer than this fraction of the
            prompts (``0`` keeps everything).
    """
    n = len(graphs)
    if n == 0:
        raise ValueError("aggregate_graphs needs at least one graph")
    if len(roles) != n:
        raise ValueError(f"roles needs one list per graph: {len(roles)} for {n} graphs")
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must be in [0, 1], got {min_share}")
    for i, rs in enumerate(roles):
        if not rs or rs[-1] is None or rs[-1] != roles[0][-1]:
            raise ValueError(
                f"the last position (where the logits are read) has role "
                f"{rs[-1] if rs else None!r} in prompt {i} but {roles[0][-1]!r} in prompt 0: "
                "it needs the same role in every prompt"
            )
    order = role_order(roles)  # step 1
    role_count = torch.zeros(len(order), dtype=torch.long)
    for prompt_roles in roles:
        role_count[[order.index(r) for r in prompt_roles if r is not None]] += 1
    keep_role = role_count >= min_share * n - 1e-9  # step 2
    order = [r for r, k in zip(order, keep_role.tolist(), strict=True) if k]
    index = {r: i for i, r in enumerate(order)}
    R = len(order)
    pos_roles = [  # per graph: position -> role position (-1: dropped)
        torch.tensor([-1 if r is None else index.get(r, -1) for r in rs], dtype=torch.long)
        for rs in roles
    ]

    def feature_keys(g: GraphData, pr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kept [n_features] bool, keys [n_kept])``: (layer, role, feature) as one int."""
        layer, pos, feat = g.active_features.long().unbind(1)
        r = pr[pos]
        kept = r >= 0
        return kept, ((layer * R + r) * _FEATURE_IDS + feat)[kept]

    # pass 1: the feature table (every (layer, role, feature) key, sorted = node order),
    # representative tokens, logit probabilities, what the metadata keeps
    first: _FirstGraph | None = None
    all_keys, all_acts, probs, per_prompt = [], [], [], []
    representative = torch.full((R,), -1, dtype=torch.long)
    for i, g in enumerate(_graphs(graphs)):  # (no zip: its tuple would keep a graph alive)
        pr = pos_roles[i]
        if len(roles[i]) != g.n_pos:
            raise ValueError(f"graph {i} has {g.n_pos} positions but {len(roles[i])} roles")
        if first is None:
            first = _FirstGraph(
                g.n_layers, g.n_logits, g.logit_token_ids.long().clone(),
                g.metadata.get("model_name"), g.metadata.get("clt"),
            )  # fmt: skip
        first.check(g, i)
        kept, keys = feature_keys(g, pr)
        all_keys.append(keys)
        all_acts.append(g.activation_values[kept].double())
        fresh = (pr >= 0) & (representative[pr.clamp(min=0)] < 0)
        representative[pr[fresh]] = g.input_tokens[fresh].long()
        probs.append(g.logit_probabilities.double())
        per_prompt.append(_prompt_metadata(g))
    assert first is not None
    L, K = first.n_layers, first.n_logits
    keys, inverse, counts = torch.unique(
        torch.cat(all_keys), return_inverse=True, return_counts=True
    )
    act_sum = torch.zeros(keys.numel(), dtype=torch.float64)
    act_sum.index_add_(0, inverse, torch.cat(all_acts))
    del all_keys, all_acts, inverse
    keep_feat = counts >= min_share * n - 1e-9
    new_index = torch.cumsum(keep_feat.long(), 0) - 1  # feature key -> node (-1: dropped)
    new_index[~keep_feat] = -1
    n_feat = int(keep_feat.sum())
    err0, emb0 = n_feat, n_feat + L * R
    logit0 = emb0 + R
    N = logit0 + K

    # pass 2 (step 3): accumulate each graph into its aligned rows and columns
    total = torch.zeros(N, N, dtype=torch.float64)
    total_sq = torch.zeros(N, N, dtype=torch.float64)
    node_count = torch.zeros(N, dtype=torch.float64)
    for g, pr in zip(_graphs(graphs), pos_roles, strict=True):
        T = g.n_pos
        where = torch.full((g.n_nodes,), -1, dtype=torch.long)  # graph node -> circuit node
        kept, gkeys = feature_keys(g, pr)
        where[: g.n_features][kept] = new_index[torch.searchsorted(keys, gkeys)]
        present = pr >= 0
        for layer in range(L):
            errors = g.error_offset + layer * T + torch.arange(T)
            where[errors[present]] = err0 + layer * R + pr[present]
        where[g.embedding_offset + torch.arange(T)[present]] = emb0 + pr[present]
        where[g.logit_offset :] = logit0 + torch.arange(K)
        sel = (where >= 0).nonzero()[:, 0]
        idx = where[sel]
        block = g.dense_adjacency()[sel][:, sel].double()  # [n_sel, n_sel]
        total[idx[:, None], idx[None, :]] += block
        total_sq[idx[:, None], idx[None, :]] += block * block
        node_count[idx] += 1
        del g, block
    mean = total.div_(n)  # step 4, in place: no third [N, N] float64
    std = total_sq.div_(n).addcmul_(mean, mean, value=-1.0).clamp_(min=0.0).sqrt_()

    feat_keys = keys[keep_feat]
    layer_role, feature = feat_keys // _FEATURE_IDS, feat_keys % _FEATURE_IDS
    return GlobalCircuit(
        adjacency=mean.float(),
        active_features=torch.stack([layer_role // R, layer_role % R, feature], dim=1),
        activation_values=(act_sum[keep_feat] / counts[keep_feat]).float(),
        logit_token_ids=first.logit_token_ids,
        logit_probabilities=torch.stack(probs).mean(0).float(),
        input_tokens=representative,
        n_layers=L,
        metadata=_circuit_metadata(per_prompt, first, order, min_share),
        adjacency_std=std.float(),
        node_share=(node_count / n).float(),
        n_prompts=n,
        role_names=order,
    )


def _prompt_metadata(g: GraphData) -> dict[str, Any]:
    """What the circuit's metadata keeps of one prompt's graph."""
    return {
        "prompt": g.metadata.get("prompt") or "".join(g.metadata.get("token_strings", [])[1:]),
        "logit_token_strings": g.metadata.get("logit_token_strings")
        or [str(int(t)) for t in g.logit_token_ids],
        "logit_token_ids": g.logit_token_ids.tolist(),
        "logit_probabilities": g.logit_probabilities.tolist(),
    }


def _summary(strings: list[str]) -> str:
    """One label for a logit node across prompts: its token, or the first few."""
    unique = list(dict.fromkeys(strings))
    if len(unique) == 1:
        return unique[0]
    shown = "|".join(unique[:3])
    return shown + (f"|…(+{len(unique) - 3})" if len(unique) > 3 else "")


def _circuit_metadata(
    per_prompt: list[dict[str, Any]], first: _FirstGraph, order: list[str], min_share: float
) -> dict[str, Any]:
    logit_strs = [p["logit_token_strings"] for p in per_prompt]
    return {
        "prompt": f"{len(per_prompt)} prompts aligned by role, e.g. {per_prompt[0]['prompt']!r}",
        "token_strings": list(order),
        "logit_token_strings": [_summary(list(col)) for col in zip(*logit_strs, strict=True)],
        "model_name": first.model_name,
        "clt": first.clt,
        "aggregate": {
            "n_prompts": len(per_prompt),
            "min_share": min_share,
            "edge_mean": "over all prompts; an edge absent from a prompt counts as 0",
            "edge_std": "population (ddof 0) over the same values",
        },
        "prompts": [p["prompt"] for p in per_prompt],
        "prompt_logit_token_strings": logit_strs,
        "prompt_logit_token_ids": [p["logit_token_ids"] for p in per_prompt],
        "prompt_logit_probabilities": [p["logit_probabilities"] for p in per_prompt],
    }
