"""A decoder left on disk: ``W_dec[s]`` ``[F, w_s, d_out]`` read row by row on demand.

``sources[s]`` is ``(file, tensor name)``. :meth:`LazyDecoder.rows` reads one run of
consecutive feature ids per seek (:func:`~sae_lens_clt.formats.safetensors.read_rows`),
so a call costs the bytes of the rows asked for; nothing stays mapped or open between
calls. ``rows_read`` / ``bytes_read`` / ``reads`` count what was read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sae_lens_clt.formats.safetensors import read_rows, tensor_shapes


class LazyDecoder:
    def __init__(
        self,
        sources: list[tuple[Path, str]],
        d_sae: int,
        d_out: int,
        dtype: torch.dtype,
        device: str | torch.device,
    ):
        self.sources = sources
        self.n_layers = len(sources)
        self.widths = [tensor_shapes(path)[name][1] for path, name in sources]
        self.d_sae, self.d_out = d_sae, d_out
        self.dtype, self.device = dtype, torch.device(device)
        self._norms: torch.Tensor | None = None
        self.rows_read = self.bytes_read = self.reads = 0

    def _read(self, layer: int, runs: list[tuple[int, int]], column: int | None = None):
        path, name = self.sources[layer]
        t, n_bytes = read_rows(path, name, runs, column)
        self.reads += len(runs)
        self.rows_read += sum(b - a for a, b in runs)
        self.bytes_read += n_bytes
        return t

    def rows(self, layer: int, feature_ids: torch.Tensor) -> torch.Tensor:
        """Decoder vectors of ``feature_ids`` (read at ``layer``): ``[n, w_layer, d_out]``."""
        ids = torch.as_tensor(feature_ids).detach().to("cpu", torch.int64).reshape(-1)
        width = self.widths[layer]
        if ids.numel() == 0:
            return torch.empty(0, width, self.d_out, dtype=self.dtype, device=self.device)
        if int(ids.min()) < 0 or int(ids.max()) >= self.d_sae:
            raise IndexError(f"feature ids must lie in [0, {self.d_sae}), got {ids.tolist()[:8]}")
        unique, inverse = ids.unique(return_inverse=True)  # sorted
        breaks = (torch.nonzero(unique[1:] - unique[:-1] != 1).flatten() + 1).tolist()
        runs = [
            (int(unique[a]), int(unique[b - 1]) + 1)
            for a, b in zip([0, *breaks], [*breaks, unique.numel()], strict=True)
        ]
        block = self._read(layer, runs)
        return block[inverse].to(device=self.device, dtype=self.dtype)

    def block(self, source: int, target: int) -> torch.Tensor:
        """The ``source -> target`` decoder ``[d_sae, d_out]`` (reads that block only)."""
        offset = target - source
        if not 0 <= source < self.n_layers or not 0 <= offset < self.widths[source]:
            raise IndexError(f"no decoder from layer {source} to layer {target}")
        part = self._read(source, [(0, self.d_sae)], column=offset)
        return part.to(device=self.device, dtype=self.dtype)

    def norms(self, chunk: int = 4096) -> torch.Tensor:
        """Concatenated decoder norm of every feature ``[L, d_sae]`` (reads all, in chunks)."""
        if self._norms is None:
            out = torch.empty(self.n_layers, self.d_sae, dtype=torch.float32)
            for s in range(self.n_layers):
                for a in range(0, self.d_sae, chunk):
                    b = min(a + chunk, self.d_sae)
                    part = self._read(s, [(a, b)])
                    out[s, a:b] = part.float().flatten(1).norm(dim=1)
            self._norms = out
        return self._norms.to(device=self.device, dtype=self.dtype)

    def reset_counters(self) -> None:
        self.rows_read = self.bytes_read = self.reads = 0
