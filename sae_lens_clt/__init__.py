"""sae_lens_clt: cross-layer transcoders for SAELens.

Importing this package registers the ``cross_layer_transcoder`` architecture with SAELens,
so ``sae_lens.SAE.load_from_disk(folder)`` returns a :class:`CrossLayerTranscoder`.
"""

from sae_lens_clt.clt import (
    ARCHITECTURE,
    DEFAULT_INPUT_HOOK,
    DEFAULT_OUTPUT_HOOK,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
)
from sae_lens_clt.io import CLTFormatError
from sae_lens_clt.registry import register_all, register_architecture

__version__ = "0.1.0"

register_all()

__all__ = [
    "ARCHITECTURE",
    "CLTFormatError",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "DEFAULT_INPUT_HOOK",
    "DEFAULT_OUTPUT_HOOK",
    "__version__",
    "register_architecture",
]
