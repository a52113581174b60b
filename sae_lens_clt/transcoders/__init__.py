"""Transcoder architectures, one per module, and their registration.

- :mod:`.clt`: :class:`CrossLayerTranscoder` (config + inference), the base of every variant;
- :mod:`.clt_training`: its training class (losses, straight-through JumpReLU);
- :mod:`.plt`: per-layer transcoders (no cross-layer block);
- :mod:`.skip`: a CLT with a linear skip connection;
- :mod:`.topk`: TopK / BatchTopK CLTs (BatchTopK converts to JumpReLU for inference);
- :mod:`.sparse`: the sparse decoding kernels.

Importing this package registers every architecture with :mod:`sae_lens_clt.registry`
(and so with SAELens' ``SAE.load_from_disk``).
"""

from sae_lens_clt import registry
from sae_lens_clt.transcoders.clt import (
    ARCHITECTURE,
    DEFAULT_INPUT_HOOK,
    DEFAULT_OUTPUT_HOOK,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    FeatureShard,
)
from sae_lens_clt.transcoders.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
)
from sae_lens_clt.transcoders.plt import (
    PerLayerTranscoder,
    PerLayerTranscoderConfig,
    TrainingPerLayerTranscoder,
    TrainingPerLayerTranscoderConfig,
)
from sae_lens_clt.transcoders.skip import (
    SkipCrossLayerTranscoder,
    SkipCrossLayerTranscoderConfig,
    TrainingSkipCrossLayerTranscoder,
    TrainingSkipCrossLayerTranscoderConfig,
)
from sae_lens_clt.transcoders.topk import (
    TopKCrossLayerTranscoder,
    TopKCrossLayerTranscoderConfig,
    TopKPerLayerTranscoder,
    TopKPerLayerTranscoderConfig,
    TrainingTopKCrossLayerTranscoder,
    TrainingTopKCrossLayerTranscoderConfig,
    TrainingTopKPerLayerTranscoder,
    TrainingTopKPerLayerTranscoderConfig,
)


def register_builtins() -> None:
    """Register the four built-in architectures (idempotent)."""
    registry.register_architecture(
        registry.CLT,
        CrossLayerTranscoder,
        CrossLayerTranscoderConfig,
        TrainingCrossLayerTranscoder,
        TrainingCrossLayerTranscoderConfig,
    )
    registry.register_architecture(
        registry.PLT,
        PerLayerTranscoder,
        PerLayerTranscoderConfig,
        TrainingPerLayerTranscoder,
        TrainingPerLayerTranscoderConfig,
    )
    registry.register_architecture(
        registry.SKIP_CLT,
        SkipCrossLayerTranscoder,
        SkipCrossLayerTranscoderConfig,
        TrainingSkipCrossLayerTranscoder,
        TrainingSkipCrossLayerTranscoderConfig,
    )
    registry.register_architecture(
        registry.TOPK_CLT,
        TopKCrossLayerTranscoder,
        TopKCrossLayerTranscoderConfig,
        TrainingTopKCrossLayerTranscoder,
        TrainingTopKCrossLayerTranscoderConfig,
    )
    registry.register_architecture(
        registry.TOPK_PLT,
        TopKPerLayerTranscoder,
        TopKPerLayerTranscoderConfig,
        TrainingTopKPerLayerTranscoder,
        TrainingTopKPerLayerTranscoderConfig,
    )


register_builtins()

__all__ = [
    "ARCHITECTURE",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "DEFAULT_INPUT_HOOK",
    "DEFAULT_OUTPUT_HOOK",
    "FeatureShard",
    "PerLayerTranscoder",
    "PerLayerTranscoderConfig",
    "SkipCrossLayerTranscoder",
    "SkipCrossLayerTranscoderConfig",
    "TopKCrossLayerTranscoder",
    "TopKCrossLayerTranscoderConfig",
    "TopKPerLayerTranscoder",
    "TopKPerLayerTranscoderConfig",
    "TrainingCrossLayerTranscoder",
    "TrainingCrossLayerTranscoderConfig",
    "TrainingPerLayerTranscoder",
    "TrainingPerLayerTranscoderConfig",
    "TrainingSkipCrossLayerTranscoder",
    "TrainingSkipCrossLayerTranscoderConfig",
    "TrainingTopKCrossLayerTranscoder",
    "TrainingTopKCrossLayerTranscoderConfig",
    "TrainingTopKPerLayerTranscoder",
    "TrainingTopKPerLayerTranscoderConfig",
    "register_builtins",
]
