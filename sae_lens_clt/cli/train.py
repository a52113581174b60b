"""``sae-lens-clt train``: train a CLT from a YAML config file and/or flags.

Every field of :class:`~sae_lens_clt.training.runner.CLTTrainingRunnerConfig` is a flag
(``lr`` -> ``--lr``, ``l0_coefficient`` -> ``--l0-coefficient``); flags override the file.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml


def _field_type(tp: Any) -> Any:
    """The scalar type of a dataclass field (``int | None`` -> ``int``)."""
    if isinstance(tp, str):
        tp = eval(tp, vars(typing), {})  # annotations are strings (from __future__)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return args[0] if args else str
    return tp


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

    p = subparsers.add_parser(
        "train",
        help="train a CLT (YAML config and/or flags)",
        description="Train a cross-layer transcoder on SAELens' ActivationsStore. Defaults "
        "train on the embedded default model and its corpus. Flags override --config.",
    )
    p.add_argument("--config", help="YAML file with CLTTrainingRunnerConfig fields")
    for f in fields(CLTTrainingRunnerConfig):
        tp = _field_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif tp in (int, float, str):
            p.add_argument(flag, dest=f.name, type=tp, default=None, metavar=tp.__name__.upper())
        else:  # dicts: JSON on the command line
            p.add_argument(flag, dest=f.name, type=json.loads, default=None, metavar="JSON")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

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
    from sae_lens_clt.training.runner import CLTTrainingRunner

    cfg = config_from_args(args)
    try:
        runner = CLTTrainingRunner(cfg)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    clt = runner.run()
    last = runner.metrics_history[-1] if runner.metrics_history else {}
    print(clt)
    if last:
        print(
            f"final: loss {last['loss']:.4f}, NMSE {last['nmse']:.4f}, L0 {last['l0']:.1f}, "
            f"{last['tokens_per_s']:.0f} tokens/s"
        )
    if cfg.output_path:
        print(f"saved to {cfg.output_path}")
    return 0
