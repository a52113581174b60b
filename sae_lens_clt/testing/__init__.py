"""A test-suite for transcoder variants, and the small models and data it runs on.

One line checks a new variant against the whole contract of
:mod:`sae_lens_clt.registry` (see :mod:`.contract` for the list)::

    from sae_lens_clt.testing import check_transcoder, random_transcoder

    def test_my_variant(tmp_path):
        check_transcoder(lambda **dims: random_transcoder(MyCLT, MyCLTConfig, **dims), tmp_path)
"""

from sae_lens_clt.testing.contract import (
    CHECKS,
    assert_same_transcoder,
    check_attribution,
    check_transcoder,
    offline_hub_cache,
    put_in_hub_cache,
)
from sae_lens_clt.testing.models import WORDS, text_dataset, tiny_lm
from sae_lens_clt.testing.random import random_transcoder

__all__ = [
    "CHECKS",
    "WORDS",
    "assert_same_transcoder",
    "check_attribution",
    "check_transcoder",
    "offline_hub_cache",
    "put_in_hub_cache",
    "random_transcoder",
    "text_dataset",
    "tiny_lm",
]
