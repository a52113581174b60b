"""Attribution graphs of a set of prompts, saved as they are done and resumable.

Algorithm (:func:`attribute_many`, ``n`` prompts):

1. **Settings**: the keyword arguments for :func:`~sae_lens_clt.attribution.attribute` are
   completed with its defaults (an unknown name is refused before anything runs), so that
   a run that spells out a default and one that does not are the same run.
2. **Manifest** (with ``out_dir``): the prompts, the per-prompt targets, those settings and
   the model / CLT description, as JSON. A folder without one gets it (written atomically)
   before the first graph; a folder with one must hold the same run: every field equal,
   except that the prompts (and targets) may extend the recorded ones (new prompts
   appended), else a ValueError names the field that differs.
3. **Trace** the prompts one at a time, in order (each ``attribute`` call batches its own
   backward passes). Prompt ``i``'s graph is ``graph_{i:05d}.safetensors``: when that file
   exists it is loaded (and checked to hold prompt ``i``'s tokens and targets) instead of
   recomputed; otherwise the graph is computed and saved at once (atomically, so a kill
   leaves whole files only). A rerun after a kill recomputes only the missing graphs.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_clt.attribution.attribute import attribute, resolve_targets, transcoder_summary
from sae_lens_clt.attribution.graph import AttributionGraph
from sae_lens_clt.attribution.inputs import Prompt, to_tokens
from sae_lens_clt.formats.atomic import atomic_write_json
from sae_lens_clt.registry import Transcoder

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sae_lens_clt.attribute_many"
MANIFEST_VERSION = 1
Targets = Sequence[str | int] | None
# attribute() arguments that do not change a graph, so they stay out of the manifest
_NOT_RECORDED = ("verbose",)


_ATTRIBUTE_KEYWORDS = {  # attribute()'s keyword arguments and their defaults
    name: p.default
    for name, p in inspect.signature(attribute).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
}


def graph_path(out_dir: str | Path, index: int) -> Path:
    """Where :func:`attribute_many` keeps prompt ``index``'s graph."""
    return Path(out_dir) / f"graph_{index:05d}.safetensors"


def attribute_many(
    model: HookedTransformer,
    clt: Transcoder,
    prompts: Sequence[Prompt],
    *,
    targets: Sequence[Targets] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **attribute_kwargs: Any,
) -> list[AttributionGraph]:
    """Attribution graphs of ``prompts``, traced one prompt at a time (module docstring).

    Args:
        model / clt: as for :func:`~sae_lens_clt.attribution.attribute`.
        prompts: strings or token-id sequences.
        targets: ``None`` (every graph explains its top logits) or one entry per prompt:
            the ``targets`` of that prompt's ``attribute`` call, e.g.
            ``[[" Austin"], [" Sacramento"], ...]`` (an entry may be ``None``).
        out_dir: a folder to save each graph in as soon as it is done
            (``graph_00000.safetensors``, … and ``manifest.json``); rerunning with the same
            folder loads the finished graphs and computes the rest. A folder holding
            another run (a different field of the manifest) is refused.
        progress: show a tqdm progress bar.
        **attribute_kwargs: the other keyword arguments of ``attribute``
            (``max_feature_nodes``, ``batch_size``, …), the same for every prompt.

    Returns:
        One :class:`AttributionGraph` per prompt, in order. (For a prompt set too large to
        hold, the files ``graph_path(out_dir, i)`` can go to
        :func:`~sae_lens_clt.circuits.aggregate.aggregate_graphs` instead, one at a time.)
    """
    prompts = list(prompts)
    if targets is not None:
        targets = list(targets)
        if len(targets) != len(prompts):
            raise ValueError(
                f"targets needs one entry per prompt: {len(targets)} for {len(prompts)} prompts"
            )
    settings = _attribute_settings(attribute_kwargs)  # step 1
    for t in targets or []:
        if t is not None:
            resolve_targets(model, t)  # refuse a bad target before anything runs
    if out_dir is not None:  # step 2
        manifest = _manifest(model, clt, prompts, targets, settings)
        _claim_folder(Path(out_dir), manifest)
    graphs: list[AttributionGraph] = []
    n_loaded = 0
    bar = tqdm(total=len(prompts), desc="attribution graphs", disable=not progress)
    try:
        for i, prompt in enumerate(prompts):  # step 3
            wanted = None if targets is None else targets[i]
            path = None if out_dir is None else graph_path(out_dir, i)
            if path is not None and path.exists():
                graph = AttributionGraph.load(path)
                _check_graph(model, graph, path, prompt, wanted)
                n_loaded += 1
            else:
                graph = attribute(model, clt, prompt, targets=wanted, **attribute_kwargs)
                if path is not None:
                    graph.save(path)
            graphs.append(graph)
            bar.set_postfix(loaded=n_loaded, traced=len(graphs) - n_loaded)
            bar.update()
    finally:
        bar.close()
    return graphs


def _attribute_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` completed with the defaults of ``attribute``'s keyword arguments
    (``targets`` and the arguments that do not change a graph left out)."""
    params = _ATTRIBUTE_KEYWORDS
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(
            f"attribute() has no keyword argument(s) {unknown}; it takes {sorted(params)}"
        )
    settings = {**params, **kwargs}
    return {k: v for k, v in settings.items() if k != "targets" and k not in _NOT_RECORDED}


# ---------------------------------------------------------------------- manifest
def _json_prompt(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, str):
        return prompt
    return [int(t) for t in torch.as_tensor(prompt).flatten().tolist()]


def _manifest(
    model: HookedTransformer,
    clt: Transcoder,
    prompts: list[Prompt],
    targets: list[Targets] | None,
    settings: dict[str, Any],
) -> dict[str, Any]:
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "model_name": str(getattr(model.cfg, "model_name", "")),
        "clt": transcoder_summary(clt),
        "attribute_kwargs": settings,
        "prompts": [_json_prompt(p) for p in prompts],
        "targets": None
        if targets is None
        else [
            None if t is None else [x if isinstance(x, str) else int(x) for x in t] for t in targets
        ],
    }
    return json.loads(json.dumps(manifest))  # as it reads back (tuples -> lists)


def _differences(old: Any, new: Any, where: str) -> list[str]:
    """Human-readable differences between two JSON values (the first few)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                out.append(
                    f"{where}[{key!r}]: {old.get(key, '<absent>')!r} in the folder, "
                    f"{new.get(key, '<absent>')!r} now"
                )
        return out
    return [] if old == new else [f"{where}: {old!r} in the folder, {new!r} now"]


def _first_difference(old: list[Any], new: list[Any], field: str) -> str | None:
    """None when ``new`` extends (or equals) ``old``; else what differs."""
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            return f"{field}[{i}] is {a!r} in the folder, {b!r} now"
    if len(new) < len(old):
        return (
            f"the folder holds {len(old)} {field}, these are only its first {len(new)}: "
            "pass all of them (more may be appended)"
        )
    return None


def _claim_folder(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Step 2: write the manifest, or check the folder's against it."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        if any(out_dir.glob("graph_*.safetensors")):
            raise ValueError(
                f"{out_dir} holds graph files but no {MANIFEST_NAME}: they are not from "
                "attribute_many (or the manifest was removed); use another out_dir"
            )
        atomic_write_json(path, manifest, indent=1)
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); use another out_dir") from None
    if not isinstance(old, dict) or old.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an attribute_many manifest; use another out_dir")
    problems: list[str] = []
    for key in ("version", "model_name", "clt", "attribute_kwargs"):
        problems += _differences(old.get(key), manifest[key], key)
    old_targets, new_targets = old.get("targets"), manifest["targets"]
    if (old_targets is None) != (new_targets is None):
        problems.append(
            f"targets: {'none' if old_targets is None else 'per-prompt targets'} in the "
            f"folder, {'none' if new_targets is None else 'per-prompt targets'} now"
        )
    for field, a, b in (("prompts", old.get("prompts", []), manifest["prompts"]),
                        ("targets", old_targets or [], new_targets or [])):  # fmt: skip
        diff = _first_difference(a, b, field)
        if diff is not None:
            problems.append(diff)
    if problems:
        raise ValueError(
            f"{out_dir} holds graphs of another attribute_many run; the manifest differs: "
            + "; ".join(problems[:5])
            + " — use another out_dir, or remove this one to start over"
        )
    if manifest != old:  # prompts appended
        atomic_write_json(path, manifest, indent=1)


def _check_graph(
    model: HookedTransformer, graph: AttributionGraph, path: Path, prompt: Prompt, wanted: Targets
) -> None:
    """A loaded graph must be the one of this prompt (tokens, and targets when named)."""
    tokens = to_tokens(model, prompt)
    if not torch.equal(graph.input_tokens, tokens):
        raise ValueError(
            f"{path} holds the graph of other tokens ({graph.input_tokens.tolist()}) than "
            f"its prompt {prompt!r} ({tokens.tolist()}); remove the file to recompute it"
        )
    if (
        wanted is not None
        and graph.logit_token_ids.tolist() != resolve_targets(model, wanted).tolist()
    ):
        raise ValueError(
            f"{path} explains the tokens {graph.logit_token_ids.tolist()}, not the targets "
            f"{list(wanted)!r}; remove the file to recompute it"
        )
