"""How long ``sae-lens-clt --help`` takes, here and (optionally) in another checkout.

Runs ``python -c "from sae_lens_clt.cli import main; main([...])"`` in fresh interpreters,
alternating between the checkouts given (``--other DIR`` imports the package from DIR),
and prints the median and best wall time of each, and which heavy modules were imported.

    python benchmarks/cli_startup.py [--other /tmp/old_checkout] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = (
    "import os, sys\n"
    # an editable install's finder would win over sys.path: use the checkout asked for
    "sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__]\n"
    "sys.path.insert(0, os.environ['CLI_STARTUP_ROOT'])\n"
    "from sae_lens_clt.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "import sae_lens_clt\n"
    "print('HEAVY', [m for m in ('torch', 'sae_lens') if m in sys.modules], file=sys.stderr)\n"
    "print('FROM', os.path.dirname(sae_lens_clt.__file__), file=sys.stderr)\n"
)


def once(root: Path, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "CLI_STARTUP_ROOT": str(root)}
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", CODE, *args], env=env, capture_output=True, text=True, check=True
    )
    heavy = [line for line in res.stderr.splitlines() if line.startswith("HEAVY")][-1]
    source = [line for line in res.stderr.splitlines() if line.startswith("FROM")][-1]
    assert source.split(" ", 1)[1].startswith(str(root)), f"imported {source}, not {root}"
    return time.perf_counter() - start, heavy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, help="another checkout to compare with")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--args", nargs="*", default=["--help"])
    a = p.parse_args()
    roots = {"this checkout": ROOT} | ({"other": a.other} if a.other else {})
    times: dict[str, list[float]] = {k: [] for k in roots}
    heavy: dict[str, str] = {}
    for _ in range(a.runs):  # alternate, so both see the same machine load
        for name, root in roots.items():
            t, heavy[name] = once(root, a.args)
            times[name].append(t)
    for name, ts in times.items():
        print(
            f"{name:>14}: sae-lens-clt {' '.join(a.args)}: median {statistics.median(ts):.2f}s, "
            f"best {min(ts):.2f}s over {len(ts)} runs; {heavy[name]}"
        )


if __name__ == "__main__":
    main()
