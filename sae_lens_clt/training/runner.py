"""``CLTTrainingRunner``: train a CLT on SAELens' multi-hook ActivationsStore.

Algorithm:

1. Load the model (or take the one given) and the dataset; build
   ``ActivationsStore.from_config_multi_hook`` over the MLP input and MLP output hooks of
   every layer, so one forward pass gives ``x [N, L, d_in]`` and ``y [N, L, d_out]``, shuffled
   together by SAELens' mixing buffer. Activations stream; they are never all in memory.
2. Seed everything, then take ``n_batches_for_norm_estimate`` batches to estimate per-layer
   scales (mean squared norm -> d) and to start every feature alive.
3. Train with Adam: loss as in :mod:`sae_lens_clt.training.clt_training`, sparsity
   coefficient warmed up linearly, learning rate from SAELens' ``get_lr_scheduler``
   (warm-up, optional decay). Dead features (no activation in ``dead_feature_window``
   steps) are tracked and pushed back by the pre-activation loss. A non-finite loss stops
   training with :class:`TrainingDivergedError` before any update.
4. Checkpoints (``n_checkpoints`` evenly spaced, plus the final one; :mod:`.checkpoints`) are written atomically:
   weights, Adam state, step, token count, data position and RNG state. ``resume`` rebuilds
   the same data stream from the seed and replays it up to the checkpoint (model forward
   passes only), so a resumed run sees exactly the batches of an uninterrupted one and ends
   at the same weights. ``from_pretrained_path`` instead starts a new run from a trained
   CLT (its weights, with the run's own normalization scales unfolded into them).
5. The result is an inference :class:`CrossLayerTranscoder` with the scales folded in;
   ``output_path`` (if set) receives it in the SAELens layout.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.util import get_special_token_ids
from tqdm.auto import tqdm

from sae_lens_clt import registry
from sae_lens_clt.default_model import DEFAULT_MODEL, load_default_dataset, load_model
from sae_lens_clt.evals import token_batches_from_texts
from sae_lens_clt.hooks import model_processing, prepare_model
from sae_lens_clt.training.checkpoints import Checkpoint, load_checkpoint, save_checkpoint
from sae_lens_clt.training.config import CLTTrainingRunnerConfig
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder
from sae_lens_clt.transcoders.clt_training import TrainingCrossLayerTranscoder


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class CLTTrainingRunner:
    """Train a CLT: ``CLTTrainingRunner(cfg).run()`` returns the inference CLT.

    ``override_model`` (a ``HookedTransformer``) and ``override_dataset`` (a
    ``datasets.Dataset`` with a ``text`` or ``input_ids`` column) replace loading by name.
    """

    def __init__(
        self,
        cfg: CLTTrainingRunnerConfig,
        override_model: Any | None = None,
        override_dataset: Any | None = None,
    ):
        self.cfg = cfg
        self.dataset = override_dataset if override_dataset is not None else self._dataset()
        self.model = override_model if override_model is not None else self._load_model()
        self.model.eval()
        self.n_layers = self.model.cfg.n_layers
        self.step = 0
        self.n_tokens = 0
        self.batches_drawn = 0
        self.metrics_history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ setup
    def _load_model(self) -> Any:
        kwargs = self.cfg.model_from_pretrained_kwargs or {}
        return load_model(self.cfg.model_name, device=self.cfg.device, **kwargs)

    def _dataset(self) -> Any:
        if self.cfg.dataset_path:
            return self.cfg.dataset_path
        if self.cfg.model_name != DEFAULT_MODEL:
            raise ValueError(
                "dataset_path is empty: set it (a Hugging Face dataset name or path) or pass "
                "override_dataset; only the default model has a built-in dataset"
            )
        return load_default_dataset("train")

    def _hook_names(self) -> tuple[list[str], list[str]]:
        L = self.n_layers
        ins = [self.cfg.hook_name.format(layer=layer) for layer in range(L)]
        outs = [self.cfg.hook_name_out.format(layer=layer) for layer in range(L)]
        prepare_model(self.model, [self.cfg.hook_name, self.cfg.hook_name_out], L, "training")
        return ins, outs

    def _hook_width(self, name: str) -> int:
        tokens = torch.zeros(1, 2, dtype=torch.long, device=self.cfg.device)
        _, cache = self.model.run_with_cache(tokens, names_filter=[name])
        return int(cache[name].shape[-1])

    def make_store(self) -> ActivationsStore:
        """SAELens' multi-hook ``ActivationsStore`` over the transcoder's input and output hooks."""
        ins, outs = self._hook_names()
        d_in, d_out = self._hook_width(ins[0]), self._hook_width(outs[0])
        self.d_in, self.d_out = d_in, d_out
        exclude = None
        if self.cfg.exclude_special_tokens and self.model.tokenizer is not None:
            special = get_special_token_ids(self.model.tokenizer)  # BOS, EOS, PAD, SEP, ...
            exclude = torch.tensor(sorted(special), dtype=torch.long, device=self.cfg.device)
        return ActivationsStore.from_config_multi_hook(
            self.model,
            dataset=self.dataset,
            hook_names=ins + outs,
            hook_d_ins={**dict.fromkeys(ins, d_in), **dict.fromkeys(outs, d_out)},
            streaming=self.cfg.streaming,
            context_size=self.cfg.context_size,
            n_batches_in_buffer=self.cfg.n_batches_in_buffer,
            total_training_tokens=self.cfg.training_tokens,
            store_batch_size_prompts=self.cfg.store_batch_size_prompts,
            train_batch_size_tokens=self.cfg.train_batch_size_tokens,
            prepend_bos=self.cfg.prepend_bos,
            device=self.cfg.device,
            dtype=self.cfg.dtype,
            model_kwargs=self.cfg.model_kwargs,
            exclude_special_tokens=exclude,
            activations_mixing_fraction=self.cfg.activations_mixing_fraction,
        )

    def _batches(self, store: ActivationsStore) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x [B, L, d_in], y [B, L, d_out])`` batches from the multi-hook store."""
        ins, outs = self._hook_names()
        for batch in store.get_multi_hook_data_loader():
            x = torch.stack([batch[h] for h in ins], dim=1)
            y = torch.stack([batch[h] for h in outs], dim=1)
            self.batches_drawn += 1
            yield x, y

    def _make_clt(self) -> TrainingCrossLayerTranscoder:
        """The registered training class of ``cfg.architecture`` with the run's settings."""
        c = self.cfg
        steps = c.total_training_steps
        reg = registry.registration(c.architecture)
        if reg.training_class is None:
            raise ValueError(f"architecture {c.architecture!r} has no training class registered")
        settings: dict[str, Any] = {
            "n_layers": self.n_layers,
            "d_in": self.d_in,
            "d_out": self.d_out,
            "device": c.device,
            "dtype": c.dtype,
            "l0_warm_up_steps": c.l0_warm_up_steps
            if c.l0_warm_up_steps is not None
            else steps // 4,
        }
        accepted = {f.name for f in fields(reg.training_config_class)}
        for f in fields(c):
            if f.name in accepted and f.name not in settings:
                settings[f.name] = getattr(c, f.name)
        settings = {k: v for k, v in settings.items() if k in accepted and v is not None}
        unknown = sorted(set(c.transcoder_options) - accepted)
        if unknown:
            raise ValueError(
                f"transcoder_options {unknown} are not fields of "
                f"{reg.training_config_class.__name__}"
            )
        settings.update(c.transcoder_options)
        tcfg = reg.training_config_class(**settings)
        md = tcfg.metadata
        md.model_name = c.model_name
        md.hook_name, md.hook_name_out = c.hook_name, c.hook_name_out
        md.context_size, md.prepend_bos = c.context_size, c.prepend_bos
        md.dataset_path = c.dataset_path or "sae_lens_clt default corpus"
        md.model_from_pretrained_kwargs = dict(c.model_from_pretrained_kwargs)
        md.model_processing = model_processing(self.model)  # as read from the model itself
        return reg.training_class(tcfg)

    # ------------------------------------------------------------------ run
    def run(self) -> CrossLayerTranscoder:
        # the model is frozen: no gradients for its weights (the KL term backpropagates
        # through it to the CLT); the flags are restored afterwards
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            return self._run()
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def _run(self) -> CrossLayerTranscoder:
        c = self.cfg
        torch.manual_seed(c.seed)  # the mixing buffer's shuffles draw from this generator
        store = self.make_store()
        batches = self._batches(store)
        clt = self._make_clt()
        optimizer = torch.optim.Adam(clt.parameters(), lr=c.lr, betas=(c.adam_beta1, c.adam_beta2))
        steps = c.total_training_steps
        decay = c.lr_decay_steps if c.lr_decay_steps is not None else steps // 5
        scheduler = get_lr_scheduler(
            c.lr_scheduler_name,
            optimizer,
            training_steps=steps,
            lr=c.lr,
            warm_up_steps=c.lr_warm_up_steps,
            decay_steps=decay,
            lr_end=c.lr_end if c.lr_end is not None else c.lr / 10,
            num_cycles=1,
        )
        steps_since_fired = torch.zeros(self.n_layers, c.d_sae, dtype=torch.long)

        if c.resume_from_checkpoint:
            steps_since_fired = self._resume(
                Path(c.resume_from_checkpoint), clt, optimizer, scheduler, batches
            )
        else:
            self._estimate_norms_and_init(clt, batches)
            if c.from_pretrained_path:
                start = CrossLayerTranscoder.from_pretrained(
                    c.from_pretrained_path, device=c.device, dtype=c.dtype
                )
                clt.load_inference_weights(start)

        kl_batches = self.kl_token_batches() if c.kl_coefficient else []
        checkpoint_steps = self._checkpoint_steps(steps)
        warm = max(1, clt.cfg.l0_warm_up_steps)
        wandb_run = self._wandb_init()
        pbar = tqdm(
            total=steps, initial=self.step, desc="training CLT", disable=not c.verbose, unit="step"
        )
        t0 = time.perf_counter()
        while self.step < steps:
            x, y = next(batches)
            x = x.to(clt.dtype) * clt.in_scale[:, None]
            y = y.to(clt.dtype) * clt.out_scale[:, None]
            l0_coef = c.l0_coefficient * min(1.0, (self.step + 1) / warm)
            out = clt.training_losses(x, y, l0_coef)
            loss, parts, acts = out.loss, out.parts, out.acts
            if kl_batches:
                tokens = kl_batches[self.step % len(kl_batches)]
                parts["kl_loss"] = c.kl_coefficient * clt.replacement_kl(self.model, tokens)
                loss = loss + parts["kl_loss"]
            if not torch.isfinite(loss):
                pbar.close()
                last = self._last_checkpoint()
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at step {self.step} (parts: "
                    f"{ {k: v.item() for k, v in parts.items()} }); no update was applied. "
                    + (f"The last good checkpoint is {last}. " if last else "")
                    + "Lower lr or l0_coefficient, or check the activations for inf/NaN."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clt.after_optimizer_step()
            self.step += 1
            self.n_tokens += x.shape[0]
            with torch.no_grad():
                fired = acts.fired().cpu()  # [L, F]
                steps_since_fired += 1
                steps_since_fired[fired] = 0
            if self.step % c.log_every_n_steps == 0 or self.step == steps:
                m = self._metrics(parts, acts, out.y_hat, y, steps_since_fired, l0_coef)
                m["lr"] = scheduler.get_last_lr()[0]
                m["elapsed_s"] = time.perf_counter() - t0
                m["tokens_per_s"] = self.n_tokens / max(1e-9, m["elapsed_s"])
                self.metrics_history.append(m)
                pbar.set_postfix(
                    loss=f"{m['loss']:.3f}", nmse=f"{m['nmse']:.3f}", l0=f"{m['l0']:.1f}"
                )
                if wandb_run is not None:
                    wandb_run.log(m, step=self.step)
            pbar.update(1)
            if self.step in checkpoint_steps:
                self.save_checkpoint(clt, optimizer, steps_since_fired)
        pbar.close()
        if wandb_run is not None:
            wandb_run.finish()
        inference = clt.to_inference()
        md = inference.cfg.metadata
        md.training_tokens = self.n_tokens
        md.training_steps = self.step
        md.training_config = {k: v for k, v in c.to_dict().items() if k != "model_kwargs"}
        if c.output_path:
            inference.save_model(c.output_path)
        self.training_clt = clt
        return inference

    # ------------------------------------------------------------------ pieces
    def kl_token_batches(self) -> list[torch.Tensor]:
        """Token batches ``[kl_batch_size_prompts, context_size]`` for the KL term.

        From up to 4,000 documents of the training dataset (a seeded shuffle), packed as in
        evaluation; step ``i`` uses batch ``i mod n``, so a resumed run sees the same ones.
        """
        ds = self.dataset
        columns = getattr(ds, "column_names", None) or []
        if isinstance(ds, str) or not hasattr(ds, "__len__") or "text" not in columns:
            raise ValueError(
                "kl_coefficient > 0 needs a (non-streaming) datasets.Dataset with a 'text' column: pass "
                "override_dataset (or use the default model's corpus), or set kl_coefficient=0"
            )
        ds = ds.shuffle(seed=self.cfg.seed + 1)
        texts = ds.select(range(min(len(ds), 4000)))["text"]
        batches = token_batches_from_texts(
            self.model, texts, self.cfg.context_size, self.cfg.kl_batch_size_prompts
        )
        batches = [
            b.to(self.cfg.device) for b in batches if b.shape[0] == self.cfg.kl_batch_size_prompts
        ]
        if not batches:
            raise ValueError("kl_coefficient > 0: the dataset is too small for one KL batch")
        return batches

    @torch.no_grad()
    def _estimate_norms_and_init(self, clt: TrainingCrossLayerTranscoder, batches) -> None:
        xs, ys = [], []
        for _ in range(self.cfg.n_batches_for_norm_estimate):
            x, y = next(batches)
            xs.append(x.float())
            ys.append(y.float())
        x, y = torch.cat(xs), torch.cat(ys)
        # per-layer scalars so that E||x_l||² = d_in and E||y_l||² = d_out
        clt.in_scale.copy_((self.d_in / x.pow(2).sum(-1).mean(0)).sqrt())
        clt.out_scale.copy_((self.d_out / y.pow(2).sum(-1).mean(0)).sqrt())
        clt.initialize_from_data(x * clt.in_scale[:, None])

    @torch.no_grad()
    def _metrics(self, parts, acts, y_hat, y, steps_since_fired, l0_coef) -> dict[str, float]:
        var = (y - y.mean(0)).pow(2).sum()
        m = {k: v.item() for k, v in parts.items()}
        m["loss"] = sum(m.values())
        m["nmse"] = ((y_hat - y).pow(2).sum() / var).item()
        m["l0"] = acts.l0()
        m["dead_features"] = int((steps_since_fired >= self.cfg.dead_feature_window).sum())
        m["l0_coefficient"] = l0_coef
        m["step"] = self.step
        m["tokens"] = self.n_tokens
        return m

    def _checkpoint_steps(self, steps: int) -> set[int]:
        if not self.cfg.checkpoint_path:
            return set()
        n = self.cfg.n_checkpoints
        chosen = {round(steps * (i + 1) / (n + 1)) for i in range(n)} if n else set()
        return {s for s in chosen if 0 < s < steps} | {steps}

    def _wandb_init(self) -> Any:
        if not self.cfg.log_to_wandb:
            return None
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError("log_to_wandb=True needs wandb: pip install wandb") from e
        return wandb.init(
            project=self.cfg.wandb_project, name=self.cfg.run_name, config=self.cfg.to_dict()
        )

    # ------------------------------------------------------------------ checkpoints
    def _last_checkpoint(self) -> Path | None:
        if not self.cfg.checkpoint_path:
            return None
        found = sorted(Path(self.cfg.checkpoint_path).glob("step_*"), key=lambda p: int(p.name[5:]))
        return found[-1] if found else None

    def save_checkpoint(
        self,
        clt: TrainingCrossLayerTranscoder,
        optimizer: torch.optim.Optimizer,
        steps_since_fired: torch.Tensor,
    ) -> Path:
        """Write ``checkpoint_path/step_{N}`` atomically (temp folder, then rename)."""
        assert self.cfg.checkpoint_path
        progress = Checkpoint(
            self.step, self.n_tokens, self.batches_drawn, steps_since_fired, torch.get_rng_state()
        )
        folder = Path(self.cfg.checkpoint_path) / f"step_{self.step}"
        return save_checkpoint(folder, clt, optimizer, progress, self.cfg.to_dict())

    def _resume(self, path: Path, clt, optimizer, scheduler, batches) -> torch.Tensor:
        """Load a checkpoint and replay the data stream up to it; returns steps_since_fired."""
        state = load_checkpoint(path, clt, optimizer)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.step):
                scheduler.step()  # the schedule is a pure function of the step
        # replay: draw (and drop) the batches the interrupted run had drawn
        for _ in tqdm(
            range(state.batches_drawn),
            desc="replaying data stream",
            disable=not self.cfg.verbose,
            leave=False,
        ):
            next(batches)
        if not torch.equal(torch.get_rng_state(), state.rng_state):
            raise RuntimeError(
                f"resuming from {path}: the replayed data stream does not match the checkpoint "
                "(different dataset, seed or settings?); resume with the original config"
            )
        self.step, self.n_tokens = state.step, state.n_tokens
        return state.steps_since_fired


def train_clt(cfg: CLTTrainingRunnerConfig, **overrides: Any) -> CrossLayerTranscoder:
    """Shortcut for ``CLTTrainingRunner(cfg, **overrides).run()``."""
    return CLTTrainingRunner(cfg, **overrides).run()
