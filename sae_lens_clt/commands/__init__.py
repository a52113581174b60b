"""Subcommands of the ``sae-lens-clt`` CLI (see :mod:`sae_lens_clt.cli`)."""
