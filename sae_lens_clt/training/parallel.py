"""The tensor (feature) × data parallel layout of a training job, and its collectives.

A job of ``world = tp × dp`` processes (launched by ``torchrun``, which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address) is laid out as:

1. rank ``r`` has ``tp_rank = r % tp`` and ``dp_rank = r // tp``: the ``tp`` ranks of one
   *tensor-parallel group* are consecutive (on one node, where NCCL is fastest) and share
   ``dp_rank``; the ``dp`` ranks of one *data-parallel group* share ``tp_rank``;
2. the tensor-parallel group holds one CLT between them: ``tp_rank`` keeps features
   ``[tp_rank F/tp, (tp_rank + 1) F/tp)`` of every layer (encoder columns, biases,
   thresholds, decoder rows to all target layers; :class:`~sae_lens_clt.transcoders.clt.FeatureShard`);
   b_dec (and a skip connection) are replicated;
3. a step: every rank of a tensor-parallel group sees the same tokens; each decodes its
   own features sparsely into a partial reconstruction ``[N, L, d_out]``;
   :class:`_SumOverShards` all-reduces the partials (backward: identity, because every
   rank then computes the same loss from the same sum); the sparsity and pre-activation
   terms of a feature need only its own decoder norm, so they stay local;
4. data-parallel groups see disjoint tokens; after backward, :meth:`ParallelLayout.average_gradients`
   all-reduces every gradient over the data-parallel group (one flat buffer) and divides by
   ``dp``: the mean over the global batch, as one process would compute it;
5. dead-feature counts take the OR of "fired" over the data-parallel group; metrics are
   reduced to global values (:meth:`ParallelLayout.global_metrics`).

A single process is the layout ``tp = dp = 1`` with no process group; every collective is
then the identity, so one code path serves both. gloo runs on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sae_lens_clt.transcoders.clt import FeatureShard


class DistributedJobError(RuntimeError):
    """A collective failed: another rank of the job stopped or cannot be reached."""


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a job (``WORLD_SIZE`` set by the launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str) -> str:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under a launcher."""
    if launched_by_torchrun() and device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def is_collective_failure(e: BaseException) -> bool:
    """Whether an exception comes from a failed collective (a peer gone or unreachable)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return any(k in text for k in ("gloo", "NCCL", "Connection reset", "Connection closed"))


@dataclass
class ParallelLayout:
    """Where this process sits in a ``tp × dp`` job (step 1); ``tp = dp = 1`` alone."""

    tp: int = 1
    dp: int = 1
    rank: int = 0
    tp_group: Any = None  # torch.distributed groups; None when the group has one rank
    dp_group: Any = None
    device: str = "cpu"
    owns_process_group: bool = False
    _tp_ranks: list[int] = field(default_factory=lambda: [0])

    @property
    def world(self) -> int:
        return self.tp * self.dp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def is_main(self) -> bool:
        """Rank 0: writes the run's files, shows the progress bar."""
        return self.rank == 0

    @property
    def is_data_leader(self) -> bool:
        """The first rank of its tensor-parallel group: reads data for the group."""
        return self.tp_rank == 0

    def shard(self, d_sae: int) -> FeatureShard:
        """This rank's features of every layer (step 2)."""
        return FeatureShard.of(self.tp_rank, self.tp, d_sae)

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world} (tp={self.tp}, dp={self.dp})"

    # ------------------------------------------------------------------ setup
    @classmethod
    def from_environment(
        cls, tensor_parallel_size: int, device: str, timeout_s: float = 1800.0
    ) -> ParallelLayout:
        """The layout of this process: alone, or one rank of a torchrun job."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        tp = tensor_parallel_size
        if tp < 1 or world % tp:
            raise ValueError(
                f"tensor_parallel_size={tp} must divide the number of processes ({world}); "
                "the data-parallel size is processes / tensor_parallel_size"
            )
        if world == 1:
            return cls(device=device)
        rank = int(os.environ["RANK"])
        device = rank_device(device)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group(
                backend="nccl" if device.startswith("cuda") else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        dp = world // tp
        # every rank creates every group, in the same order (torch.distributed's rule)
        tp_group = dp_group = None
        for d in range(dp):
            ranks = list(range(d * tp, (d + 1) * tp))
            g = dist.new_group(ranks) if tp > 1 else None
            if rank in ranks:
                tp_group, tp_ranks = g, ranks
        for t in range(tp):
            ranks = list(range(t, world, tp))
            g = dist.new_group(ranks) if dp > 1 else None
            if rank in ranks:
                dp_group = g
        return cls(tp, dp, rank, tp_group, dp_group, device, owns, tp_ranks)

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ collectives
    def shard_sum(self) -> Any:
        """The function a training CLT uses to sum partial reconstructions (step 3)."""
        if self.tp == 1:
            return None
        group = self.tp_group
        return lambda partial: _SumOverShards.apply(partial, group)

    def broadcast_from_data_leader(self, *tensors: torch.Tensor) -> None:
        """Give every rank of the tensor-parallel group the leader's tensors (in place)."""
        if self.tp == 1:
            return
        for t in tensors:
            dist.broadcast(t, src=self._tp_ranks[0], group=self.tp_group)

    def broadcast_shape(self, shape: tuple[int, ...] | None) -> tuple[int, ...]:
        """The data leader's tensor shape, on every rank of its tensor-parallel group."""
        if self.tp == 1:
            assert shape is not None
            return shape
        buf = torch.tensor(list(shape) if shape is not None else [0, 0, 0], dtype=torch.long)
        buf = buf.to(self.device)
        dist.broadcast(buf, src=self._tp_ranks[0], group=self.tp_group)
        return tuple(int(v) for v in buf.tolist())

    def sync_replicas(self, module: torch.nn.Module) -> None:
        """Copy data-parallel rank 0's parameters and buffers to its replicas."""
        if self.dp == 1:
            return
        src = self.tp_rank  # global rank of dp_rank 0 in this data-parallel group
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src, group=self.dp_group)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of each gradient over the data-parallel group, one flat all-reduce (step 4)."""
        if self.dp == 1:
            return
        for p in params:  # every rank must send the same buffer layout
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.dp_group)
        flat /= self.dp
        at = 0
        for g in grads:
            g.copy_(flat[at : at + g.numel()].view_as(g))
            at += g.numel()

    def any_over_data(self, fired: torch.Tensor) -> torch.Tensor:
        """OR of a bool tensor over the data-parallel group (step 5)."""
        if self.dp == 1:
            return fired
        t = fired.to(torch.uint8)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.dp_group)
        return t.bool()

    def global_sums(self, sharded: torch.Tensor, replicated: torch.Tensor) -> torch.Tensor:
        """Sums over the job of per-rank float64 vectors: ``sharded`` parts add over every
        rank; ``replicated`` parts (equal across a tensor-parallel group) add over the
        data-parallel groups only. Returns ``cat(sharded, replicated)`` summed."""
        v = torch.cat([sharded, replicated / self.tp]).to(torch.float64)
        if self.world > 1:
            v = v.to(self.device)
            dist.all_reduce(v)
        return v.cpu()

    def data_leader_failed(self) -> None:
        """The data leader could not produce a batch: tell its group (then raise)."""
        self.broadcast_shape((-1, -1, -1))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def agree(self, value: bool) -> bool:
        """True on every rank when ``value`` is true on every rank."""
        if self.world == 1:
            return value
        t = torch.tensor([0 if value else 1], device=self.device)
        dist.all_reduce(t)
        return int(t.item()) == 0


class _SumOverShards(torch.autograd.Function):
    """Forward: all-reduce (sum) over the tensor-parallel group. Backward: identity.

    Every rank of the group computes the same loss ``ℓ(Σ_r ŷ_r)``; the gradient of the job's
    loss with respect to rank r's partial ``ŷ_r`` is ``ℓ'(Σ ŷ)``, which each rank has locally.
    """

    @staticmethod
    def forward(ctx: Any, partial: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        out = partial.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None
