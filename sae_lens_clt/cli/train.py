"""``sae-lens-clt train``: train a CLT from a YAML config file and/or flags.

The flags are built from :class:`~sae_lens_clt.training.config.CLTTrainingRunnerConfig`
itself: every field is a flag (``lr`` -> ``--lr``, ``l0_coefficient`` ->
``--l0-coefficient``) typed from the field's annotation (``typing.get_type_hints``), with
the comment next to the field as its help (read by ``simple_parsing``, SAELens' own config
parser). Flags override ``--config``; ``--import`` loads modules that register variants.
"""

from __future__ import annotations

import argparse
import importlib
import json
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml


def _scalar(tp: Any) -> Any:
    """The scalar type of an annotation (``int | None`` -> ``int``; dicts stay dicts)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp):
        return _scalar(args[0]) if len(args) == 1 else str
    return typing.get_origin(tp) or tp


def _help(cls: type, name: str, default: Any) -> str:
    from simple_parsing.docstring import get_attribute_docstring

    doc = get_attribute_docstring(cls, name)
    above = doc.comment_above if not (doc.comment_above or "").startswith("---") else ""
    text = " ".join(
        t.strip().replace("\n", " ")
        for t in (doc.comment_inline, above, doc.docstring_below)
        if t and t.strip()
    )
    text = f"{text} (default: {default!r})" if text else f"default: {default!r}"
    return text.replace("%", "%%")  # argparse formats help strings with %


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a CLT (YAML config and/or flags)",
        description="Train a cross-layer transcoder on SAELens' ActivationsStore (or on an "
        "activation cache: --cached-activations-path). Defaults train on the embedded default "
        "model and its corpus. Flags override --config. On several processes: torchrun "
        "--nproc-per-node N -m sae_lens_clt.train --config run.yaml --tensor-parallel-size T "
        "(N / T data-parallel groups).",
    )
    add_config_arguments(p)
    p.set_defaults(func=run)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--import`` and one flag per ``CLTTrainingRunnerConfig`` field (read
    back by :func:`config_from_args`)."""
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

    p.add_argument("--config", help="YAML file with CLTTrainingRunnerConfig fields")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (e.g. one that registers a transcoder variant); repeatable",
    )
    hints = typing.get_type_hints(CLTTrainingRunnerConfig)
    for f in fields(CLTTrainingRunnerConfig):
        tp = _scalar(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": None,
            "help": _help(CLTTrainingRunnerConfig, f.name, default),
        }
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif tp in (int, float, str):
            p.add_argument(flag, type=tp, metavar=tp.__name__.upper(), **kw)
        else:  # dicts: JSON on the command line
            p.add_argument(flag, type=json.loads, metavar="JSON", **kw)


def config_from_args(args: argparse.Namespace) -> Any:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

    for module in getattr(args, "imports", []):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise SystemExit(f"--import {module}: {e}") from e
    values: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise SystemExit(f"--config {path}: file not found")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"--config {path}: expected a mapping of config fields")
    for f in fields(CLTTrainingRunnerConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    try:
        return CLTTrainingRunnerConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"invalid training config: {e}") from e


def run(args: argparse.Namespace) -> int:
    from sae_lens_clt.cli.errors import check_device
    from sae_lens_clt.training.runner import CLTTrainingRunner

    cfg = config_from_args(args)
    check_device(cfg.device)
    try:
        runner = CLTTrainingRunner(cfg)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    try:
        clt = runner.run()
    except ValueError as e:  # a setting the job's layout refuses (e.g. d_sae vs. ranks)
        raise SystemExit(str(e)) from e
    layout = runner.layout
    if layout is not None and not layout.is_main:
        return 0  # under torchrun, rank 0 reports for the job
    last = runner.metrics_history[-1] if runner.metrics_history else {}
    if layout is not None and layout.world > 1:
        print(f"trained on {layout.world} processes (tp={layout.tp}, dp={layout.dp})")
    print(clt)
    if last:
        print(
            f"final: loss {last['loss']:.4f}, NMSE {last['nmse']:.4f}, L0 {last['l0']:.1f}, "
            f"{last['tokens_per_s']:.0f} tokens/s"
        )
    if cfg.output_path:
        print(f"saved to {cfg.output_path}")
    return 0
