"""Named CLT releases: the YAML registry, user registrations, name resolution.

1. The registry is the package's ``releases.yaml``, then the YAML files named in
   ``$SAE_LENS_CLT_RELEASES`` (or passed to :func:`load_releases`), then
   :func:`register_release` calls; later entries win.
2. :func:`resolve` classifies a name: a release, an existing local folder, or an
   ``org/repo[/subfolder]`` Hub id; anything else raises :class:`UnknownCLTError` listing
   the closest release names (``difflib``).
3. :func:`describe` fills a local release's shapes and model from its files (headers and
   small config files only).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from sae_lens_clt.formats import folder as layouts
from sae_lens_clt.formats.errors import CLTFormatError

DEFAULT_CLT = "sae-lens-clt/tiny-states-clt"
PACKAGE_DIR = (
    Path(__file__).resolve().parents[1]
)  # package_path entries are relative to sae_lens_clt/
REGISTRY_FILE = Path(__file__).parent / "releases.yaml"
RELEASES_ENV = "SAE_LENS_CLT_RELEASES"  # os.pathsep-separated YAML files of user releases
RESERVED_ORG = "sae-lens-clt"  # names under this prefix are registry names, never Hub ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")


class UnknownCLTError(ValueError):
    """A name is neither a registered release, a local folder, nor a reachable Hub repo."""


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
        if self.layout not in (None, *layouts.LAYOUTS):
            raise ValueError(
                f"release {self.name!r}: layout must be one of {layouts.LAYOUTS} or null, "
                f"got {self.layout!r}"
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
    """Register every release of a YAML file (the format of the package's ``releases.yaml``).

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


def hint(name: str) -> str:
    close = [n for n in closest_names(name) if n != name]
    return f" Closest registered names: {', '.join(close)}." if close else ""


def unknown_name_error(name: str, why: str) -> UnknownCLTError:
    close = hint(name)
    return UnknownCLTError(
        f"unknown CLT {name!r}: {why}.{close} Run `sae-lens-clt list` for all releases, or "
        "pass an 'org/repo[/subfolder]' Hub id or a local folder."
    )


def resolve(name_or_repo: str) -> tuple[str, Release | None]:
    """Classify a name: ``("release", r)``, ``("local", None)`` or ``("hub", None)``."""
    registry = get_registry()
    if name_or_repo in registry:
        return "release", registry[name_or_repo]
    if Path(name_or_repo).expanduser().is_dir():
        return "local", None
    if name_or_repo.split("/")[0] == RESERVED_ORG:
        raise unknown_name_error(name_or_repo, f"names under {RESERVED_ORG}/ are package releases")
    if _HUB_ID.match(name_or_repo):
        return "hub", None
    raise unknown_name_error(
        name_or_repo, "not a registered release, an existing folder, or an 'org/repo' Hub id"
    )


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
        cfg = layouts.read_cfg_dict(folder)
        meta = cfg.get("metadata") or {}
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
