"""How the CLI fails: one line on stderr, a non-zero exit status, no traceback.

1. Subcommands check what they are given before any work (:func:`check_out_dir`,
   :func:`check_device`) and raise :class:`UsageError` with ``what was wrong — how to fix it``.
2. :func:`run_reporting` runs a subcommand; any exception (a usage error, a bad file, an
   unknown name, a library ``ValueError``) becomes ``sae-lens-clt: error: <message>`` with
   exit status 2 for usage errors and 1 otherwise. ``--debug`` re-raises it instead, for
   the full traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

PROG = "sae-lens-clt"


class UsageError(Exception):
    """The command line asks for something that cannot be done (exit status 2)."""


def check_out_dir(path: str) -> Path:
    """``--out``: a folder that may exist, never a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {path} is a file — give a folder (it is created if missing)")
    return out


def check_device(device: str) -> None:
    """``--device``: one torch knows and this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(
            f"--device {device!r} is not a torch device ({e}) — use cpu or cuda"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA GPU — use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here — use --device cpu")


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return (
        text
        if isinstance(error, (UsageError, ValueError, OSError))
        else f"{type(error).__name__}: {text}"
    )


def run_reporting(
    func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace
) -> int:
    """Run ``func(args)``; failures become one line (step 2)."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):  # a message, as argparse-style code raises them
            print(f"{PROG}: error: {' '.join(e.code.split())}", file=sys.stderr)
            return 2
        raise
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        status = 2 if isinstance(e, UsageError) else 1
        hint = "" if isinstance(e, UsageError) else f" (run `{PROG} --debug ...` for the traceback)"
        print(f"{PROG}: error: {one_line(e)}{hint}", file=sys.stderr)
        return status
