"""The configuration of a training run: one dataclass, read from YAML or the command line.

Field names follow SAELens' ``LanguageModelSAERunnerConfig`` wherever they apply; the
transcoder's own fields (``architecture``, ``d_sae``, ``activation_fn``, ``k``, the
JumpReLU and loss settings) sit in the same flat namespace, and the runner hands those the
registered training config class accepts to it. This module imports no heavy library, so
the CLI can build its flags from it quickly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sae_lens_clt import registry
from sae_lens_clt.registry import DEFAULT_INPUT_HOOK, DEFAULT_OUTPUT_HOOK


@dataclass
class CLTTrainingRunnerConfig:
    """Configuration of a CLT training run.

    Names follow SAELens' ``LanguageModelSAERunnerConfig`` wherever they apply. ``d_in``
    and ``d_out`` are read from the model. ``hook_name`` / ``hook_name_out`` are templates
    with a ``{layer}`` placeholder.
    """

    # --- model and data
    model_name: str = "sae-lens-clt/tiny-states"
    dataset_path: str = ""  # "" with the default model: its generated corpus
    streaming: bool = False
    context_size: int = 128
    prepend_bos: bool = True
    exclude_special_tokens: bool = True  # drop BOS / separator positions from training
    hook_name: str = DEFAULT_INPUT_HOOK
    hook_name_out: str = DEFAULT_OUTPUT_HOOK
    store_batch_size_prompts: int = 16
    n_batches_in_buffer: int | None = None  # default: a buffer of 4 training batches
    activations_mixing_fraction: float = 0.5
    # train from a multi-hook activation cache on disk (sae-lens-clt cache-activations)
    # instead of running the model; several runs can share one cache
    cached_activations_path: str | None = None
    cache_shuffle: bool = True  # read the cache in a seeded per-epoch shuffle (False: in order)
    # the transcoder: a registered architecture (cross_layer_transcoder, per_layer_transcoder,
    # skip_cross_layer_transcoder, topk_cross_layer_transcoder, topk_per_layer_transcoder, or
    # one of your own)
    architecture: str = registry.CLT
    d_sae: int = 1024  # features per layer
    activation_fn: str = "jumprelu"
    k: int | None = None  # TopK: features kept per layer and token (BatchTopK: the mean)
    batch_topk: bool = False
    skip_connection: bool = False  # shorthand for architecture=skip_cross_layer_transcoder
    cross_layer_decoders: bool = True  # False: shorthand for architecture=per_layer_transcoder
    # fields of the architecture's training config that have no flag here (a variant's own)
    transcoder_options: dict[str, Any] = field(default_factory=dict)
    jumprelu_init_threshold: float = 0.03
    jumprelu_bandwidth: float = 0.1
    jumprelu_tanh_scale: float = 4.0
    l0_coefficient: float = 0.15
    l0_warm_up_steps: int | None = None  # default: 25 % of the steps
    pre_act_loss_coefficient: float | None = 3e-6
    init_active_fraction: float = 0.05
    # end-to-end term: kl_coefficient * KL(model || replacement model) on kl_batch_size_prompts
    # sequences per step (0 = off; costs two extra model passes per step)
    kl_coefficient: float = 0.0
    kl_batch_size_prompts: int = 8
    decode_sparse_below: float = 0.07
    # --- optimisation
    training_tokens: int = 2_000_000
    train_batch_size_tokens: int = 1024
    lr: float = 1e-3
    lr_scheduler_name: str = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int | None = None  # default: the last 20 % of the steps
    lr_end: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    n_batches_for_norm_estimate: int = 8
    dead_feature_window: int = 1000  # steps without firing before a feature counts as dead
    # --- distributed (under torchrun): features of every layer split over this many ranks;
    # the data-parallel size is the number of processes / tensor_parallel_size
    tensor_parallel_size: int = 1
    distributed_timeout_s: float = 1800.0  # a collective waiting longer than this fails
    # --- run
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 42
    checkpoint_path: str | None = None
    n_checkpoints: int = 0
    output_path: str | None = None
    resume_from_checkpoint: str | None = None
    from_pretrained_path: str | None = None  # start from a trained CLT (name, Hub id or folder)
    log_every_n_steps: int = 10
    log_to_wandb: bool = False
    wandb_project: str = "sae_lens_clt"
    run_name: str | None = None
    verbose: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # SAELens' convention: kwargs of HookedTransformer.from_pretrained_no_processing (the model
    # is loaded unprocessed unless these say otherwise); recorded in the CLT's metadata
    model_from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def total_training_steps(self) -> int:
        return max(1, self.training_tokens // self.train_batch_size_tokens)

    def __post_init__(self) -> None:
        problems = []
        if self.training_tokens < self.train_batch_size_tokens:
            problems.append("training_tokens must be at least train_batch_size_tokens")
        for name in ("hook_name", "hook_name_out"):
            if "{layer}" not in getattr(self, name):
                problems.append(f"{name} must contain '{{layer}}', got {getattr(self, name)!r}")
        if self.n_batches_in_buffer is None:
            # SAELens' multi-hook buffer holds n_batches_in_buffer * context_size tokens
            self.n_batches_in_buffer = -(-4 * self.train_batch_size_tokens // self.context_size)
        elif self.n_batches_in_buffer * self.context_size < self.train_batch_size_tokens:
            problems.append(
                "the activation buffer (n_batches_in_buffer * context_size = "
                f"{self.n_batches_in_buffer * self.context_size} tokens) must hold at least one "
                f"training batch ({self.train_batch_size_tokens}); raise n_batches_in_buffer"
            )
        if self.tensor_parallel_size < 1:
            problems.append(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        elif self.d_sae % self.tensor_parallel_size:
            problems.append(
                f"d_sae={self.d_sae} must be a multiple of tensor_parallel_size="
                f"{self.tensor_parallel_size} (each rank holds d_sae / tensor_parallel_size "
                "features of every layer)"
            )
        if self.tensor_parallel_size > 1 and not (self.checkpoint_path or self.output_path):
            problems.append(
                "tensor_parallel_size > 1 needs checkpoint_path or output_path (a folder every "
                "rank can write: the feature shards are merged from it)"
            )
        if self.n_checkpoints and not self.checkpoint_path:
            problems.append("n_checkpoints > 0 needs a checkpoint_path")
        # the round-1 flags name an architecture; combinations no architecture holds are refused
        topk_flag = self.activation_fn == "topk" or self.batch_topk
        if self.skip_connection and (not self.cross_layer_decoders or topk_flag):
            problems.append(
                "skip_connection=True goes with cross-layer JumpReLU / ReLU decoders only (no "
                "shipped variant is a per-layer or TopK transcoder with a skip connection)"
            )
        flagged = {registry.SKIP_CLT} if self.skip_connection else set()
        if not self.cross_layer_decoders:
            flagged.add(registry.PLT)
        if self.architecture not in (registry.CLT, *flagged) and flagged and not topk_flag:
            problems.append(
                f"architecture={self.architecture!r} contradicts the flags "
                f"(skip_connection={self.skip_connection}, "
                f"cross_layer_decoders={self.cross_layer_decoders}): drop the flags"
            )
        if self.skip_connection and self.architecture == registry.CLT:
            self.architecture = registry.SKIP_CLT
        topk = self.activation_fn == "topk" or self.batch_topk
        if topk and self.architecture in (registry.CLT, registry.PLT):
            plt = self.architecture == registry.PLT or not self.cross_layer_decoders
            self.architecture = registry.TOPK_PLT if plt else registry.TOPK_CLT
        if not self.cross_layer_decoders and self.architecture == registry.CLT:
            self.architecture = registry.PLT
        if self.architecture in (registry.TOPK_CLT, registry.TOPK_PLT):
            self.activation_fn = "topk"
            if self.k is None and "k" not in self.transcoder_options:
                problems.append(
                    "a TopK / BatchTopK CLT needs k (features kept per layer and token)"
                )
        if problems:
            raise ValueError("Invalid CLTTrainingRunnerConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLTTrainingRunnerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown CLTTrainingRunnerConfig field(s) {unknown}; valid fields: {sorted(known)}"
            )
        return cls(**d)
