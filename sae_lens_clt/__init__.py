"""sae_lens_clt: cross-layer transcoders for SAELens.

Importing this package registers the ``cross_layer_transcoder`` architecture with SAELens'
inference and training registries, so ``sae_lens.SAE.load_from_disk(folder)`` returns a
:class:`CrossLayerTranscoder`.
"""

from sae_lens_clt.attribution import (
    AttributionGraph,
    GraphScores,
    InterventionResult,
    attribute,
    intervene,
)
from sae_lens_clt.clt import (
    ARCHITECTURE,
    DEFAULT_INPUT_HOOK,
    DEFAULT_OUTPUT_HOOK,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
)
from sae_lens_clt.default_model import DEFAULT_MODEL, load_default_dataset, load_model
from sae_lens_clt.evals import CLTEvalResult, evaluate_clt
from sae_lens_clt.hub import push_to_hub
from sae_lens_clt.io import CLTFormatError
from sae_lens_clt.pretrained import DEFAULT_CLT, UnknownCLTError, load_releases, register_release
from sae_lens_clt.registry import register_all, register_architecture
from sae_lens_clt.training.clt_training import (
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
)
from sae_lens_clt.training.runner import (
    CLTTrainingRunner,
    CLTTrainingRunnerConfig,
    TrainingDivergedError,
)

__version__ = "0.1.0"

register_all()

__all__ = [
    "ARCHITECTURE",
    "AttributionGraph",
    "CLTEvalResult",
    "CLTFormatError",
    "CLTTrainingRunner",
    "CLTTrainingRunnerConfig",
    "CrossLayerTranscoder",
    "CrossLayerTranscoderConfig",
    "DEFAULT_CLT",
    "DEFAULT_INPUT_HOOK",
    "DEFAULT_MODEL",
    "DEFAULT_OUTPUT_HOOK",
    "GraphScores",
    "InterventionResult",
    "TrainingCrossLayerTranscoder",
    "TrainingCrossLayerTranscoderConfig",
    "TrainingDivergedError",
    "UnknownCLTError",
    "__version__",
    "attribute",
    "evaluate_clt",
    "intervene",
    "load_default_dataset",
    "load_model",
    "load_releases",
    "push_to_hub",
    "register_architecture",
    "register_release",
]
