import sys

from sae_lens_clt.cli import main

sys.exit(main())
