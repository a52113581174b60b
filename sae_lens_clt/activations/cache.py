"""The multi-hook activation cache on disk: a resumable builder and a memory-mapped, shuffled reader.

SAELens caches the activations of one hook; a CLT trains on ``x [N, L, d_in]`` (the MLP
inputs of all ``L`` layers) and ``y [N, L, d_out]`` (their outputs). This module stores
both, row ``n`` being one token.

Folder layout::

    cache_config.json           what was built and how (settings, shards, n_rows, complete)
    shard_00000.safetensors     mlp_in [n_0, L, d_in], mlp_out [n_0, L, d_out]
    shard_00001.safetensors     ...

Building (:func:`build_activation_cache`):

1. Seed torch with ``cfg.seed`` and build SAELens' multi-hook store with mixing fraction 0
   (:func:`~sae_lens_clt.activations.live.make_store`). Token batch ``b`` (one
   ``store.get_batch_tokens()`` call: ``store_batch_size_prompts`` sequences of
   ``context_size`` tokens, a new dataset epoch begun as the live store begins it) gives
   its rows with :func:`~sae_lens_clt.activations.live.token_batch_rows` (special tokens
   dropped). At mixing fraction 0 the live store yields exactly these rows, batch after
   batch, so the cache read in order is the live stream.
2. Shard ``i`` holds the rows of token batches ``i * batches_per_shard`` to
   ``(i + 1) * batches_per_shard - 1`` in the storage dtype, written atomically; after
   every shard ``cache_config.json`` is rewritten atomically with the shard list. The last
   shard stops at the first token batch that brings the cache to ``n_tokens`` rows. A
   writer thread writes shard ``k`` while the model fills shard ``k + 1`` (two buffers;
   a CPU model whose threads take every core runs with one thread less meanwhile); a
   shard is listed in the config only once its file is whole.
3. Resuming: a folder whose config has the same settings keeps its full shards (a short
   last shard is rebuilt), skips their token batches by tokenizing only (no model
   forward) and goes on. A complete cache with enough rows is returned as is; one with too
   few rows is extended the same way. Different settings raise a ``ValueError`` naming the
   fields (those of the run config before the model is loaded, the model's hooks, widths
   and processing once it is). A crash never leaves a half-written shard or config under
   its final name.

Reading (:class:`ActivationCache`):

4. Each shard's two tensors are ``numpy.memmap`` views at the offsets of the safetensors
   header, opened when first read and kept (up to ``max_open_shards``). :meth:`rows`
   groups the asked rows by shard, sorts them within a shard, copies only those rows out
   of the maps (a contiguous run in one slice) and scatters them back into the asked
   order; 16-bit storage is mapped as ``uint16`` and viewed as ``bfloat16`` / ``float16``.
5. The position stream is an infinite sequence of row indices; epoch ``e`` is positions
   ``[e * n_rows, (e + 1) * n_rows)``, a permutation of all rows. Unshuffled it is
   ``0 .. n_rows - 1`` (build order). Shuffled: the shard order is ``randperm(n_shards)``
   from a generator seeded by ``(seed, e)``; consecutive groups of
   ``shuffle_window_shards`` shards in that order are windows, and window ``w``'s rows (its
   shards' rows, in that shard order) are permuted by ``randperm`` from a generator seeded
   by ``(seed, e, w)``. Only the windows a read touches are built (the last two are kept),
   so memory is one window's indices and :meth:`read_positions` is a pure function of its
   arguments: any split of ``[start, stop)`` reads the same rows as the whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_lens_clt.activations import live
from sae_lens_clt.formats import atomic
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.safetensors import read_header, to_torch_dtype
from sae_lens_clt.hooks import model_processing

FORMAT = "sae_lens_clt.activation_cache"
VERSION = 1
CONFIG_FILE = "cache_config.json"
SHARD_FILE = "shard_{:05d}.safetensors"
X_NAME, Y_NAME = "mlp_in", "mlp_out"
SHARD_BYTES = 256 * 2**20  # the default shard size, about 256 MB
# storage dtype name -> (torch dtype, numpy dtype of the memory map, safetensors code)
STORAGE_DTYPES: dict[str, tuple[torch.dtype, Any, str]] = {
    "float32": (torch.float32, np.float32, "F32"),
    "bfloat16": (torch.bfloat16, np.uint16, "BF16"),
    "float16": (torch.float16, np.uint16, "F16"),
}
# settings read from the run config alone (checked before the model is loaded)
CFG_SETTINGS = (
    "model_name",
    "hook_name",
    "hook_name_out",
    "context_size",
    "prepend_bos",
    "exclude_special_tokens",
    "dataset_path",
    "store_batch_size_prompts",
    "model_from_pretrained_kwargs",
)
# settings of the build: a cache is resumed only when all of these agree
SETTINGS = (
    *CFG_SETTINGS,
    "dtype",
    "batches_per_shard",
    "hooks_in",
    "hooks_out",
    "n_layers",
    "d_in",
    "d_out",
    "model_processing",
)
REQUIRED = (
    "format",
    "version",
    "model_name",
    "hook_name",
    "hook_name_out",
    "n_layers",
    "d_in",
    "d_out",
    "dtype",
    "shards",
    "n_rows",
    "complete",
)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _storage_dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in STORAGE_DTYPES:
        raise ValueError(
            f"cache dtype {dtype!r} is not a storage dtype: use one of {sorted(STORAGE_DTYPES)}"
        )
    return name


def _generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by the tuple ``parts`` (a stable hash of it)."""
    digest = hashlib.blake2b(
        ("activation_cache:" + ",".join(str(int(p)) for p in parts)).encode(), digest_size=8
    ).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def default_n_tokens(cfg: Any) -> int:
    """What a run of ``cfg`` reads: its training tokens and the norm-estimate batches."""
    return int(cfg.training_tokens + cfg.n_batches_for_norm_estimate * cfg.train_batch_size_tokens)


def default_batches_per_shard(cfg: Any, bytes_per_row: int) -> int:
    """Token batches per shard for shards of about :data:`SHARD_BYTES` (at least 1)."""
    batch_bytes = cfg.store_batch_size_prompts * cfg.context_size * bytes_per_row
    return max(1, SHARD_BYTES // batch_bytes)


def _cfg_settings(cfg: Any) -> dict[str, Any]:
    return _jsonable(
        {
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_name_out": cfg.hook_name_out,
            "context_size": cfg.context_size,
            "prepend_bos": cfg.prepend_bos,
            "exclude_special_tokens": cfg.exclude_special_tokens,
            "dataset_path": cfg.dataset_path,
            "store_batch_size_prompts": cfg.store_batch_size_prompts,
            "model_from_pretrained_kwargs": cfg.model_from_pretrained_kwargs or {},
        }
    )


def _differences(old: dict[str, Any], new: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    return [
        f"{k} {repr(old[k]) if k in old else 'missing'} (cache) vs {new[k]!r} (now)"
        for k in names
        if k in new and (k not in old or old[k] != new[k])
    ]


def _refuse_other_settings(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = _differences(old, new, SETTINGS)
    if diff:
        raise ValueError(
            f"{path} holds an activation cache built with other settings: {'; '.join(diff)}. "
            f"Build into another folder, or delete {path} to rebuild it"
        )


def _existing_config(path: Path) -> dict[str, Any] | None:
    """The config of an existing cache at ``path``; None for a new or empty folder."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file: give a folder for the activation cache")
    file = path / CONFIG_FILE
    if not file.is_file():
        if path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()):
            raise ValueError(
                f"{path} holds files but no {CONFIG_FILE}: it is not an activation cache; "
                "give a new or empty folder"
            )
        return None
    try:
        old = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{file}: unreadable ({e}); delete {path} to rebuild the cache, or use another folder"
        ) from e
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        raise ValueError(
            f"{file} is not an activation cache config (format {FORMAT!r}); use another folder"
        )
    if old.get("version") != VERSION:
        raise ValueError(
            f"{file}: cache format version {old.get('version')!r}, this library writes "
            f"{VERSION}; delete {path} to rebuild it, or use another folder"
        )
    return old


def _kept_shards(path: Path, old: dict[str, Any], batches_per_shard: int) -> list[dict[str, Any]]:
    """The leading shards of ``old`` that are full and whose files are whole."""
    kept = []
    for i, entry in enumerate(old.get("shards", [])):
        if entry.get("n_batches") != batches_per_shard or entry.get("file") != SHARD_FILE.format(i):
            break
        try:
            _shard_layout(path / entry["file"], old, entry["n_rows"])
        except CLTFormatError:
            break
        kept.append(entry)
    return kept


def _next_token_batch(store: Any) -> torch.Tensor:
    """One token batch ``[P, T]``, a new epoch begun as the live store begins it.

    The live store asks with ``raise_at_epoch_end=True``: the sequences of an epoch's
    partial last batch are dropped and the batch is taken from the new epoch.
    """
    try:
        return store.get_batch_tokens(raise_at_epoch_end=True)
    except StopIteration:
        return store.get_batch_tokens()


def build_activation_cache(
    cfg: Any,
    path: str | Path,
    n_tokens: int | None = None,
    batches_per_shard: int | None = None,
    dtype: str | torch.dtype | None = None,
    model: Any = None,
    dataset: Any = None,
    verbose: bool = True,
) -> ActivationCache:
    """Build (or resume, or extend) the activation cache of run config ``cfg`` in ``path``.

    Args:
        cfg: a :class:`~sae_lens_clt.training.config.CLTTrainingRunnerConfig` (any object
            with its fields): model, dataset, hooks, context, batch and seed.
        path: the cache folder (created; an existing cache there is resumed or returned).
        n_tokens: rows (tokens) to hold at least; default what a run of ``cfg`` reads
            (:func:`default_n_tokens`).
        batches_per_shard: token batches per shard; default: an existing cache's, else
            shards of about 256 MB.
        dtype: storage dtype ("float32", "bfloat16", "float16"); default: an existing
            cache's, else ``cfg.dtype`` when it is one of these, else float32.
        model, dataset: default ``live.load_model_for(cfg)`` / ``live.load_dataset_for(cfg)``.
        verbose: show a progress bar (in tokens).

    Returns the opened cache; its ``build_info`` says what this call wrote and how fast.
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    path = Path(path)
    n_tokens = default_n_tokens(cfg) if n_tokens is None else int(n_tokens)
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if batches_per_shard is not None and batches_per_shard < 1:
        raise ValueError(f"batches_per_shard must be >= 1, got {batches_per_shard}")
    old = _existing_config(path)
    if dtype is None:
        dtype = old.get("dtype") if old else None
        dtype = dtype or (cfg.dtype if str(cfg.dtype) in STORAGE_DTYPES else "float32")
    dtype_name = _storage_dtype_name(dtype)
    if old and batches_per_shard is None:
        batches_per_shard = old.get("batches_per_shard")
    if old:  # what the config alone tells, before a (possibly long) model load
        early = {**_cfg_settings(cfg), "dtype": dtype_name}
        if batches_per_shard is not None:
            early["batches_per_shard"] = batches_per_shard
        _refuse_other_settings(path, old, early)
        if model is None and old.get("complete") and old.get("n_rows", 0) >= n_tokens:
            return _done(path, start_time)  # same config, model and hooks: nothing to build

    model = live.load_model_for(cfg) if model is None else model
    dataset = live.load_dataset_for(cfg) if dataset is None else dataset
    torch.manual_seed(cfg.seed)
    store, hooks = live.make_store(
        model, dataset, cfg, mixing_fraction=0.0, training_tokens=n_tokens
    )
    n_layers = len(hooks.ins)
    storage, _, _ = STORAGE_DTYPES[dtype_name]
    bytes_per_row = n_layers * (hooks.d_in + hooks.d_out) * storage.itemsize
    if batches_per_shard is None:
        batches_per_shard = default_batches_per_shard(cfg, bytes_per_row)
    settings = {
        **_cfg_settings(cfg),
        "dtype": dtype_name,
        "batches_per_shard": int(batches_per_shard),
        "hooks_in": list(hooks.ins),
        "hooks_out": list(hooks.outs),
        "n_layers": n_layers,
        "d_in": hooks.d_in,
        "d_out": hooks.d_out,
        "model_processing": _jsonable(model_processing(model)),
    }
    shards: list[dict[str, Any]] = []
    if old:
        _refuse_other_settings(path, old, settings)
        if old.get("complete") and old.get("n_rows", 0) >= n_tokens:
            return _done(path, start_time)
        shards = _kept_shards(path, old, batches_per_shard)
    config = {
        "format": FORMAT,
        "version": VERSION,
        **settings,
        "seed": cfg.seed,
        "n_tokens_target": n_tokens,
        "shards": list(shards),
        "n_rows": sum(s["n_rows"] for s in shards),
        "complete": False,
    }
    atomic.atomic_write_json(path / CONFIG_FILE, config, indent=2)
    reused = len(shards)

    # skip the token batches of the kept shards: tokenization only, no model forward
    for _ in range(reused * batches_per_shard):
        _next_token_batch(store)
    rows_per_shard = batches_per_shard * cfg.store_batch_size_prompts * cfg.context_size
    build_start = time.perf_counter()  # the model passes and writes start here
    n_rows, rows_written, bytes_written = config["n_rows"], 0, 0
    bar = tqdm(
        total=n_tokens,
        initial=min(n_rows, n_tokens),
        unit="tok",
        unit_scale=True,
        desc="caching activations",
        disable=not verbose,
    )
    # step 2, pipelined: shard k is written by a writer thread while the model fills shard k + 1
    # in the other of two buffers (x [rows_per_shard, L, d_in], y [rows_per_shard, L, d_out])
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
    pending: tuple[Future, dict[str, Any]] | None = None  # the shard being written
    wait = [0.0]  # seconds the model waited for the writer

    def record(write: tuple[Future, dict[str, Any]]) -> int:
        """Wait for a shard's write, then list it in the config; its size in bytes."""
        future, entry = write
        waited = time.perf_counter()
        future.result()
        wait[0] += time.perf_counter() - waited
        shards.append(entry)
        config.update(shards=list(shards), n_rows=config["n_rows"] + entry["n_rows"])
        atomic.atomic_write_json(path / CONFIG_FILE, config, indent=2)
        return (path / entry["file"]).stat().st_size

    with _core_for_the_writer(model), ThreadPoolExecutor(max_workers=1) as writer, torch.no_grad():
        try:
            k = 0  # shards made by this call
            while n_rows < n_tokens:
                if len(buffers) <= k % 2:
                    buffers.append(
                        (
                            torch.empty(rows_per_shard, n_layers, hooks.d_in, dtype=storage),
                            torch.empty(rows_per_shard, n_layers, hooks.d_out, dtype=storage),
                        )
                    )
                x_buf, y_buf = buffers[k % 2]  # free: shard k - 2's write was waited for
                n, n_batches = 0, 0  # rows and token batches in this shard
                while n_batches < batches_per_shard and n_rows + n < n_tokens:
                    x, y = live.token_batch_rows(store, hooks, _next_token_batch(store))
                    x_buf[n : n + len(x)] = x.to("cpu", storage)  # x [b, L, d_in]
                    y_buf[n : n + len(y)] = y.to("cpu", storage)  # y [b, L, d_out]
                    bar.update(min(len(x), n_tokens - n_rows - n))  # the bar stops at n_tokens
                    n, n_batches = n + len(x), n_batches + 1
                if pending is not None:
                    done, pending = pending, None
                    bytes_written += record(done)
                file = SHARD_FILE.format(reused + k)
                future = writer.submit(
                    atomic.atomic_save_safetensors,
                    {X_NAME: x_buf[:n], Y_NAME: y_buf[:n]},
                    path / file,
                    metadata={"format": FORMAT},  # one key: safetensors orders several at random
                )
                pending = (future, {"file": file, "n_rows": n, "n_batches": n_batches})
                n_rows, rows_written, k = n_rows + n, rows_written + n, k + 1
            if pending is not None:
                done, pending = pending, None
                bytes_written += record(done)
        except BaseException:
            if pending is not None:  # the model failed while a shard was written: keep it
                with contextlib.suppress(Exception):
                    record(pending)
            raise
    bar.close()
    config["complete"] = True
    atomic.atomic_write_json(path / CONFIG_FILE, config, indent=2)
    cache = ActivationCache(path)
    cache.build_info = _build_info(
        start_time, rows_written, bytes_written, len(shards) - reused, reused, build_start
    )
    cache.build_info["write_wait_seconds"] = wait[0]
    return cache


@contextlib.contextmanager
def _core_for_the_writer(model: Any) -> Iterator[None]:
    """A model on the CPU whose torch threads take every core gets one thread less while
    the writer runs (else both slow down: measured 4x on 2 cores, benchmarks/RESULTS.md)."""
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    param = next(iter(model.parameters()), None)
    on_cpu = param is None or param.device.type == "cpu"
    if on_cpu and threads > 1 and threads >= (cores or 1):
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _done(path: Path, start_time: float) -> ActivationCache:
    """The complete cache at ``path``, returned as is."""
    cache = ActivationCache(path)
    cache.build_info = _build_info(start_time, 0, 0, 0, cache.n_shards)
    return cache


def _build_info(
    start: float,
    rows: int,
    nbytes: int,
    written: int,
    reused: int,
    build_start: float | None = None,
) -> dict[str, Any]:
    """What a build call did: ``seconds`` in all, ``build_seconds`` of model passes and
    writes (after loading the model and data and skipping kept shards; of it,
    ``write_wait_seconds`` waiting for the disk)."""
    now = time.perf_counter()
    return {
        "seconds": now - start,
        "build_seconds": now - (build_start or now),
        "rows_written": rows,
        "bytes_written": nbytes,
        "shards_written": written,
        "shards_reused": reused,
        "write_wait_seconds": 0.0,
    }


def _shard_layout(file: Path, config: dict[str, Any], n_rows: int) -> dict[str, tuple]:
    """``{name: (offset, shape)}`` of a shard's two tensors, checked against ``config``."""
    data_start, header, _ = read_header(file)  # CLTFormatError for a missing / bad file
    _, _, code = STORAGE_DTYPES[config["dtype"]]
    L = config["n_layers"]
    size = file.stat().st_size
    layout = {}
    for name, width in ((X_NAME, config["d_in"]), (Y_NAME, config["d_out"])):
        info = header.get(name)
        if info is None:
            raise CLTFormatError(
                f"{file}: missing tensor {name!r} (it holds {sorted(header)}); delete the cache "
                "folder and build it again"
            )
        shape = [n_rows, L, width]
        if list(info.get("shape", [])) != shape or info.get("dtype") != code:
            raise CLTFormatError(
                f"{file}: tensor {name!r} is {info.get('dtype')} {info.get('shape')}, "
                f"{CONFIG_FILE} says {code} {shape}; the shard does not belong to this cache: "
                "delete the cache folder and build it again"
            )
        begin, end = info["data_offsets"]
        if end - begin != math.prod(shape) * STORAGE_DTYPES[config["dtype"]][0].itemsize:
            raise CLTFormatError(f"{file}: tensor {name!r} has inconsistent data offsets")
        if data_start + end > size:
            raise CLTFormatError(
                f"{file} is truncated ({size} bytes, its header needs {data_start + end}); "
                "delete the cache folder and build it again"
            )
        layout[name] = (data_start + begin, tuple(shape))
    return layout


class ActivationCache:
    """A multi-hook activation cache on disk, read through memory maps (see the module doc).

    Args:
        path: the cache folder.
        shuffle_window_shards: shards per shuffle window (rows are permuted within a window).
        allow_incomplete: open a cache whose build has not finished (its shards so far).
        max_open_shards: shards kept memory-mapped at once (least recently read closed).
    """

    def __init__(
        self,
        path: str | Path,
        shuffle_window_shards: int = 8,
        allow_incomplete: bool = False,
        max_open_shards: int = 256,
    ) -> None:
        self.path = Path(path)
        if shuffle_window_shards < 1:
            raise ValueError(f"shuffle_window_shards must be >= 1, got {shuffle_window_shards}")
        self.shuffle_window_shards = int(shuffle_window_shards)
        self.max_open_shards = max(1, int(max_open_shards))
        file = self.path / CONFIG_FILE
        if not self.path.is_dir():
            raise CLTFormatError(f"{self.path}: no such folder (an activation cache is a folder)")
        if not file.is_file():
            raise CLTFormatError(
                f"{file}: missing; {self.path} is not an activation cache (build one with "
                "build_activation_cache or `sae-lens-clt cache-activations`)"
            )
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise CLTFormatError(f"{file}: not readable JSON ({e})") from e
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise CLTFormatError(f"{file}: not an activation cache config (format {FORMAT!r})")
        if config.get("version") != VERSION:
            raise CLTFormatError(
                f"{file}: cache format version {config.get('version')!r}; this library reads "
                f"version {VERSION}"
            )
        missing = [k for k in REQUIRED if k not in config]
        if missing:
            raise CLTFormatError(f"{file}: missing field(s) {missing}")
        if config["dtype"] not in STORAGE_DTYPES:
            raise CLTFormatError(f"{file}: unknown storage dtype {config['dtype']!r}")
        if not config["complete"] and not allow_incomplete:
            raise CLTFormatError(
                f"{file}: the cache is incomplete ({config['n_rows']} of "
                f"{config.get('n_tokens_target', '?')} rows): finish it by running the same "
                "build again (build_activation_cache / `sae-lens-clt cache-activations`), or "
                "open it with allow_incomplete=True"
            )
        self.config: dict[str, Any] = config
        self._files: list[Path] = []
        self._layouts: list[dict[str, tuple]] = []
        counts = []
        for entry in config["shards"]:
            shard = self.path / entry["file"]
            if not shard.is_file():
                raise CLTFormatError(f"{shard}: missing ({CONFIG_FILE} lists it)")
            self._layouts.append(_shard_layout(shard, config, int(entry["n_rows"])))
            self._files.append(shard)
            counts.append(int(entry["n_rows"]))
        # shard s holds rows [starts[s], starts[s + 1])
        self._starts = torch.tensor([0, *np.cumsum(counts, dtype=np.int64).tolist()])
        if int(self._starts[-1]) != config["n_rows"]:
            raise CLTFormatError(
                f"{file}: n_rows {config['n_rows']} but its shards hold {int(self._starts[-1])}"
            )
        storage, self._np_dtype, _ = STORAGE_DTYPES[config["dtype"]]
        self._storage = storage
        self._open: OrderedDict[int, tuple[np.memmap, np.memmap]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int, int], torch.Tensor] = OrderedDict()
        self._epochs: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self.reads = 0  # rows() calls
        self.bytes_read = 0  # bytes of the rows read, in the storage dtype
        self.build_info: dict[str, Any] | None = None  # set by build_activation_cache

    # --- what the cache holds
    @property
    def n_rows(self) -> int:
        return int(self.config["n_rows"])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_shards(self) -> int:
        return len(self._files)

    @property
    def shard_files(self) -> list[Path]:
        return list(self._files)

    @property
    def n_layers(self) -> int:
        return int(self.config["n_layers"])

    @property
    def d_in(self) -> int:
        return int(self.config["d_in"])

    @property
    def d_out(self) -> int:
        return int(self.config["d_out"])

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype (``config["dtype"]`` is its name)."""
        return self._storage

    @property
    def hook_name(self) -> str:
        return str(self.config["hook_name"])

    @property
    def hook_name_out(self) -> str:
        return str(self.config["hook_name_out"])

    @property
    def model_name(self) -> str:
        return str(self.config["model_name"])

    @property
    def model_processing(self) -> dict[str, bool]:
        return dict(self.config.get("model_processing") or {})

    @property
    def complete(self) -> bool:
        return bool(self.config["complete"])

    @property
    def bytes_per_row(self) -> int:
        """Bytes of one row (``x`` and ``y`` of one token) in the storage dtype."""
        return self.n_layers * (self.d_in + self.d_out) * self._storage.itemsize

    def __repr__(self) -> str:
        return (
            f"ActivationCache({str(self.path)!r}, n_rows={self.n_rows}, n_shards={self.n_shards}, "
            f"n_layers={self.n_layers}, d_in={self.d_in}, d_out={self.d_out}, "
            f"dtype={self.config['dtype']})"
        )

    # --- reading rows (step 4)
    def _maps(self, s: int) -> tuple[np.memmap, np.memmap]:
        """Shard ``s``'s ``(x [n, L, d_in], y [n, L, d_out])`` memory maps (opened once)."""
        maps = self._open.get(s)
        if maps is None:
            maps = tuple(  # type: ignore[assignment]
                np.memmap(self._files[s], dtype=self._np_dtype, mode="r", offset=off, shape=shape)
                for off, shape in (self._layouts[s][X_NAME], self._layouts[s][Y_NAME])
            )
            self._open[s] = maps
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(s)
        return maps

    def _as_torch(self, a: np.ndarray) -> torch.Tensor:
        with warnings.catch_warnings():  # a read-only map: torch warns, we only read it
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(a)
        return t.view(self._storage) if self._storage != torch.float32 else t

    def rows(
        self,
        index: torch.Tensor,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index [n]`` in that order: ``(x [n, L, d_in], y [n, L, d_out])``."""
        dtype = to_torch_dtype(dtype)
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        n = index.numel()
        if n and (int(index.min()) < 0 or int(index.max()) >= self.n_rows):
            raise IndexError(
                f"row index out of range [0, {self.n_rows}) of the cache at {self.path}"
            )
        x = torch.empty(n, self.n_layers, self.d_in, dtype=dtype)
        y = torch.empty(n, self.n_layers, self.d_out, dtype=dtype)
        order = torch.argsort(index, stable=True)  # sorted[i] = index[order[i]]
        sorted_index = index[order]
        bounds = torch.searchsorted(sorted_index, self._starts).tolist()
        for s in range(self.n_shards):
            a, b = bounds[s], bounds[s + 1]  # the sorted asks that fall in shard s
            if a == b:
                continue
            local = (sorted_index[a:b] - self._starts[s]).numpy()
            dest = order[a:b]
            mx, my = self._maps(s)
            run = b - a == 1 or bool((np.diff(local) == 1).all())
            if run:  # one contiguous slice of the maps
                xs, ys = mx[local[0] : local[-1] + 1], my[local[0] : local[-1] + 1]
            else:  # only the asked rows are copied out of the maps
                xs, ys = mx[local], my[local]
            if b - a == 1 or bool((torch.diff(dest) == 1).all()):
                lo = int(dest[0])
                x[lo : lo + b - a].copy_(self._as_torch(xs))
                y[lo : lo + b - a].copy_(self._as_torch(ys))
            else:
                x[dest] = self._as_torch(xs).to(dtype)
                y[dest] = self._as_torch(ys).to(dtype)
        self.reads += 1
        self.bytes_read += n * self.bytes_per_row
        device = torch.device(device)
        if device.type != "cpu":
            x, y = x.to(device), y.to(device)
        return x, y

    # --- the position stream (step 5)
    def _epoch(self, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(shard order [n_shards], window starts [n_windows + 1])`` of one shuffled epoch."""
        key = (seed, epoch)
        if key not in self._epochs:
            order = torch.randperm(self.n_shards, generator=_generator(seed, epoch))
            sizes = (self._starts[1:] - self._starts[:-1])[order]
            W = self.shuffle_window_shards
            window_sizes = [int(sizes[i : i + W].sum()) for i in range(0, self.n_shards, W)]
            starts = torch.tensor([0, *np.cumsum(window_sizes, dtype=np.int64).tolist()])
            self._epochs[key] = (order, starts)
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[key]

    def _window(self, seed: int, epoch: int, w: int) -> torch.Tensor:
        """Row indices of window ``w`` of an epoch, in its shuffled order ``[n_window_rows]``."""
        key = (seed, epoch, w)
        rows = self._windows.get(key)
        if rows is None:
            order, _ = self._epoch(seed, epoch)
            W = self.shuffle_window_shards
            shards = order[w * W : (w + 1) * W].tolist()
            rows = torch.cat(
                [torch.arange(int(self._starts[s]), int(self._starts[s + 1])) for s in shards]
            )
            rows = rows[torch.randperm(len(rows), generator=_generator(seed, epoch, w))]
            self._windows[key] = rows
            while len(self._windows) > 2:
                self._windows.popitem(last=False)
        return rows

    def positions_to_rows(
        self, start: int, stop: int, shuffle: bool = True, seed: int = 0
    ) -> torch.Tensor:
        """Row indices ``[stop - start]`` at stream positions ``[start, stop)``."""
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop:
            raise ValueError(f"positions [{start}, {stop}): need 0 <= start <= stop")
        N = self.n_rows
        if N == 0:
            raise CLTFormatError(f"{self.path}: the cache holds no rows yet")
        if not shuffle:
            return torch.arange(start, stop) % N
        out = torch.empty(stop - start, dtype=torch.long)
        p = start
        while p < stop:
            epoch = p // N
            lo, hi = p - epoch * N, min(stop, (epoch + 1) * N) - epoch * N  # offsets in the epoch
            _, window_starts = self._epoch(seed, epoch)
            w = int(torch.searchsorted(window_starts, lo, right=True)) - 1
            while lo < hi:
                w_lo, w_hi = int(window_starts[w]), int(window_starts[w + 1])
                take = min(hi, w_hi) - lo
                if take > 0:
                    rows = self._window(seed, epoch, w)
                    out[p - start : p - start + take] = rows[lo - w_lo : lo - w_lo + take]
                    p, lo = p + take, lo + take
                w += 1
        return out

    def read_positions(
        self,
        start: int,
        stop: int,
        shuffle: bool = True,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at stream positions ``[start, stop)``: ``(x [n, L, d_in], y [n, L, d_out])``.

        A pure function of its arguments (step 5): reading ``[a, b)`` and ``[b, c)`` gives
        the rows of ``[a, c)``.
        """
        return self.rows(self.positions_to_rows(start, stop, shuffle, seed), dtype, device)
