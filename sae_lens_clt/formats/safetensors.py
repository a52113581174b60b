"""The one safetensors reader: header, whole tensors and row ranges, with clear errors.

1. :func:`read_header` parses the 8-byte length and the JSON header (never code: no pickle).
2. :func:`read_tensors` reads each tensor straight into the buffer it keeps (one
   ``readinto``, no memory map, no second copy), so peak memory is the size of what is
   read; a dtype conversion costs one more copy of one tensor at a time.
3. :func:`read_rows` reads rows ``[a, b)`` of a tensor (optionally one index of its second
   dimension) by seeking to them: what is read is what is asked for.

Missing files or tensors, truncated data and inconsistent headers raise
:class:`~sae_lens_clt.formats.errors.CLTFormatError` naming the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from sae_lens_clt.formats.errors import CLTFormatError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100_000_000


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def to_torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32"`` / ``"torch.float32"`` / a ``torch.dtype`` / ``None`` -> ``torch.dtype | None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    from sae_lens.util import str_to_dtype  # SAELens' own names for dtypes

    try:
        return str_to_dtype(str(dtype))
    except ValueError as e:
        raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'float32' or 'bfloat16'") from e


def read_header(path: str | Path) -> tuple[int, dict[str, dict[str, Any]], dict[str, str]]:
    """``(data_start, {name: {dtype, shape, data_offsets}}, metadata)`` of a safetensors file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < MAX_HEADER_BYTES:
                raise ValueError(f"implausible header length {n}")
            header = json.loads(f.read(n))
    except FileNotFoundError as e:
        raise CLTFormatError(f"{path}: file not found") from e
    except (OSError, ValueError) as e:
        raise CLTFormatError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt: "
            "re-download or re-save it"
        ) from e
    if not isinstance(header, dict):
        raise CLTFormatError(f"{path}: not a safetensors file (header is not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    return 8 + n, header, metadata


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of a file, from its header only."""
    _, header, _ = read_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items()}


def tensor_dtype(path: str | Path, name: str) -> torch.dtype:
    """The dtype of one tensor, from the header."""
    _, header, _ = read_header(path)
    if name not in header:
        raise CLTFormatError(f"{path}: missing tensor {name!r}; the file holds {sorted(header)}")
    return _dtype(path, name, header[name])


def file_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a file (``{}`` when there are none)."""
    return read_header(path)[2]


def _dtype(path: Any, name: str, info: dict[str, Any]) -> torch.dtype:
    if info.get("dtype") not in DTYPES:
        raise CLTFormatError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')}")
    return DTYPES[info["dtype"]]


def _checked(path: Path, name: str, info: dict[str, Any], start: int, size: int):
    dtype, shape = _dtype(path, name, info), tuple(info["shape"])
    begin, end = info["data_offsets"]
    if end - begin != math.prod(shape) * dtype.itemsize or start + end > size:
        raise CLTFormatError(
            f"{path}: tensor {name!r} is truncated or its header is inconsistent; "
            "re-download or re-save the file"
        )
    return dtype, shape, start + begin


def _read_into(f: BinaryIO, offset: int, buf: torch.Tensor, path: Path, name: str) -> None:
    view = memoryview(buf.numpy()).cast("B")
    f.seek(offset)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise CLTFormatError(f"{path}: unexpected end of file in {name!r}")
        got += n


def _missing(path: Path, wanted: list[str], header: dict[str, Any]) -> None:
    missing = [n for n in wanted if n not in header]
    if missing:
        raise CLTFormatError(
            f"{path}: missing tensor(s) {missing}; the file holds {sorted(header)}"
        )


def read_tensors(
    path: str | Path, names: Iterable[str] | None = None, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a file (all, or ``names``) on the CPU, optionally converted to ``dtype``."""
    path = Path(path)
    start, header, _ = read_header(path)
    wanted = list(header) if names is None else list(names)
    _missing(path, wanted, header)
    size = path.stat().st_size
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for name in wanted:
            file_dtype, shape, offset = _checked(path, name, header[name], start, size)
            t = torch.empty(shape, dtype=file_dtype)
            if t.numel():
                _read_into(f, offset, t.view(-1).view(torch.uint8), path, name)
            out[name] = t if dtype is None or dtype == file_dtype else t.to(dtype)
            del t
    return out


def read_rows(
    path: str | Path, name: str, runs: Iterable[tuple[int, int]], column: int | None = None
) -> tuple[torch.Tensor, int]:
    """Rows ``[a, b)`` of tensor ``name`` for each run, concatenated: ``([n, *rest], bytes)``.

    With ``column``, only index ``column`` of the second dimension of each row is read
    (``[n, *rest[1:]]``). Returns the tensor (file dtype, CPU) and the bytes read.
    """
    path = Path(path)
    start, header, _ = read_header(path)
    _missing(path, [name], header)
    dtype, shape, offset = _checked(path, name, header[name], start, path.stat().st_size)
    row_numel = math.prod(shape[1:])
    runs = list(runs)
    n = sum(b - a for a, b in runs)
    if column is None:
        out = torch.empty(n, *shape[1:], dtype=dtype)
    else:
        if not 0 <= column < shape[1]:
            raise IndexError(f"{path}: column {column} out of range for {name!r} {list(shape)}")
        out = torch.empty(n, *shape[2:], dtype=dtype)
    flat = out.view(n, -1)
    item = dtype.itemsize
    read = 0
    with open(path, "rb", buffering=0) as f:
        at = 0
        for a, b in runs:
            if not 0 <= a <= b <= shape[0]:
                raise IndexError(f"{path}: rows [{a}, {b}) out of range for {name!r} {list(shape)}")
            if column is None:
                part = flat[at : at + b - a]
                _read_into(
                    f, offset + a * row_numel * item, part.view(-1).view(torch.uint8), path, name
                )
                read += part.numel() * item
            else:
                width = row_numel // shape[1]
                for r in range(a, b):
                    part = flat[at + r - a]
                    pos = offset + (r * row_numel + column * width) * item
                    _read_into(f, pos, part.view(torch.uint8), path, name)
                    read += width * item
            at += b - a
    return out, read
