"""The batches one rank trains on: from the live multi-hook store or from the disk cache.

The rule (what makes a job's result independent of how it is split):

- **tensor parallelism never changes the data**: every rank of a tensor-parallel group gets
  the same ``(x, y)``. From the live store only the group's first rank runs the model and
  broadcasts; from the cache every rank reads the same rows.
- **from the cache**, global batch ``k`` is stream positions ``[k B, (k + 1) B)`` of the
  cache's (seeded, per-epoch shuffled) position stream, ``B = train_batch_size_tokens``;
  data-parallel rank ``d`` of ``dp`` takes the contiguous ``B/dp`` positions
  ``[k B + d B/dp, k B + (d + 1) B/dp)``. The normalisation estimate reads global batches
  ``0 .. n_norm - 1`` whole on every rank; training step ``i`` reads global batch
  ``n_norm + i``. So a run is a function of (cache, seed, global batch size) only: any
  ``tp × dp`` gives the single-process weights to float tolerance, and a checkpoint
  resumes exactly on any world size (the data position is the step).
- **from the live store**, data-parallel group ``d`` streams its own shard of the dataset
  (``Dataset.shard(num_shards=dp, index=d)``) through its own store at ``B/dp`` tokens per
  batch, so each rank reads a disjoint part of the data and the job equals the single
  process for ``dp = 1`` (any ``tp``). A resume replays each group's stream from the
  seed, so it needs the ``dp`` of the checkpoint; train from the cache to change ``dp``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_clt.activations import live
from sae_lens_clt.formats.safetensors import to_torch_dtype
from sae_lens_clt.training.parallel import ParallelLayout

if TYPE_CHECKING:
    from sae_lens_clt.activations.cache import ActivationCache


class LiveSource:
    """The live store of this rank's data-parallel group (its first rank runs the model)."""

    kind = "live"

    def __init__(self, model: Any, dataset: Any, cfg: Any, layout: ParallelLayout):
        self.cfg, self.layout = cfg, layout
        self.batches_drawn = 0
        B = cfg.train_batch_size_tokens
        if B % layout.dp:
            raise ValueError(
                f"train_batch_size_tokens={B} does not split over {layout.dp} data-parallel "
                "groups: make it a multiple of the data-parallel size"
            )
        self.hooks = live.store_hooks(model, cfg)
        self.d_in, self.d_out = self.hooks.d_in, self.hooks.d_out
        self.n_layers = len(self.hooks.ins)
        self._stream: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        if layout.dp > 1:  # on every rank, so that a refusal stops all of them alike
            dataset = _data_shard(dataset, cfg, layout.dp, layout.dp_rank)
        if layout.is_data_leader:
            group_cfg = dataclasses.replace(cfg, train_batch_size_tokens=B // layout.dp)
            store, _ = live.make_store(model, dataset, group_cfg)
            self._stream = live.stream(store, self.hooks)
        self._dtype = to_torch_dtype(cfg.dtype)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout
        if self._stream is not None:
            try:
                x, y = next(self._stream)
            except BaseException:
                layout.data_leader_failed()  # the group's other ranks raise too
                raise
        shape = layout.broadcast_shape(tuple(x.shape) if self._stream is not None else None)
        if shape[0] < 0:
            raise RuntimeError(
                f"{layout.describe()}: the first rank of this tensor-parallel group could not "
                "read the next batch from the live store (its own error says why)"
            )
        if self._stream is None:
            dev = layout.device
            x = torch.empty(shape, dtype=self._dtype, device=dev)
            y = torch.empty(*shape[:2], self.d_out, dtype=self._dtype, device=dev)
        layout.broadcast_from_data_leader(x, y)
        self.batches_drawn += 1
        return x, y

    def norm_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self._next() for _ in range(n)]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._next()

    def replay(self, batches_drawn: int, progress: Any) -> None:
        """Draw (and drop) the batches an interrupted run had drawn (model passes only)."""
        for _ in progress(range(batches_drawn)):
            self._next()


class CacheSource:
    """This rank's rows of each global batch, read from the disk cache (memory-mapped)."""

    kind = "cache"

    def __init__(self, cache: ActivationCache, cfg: Any, layout: ParallelLayout):
        self.cache, self.cfg, self.layout = cache, cfg, layout
        self.batches_drawn = 0
        B = cfg.train_batch_size_tokens
        if B % layout.dp:
            raise ValueError(
                f"train_batch_size_tokens={B} does not split over {layout.dp} data-parallel "
                "ranks: make it a multiple of the data-parallel size"
            )
        self.d_in, self.d_out, self.n_layers = cache.d_in, cache.d_out, cache.n_layers
        self._dtype = to_torch_dtype(cfg.dtype)
        self.n_norm = cfg.n_batches_for_norm_estimate
        needed = (self.n_norm + cfg.total_training_steps) * B
        if needed > cache.n_rows and layout.is_main:
            warnings.warn(
                f"the run reads {needed:,} rows but the cache holds {cache.n_rows:,}: it will "
                "see them more than once (build a larger cache: sae-lens-clt cache-activations "
                "--n-tokens)",
                stacklevel=2,
            )

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.read_positions(
            start,
            stop,
            shuffle=self.cfg.cache_shuffle,
            seed=self.cfg.seed,
            dtype=self._dtype,
            device=self.layout.device,
        )

    def norm_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        B = self.cfg.train_batch_size_tokens
        self.batches_drawn += n
        return [self._read(k * B, (k + 1) * B) for k in range(n)]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, dp, d = self.cfg.train_batch_size_tokens, self.layout.dp, self.layout.dp_rank
        start = (self.n_norm + step) * B + d * (B // dp)
        self.batches_drawn += 1
        return self._read(start, start + B // dp)

    def replay(self, batches_drawn: int, progress: Any) -> None:
        """Nothing to replay: the data position is the step."""


def _data_shard(dataset: Any, cfg: Any, n: int, index: int) -> Any:
    """Part ``index`` of ``n`` of the dataset (a name is loaded first, as SAELens loads it)."""
    if isinstance(dataset, str):
        from datasets import load_dataset

        dataset = load_dataset(dataset, split="train", streaming=cfg.streaming)
    if not hasattr(dataset, "shard"):
        raise ValueError(
            "data-parallel training from the live store needs a datasets.Dataset (or a name) "
            f"it can shard; got {type(dataset).__name__}. Or train from an activation cache."
        )
    n_files = getattr(dataset, "num_shards", None)  # a streaming dataset splits by files
    if n_files is not None and not hasattr(dataset, "__len__") and n_files < n:
        raise ValueError(
            f"the streaming dataset has {n_files} file(s), fewer than the {n} data-parallel "
            "groups that each need their own: stream fewer groups, set streaming=False, or "
            "train from an activation cache"
        )
    return dataset.shard(num_shards=n, index=index)
