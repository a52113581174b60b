"""The local graph viewer: ``sae-lens-clt serve DIR`` (see :mod:`.server`)."""
