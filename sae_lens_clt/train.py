"""``python -m sae_lens_clt.train [flags]``: ``sae-lens-clt train`` as a module, for launchers.

``torchrun --nproc-per-node 8 -m sae_lens_clt.train --config run.yaml --tensor-parallel-size 8``
runs one rank per process; the flags are those of ``sae-lens-clt train``.
"""

from __future__ import annotations

import sys

from sae_lens_clt.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
