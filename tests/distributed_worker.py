"""One rank of a test job: ``torchrun ... tests/distributed_worker.py CONFIG.json OUT_DIR``.

Trains ``CLTTrainingRunnerConfig(**CONFIG)`` on the tests' tiny random model and text
dataset (the same ones the in-process reference run uses), then rank 0 writes the
inference CLT to ``OUT_DIR/clt`` and the metrics history to ``OUT_DIR/metrics.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_lens_clt.training.config import CLTTrainingRunnerConfig  # noqa: E402
from sae_lens_clt.training.runner import CLTTrainingRunner  # noqa: E402
from tests.conftest import make_text_dataset, make_tiny_lm  # noqa: E402


def main() -> None:
    cfg = CLTTrainingRunnerConfig(**json.loads(Path(sys.argv[1]).read_text()))
    out = Path(sys.argv[2])
    needs_model = not cfg.cached_activations_path
    runner = CLTTrainingRunner(
        cfg,
        override_model=make_tiny_lm() if needs_model else None,
        override_dataset=make_text_dataset() if needs_model else None,
    )
    clt = runner.run()
    if clt is not None and runner.layout is not None and runner.layout.is_main:
        clt.save_model(out / "clt")
        (out / "metrics.json").write_text(json.dumps(runner.metrics_history))


if __name__ == "__main__":
    main()
