"""Memory of one attribution: the estimate, and the plan that keeps a run within a budget.

Model of the attribution's own memory (bytes; the model's and the CLT's weights are not
counted; ``T`` tokens, ``L`` layers, ``H`` heads, ``d`` the widest of d_model / d_in /
d_out, ``F`` features per layer, ``n`` active features, ``N = n + L·T + T + k`` nodes,
``R`` stored rows = ``k`` targets + the features that get rows, ``B`` rows per pass):

- **forward** (:mod:`.forward`): the retained graph, ``FORWARD_PER_TOKEN · L · T · d · 4``,
  plus, in one pass, every layer's ``[H, T, T]`` pattern (``L · H · T² · 4``) and the
  transient scores (``4 · H · T² · 4``); in query chunks of ``C`` (:mod:`.chunked_attention`)
  only ``4 · H · C · T · 4`` transient, so linear in ``T``.
- **activations**: ``n`` active features (28 bytes each), the errors and the cached inputs /
  outputs (``3 · L · T · d · 4``), the encoding transient ``3 · C_e · L · F · 4``.
- **decoders**: the activation-scaled decoder rows of every active feature
  (``Σ_f w_f · d_out · 4``, ``w_f`` its target layers), when kept between passes.
- **rows**: ``R · N · 4``, in memory or in a memory-mapped file (spilled), plus the chunk
  of ``|rows|`` (at most 4,096 rows) and the ``[R, R]`` block the influence ranking uses.
- **per pass**: ``B · (PASS_PER_TOKEN · L · T · d · 4 + N · 4 · 2)``: gradients at the
  leaves, the autograd buffers, the rows being written.

:func:`plan_memory` picks, for a budget: query chunks when the one-pass forward would take
more than a quarter of it, the encoding chunk, whether decoder rows are kept, whether rows
spill to disk, and the batch size (at most the requested one); it raises when even one row
per pass does not fit. The constants were measured on this package's benchmark models
(``benchmarks/long_prompts.py`` prints estimate against measured peak).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

FORWARD_PER_TOKEN = 24  # retained floats per token, layer and width unit (measured)
PASS_PER_TOKEN = 4  # gradient floats per token, layer, width unit and row (measured)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(value: int | float | str) -> int:
    """``8_000_000_000``, ``"8GB"``, ``"512 MiB"``, ``"1.5g"`` -> bytes (powers of 1024)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if int(value) < 1:
            raise ValueError(f"memory_budget must be at least 1 byte, got {value}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(value).lower())
    if match is None:
        raise ValueError(
            f"memory_budget {value!r} is not a size: give bytes or e.g. '8GB', '512MiB'"
        )
    return parse_bytes(float(match.group(1)) * _UNITS[match.group(2)])


def fmt_bytes(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


@dataclass
class MemoryPlan:
    """How an attribution runs within ``budget`` bytes, and what it is estimated to take."""

    budget: int | None
    query_chunk: int | None  # tokens per forward chunk (None: one pass)
    encode_chunk: int | None  # positions encoded at a time (None: all)
    precompute_decoders: bool = True
    spill_rows: bool = False  # rows in a memory-mapped file
    batch_size: int = 128
    parts: dict[str, float] = field(default_factory=dict)  # estimate per component, bytes

    @property
    def estimate(self) -> float:
        return float(sum(self.parts.values()))

    def describe(self) -> str:
        """One line: the estimate by part, the budget and the choices made."""
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.parts.items())
        budget = "no budget" if self.budget is None else f"budget {fmt_bytes(self.budget)}"
        how = [f"{self.batch_size} rows per pass"]
        if self.query_chunk is not None:
            how.append(f"forward in chunks of {self.query_chunk} tokens")
        if not self.precompute_decoders:
            how.append("decoder rows gathered per pass")
        if self.spill_rows:
            how.append("rows in a memory-mapped file")
        return f"memory estimate {fmt_bytes(self.estimate)} ({parts}) for {budget}; " + ", ".join(
            how
        )


def _dims(model: Any, clt: Any) -> tuple[int, int, int, int]:
    cfg = model.cfg
    d = max(int(cfg.d_model), int(clt.cfg.d_in), int(clt.cfg.d_out))
    return int(clt.cfg.n_layers), int(cfg.n_heads), d, int(clt.cfg.d_sae)


def forward_bytes(model: Any, clt: Any, n_tokens: int, query_chunk: int | None) -> float:
    """Estimated peak of the frozen forward (module docstring, **forward**)."""
    L, H, d, _ = _dims(model, clt)
    T = n_tokens
    linear = FORWARD_PER_TOKEN * L * T * d * 4
    if query_chunk is None or query_chunk >= T:
        return linear + L * H * T * T * 4 + 4 * H * T * T * 4
    return linear + 4 * H * query_chunk * T * 4


def plan_forward(
    model: Any,
    clt: Any,
    n_tokens: int,
    budget: int | None,
    query_chunk: int | None = None,
    chunkable: bool = True,
) -> MemoryPlan:
    """The forward's part of the plan, decided before it runs (module docstring);
    ``chunkable``: whether the model can run in query chunks (else the one-pass forward
    must fit the budget)."""
    L, H, _, F = _dims(model, clt)
    T = n_tokens
    if budget is None:
        return MemoryPlan(None, query_chunk, None)
    one_pass = forward_bytes(model, clt, T, None)
    if query_chunk is None and one_pass > budget / 4:
        if not chunkable:
            if one_pass <= budget / 2:
                return MemoryPlan(budget, None, int(max(1, min(T, budget / 16 / (12 * L * F)))))
            raise ValueError(
                f"memory_budget {fmt_bytes(budget)}: the one-pass forward of {T} tokens takes "
                f"~{fmt_bytes(one_pass)} and this model cannot run in query chunks (it needs "
                "a HookedTransformer with causal attention); raise memory_budget"
            )
        query_chunk = int(max(16, min(T // 2, budget / 8 / (16 * H * T))))
    if query_chunk is not None and query_chunk >= T:
        query_chunk = None  # one chunk: the one-pass forward
    encode_chunk = int(max(1, min(T, budget / 16 / (12 * L * F))))
    return MemoryPlan(budget, query_chunk, encode_chunk)


def plan_rows(
    plan: MemoryPlan,
    model: Any,
    clt: Any,
    n_tokens: int,
    n_active: int,
    decoder_floats: int,
    n_rows: int,
    n_cols: int,
    batch_size: int | None,
) -> MemoryPlan:
    """Complete ``plan`` once the active features are known (module docstring); raises
    ``ValueError`` when the budget cannot hold one row per pass."""
    L, _, d, F = _dims(model, clt)
    T = n_tokens
    want = 128 if batch_size is None else batch_size
    parts = {
        "forward": forward_bytes(model, clt, T, plan.query_chunk),
        "activations": 28 * n_active + 3 * L * T * d * 4 + 3 * (plan.encode_chunk or T) * L * F * 4,
        "decoders": decoder_floats * 4.0,
        # the rows, plus the |rows| chunk the influence ranking reads at a time
        "rows": float(n_rows) * n_cols * 4 + 4.0 * min(n_rows, 4096) * n_cols + 4.0 * n_rows**2,
    }
    per_row = PASS_PER_TOKEN * L * T * d * 4 + n_cols * 4 * 2
    if plan.budget is None:
        plan.batch_size = want
        plan.parts = {**parts, "passes": want * per_row}
        return plan
    budget = plan.budget
    if parts["decoders"] > 0.25 * budget:
        plan.precompute_decoders, parts["decoders"] = False, 0.0
    if parts["rows"] > budget / 3:
        plan.spill_rows = True
        parts["rows"] = 4.0 * min(n_rows, 4096) * n_cols  # a chunk read at a time
    left = budget - sum(parts.values())
    fits = int(left // per_row)
    if fits < 1:
        raise ValueError(
            f"memory_budget {fmt_bytes(budget)} is too small for {T} tokens: the forward, "
            f"activations and rows take {fmt_bytes(sum(parts.values()))} and one row per "
            f"pass {fmt_bytes(per_row)} more; raise memory_budget or lower max_feature_nodes"
        )
    plan.batch_size = max(1, min(want, fits))
    plan.parts = {**parts, "passes": plan.batch_size * per_row}
    return plan


def row_buffer(n_rows: int, n_cols: int, spill: bool) -> torch.Tensor:
    """A zeroed float32 ``[n_rows, n_cols]`` tensor, in memory or (``spill``) backed by a
    memory-mapped file in the temporary directory (unlinked at once: the mapping keeps it
    until the tensor is freed)."""
    if not spill or n_rows * n_cols == 0:
        return torch.zeros(n_rows, n_cols, dtype=torch.float32)
    fd, path = tempfile.mkstemp(prefix="sae_lens_clt_rows_", suffix=".f32")
    try:
        os.ftruncate(fd, n_rows * n_cols * 4)  # sparse file: reads as zeros
        array = np.memmap(path, dtype=np.float32, mode="r+", shape=(n_rows, n_cols))
    finally:
        os.close(fd)
        os.unlink(path)
    return torch.from_numpy(array)
