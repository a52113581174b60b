"""Pretrained CLTs: named releases, loading from the Hub or disk, lazy decoders.

:func:`from_pretrained` ``(name_or_repo)``:

1. **Resolve** the name: a release of the registry (the package's
   ``pretrained_clts.yaml``, YAML files named in ``$SAE_LENS_CLT_RELEASES`` or passed to
   :func:`load_releases`, and :func:`register_release` calls), else an existing local
   folder, else an ``org/repo[/subfolder]`` Hub id. Anything else raises
   :class:`UnknownCLTError`, which lists the closest release names (``difflib``).
2. **Fetch** the files: a package or local folder is used in place. From the Hub only the
   files of one layout are downloaded (``hf_hub_download`` / ``snapshot_download`` with
   ``allow_patterns``): ``cfg.json`` + ``sae_weights.safetensors`` when ``cfg.json``
   exists (SAELens layout), else ``config.yaml`` + ``W_enc_*`` + ``W_dec_*``
   (circuit-tracer layout). With ``HF_HUB_OFFLINE=1`` the same calls resolve from the cache.
3. **Detect the layout** of the folder from the files it holds (:func:`detect_layout`).
4. **Read** the tensors. Eager: each tensor is read from its file straight into the buffer
   it keeps (one ``readinto``, no memory map, no second copy), so peak RAM is about the
   size of the files. Lazy: everything but the decoder is read; a :class:`LazyDecoder`
   keeps the decoder files open and reads only the rows asked for with
   ``safe_open(...).get_slice``; ``W_dec`` then holds meta tensors.
5. **Build** the CLT on the meta device and assign the tensors (no second allocation).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open

from sae_lens_clt import gemma_scope_2
from sae_lens_clt import io as clt_io
from sae_lens_clt.clt import CrossLayerTranscoder, CrossLayerTranscoderConfig
from sae_lens_clt.hooks import recorded_processing
from sae_lens_clt.io import CFG_FILENAME, CT_CONFIG_FILENAME, WEIGHTS_FILENAME, CLTFormatError

DEFAULT_CLT = "sae-lens-clt/tiny-states-clt"
PACKAGE_DIR = Path(__file__).parent  # package_path entries are relative to this folder
REGISTRY_FILE = PACKAGE_DIR / "pretrained_clts.yaml"
RELEASES_ENV = "SAE_LENS_CLT_RELEASES"  # os.pathsep-separated YAML files of user releases
SAELENS_SAE_ID = "clt"  # the sae_id meaning "the whole CLT" in sae_lens.SAE.from_pretrained
RESERVED_ORG = "sae-lens-clt"  # names under this prefix are registry names, never Hub ids

SAELENS_LAYOUT = "saelens"
CIRCUIT_TRACER_LAYOUT = "circuit_tracer"
GEMMA_SCOPE_2_LAYOUT = gemma_scope_2.LAYOUT
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")


class UnknownCLTError(ValueError):
    """A name is neither a registered release, a local folder, nor a reachable Hub repo."""


# ---------------------------------------------------------------------- registry
@dataclass
class Release:
    """One named CLT release: where it lives and what it is (``None`` = read at load time)."""

    name: str
    model: str | None = None
    repo_id: str | None = None
    package_path: str | None = None
    path: str | None = None
    subfolder: str = ""
    revision: str | None = None
    layout: str | None = None
    n_layers: int | None = None
    d_model: int | None = None
    d_sae: int | None = None
    feature_input_hook: str | None = None
    feature_output_hook: str | None = None
    dtype: str | None = None
    # how the model must be loaded: {fold_ln, center_writing_weights, center_unembed}
    model_processing: dict[str, bool] | None = None
    neuronpedia_id: str | None = None
    description: str = ""
    source: str = ""  # where the entry was registered (a YAML path or "register_release")

    def __post_init__(self) -> None:
        where = [k for k in ("repo_id", "package_path", "path") if getattr(self, k)]
        if len(where) != 1:
            raise ValueError(
                f"release {self.name!r} ({self.source or 'no source'}): give exactly one of "
                f"repo_id (Hub), package_path (inside sae_lens_clt) or path (local folder), "
                f"got {where or 'none'}"
            )
        if self.layout not in (None, SAELENS_LAYOUT, CIRCUIT_TRACER_LAYOUT, GEMMA_SCOPE_2_LAYOUT):
            raise ValueError(
                f"release {self.name!r}: layout must be {SAELENS_LAYOUT!r}, "
                f"{CIRCUIT_TRACER_LAYOUT!r}, {GEMMA_SCOPE_2_LAYOUT!r} or null, got {self.layout!r}"
            )

    def location(self) -> str:
        """Where the files live: ``hf://org/repo[/sub][@rev]``, ``package:...`` or a path."""
        if self.repo_id:
            sub = f"/{self.subfolder}" if self.subfolder else ""
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.repo_id}{sub}{rev}"
        if self.package_path:
            return f"package:sae_lens_clt/{self.package_path}"
        return str(self.local_folder())

    def local_folder(self) -> Path | None:
        """The folder of a package or local release (``None`` for a Hub release)."""
        if self.package_path:
            return PACKAGE_DIR / self.package_path / self.subfolder
        if self.path:
            return Path(self.path).expanduser() / self.subfolder
        return None


_FIELDS = {f.name for f in fields(Release)} - {"name", "source"}
_user_releases: dict[str, Release] = {}


def _parse_releases(data: Any, source: str, base: Path | None) -> dict[str, Release]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of release name -> fields")
    out: dict[str, Release] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: release {name!r} must be a mapping of fields")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise ValueError(
                f"{source}: release {name!r} has unknown field(s) {unknown}; "
                f"allowed: {sorted(_FIELDS)}"
            )
        entry = dict(entry)
        if entry.get("path") and base is not None and not Path(entry["path"]).is_absolute():
            entry["path"] = str(base / entry["path"])  # relative to the YAML file
        out[str(name)] = Release(name=str(name), source=source, **entry)
    return out


def _read_yaml(path: Path) -> dict[str, Release]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"cannot read release file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    return _parse_releases(data, str(path), path.parent)


def load_releases(path: str | Path, *, overwrite: bool = False) -> list[str]:
    """Register every release of a YAML file (the format of ``pretrained_clts.yaml``).

    Relative ``path`` entries are relative to the YAML file. Returns the names added.
    """
    releases = _read_yaml(Path(path))
    for release in releases.values():
        _add(release, overwrite)
    return list(releases)


def register_release(name: str, *, overwrite: bool = False, **release_fields: Any) -> Release:
    """Register a release by name, e.g. ``register_release("me/my-clt", repo_id="me/clt")``.

    Fields are those of :class:`Release` (``repo_id`` / ``path`` / ``package_path``,
    ``model``, ``subfolder``, ``revision``, ``layout``, shapes, hooks, ...).
    """
    unknown = sorted(set(release_fields) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown release field(s) {unknown}; allowed: {sorted(_FIELDS)}")
    release = Release(name=name, source="register_release", **release_fields)
    _add(release, overwrite)
    return release


def unregister_release(name: str) -> None:
    """Forget a release added with :func:`register_release` / :func:`load_releases`."""
    _user_releases.pop(name, None)


def _add(release: Release, overwrite: bool) -> None:
    current = get_registry().get(release.name)
    if current is not None and not overwrite:
        raise ValueError(
            f"release {release.name!r} is already registered (from {current.source}): "
            "pick another name or pass overwrite=True"
        )
    _user_releases[release.name] = release


def get_registry() -> dict[str, Release]:
    """All releases: the package's, then ``$SAE_LENS_CLT_RELEASES`` files, then user calls."""
    registry = _read_yaml(REGISTRY_FILE)
    for item in os.environ.get(RELEASES_ENV, "").split(os.pathsep):
        if item.strip():
            registry.update(_read_yaml(Path(item.strip()).expanduser()))
    registry.update(_user_releases)
    return registry


def closest_names(name: str, n: int = 5) -> list[str]:
    """Registered release names closest to ``name`` (best first)."""
    names = list(get_registry())
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.4)
    lowered = {k.lower(): k for k in names}
    close += [lowered[k] for k in difflib.get_close_matches(name.lower(), list(lowered), n=n)]
    return list(dict.fromkeys(close))[:n]


def _hint(name: str) -> str:
    close = [n for n in closest_names(name) if n != name]
    return f" Closest registered names: {', '.join(close)}." if close else ""


def _unknown(name: str, why: str) -> UnknownCLTError:
    hint = _hint(name)
    return UnknownCLTError(
        f"unknown CLT {name!r}: {why}.{hint} Run `sae-lens-clt list` for all releases, or "
        "pass an 'org/repo[/subfolder]' Hub id or a local folder."
    )


# ---------------------------------------------------------------------- layouts
def detect_layout(folder: Path) -> str:
    """``"saelens"`` (cfg.json + sae_weights.safetensors) or ``"circuit_tracer"`` (W_enc_0...)."""
    if not folder.is_dir():
        raise CLTFormatError(f"{folder}: not a folder")
    if (folder / CFG_FILENAME).is_file() and (folder / WEIGHTS_FILENAME).is_file():
        return SAELENS_LAYOUT
    if (folder / "W_enc_0.safetensors").is_file():
        return CIRCUIT_TRACER_LAYOUT
    if gemma_scope_2.is_gemma_scope_2(folder):
        return GEMMA_SCOPE_2_LAYOUT
    found = sorted(p.name for p in folder.iterdir())[:12]
    raise CLTFormatError(
        f"{folder}: holds no CLT: expected {CFG_FILENAME} + {WEIGHTS_FILENAME} (SAELens "
        f"layout), W_enc_{{i}}/W_dec_{{i}}.safetensors + {CT_CONFIG_FILENAME} "
        f"(circuit-tracer layout) or a {CT_CONFIG_FILENAME} listing 'transcoders' files "
        f"(Gemma Scope 2 layout); found {found}"
    )


# ---------------------------------------------------------------------- direct reads
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


def _read_header(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """``(data_start, {name: {dtype, shape, data_offsets}})`` of a safetensors file."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                raise ValueError(f"implausible header length {n}")
            header = json.loads(f.read(n))
    except FileNotFoundError as e:
        raise CLTFormatError(f"{path}: file not found") from e
    except (OSError, ValueError) as e:
        raise CLTFormatError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt: "
            "re-download or re-save it"
        ) from e
    header.pop("__metadata__", None)
    return 8 + n, header


def read_tensors_direct(
    path: Path, names: Iterable[str] | None = None, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Read tensors of a safetensors file straight into their final CPU buffers.

    Unlike ``safe_open(...).get_tensor`` (which maps the file and copies out of the map),
    each tensor costs one allocation of its own size; converting to ``dtype`` costs one more
    of the converted tensor only while that tensor is converted.
    """
    start, header = _read_header(path)
    wanted = list(header) if names is None else list(names)
    missing = [n for n in wanted if n not in header]
    if missing:
        raise CLTFormatError(
            f"{path}: missing tensor(s) {missing}; the file holds {sorted(header)}"
        )
    size = path.stat().st_size
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb", buffering=0) as f:
        for name in wanted:
            info = header[name]
            if info["dtype"] not in _ST_DTYPES:
                raise CLTFormatError(
                    f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}"
                )
            file_dtype, shape = _ST_DTYPES[info["dtype"]], tuple(info["shape"])
            begin, end = info["data_offsets"]
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * file_dtype.itemsize or start + end > size:
                raise CLTFormatError(
                    f"{path}: tensor {name!r} is truncated or its header is inconsistent; "
                    "re-download or re-save the file"
                )
            buf = torch.empty(end - begin, dtype=torch.uint8)
            if end > begin:
                f.seek(start + begin)
                view = memoryview(buf.numpy())
                got = 0
                while got < len(view):
                    n = f.readinto(view[got:])
                    if not n:
                        raise CLTFormatError(f"{path}: unexpected end of file in {name!r}")
                    got += n
            t = buf.view(file_dtype).view(shape) if numel else torch.empty(shape, dtype=file_dtype)
            out[name] = t if dtype is None or dtype == file_dtype else t.to(dtype)
            del buf, t
    return out


# ---------------------------------------------------------------------- lazy decoder
class LazyDecoder:
    """The decoder ``W_dec[s]`` ``[F, L - s, d_out]`` left on disk, read row by row on demand.

    ``sources[s]`` is ``(file, tensor name)``. Rows are read with
    ``safe_open(file).get_slice(name)[a:b]``, one read per run of consecutive feature ids,
    so a call costs the bytes of the rows asked for. Files are opened per call and closed
    after it: safetensors memory-maps them, and a long-lived map would keep every page it
    ever touched resident. ``rows_read`` / ``bytes_read`` / ``reads`` count what was read.
    """

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
        self.d_sae, self.d_out = d_sae, d_out
        self.dtype, self.device = dtype, torch.device(device)
        self._norms: torch.Tensor | None = None
        self.rows_read = self.bytes_read = self.reads = 0

    def _open(self, layer: int) -> Any:
        return safe_open(str(self.sources[layer][0]), framework="pt", device="cpu")

    def _count(self, t: torch.Tensor, n_rows: int) -> None:
        self.reads += 1
        self.rows_read += n_rows
        self.bytes_read += t.numel() * t.element_size()

    def rows(self, layer: int, feature_ids: torch.Tensor) -> torch.Tensor:
        """Decoder vectors of ``feature_ids`` (read at ``layer``): ``[n, L - layer, d_out]``."""
        ids = torch.as_tensor(feature_ids).detach().to("cpu", torch.int64).reshape(-1)
        width = self.n_layers - layer
        if ids.numel() == 0:
            return torch.empty(0, width, self.d_out, dtype=self.dtype, device=self.device)
        if int(ids.min()) < 0 or int(ids.max()) >= self.d_sae:
            raise IndexError(f"feature ids must lie in [0, {self.d_sae}), got {ids.tolist()[:8]}")
        unique, inverse = ids.unique(return_inverse=True)  # sorted
        breaks = (torch.nonzero(unique[1:] - unique[:-1] != 1).flatten() + 1).tolist()
        block = torch.empty(unique.numel(), width, self.d_out, dtype=self.dtype)
        with self._open(layer) as f:
            sl = f.get_slice(self.sources[layer][1])
            for a, b in zip([0, *breaks], [*breaks, unique.numel()], strict=True):
                part = sl[int(unique[a]) : int(unique[b - 1]) + 1]  # [run, L - layer, d_out]
                self._count(part, b - a)
                block[a:b] = part
                del part
        return block[inverse].to(device=self.device)

    def block(self, source: int, target: int) -> torch.Tensor:
        """The ``source -> target`` decoder ``[d_sae, d_out]`` (reads that block only)."""
        if not 0 <= source <= target < self.n_layers:
            raise IndexError(f"no decoder from layer {source} to layer {target}")
        with self._open(source) as f:
            part = f.get_slice(self.sources[source][1])[:, target - source : target - source + 1]
        self._count(part, self.d_sae)
        return part[:, 0].to(device=self.device, dtype=self.dtype)

    def norms(self, chunk: int = 4096) -> torch.Tensor:
        """Concatenated decoder norm of every feature ``[L, d_sae]`` (reads all, in chunks)."""
        if self._norms is None:
            out = torch.empty(self.n_layers, self.d_sae, dtype=torch.float32)
            for s in range(self.n_layers):
                with self._open(s) as f:
                    sl = f.get_slice(self.sources[s][1])
                    for a in range(0, self.d_sae, chunk):
                        part = sl[a : a + chunk]
                        self._count(part, part.shape[0])
                        out[s, a : a + part.shape[0]] = part.float().flatten(1).norm(dim=1)
            self._norms = out
        return self._norms.to(device=self.device, dtype=self.dtype)

    def reset_counters(self) -> None:
        self.rows_read = self.bytes_read = self.reads = 0


# ---------------------------------------------------------------------- folder loading
def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'float32' or 'bfloat16'")
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_folder(
    folder: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    lazy: bool = False,
    layout: str | None = None,
) -> CrossLayerTranscoder:
    """Load a CLT folder of either layout (see the module docstring, steps 3-5).

    ``dtype=None`` keeps the dtype of the files. ``lazy=True`` leaves the decoder on disk.
    ``layout`` (``"saelens"`` or ``"circuit_tracer"``) picks one where a folder holds both
    (as Hub folders written by :func:`sae_lens_clt.hub.push_to_hub` do); None detects it,
    preferring the SAELens layout.
    """
    folder = Path(folder)
    if layout is None:
        layout = detect_layout(folder)
    elif layout == CIRCUIT_TRACER_LAYOUT:
        if not folder.is_dir():
            raise CLTFormatError(f"{folder}: not a folder")
        clt_io.circuit_tracer_n_layers(folder)  # refuses folders without W_enc_{i} files
    elif layout not in (SAELENS_LAYOUT, GEMMA_SCOPE_2_LAYOUT):
        raise ValueError(
            f"layout must be {SAELENS_LAYOUT!r}, {CIRCUIT_TRACER_LAYOUT!r}, "
            f"{GEMMA_SCOPE_2_LAYOUT!r} or None, got {layout!r}"
        )
    want = _torch_dtype(dtype)
    if layout == GEMMA_SCOPE_2_LAYOUT:
        if lazy:
            warnings.warn(
                "the Gemma Scope 2 layout keeps each layer's decoder for all layers in one "
                "tensor; loading it eagerly (lazy=True is not supported for this layout)",
                UserWarning,
                stacklevel=2,
            )
        cfg_dict, state = gemma_scope_2.read(folder, want)
        cfg_dict["device"] = device
        try:
            cfg = CrossLayerTranscoderConfig.from_dict(cfg_dict)
        except (TypeError, ValueError) as e:
            raise CLTFormatError(f"{folder}: invalid CLT config ({e})") from e
        return CrossLayerTranscoder.from_state_dict(cfg, state)
    if layout == SAELENS_LAYOUT:
        cfg_dict = clt_io.read_cfg_json(folder)
        weights = folder / WEIGHTS_FILENAME
        names = list(clt_io.tensor_shapes(weights))
        if lazy:
            names = [n for n in names if not n.startswith("W_dec.")]
        state = read_tensors_direct(weights, names, want)
        n_layers = int(cfg_dict.get("n_layers", 0))
        sources = [(weights, f"W_dec.{s}") for s in range(n_layers)]
        file_dtype = str(cfg_dict.get("dtype", "float32"))
    else:
        cfg_dict = clt_io.circuit_tracer_cfg_dict(folder)
        state, sources = _read_circuit_tracer(folder, cfg_dict, want, lazy)
        file_dtype = cfg_dict["dtype"]
    cfg_dict["dtype"] = _dtype_name(want) if want is not None else file_dtype
    cfg_dict["device"] = device
    try:
        cfg = CrossLayerTranscoderConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:
        raise CLTFormatError(f"{folder}: invalid CLT config ({e})") from e
    if not lazy:
        return CrossLayerTranscoder.from_state_dict(cfg, state)
    return _build_lazy(cfg, state, sources, folder)


def _read_circuit_tracer(
    folder: Path, cfg_dict: dict[str, Any], dtype: torch.dtype | None, lazy: bool
) -> tuple[dict[str, torch.Tensor], list[tuple[Path, str]]]:
    """State dict of a circuit-tracer folder, one layer file at a time (peak = final size)."""
    L, F, d = cfg_dict["n_layers"], cfg_dict["d_sae"], cfg_dict["d_in"]
    jump, skip = cfg_dict["activation_fn"] == "jumprelu", cfg_dict["skip_connection"]
    dt = dtype or _ST_DTYPES_BY_NAME[cfg_dict["dtype"]]
    state: dict[str, torch.Tensor] = {
        "W_enc": torch.empty(L, d, F, dtype=dt),
        "b_enc": torch.empty(L, F, dtype=dt),
        "b_dec": torch.empty(L, d, dtype=dt),
    }
    if jump:
        state["threshold"] = torch.empty(L, F, dtype=dt)
    if skip:
        state["W_skip"] = torch.empty(L, d, d, dtype=dt)
    sources = []
    for i in range(L):
        enc_path = folder / f"W_enc_{i}.safetensors"
        want = {f"W_enc_{i}": (F, d), f"b_enc_{i}": (F,), f"b_dec_{i}": (d,)}
        if jump:
            want[f"threshold_{i}"] = (F,)
        if skip:
            want[f"W_skip_{i}"] = (d, d)
        _check_shapes(enc_path, want)
        enc = read_tensors_direct(enc_path, list(want))
        state["W_enc"][i].copy_(enc.pop(f"W_enc_{i}").T)  # [F, d] on disk -> [d, F]
        for key in ("b_enc", "b_dec", "threshold", "W_skip"):
            if key in state:
                state[key][i].copy_(enc.pop(f"{key}_{i}"))
        del enc
        dec_path = folder / f"W_dec_{i}.safetensors"
        _check_shapes(dec_path, {f"W_dec_{i}": (F, L - i, d)})
        sources.append((dec_path, f"W_dec_{i}"))
        if not lazy:
            state[f"W_dec.{i}"] = read_tensors_direct(dec_path, [f"W_dec_{i}"], dtype)[f"W_dec_{i}"]
    return state, sources


_ST_DTYPES_BY_NAME = {_dtype_name(v): v for v in _ST_DTYPES.values()}


def _check_shapes(path: Path, want: dict[str, tuple[int, ...]]) -> None:
    if not path.is_file():
        raise CLTFormatError(
            f"{path}: file not found; a circuit-tracer-layout CLT needs W_enc_{{i}} and "
            "W_dec_{i}.safetensors for every layer (an interrupted download? fetch it again)"
        )
    shapes = clt_io.tensor_shapes(path)
    missing = [k for k in want if k not in shapes]
    wrong = [
        f"{k}: expected {list(s)}, got {list(shapes[k])}"
        for k, s in want.items()
        if k in shapes and tuple(shapes[k]) != s
    ]
    if missing or wrong:
        raise CLTFormatError(
            f"{path}: "
            + "; ".join(
                ([f"missing tensor(s) {missing}"] if missing else [])
                + ([f"wrong shape(s): {'; '.join(wrong)}"] if wrong else [])
            )
            + "; the files of this folder disagree with each other (layers, d_model or "
            "features per layer)"
        )


def _build_lazy(
    cfg: CrossLayerTranscoderConfig,
    state: dict[str, torch.Tensor],
    sources: list[tuple[Path, str]],
    folder: Path,
) -> CrossLayerTranscoder:
    """A CLT whose decoder stays on disk: ``W_dec`` holds meta tensors, rows come from disk."""
    L, F, do = cfg.n_layers, cfg.d_sae, cfg.d_out
    device = cfg.device
    dtype = getattr(torch, cfg.dtype)
    for s in range(L):
        state[f"W_dec.{s}"] = torch.empty(F, L - s, do, dtype=dtype, device="meta")
    clt_io.check_state_dict(state, cfg, source=str(folder))
    for s, (path, name) in enumerate(sources):
        shape = clt_io.tensor_shapes(path).get(name)
        if shape != (F, L - s, do):
            raise CLTFormatError(
                f"{path}: tensor {name!r} has shape {shape}, expected {[F, L - s, do]}"
            )
    cfg.device = "meta"
    clt = CrossLayerTranscoder(cfg)
    cfg.device = device
    clt.device = torch.device(device)
    state = {k: v if v.is_meta else v.to(device=device, dtype=dtype) for k, v in state.items()}
    clt.load_state_dict(state, assign=True)
    clt.lazy_decoder = LazyDecoder(sources, F, do, dtype, device)
    return clt


# ---------------------------------------------------------------------- fetching
def _split_hub_id(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _fetch_hub(
    repo_id: str, subfolder: str, revision: str | None, force_download: bool = False
) -> Path:
    """Download (or find in the cache) the files of one layout; return their folder."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    prefix = f"{subfolder.strip('/')}/" if subfolder.strip("/") else ""
    kw: dict[str, Any] = {"revision": revision, "force_download": force_download}
    where = f"{repo_id}{'/' + prefix.rstrip('/') if prefix else ''}" + (
        f"@{revision}" if revision else ""
    )
    try:
        try:
            cfg = Path(hf_hub_download(repo_id, prefix + CFG_FILENAME, **kw))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            cfg = None  # not the SAELens layout (or not cached): try circuit-tracer's
        if cfg is not None:
            hf_hub_download(repo_id, prefix + WEIGHTS_FILENAME, **kw)
            return cfg.parent
        root = snapshot_download(
            repo_id,
            allow_patterns=[
                prefix + CT_CONFIG_FILENAME,
                prefix + "W_enc_*.safetensors",
                prefix + "W_dec_*.safetensors",
            ],
            **kw,
        )
    except RepositoryNotFoundError as e:
        raise _unknown(repo_id, f"no Hub repository {repo_id!r} (or it is private/gated)") from e
    except RevisionNotFoundError as e:
        raise UnknownCLTError(f"{where}: revision {revision!r} not found on the Hub") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise UnknownCLTError(
            f"{where}: not in the local Hugging Face cache and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE is set or there is no network): run once online to cache it, "
            f"or pass a local folder.{_hint(repo_id)} ({e})"
        ) from e
    folder = Path(root) / prefix
    if not (folder / "W_enc_0.safetensors").is_file() and not gemma_scope_2.is_gemma_scope_2(
        folder
    ):
        from huggingface_hub import constants

        offline = " (offline: only files already in the cache are seen)" * bool(
            constants.HF_HUB_OFFLINE
        )
        raise CLTFormatError(
            f"{where}: holds neither a SAELens-layout CLT ({CFG_FILENAME}) nor a "
            "circuit-tracer-layout one (W_enc_{i}.safetensors); check the repo id / "
            f"subfolder{offline}"
        )
    return folder


def resolve(name_or_repo: str) -> tuple[str, Release | None]:
    """Classify a name: ``("release", r)``, ``("local", None)`` or ``("hub", None)``."""
    registry = get_registry()
    if name_or_repo in registry:
        return "release", registry[name_or_repo]
    if Path(name_or_repo).expanduser().is_dir():
        return "local", None
    if name_or_repo.split("/")[0] == RESERVED_ORG:
        raise _unknown(name_or_repo, f"names under {RESERVED_ORG}/ are package releases")
    if _HUB_ID.match(name_or_repo):
        return "hub", None
    raise _unknown(
        name_or_repo, "not a registered release, an existing folder, or an 'org/repo' Hub id"
    )


def fetch(name_or_repo: str, *, revision: str | None = None, force_download: bool = False) -> Path:
    """The local folder holding ``name_or_repo``'s files (downloading from the Hub if needed)."""
    kind, release = resolve(name_or_repo)
    if kind == "local":
        return Path(name_or_repo).expanduser()
    if kind == "hub":
        repo_id, sub = _split_hub_id(name_or_repo)
        try:
            return _fetch_hub(repo_id, sub, revision, force_download)
        except UnknownCLTError as e:
            if name_or_repo.startswith((".", "/", "~")):
                raise UnknownCLTError(f"{name_or_repo}: no such folder") from e
            raise
    assert release is not None
    folder = release.local_folder()
    if folder is None:
        assert release.repo_id is not None
        return _fetch_hub(
            release.repo_id, release.subfolder, revision or release.revision, force_download
        )
    if not folder.is_dir():
        if release.name == DEFAULT_CLT:
            raise FileNotFoundError(
                f"the default CLT {DEFAULT_CLT!r} is not installed: {folder} does not exist. "
                "It ships inside the sae-lens-clt package (sae_lens_clt/data/default_clt, "
                "SAELens layout); reinstall the package, or pass another release name, an "
                "'org/repo' Hub id or a local CLT folder."
            )
        raise FileNotFoundError(
            f"release {release.name!r} ({release.source}) points to {folder}, which does not "
            "exist: fix the path in that release entry"
        )
    return folder


def from_pretrained(
    name_or_repo: str,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    lazy: bool = False,
    force_download: bool = False,
) -> CrossLayerTranscoder:
    """Load a CLT by release name, ``org/repo[/subfolder]`` Hub id or local folder.

    Args:
        name_or_repo: e.g. ``sae_lens_clt.DEFAULT_CLT``, ``"mntss/clt-gemma-2-2b-426k"``,
            ``"me/my-clts/run-3"`` or ``"./my_clt"``. ``sae-lens-clt list`` shows releases.
        revision: Hub branch, tag or commit (overrides the release's own revision).
        device: where the CLT lives.
        dtype: e.g. ``"float32"``; ``None`` keeps the dtype of the files.
        lazy: leave the decoder on disk and read the rows of active features on demand
            (``decode`` / ``decode_sparse`` / ``decoder_rows`` use it); the CLT then
            cannot be moved with ``.to()`` or saved.
        force_download: re-download Hub files even if cached.
    """
    folder = fetch(name_or_repo, revision=revision, force_download=force_download)
    return _load_fetched(name_or_repo, folder, device=device, dtype=dtype, lazy=lazy)


def _load_fetched(name_or_repo: str, folder: Path, **kwargs: Any) -> CrossLayerTranscoder:
    clt = load_folder(folder, **kwargs)
    _, release = resolve(name_or_repo)
    md = clt.cfg.metadata
    if release is not None and release.model and not md.model_name:
        md.model_name = release.model
    if release is not None and release.model_processing and recorded_processing(md) is None:
        md.model_processing = dict(release.model_processing)
    return clt


def from_pretrained_with_labels(
    name_or_repo: str, *, device: str = "cpu"
) -> tuple[CrossLayerTranscoder, dict[tuple[int, int], str]]:
    """:func:`from_pretrained` plus the feature labels cached next to the CLT (``{}`` if
    none), fetching the folder once."""
    from sae_lens_clt.labels import label_map, load_labels

    folder = fetch(name_or_repo)
    clt = _load_fetched(name_or_repo, folder, device=device)
    return clt, label_map(load_labels(folder))


# ---------------------------------------------------------------------- SAELens interop
def sae_lens_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """A SAELens ``PretrainedSaeHuggingfaceLoader`` for our releases and Hub CLTs.

    ``sae_lens.SAE.from_pretrained(release, "clt", converter=sae_lens_loader)`` loads the
    whole CLT of ``release`` (a registry name, or an ``org/repo`` Hub id); any other
    ``sae_id`` is a subfolder of that repo.
    """
    name = repo_id if folder_name in ("", ".", SAELENS_SAE_ID) else f"{repo_id}/{folder_name}"
    dtype = (cfg_overrides or {}).get("dtype")
    clt = from_pretrained(name, device=device, dtype=dtype, force_download=force_download)
    return clt.cfg.to_dict(), dict(clt.state_dict()), None


def sae_lens_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A SAELens ``PretrainedSaeDiskLoader`` reading either layout.

    ``sae_lens.SAE.load_from_disk(folder, converter=sae_lens_disk_loader)`` loads a
    circuit-tracer-layout folder through SAELens.
    """
    dtype = (cfg_overrides or {}).get("dtype")
    clt = load_folder(Path(path), device=device, dtype=dtype)
    return clt.cfg.to_dict(), dict(clt.state_dict())


def describe(release: Release) -> Release:
    """``release`` with missing shapes / model filled from its files when they are local.

    Reads only ``cfg.json`` or safetensors headers; Hub releases are returned unchanged.
    """
    folder = release.local_folder()
    if (
        folder is None
        or not folder.is_dir()
        or None
        not in (
            release.n_layers,
            release.d_sae,
            release.d_model,
            release.model,
        )
    ):
        return release
    try:
        if detect_layout(folder) == SAELENS_LAYOUT:
            cfg = clt_io.read_cfg_json(folder)
            meta = cfg.get("metadata") or {}
        else:
            cfg = clt_io.circuit_tracer_cfg_dict(folder)
            meta = cfg["metadata"]
    except CLTFormatError:
        return release
    filled = asdict(release)
    for key, value in (
        ("n_layers", cfg.get("n_layers")),
        ("d_sae", cfg.get("d_sae")),
        ("d_model", cfg.get("d_in")),
        ("model", meta.get("model_name")),
    ):
        if filled[key] is None:
            filled[key] = value
    return Release(**filled)


def release_table() -> list[dict[str, Any]]:
    """One dict per release (:func:`describe`'d :class:`Release` fields plus ``location``)."""
    return [{**asdict(describe(r)), "location": r.location()} for r in get_registry().values()]
