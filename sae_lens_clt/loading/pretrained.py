"""Fetching pretrained CLTs: from the package, a local folder or the Hugging Face Hub.

:func:`fetch` ``(name_or_repo) -> Fetched`` (the folder and the release entry):

1. **Resolve** the name (:func:`sae_lens_clt.loading.releases.resolve`): a release, a
   local folder, or an ``org/repo[/subfolder]`` Hub id.
2. **Fetch** the files: a package or local folder is used in place. From the Hub only the
   files of one layout are downloaded (``hf_hub_download`` / ``snapshot_download`` with
   ``allow_patterns``): ``cfg.json`` + ``sae_weights.safetensors`` when ``cfg.json``
   exists (SAELens layout), else ``config.yaml`` + ``W_enc_*`` + ``W_dec_*``
   (circuit-tracer layout). With ``HF_HUB_OFFLINE=1`` the same calls resolve from the cache.
3. The caller reads the folder (:func:`sae_lens_clt.formats.folder.read_folder`) and the
   registered class builds itself (``CrossLayerTranscoder.from_pretrained``);
   :meth:`Fetched.read` adds what the release entry knows and the files do not.

SAELens' own entry points get converters that return plain dicts:
:func:`sae_lens_loader` (``SAE.from_pretrained``) and :func:`sae_lens_disk_loader`
(``SAE.load_from_disk`` on any layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_lens_clt import registry
from sae_lens_clt.formats import circuit_tracer, gemma_scope_2, saelens
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.formats.folder import FolderContents, read_folder
from sae_lens_clt.hooks import recorded_processing
from sae_lens_clt.loading import releases
from sae_lens_clt.loading.hub import offline_unless_reachable
from sae_lens_clt.loading.releases import UnknownCLTError

SAELENS_SAE_ID = "clt"  # the sae_id meaning "the whole CLT" in sae_lens.SAE.from_pretrained


def _split_hub_id(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _fetch_hub(
    repo_id: str,
    subfolder: str,
    revision: str | None,
    force_download: bool = False,
    suggest: bool = True,
) -> Path:
    """Download (or find in the cache) the files of one layout; return their folder."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
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
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        with offline_unless_reachable() as offline:
            folder = _download_one_layout(repo_id, prefix, kw)
    except RepositoryNotFoundError as e:
        raise releases.unknown_name_error(
            repo_id, f"no Hub repository {repo_id!r} (or it is private/gated)"
        ) from e
    except RevisionNotFoundError as e:
        raise UnknownCLTError(f"{where}: revision {revision!r} not found on the Hub") from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise UnknownCLTError(
            f"{where}: not in the local Hugging Face cache and {why} — run once online to "
            f"cache it, or pass a local folder.{releases.hint(repo_id) if suggest else ''}"
        ) from e
    is_saelens = (folder / saelens.CFG_FILENAME).is_file()
    is_ct = (folder / "W_enc_0.safetensors").is_file() or gemma_scope_2.is_gemma_scope_2(folder)
    if not (is_saelens or is_ct):
        seen = " (offline: only files already in the cache are seen)" * offline
        raise CLTFormatError(
            f"{where}: holds neither a SAELens-layout CLT ({saelens.CFG_FILENAME}) nor a "
            "circuit-tracer-layout one (W_enc_{i}.safetensors); check the repo id / "
            f"subfolder{seen}"
        )
    return folder


def _download_one_layout(repo_id: str, prefix: str, kw: dict[str, Any]) -> Path:
    """Step 2's downloads: the SAELens layout when ``cfg.json`` exists, else
    circuit-tracer's; returns the folder that holds them."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        cfg = Path(hf_hub_download(repo_id, prefix + saelens.CFG_FILENAME, **kw))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        cfg = None  # not the SAELens layout (or not cached): try circuit-tracer's
    if cfg is not None:
        hf_hub_download(repo_id, prefix + saelens.WEIGHTS_FILENAME, **kw)
        return cfg.parent
    patterns = [circuit_tracer.CONFIG_FILENAME, "W_enc_*.safetensors", "W_dec_*.safetensors"]
    root = snapshot_download(repo_id, allow_patterns=[prefix + p for p in patterns], **kw)
    return Path(root) / prefix


def _folder(
    name_or_repo: str,
    kind: str,
    release: releases.Release | None,
    revision: str | None,
    force_download: bool,
) -> Path:
    """The local folder holding the files of a resolved name (downloading if needed)."""
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
        return _fetch_hub(  # a registered name: no "closest names" for it
            release.repo_id,
            release.subfolder,
            revision or release.revision,
            force_download,
            suggest=False,
        )
    if not folder.is_dir():
        if release.name == releases.DEFAULT_CLT:
            raise FileNotFoundError(
                f"the default CLT {releases.DEFAULT_CLT!r} is not installed: {folder} does not exist. "
                "It ships inside the sae-lens-clt package (sae_lens_clt/default_model/default_clt, "
                "SAELens layout); reinstall the package, or pass another release name, an "
                "'org/repo' Hub id or a local CLT folder."
            )
        raise FileNotFoundError(
            f"release {release.name!r} ({release.source}) points to {folder}, which does not "
            "exist: fix the path in that release entry"
        )
    return folder


@dataclass
class Fetched:
    """Where a name's files are, and the release entry it named (if any)."""

    folder: Path
    release: releases.Release | None
    name: str = ""  # what the user asked for

    @property
    def scan(self) -> str:
        """The name feature files and graph JSON know this CLT by (their ``scan``): the
        release name, else the Hub id, else the folder's name."""
        if self.release is not None:
            return self.release.name
        if Path(self.name).expanduser().is_dir():
            return Path(self.name).expanduser().resolve().name
        return self.name or self.folder.name

    @property
    def layout(self) -> str | None:
        """The release's own layout (``None``: detect it from the files)."""
        return self.release.layout if self.release is not None else None

    def read(self, dtype: str | torch.dtype | None = None, lazy: bool = False) -> FolderContents:
        """The folder's contents, with what the release records and the files do not
        (the model's name and processing) filled into the metadata."""
        contents = read_folder(self.folder, dtype=dtype, lazy=lazy, layout=self.layout)
        release = self.release
        if release is not None:
            md = contents.cfg_dict.setdefault("metadata", {})
            if release.model and not md.get("model_name"):
                md["model_name"] = release.model
            if release.model_processing and recorded_processing(md) is None:
                md["model_processing"] = dict(release.model_processing)
        return contents


def fetch(
    name_or_repo: str, *, revision: str | None = None, force_download: bool = False
) -> Fetched:
    """Resolve ``name_or_repo`` once and fetch its files (steps 1-2)."""
    kind, release = releases.resolve(name_or_repo)
    folder = _folder(name_or_repo, kind, release, revision, force_download)
    return Fetched(folder, release, name_or_repo)


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
    contents = fetch(name, force_download=force_download).read(
        dtype=(cfg_overrides or {}).get("dtype")
    )
    return _full_cfg_dict(contents.cfg_dict, device), contents.state_dict, None


def sae_lens_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A SAELens ``PretrainedSaeDiskLoader`` reading any of our layouts.

    ``sae_lens.SAE.load_from_disk(folder, converter=sae_lens_disk_loader)`` loads a
    circuit-tracer-layout folder through SAELens.
    """
    contents = read_folder(Path(path), dtype=(cfg_overrides or {}).get("dtype"))
    return _full_cfg_dict(contents.cfg_dict, device), contents.state_dict


def _full_cfg_dict(cfg_dict: dict[str, Any], device: str) -> dict[str, Any]:
    """Every field of the registered config class (SAELens fills missing ones with its own
    defaults, which need not be ours)."""
    config_class = registry.registration(str(cfg_dict.get("architecture"))).config_class
    return config_class.from_dict(dict(cfg_dict, device=device)).to_dict()
