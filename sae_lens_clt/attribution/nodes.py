"""The data of an attribution graph: an adjacency matrix over a node table, saved without
pickle (one safetensors file; the rest as JSON in its header).

:class:`GraphData` is what pruning, export and plotting read;
:class:`~sae_lens_clt.attribution.graph.AttributionGraph` adds the methods that call them.

Node order (rows = targets, columns = sources)::

    [features (n_features), errors (n_layers * n_pos, layer-major), embeddings (n_pos),
     logits (n_logits)]

so error node ``(layer, pos)`` has index ``n_features + layer * n_pos + pos``.
``adjacency[target, source]`` is the direct effect of ``source`` on ``target``.

Errors and embeddings are sources only, so only the feature and target rows can be
nonzero. ``adjacency`` is either the dense ``[N, N]`` matrix or just those rows,
``[n_features + n_logits, N]`` (**rows form**: feature rows in node order, then the target
rows; what attribution with a ``memory_budget`` stores, since ``N`` grows with
``n_layers * n_pos`` and ``N²`` would not fit for long prompts). Code that reads a graph
goes through :meth:`GraphData.adjacency_rows` / :meth:`GraphData.edge_values`, which serve
both forms; :meth:`GraphData.dense_adjacency` builds ``[N, N]`` when it is wanted.

The "logit" slot holds the graph's *targets* (:mod:`.targets`): demeaned logits, logit
differences, residual directions or feature pre-activations. Per target the graph keeps
``target_positions [k]``, ``target_layers [k]`` (``n_layers`` for the unembedding input)
and ``target_info`` (JSON dicts: ``kind`` and what names it); a file without them (older
graphs) loads as demeaned logits of ``logit_token_ids`` at the last position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from sae_lens_clt.attribution.targets import target_label
from sae_lens_clt.formats.atomic import atomic_save_safetensors
from sae_lens_clt.formats.safetensors import file_metadata, read_tensors

GRAPH_FORMAT = "sae_lens_clt.attribution_graph"
GRAPH_FORMAT_VERSION = 1
_TENSOR_FIELDS = (
    "adjacency",
    "active_features",
    "activation_values",
    "logit_token_ids",
    "logit_probabilities",
    "input_tokens",
)
_TARGET_TENSORS = ("target_positions", "target_layers")  # optional: older files lack them


G = TypeVar("G", bound="GraphData")


@dataclass
class GraphData:
    """Direct-effect graph of one prompt over a CLT replacement model.

    Attributes:
        adjacency: ``[N, N]`` float32, rows = targets, columns = sources; or only the
            feature and target rows ``[n_features + n_logits, N]`` (rows form, above).
        active_features: ``[n_features, 3]`` int64 rows ``(layer, pos, feature)`` in node order.
        activation_values: ``[n_features]`` float32 activations of those features.
        logit_token_ids: ``[n_logits]`` int64 output tokens of the logit (target) nodes;
            ``d_vocab + k`` for a target ``k`` that is not one token's logit.
        logit_probabilities: ``[n_logits]`` float32 the targets' weights (tokens: their
            probabilities on this prompt).
        input_tokens: ``[n_pos]`` int64 prompt tokens (BOS first).
        n_layers: number of model layers (= CLT layers).
        metadata: JSON-serialisable dict (model, CLT, settings, token strings, ...).
        target_positions: ``[n_logits]`` int64 position of each target (default: the last).
        target_layers: ``[n_logits]`` int64 layer each target reads (default ``n_layers``:
            the unembedding input).
        target_info: one JSON dict per target (``kind``: ``token`` / ``logit_diff`` /
            ``direction`` / ``feature``, and what names it; see :mod:`.targets`).
    """

    adjacency: torch.Tensor
    active_features: torch.Tensor
    activation_values: torch.Tensor
    logit_token_ids: torch.Tensor
    logit_probabilities: torch.Tensor
    input_tokens: torch.Tensor
    n_layers: int
    metadata: dict[str, Any] = field(default_factory=dict)
    target_positions: torch.Tensor | None = None
    target_layers: torch.Tensor | None = None
    target_info: list[dict[str, Any]] | None = None

    TENSOR_FIELDS: ClassVar[tuple[str, ...]] = _TENSOR_FIELDS  # what the file holds

    def __post_init__(self) -> None:
        n = self.n_nodes
        r = self.n_features + self.n_logits
        if self.adjacency.shape not in ((n, n), (r, n)):
            raise ValueError(
                f"adjacency must be [{n}, {n}] (or its feature and target rows, [{r}, {n}]) "
                f"for {self.n_features} features, {self.n_layers} layers x {self.n_pos} "
                f"positions and {self.n_logits} logits, got {tuple(self.adjacency.shape)}"
            )
        if self.active_features.ndim != 2 or self.active_features.shape[1] != 3:
            raise ValueError(
                f"active_features must be [n, 3] (layer, pos, feature), "
                f"got {tuple(self.active_features.shape)}"
            )
        k = self.n_logits
        info = self.target_info
        if info is None or all(i.get("kind", "token") == "token" for i in info):
            # token targets (or none named): all derived from logit_token_ids, so a graph
            # rebuilt with other logits (``GraphData(**{**vars(g), ...})``) stays consistent
            strs = self.metadata.get("logit_token_strings") or []
            old = {i.get("token"): i.get("token_str") for i in info or []}
            ids = [int(t) for t in self.logit_token_ids.tolist()]
            self.target_info = [
                {"kind": "token", "token": t,
                 "token_str": strs[i] if len(strs) == k else old.get(t) or str(t)}
                for i, t in enumerate(ids)
            ]  # fmt: skip
            self.target_positions = torch.full((k,), self.n_pos - 1, dtype=torch.long)
            self.target_layers = torch.full((k,), self.n_layers, dtype=torch.long)
        elif self.target_positions is None or self.target_layers is None:
            raise ValueError("custom targets need target_positions and target_layers too")
        if (
            self.target_positions.shape != (k,)
            or self.target_layers.shape != (k,)
            or len(self.target_info) != k
        ):
            raise ValueError(
                f"target_positions, target_layers and target_info need one entry per target "
                f"({k}), got {tuple(self.target_positions.shape)}, "
                f"{tuple(self.target_layers.shape)} and {len(self.target_info)}"
            )

    # ------------------------------------------------------------------ node table
    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.active_features.shape[0])

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_pos

    @property
    def n_logits(self) -> int:
        return int(self.logit_token_ids.shape[0])

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_pos + self.n_logits

    # ------------------------------------------------------------------ adjacency
    @property
    def is_rows_form(self) -> bool:
        """True when ``adjacency`` holds only the feature and target rows."""
        return self.adjacency.shape[0] != self.n_nodes

    def row_nodes(self) -> torch.Tensor:
        """``[n_features + n_logits]`` node index of each row of :meth:`adjacency_rows`."""
        nf = self.n_features
        return torch.cat([torch.arange(nf), torch.arange(self.logit_offset, self.n_nodes)])

    def adjacency_rows(self) -> torch.Tensor:
        """``[n_features + n_logits, N]``: the rows that can be nonzero (features, then
        targets); the stored tensor itself in rows form, a copy of those rows otherwise."""
        if self.is_rows_form:
            return self.adjacency
        return torch.cat([self.adjacency[: self.n_features], self.adjacency[self.logit_offset :]])

    def row_index(self, nodes: torch.Tensor) -> torch.Tensor:
        """Row of :meth:`adjacency_rows` of each node in ``nodes`` (features and targets;
        ``-1`` for errors and embeddings, which have no inputs)."""
        nodes = torch.as_tensor(nodes, dtype=torch.long)
        out = torch.full_like(nodes, -1)
        feat, tgt = nodes < self.n_features, nodes >= self.logit_offset
        out[feat] = nodes[feat]
        out[tgt] = nodes[tgt] - self.logit_offset + self.n_features
        return out

    def edge_values(self, targets: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """``adjacency[targets, sources]`` in node indices, in either form (``[E]``)."""
        targets = torch.as_tensor(targets, dtype=torch.long)
        sources = torch.as_tensor(sources, dtype=torch.long)
        if not self.is_rows_form:
            return self.adjacency[targets, sources]
        rows = self.row_index(targets)
        out = torch.zeros(rows.shape, dtype=self.adjacency.dtype)
        has = rows >= 0
        out[has] = self.adjacency[rows[has], sources[has]]
        return out

    def dense_adjacency(self) -> torch.Tensor:
        """``[N, N]``: ``adjacency`` itself, or built from the rows form (``N²`` floats)."""
        if not self.is_rows_form:
            return self.adjacency
        dense = torch.zeros(self.n_nodes, self.n_nodes, dtype=self.adjacency.dtype)
        dense[self.row_nodes()] = self.adjacency
        return dense

    @property
    def error_offset(self) -> int:
        """Index of the first error node."""
        return self.n_features

    @property
    def embedding_offset(self) -> int:
        """Index of the first embedding node."""
        return self.n_features + self.n_errors

    @property
    def logit_offset(self) -> int:
        """Index of the first logit node."""
        return self.embedding_offset + self.n_pos

    def error_index(self, layer: int, pos: int) -> int:
        """Node index of the error node at ``(layer, pos)``."""
        return self.error_offset + layer * self.n_pos + pos

    def node_kind(self, index: int) -> str:
        """``'feature'``, ``'error'``, ``'embedding'`` or ``'logit'``."""
        if index < self.error_offset:
            return "feature"
        if index < self.embedding_offset:
            return "error"
        if index < self.logit_offset:
            return "embedding"
        return "logit"

    def node_layer_pos(self, index: int) -> tuple[int, int]:
        """``(layer, pos)`` of a node; embeddings get layer -1; a target its own
        (``n_layers`` and the last position for logits)."""
        kind = self.node_kind(index)
        if kind == "feature":
            layer, pos, _ = self.active_features[index].tolist()
            return int(layer), int(pos)
        if kind == "error":
            return divmod(index - self.error_offset, self.n_pos)
        if kind == "embedding":
            return -1, index - self.embedding_offset
        k = index - self.logit_offset
        return int(self.target_layers[k]), int(self.target_positions[k])

    def target_kind(self, k: int) -> str:
        """Kind of target ``k`` (0-based among the targets): ``'token'``, ``'logit_diff'``,
        ``'direction'`` or ``'feature'``."""
        return str(self.target_info[k].get("kind", "token"))

    def target_label(self, k: int, short: bool = False) -> str:
        """A readable name of target ``k`` (``short``: for a figure)."""
        return target_label(self.target_info[k], short=short)

    @property
    def only_logit_targets(self) -> bool:
        """True when every target is one token's demeaned logit at the last position."""
        return all(i.get("kind", "token") == "token" for i in self.target_info)

    def logit_weights(self) -> torch.Tensor:
        """``[N]`` vector: logit probabilities on the logit nodes, zero elsewhere."""
        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_offset :] = self.logit_probabilities.to(w.dtype)
        return w

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file: the tensors (``TENSOR_FIELDS``), plus the rest as
        JSON in its header (with a subclass's :meth:`header_fields`).

        A path without a suffix gets ``.safetensors``; returns the path written.
        """
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: getattr(self, name).detach().cpu().contiguous()
            for name in (*self.TENSOR_FIELDS, *_TARGET_TENSORS)
        }
        header = {
            "format": GRAPH_FORMAT,
            "version": str(GRAPH_FORMAT_VERSION),
            "n_layers": str(self.n_layers),
            "metadata": json.dumps(self.metadata),
            "targets": json.dumps(self.target_info),
            **self.header_fields(),
        }
        return atomic_save_safetensors(tensors, path, metadata=header)

    def header_fields(self) -> dict[str, str]:
        """Header entries a subclass adds to the file (strings); none here."""
        return {}

    @classmethod
    def fields_from_header(cls, header: dict[str, str], path: Path) -> dict[str, Any]:
        """The constructor arguments a subclass reads back from the header (checking it is
        its own file); none here."""
        return {}

    @classmethod
    def load(cls: type[G], path: str | Path) -> G:
        """Read a file written by :meth:`save` (safetensors + JSON only: never runs code)."""
        path = Path(path)
        header = file_metadata(path)
        if header.get("format") != GRAPH_FORMAT:
            raise ValueError(
                f"{path} is not an attribution graph written by AttributionGraph.save "
                f"(header format={header.get('format')!r})"
            )
        extra = cls.fields_from_header(header, path)
        tensors = read_tensors(path)
        missing = [n for n in cls.TENSOR_FIELDS if n not in tensors]
        if missing:
            raise ValueError(f"{path} lacks the tensors {missing}; was it truncated?")
        targets = {n: tensors[n].long() for n in _TARGET_TENSORS if n in tensors}
        if "targets" in header:
            targets["target_info"] = json.loads(header["targets"])
        return cls(
            **{n: tensors[n] for n in cls.TENSOR_FIELDS},
            n_layers=int(header["n_layers"]),
            metadata=json.loads(header.get("metadata", "{}")),
            **targets,
            **extra,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_pos={self.n_pos}, n_layers={self.n_layers}, "
            f"n_features={self.n_features}, n_logits={self.n_logits}, n_nodes={self.n_nodes})"
        )
