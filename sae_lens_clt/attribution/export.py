"""Graph JSON for Neuronpedia's circuit viewer and circuit-tracer's local server (docs/design.md §4).

Algorithm:

1. Prune the graph (``prune.py``); each kept node gets its circuit-tracer ``Node`` fields
   (every target is a ``logit`` node at its own position: a token's id, or for a custom
   target its virtual id ``d_vocab + k``, with a ``clerp`` naming it),
   ``influence`` being its cumulative-influence rank score as circuit-tracer writes it; a
   graph aggregated over prompts (a ``node_share``) adds ``prompt_share`` to each node and
   "(in N% of prompts)" to each feature's ``clerp``.
2. Links are the kept edges ``{source, target, weight}`` with ``weight = A[target, source]``
   (with head loadings, also ``heads: [[layer, head, part], ...]`` and ``heads_rest``);
   nodes without links are dropped, embeddings and logits always stay.
3. Validate against :data:`GRAPH_JSON_SCHEMA` (with ``jsonschema`` when installed, else a
   small checker) plus the checks a schema cannot express (unique ids, links to known
   nodes), then write the file and, next to it, circuit-tracer's ``graph-metadata.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_clt.attribution.prune import PruneResult, prune_graph
from sae_lens_clt.formats.atomic import atomic_write_json

if TYPE_CHECKING:
    from sae_lens_clt.attribution.nodes import GraphData

FEATURE_TYPES = ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")

_NUMBER_OR_NULL = {"type": ["number", "null"]}
GRAPH_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "attribution graph (circuit-tracer / Neuronpedia)",
    "type": "object",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["slug", "scan", "transcoder_list", "prompt_tokens", "prompt"],
            "properties": {
                "slug": {"type": "string"},
                "scan": {"type": "string"},
                "transcoder_list": {"type": "array", "items": {"type": "string"}},
                "prompt_tokens": {"type": "array", "items": {"type": "string"}},
                "prompt": {"type": "string"},
                "node_threshold": _NUMBER_OR_NULL,
                "schema_version": {"type": ["integer", "null"], "enum": [1, None]},
            },
        },
        "qParams": {
            "type": "object",
            "required": ["pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"],
            "properties": {
                "pinnedIds": {"type": "array", "items": {"type": "string"}},
                "supernodes": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "string"}},
                },
                "linkType": {"type": "string"},
                "clickedId": {"type": "string"},
                "sg_pos": {"type": "string"},
            },
        },
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "node_id",
                    "feature",
                    "layer",
                    "ctx_idx",
                    "feature_type",
                    "jsNodeId",
                    "clerp",
                    "influence",
                    "activation",
                    "token_prob",
                    "is_target_logit",
                ],  # fmt: skip
                "properties": {
                    "node_id": {"type": "string"},
                    "feature": {"type": "integer"},
                    "layer": {"type": "string"},
                    "ctx_idx": {"type": "integer", "minimum": 0},
                    "feature_type": {"type": "string", "enum": list(FEATURE_TYPES)},
                    "jsNodeId": {"type": "string"},
                    "clerp": {"type": "string"},
                    "influence": _NUMBER_OR_NULL,
                    "activation": _NUMBER_OR_NULL,
                    "token_prob": {"type": "number"},
                    "is_target_logit": {"type": "boolean"},
                    "run_idx": {"type": "integer"},
                    "reverse_ctx_idx": {"type": "integer"},
                },
            },
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "target", "weight"],
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "weight": {"type": "number"},
                },
            },
        },
    },
}


def cantor_pairing(x: int, y: int) -> int:
    """Unique integer for a pair of non-negative integers (circuit-tracer's feature id)."""
    return (x + y) * (x + y + 1) // 2 + y


def node_id(graph: GraphData, index: int) -> str:
    """The graph-JSON ``node_id`` of node ``index`` (what :func:`graph_json` writes)."""
    kind = graph.node_kind(index)
    if kind == "feature":
        layer, pos, feat = (int(v) for v in graph.active_features[index])
        return f"{layer}_{feat}_{pos}"
    if kind == "error":
        layer, pos = graph.node_layer_pos(index)
        return f"{layer}_-1_{pos}"
    if kind == "embedding":
        pos = index - graph.embedding_offset
        return f"E_{int(graph.input_tokens[pos])}_{pos}"
    _, pos = graph.node_layer_pos(index)
    return f"{graph.n_layers + 1}_{int(graph.logit_token_ids[index - graph.logit_offset])}_{pos}"


def node_index(graph: GraphData, node: int | str | tuple[int, int, int]) -> int:
    """The node-table index of ``node``: an index, a graph-JSON ``node_id`` (``"0_253_8"``
    feature, ``"0_-1_8"`` error, ``"E_791_8"`` embedding, ``"5_4001_8"`` logit or target) or a
    feature's ``(layer, pos, feature)``."""
    if isinstance(node, int):
        if not 0 <= node < graph.n_nodes:
            raise ValueError(f"node index {node} is outside the graph's {graph.n_nodes} nodes")
        return node
    if isinstance(node, str):
        parts = node.split("_")
        if len(parts) != 3:
            raise ValueError(f"{node!r} is not a graph-JSON node id like '0_253_8'")
        first, second, pos = parts[0], int(parts[1]), int(parts[2])
        if not 0 <= pos < graph.n_pos:
            raise ValueError(f"{node!r}: position {pos} is outside the prompt's {graph.n_pos}")
        if first == "E":
            if int(graph.input_tokens[pos]) != second:
                raise ValueError(f"{node!r}: the token at position {pos} is not {second}")
            return graph.embedding_offset + pos
        if int(first) == graph.n_layers + 1:
            hits = ((graph.logit_token_ids == second) & (graph.target_positions == pos)).nonzero()[
                :, 0
            ]
            if not len(hits):
                raise ValueError(f"{node!r}: token {second} is not among the graph's logits")
            return graph.logit_offset + int(hits[0])
        if not 0 <= int(first) < graph.n_layers:
            raise ValueError(f"{node!r}: layer {first} is outside the graph's {graph.n_layers}")
        if second == -1:
            return graph.error_index(int(first), pos)
        node = (int(first), pos, second)
    wanted = torch.tensor(node, dtype=graph.active_features.dtype)
    hits = (graph.active_features == wanted).all(dim=1).nonzero()[:, 0]
    if not len(hits):
        layer, pos, feat = node
        raise ValueError(f"feature {feat} of layer {layer} is not active at position {pos}")
    return int(hits[0])


def _token_text(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _node(**fields: Any) -> dict[str, Any]:
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0}
    base.update({"clerp": "", "influence": None, "activation": None})
    base.update(fields)
    return base


def graph_json(
    graph: GraphData,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    slug: str | None = None,
    scan: str | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    pruned: PruneResult | None = None,
    supernodes: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The graph JSON as a dict (steps 1-2). ``labels`` maps ``(layer, feature)`` to a
    feature's description (the ``clerp``). ``supernodes``: ``[name, node_id, ...]`` lists
    (e.g. from :func:`sae_lens_clt.circuits.supernode_json`) for ``qParams.supernodes``,
    Neuronpedia's grouping; members not in the written graph are left out, and the members
    are pinned."""
    if pruned is None:
        pruned = prune_graph(graph, node_threshold, edge_threshold)
    labels = labels or {}
    L = graph.n_layers
    tokens = [int(t) for t in graph.input_tokens]
    tok_strs = graph.metadata.get("token_strings") or [str(t) for t in tokens]
    logit_strs = graph.metadata.get("logit_token_strings") or [
        str(int(t)) for t in graph.logit_token_ids
    ]
    influence = pruned.cumulative_scores

    nodes: dict[int, dict[str, Any]] = {}
    for i in pruned.node_mask.nonzero()[:, 0].tolist():
        kind = graph.node_kind(i)
        infl = _num(influence[i])
        if kind == "feature":
            layer, pos, feat = (int(v) for v in graph.active_features[i])
            nodes[i] = _node(
                node_id=node_id(graph, i), feature=cantor_pairing(layer, feat),
                layer=str(layer), ctx_idx=pos, feature_type=FEATURE_TYPES[0],
                jsNodeId=f"{layer}_{feat}-0", clerp=labels.get((layer, feat), ""),
                influence=infl, activation=_num(graph.activation_values[i]),
            )  # fmt: skip
        elif kind == "error":
            layer, pos = graph.node_layer_pos(i)
            nodes[i] = _node(
                node_id=node_id(graph, i), feature=-1, layer=str(layer), ctx_idx=pos,
                feature_type=FEATURE_TYPES[1], jsNodeId=f"{layer}_-1_{pos}-0", influence=infl,
            )  # fmt: skip
        elif kind == "embedding":
            pos = i - graph.embedding_offset
            nodes[i] = _node(
                node_id=node_id(graph, i), feature=pos, layer="E", ctx_idx=pos,
                feature_type=FEATURE_TYPES[2], jsNodeId=f"E_{tokens[pos]}-{pos}",
                influence=infl,
            )  # fmt: skip
        else:  # a target: a token's logit, or a custom target (a virtual id >= d_vocab)
            k = i - graph.logit_offset
            tok, prob = int(graph.logit_token_ids[k]), float(graph.logit_probabilities[k])
            _, pos = graph.node_layer_pos(i)
            if graph.target_kind(k) == "token":
                clerp = f'Output "{_token_text(logit_strs[k])}" (p={prob:.3f})'
            else:
                clerp = f"{_token_text(graph.target_label(k))} (w={prob:.3f})"
            nodes[i] = _node(
                node_id=node_id(graph, i), feature=tok, layer=str(L + 1),
                ctx_idx=pos, feature_type=FEATURE_TYPES[3], jsNodeId=f"L_{tok}-{pos}",
                clerp=clerp, token_prob=prob, is_target_logit=k == 0, influence=infl,
                target_kind=graph.target_kind(k),
            )  # fmt: skip

    share = getattr(graph, "node_share", None)  # [N] on an aggregate over prompts
    if share is not None:
        for i, node in nodes.items():
            node["prompt_share"] = float(share[i])
            if node["feature_type"] == FEATURE_TYPES[0]:
                node["clerp"] = (node["clerp"] + " " if node["clerp"] else "") + (
                    f"(in {float(share[i]):.0%} of prompts)"
                )

    targets, sources = pruned.edges()
    weights = graph.edge_values(targets, sources).tolist()
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights, strict=True)
        if s in nodes and t in nodes
    ]
    if getattr(graph, "head_loadings", None) is not None:  # [[layer, head, part], ...]
        by_link = graph.head_loadings.link_heads(top_k=5)
        for link in links:
            link.update(by_link.get((link["source"], link["target"]), {}))
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    kept = [
        n
        for n in nodes.values()
        if n["node_id"] in linked or n["feature_type"] in FEATURE_TYPES[2:]
    ]
    written = {n["node_id"] for n in kept}
    groups = []
    for name, *members in supernodes or []:
        present = [m for m in members if m in written]
        if present:
            groups.append([str(name), *present])
    pinned = list(dict.fromkeys(m for _, *members in groups for m in members))
    prompt = graph.metadata.get("prompt") or "".join(tok_strs[1:])
    clt_name = (graph.metadata.get("clt") or {}).get("model_name") or "sae-lens-clt"
    return {
        "metadata": {
            "slug": slug or "attribution-graph",
            "scan": scan or str(clt_name),
            "transcoder_list": [],
            "prompt_tokens": [_token_text(t) for t in tok_strs],
            "prompt": prompt,
            "node_threshold": float(node_threshold),
            "schema_version": 1,
        },
        "qParams": {
            "pinnedIds": pinned,
            "supernodes": groups,
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": kept,
        "links": links,
    }


# ---------------------------------------------------------------------- validation
def _type_ok(value: Any, types: str | list[str]) -> bool:
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    return any(checks[t](value) for t in ([types] if isinstance(types, str) else types))


def check_against_schema(
    value: Any, schema: dict[str, Any], where: str, problems: list[str]
) -> None:
    """A small JSON-schema checker for the subset :data:`GRAPH_JSON_SCHEMA` uses."""
    if "type" in schema and not _type_ok(value, schema["type"]):
        problems.append(f"{where}: expected {schema['type']}, got {type(value).__name__}")
        return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{where}: missing {key!r}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check_against_schema(value[key], sub, f"{where}.{key}", problems)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check_against_schema(item, schema["items"], f"{where}[{i}]", problems)


def validate_graph_json(data: dict[str, Any]) -> None:
    """Raise ValueError listing every way ``data`` departs from the graph JSON schema."""
    problems: list[str] = []
    try:
        import jsonschema
    except ImportError:
        check_against_schema(data, GRAPH_JSON_SCHEMA, "$", problems)
    else:
        validator = jsonschema.Draft7Validator(GRAPH_JSON_SCHEMA)
        problems += [
            f"$.{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in validator.iter_errors(data)
        ]
    if not problems:
        ids = [n["node_id"] for n in data["nodes"]]
        if len(set(ids)) != len(ids):
            problems.append("node_id values are not unique")
        known = set(ids)
        bad = [ln for ln in data["links"] if ln["source"] not in known or ln["target"] not in known]
        if bad:
            problems.append(f"{len(bad)} links refer to unknown nodes, e.g. {bad[0]}")
    if problems:
        raise ValueError("invalid graph JSON: " + "; ".join(problems[:10]))


def write_graph_json(
    graph: GraphData,
    path: str | Path,
    *,
    write_graph_metadata: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Validate and write the graph JSON to ``path`` (a ``.json`` file). With
    ``write_graph_metadata``, also add it to ``graph-metadata.json`` in the same folder,
    the index circuit-tracer's local server reads. Keyword arguments go to :func:`graph_json`;
    the slug defaults to the file name."""
    path = Path(path)
    kwargs.setdefault("slug", path.stem)
    data = graph_json(graph, **kwargs)
    validate_graph_json(data)
    atomic_write_json(path, data)
    if write_graph_metadata:
        index_path = path.parent / "graph-metadata.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {"graphs": []}
        graphs = [g for g in index.get("graphs", []) if g.get("slug") != data["metadata"]["slug"]]
        index["graphs"] = graphs + [data["metadata"]]
        atomic_write_json(index_path, index, indent=2)
    return data
