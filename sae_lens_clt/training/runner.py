"""``CLTTrainingRunner``: train a CLT on SAELens' multi-hook ActivationsStore or a disk
cache, in one process or as one rank of a ``torchrun`` job (features sharded across a
tensor-parallel group, data split across data-parallel groups).

Algorithm:

1. Lay out the job (:mod:`.parallel`: ``world = tp × dp``; one process is ``1 × 1``).
   Data (:mod:`.data`): SAELens' ``ActivationsStore.from_config_multi_hook`` over the MLP
   input and output hooks of every layer, so one forward pass gives ``x [N, L, d_in]`` and
   ``y [N, L, d_out]``, shuffled together by SAELens' mixing buffer; or the multi-hook
   activation cache on disk (``cached_activations_path``, :mod:`sae_lens_clt.activations.cache`),
   which needs no model pass at all. Activations stream; they are never all in memory.
2. Seed everything, build this rank's feature shard of the transcoder (its init is the
   slice of the unsharded init), then take ``n_batches_for_norm_estimate`` batches to
   estimate per-layer scales (mean squared norm -> d) and to start every feature alive;
   data-parallel replicas copy rank 0's values.
3. Train with Adam: loss as in :mod:`sae_lens_clt.transcoders.clt_training` (partial
   reconstructions summed over the feature shards), gradients averaged over the
   data-parallel group, sparsity coefficient warmed up linearly, learning rate from
   SAELens' ``get_lr_scheduler`` (warm-up, optional decay). Dead features (no activation in
   ``dead_feature_window`` steps) are tracked and pushed back by the pre-activation loss. A
   non-finite loss stops training with :class:`TrainingDivergedError` before any update; a
   failed collective (another rank stopped) with :class:`DistributedJobError` naming the
   last complete checkpoint.
4. Checkpoints (``n_checkpoints`` evenly spaced, plus the final one; :mod:`.checkpoints`)
   are sharded by features and committed atomically by rank 0 once every rank wrote:
   weights, Adam state, step, token count, data position, RNG state, and the merged
   inference CLT. ``resume_from_checkpoint`` (a ``step_N`` folder or the checkpoint path:
   its newest complete step) reslices the shards for the current layout; from the live
   store it replays the data stream up to the checkpoint (model passes only), from the
   cache it starts at the checkpoint's step; either way the resumed run ends at the
   weights of an uninterrupted one. ``from_pretrained_path`` instead starts a new run from
   a trained CLT (one process or data parallel only).
5. The result is an inference :class:`CrossLayerTranscoder` with the scales folded in
   (feature shards merged by :mod:`.merge`, one shard in memory at a time); ``output_path``
   (if set) receives it in the SAELens layout.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from sae_lens.training.optim import get_lr_scheduler
from tqdm.auto import tqdm

from sae_lens_clt import registry
from sae_lens_clt.activations import live
from sae_lens_clt.evals import token_batches_from_texts
from sae_lens_clt.hooks import model_processing
from sae_lens_clt.training import checkpoints
from sae_lens_clt.training.config import CLTTrainingRunnerConfig
from sae_lens_clt.training.data import CacheSource, LiveSource
from sae_lens_clt.training.merge import merge_checkpoint
from sae_lens_clt.training.parallel import (
    DistributedJobError,
    ParallelLayout,
    is_collective_failure,
    rank_device,
)
from sae_lens_clt.transcoders.clt import CrossLayerTranscoder
from sae_lens_clt.transcoders.clt_training import TrainingCrossLayerTranscoder


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class CLTTrainingRunner:
    """Train a CLT: ``CLTTrainingRunner(cfg).run()`` returns the inference CLT.

    ``override_model`` (a ``HookedTransformer``) and ``override_dataset`` (a
    ``datasets.Dataset`` with a ``text`` or ``input_ids`` column) replace loading by name.
    Under ``torchrun`` every rank runs the same code; ``run()`` returns the CLT on every
    rank when the features are not sharded, and on rank 0 only (``None`` elsewhere) when
    they are.
    """

    def __init__(
        self,
        cfg: CLTTrainingRunnerConfig,
        override_model: Any | None = None,
        override_dataset: Any | None = None,
    ):
        self.cfg = cfg
        self.cache = None
        if cfg.cached_activations_path:
            from sae_lens_clt.activations.cache import ActivationCache

            self.cache = ActivationCache(cfg.cached_activations_path)
            self._check_cache(self.cache)
        needs_model = self.cache is None or cfg.kl_coefficient > 0
        self.dataset = override_dataset
        if self.dataset is None and self.cache is None:
            self.dataset = live.load_dataset_for(cfg)
        self.model = override_model
        if self.model is None and needs_model:
            # under torchrun each rank's model goes on its own device (cuda:LOCAL_RANK)
            self.model = live.load_model_for(
                dataclasses.replace(cfg, device=rank_device(cfg.device))
            )
        if self.model is not None:
            self.model.eval()
        self.n_layers = self.cache.n_layers if self.cache is not None else self.model.cfg.n_layers
        self.step = 0
        self.n_tokens = 0
        self.metrics_history: list[dict[str, float]] = []
        self.layout: ParallelLayout | None = None

    def _check_cache(self, cache: Any) -> None:
        c = self.cfg
        wrong = [
            f"{name}: cache {getattr(cache, name)!r}, config {getattr(c, name)!r}"
            for name in ("hook_name", "hook_name_out")
            if getattr(cache, name) != getattr(c, name)
        ]
        if wrong:
            raise ValueError(
                f"cached_activations_path={c.cached_activations_path}: the cache was built for "
                "other hooks (" + "; ".join(wrong) + "): set the config's hooks to the cache's"
            )

    # ------------------------------------------------------------------ setup
    def _make_clt(self, d_in: int, d_out: int, d_sae: int) -> TrainingCrossLayerTranscoder:
        """The registered training class of ``cfg.architecture`` with the run's settings
        (``d_sae``: features per layer in this rank's shard)."""
        c = self.cfg
        steps = c.total_training_steps
        reg = registry.registration(c.architecture)
        if reg.training_class is None:
            raise ValueError(f"architecture {c.architecture!r} has no training class registered")
        settings: dict[str, Any] = {
            "n_layers": self.n_layers,
            "d_in": d_in,
            "d_out": d_out,
            "device": self.layout.device if self.layout else c.device,
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
        settings["d_sae"] = d_sae
        tcfg = reg.training_config_class(**settings)
        md = tcfg.metadata
        md.model_name = self.cache.model_name if self.cache is not None else c.model_name
        md.hook_name, md.hook_name_out = c.hook_name, c.hook_name_out
        md.context_size, md.prepend_bos = c.context_size, c.prepend_bos
        md.dataset_path = c.dataset_path or "sae_lens_clt default corpus"
        md.model_from_pretrained_kwargs = dict(c.model_from_pretrained_kwargs)
        if self.cache is not None:
            md.model_processing = self.cache.model_processing
        else:
            md.model_processing = model_processing(self.model)  # as read from the model itself
        # the constructor's own init must not move the RNG: the shard's init below draws
        # exactly what the unsharded init draws
        devices = [tcfg.device] if str(tcfg.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            clt = reg.training_class(tcfg)
        if self.layout.tp > 1 and not getattr(clt, "supports_feature_sharding", False):
            raise ValueError(
                f"architecture {c.architecture!r} cannot shard its features across ranks "
                f"(tensor_parallel_size={self.layout.tp}): use tensor_parallel_size=1 and "
                "scale out with data parallelism"
            )
        if self.layout.tp > 1:
            clt.reset_parameters(shard=self.layout.shard(c.d_sae))
        else:
            clt.reset_parameters()
        clt.shard_sum = self.layout.shard_sum()
        return clt

    def _source(self) -> LiveSource | CacheSource:
        assert self.layout is not None
        if self.cache is not None:
            return CacheSource(self.cache, self.cfg, self.layout)
        return LiveSource(self.model, self.dataset, self.cfg, self.layout)

    def make_store(self) -> Any:
        """SAELens' multi-hook ``ActivationsStore`` over the transcoder's input and output hooks."""
        store, hooks = live.make_store(self.model, self.dataset, self.cfg)
        self.d_in, self.d_out = hooks.d_in, hooks.d_out
        return store

    # ------------------------------------------------------------------ run
    def run(self) -> CrossLayerTranscoder | None:
        # the model is frozen: no gradients for its weights (the KL term backpropagates
        # through it to the CLT); the flags are restored afterwards
        params = list(self.model.parameters()) if self.model is not None else []
        flags = [(p, p.requires_grad) for p in params]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            self.layout = ParallelLayout.from_environment(
                self.cfg.tensor_parallel_size, self.cfg.device, self.cfg.distributed_timeout_s
            )
            return self._run()
        except RuntimeError as e:
            if self.layout is None or self.layout.world == 1 or not is_collective_failure(e):
                raise
            last = self._last_checkpoint()
            raise DistributedJobError(
                f"{self.layout.describe()}: a collective failed at step {self.step} ({e}); "
                "another rank of the job has stopped (torchrun's summary names it). "
                + (
                    f"Resume from the last complete checkpoint: resume_from_checkpoint={last}"
                    if last
                    else "No checkpoint was written yet: set checkpoint_path / n_checkpoints."
                )
            ) from e
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            if self.layout is not None:
                self.layout.close()

    def _run(self) -> CrossLayerTranscoder | None:
        c = self.cfg
        layout = self.layout
        assert layout is not None
        if layout.tp > 1 and c.kl_coefficient:
            raise ValueError(
                "kl_coefficient > 0 needs the whole CLT on each rank: use "
                "tensor_parallel_size=1 (data parallelism works with the KL term)"
            )
        if layout.tp > 1 and c.from_pretrained_path:
            raise ValueError("from_pretrained_path needs tensor_parallel_size=1")
        torch.manual_seed(c.seed)  # the mixing buffer's shuffles draw from this generator
        source = self._source()
        self.d_in, self.d_out = source.d_in, source.d_out
        self.source = source
        clt = self._make_clt(source.d_in, source.d_out, c.d_sae // layout.tp)
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
        steps_since_fired = torch.zeros(self.n_layers, clt.cfg.d_sae, dtype=torch.long)

        if c.resume_from_checkpoint:
            steps_since_fired = self._resume(
                Path(c.resume_from_checkpoint), clt, optimizer, scheduler, source
            )
        else:
            self._estimate_norms_and_init(clt, source)
            if c.from_pretrained_path:
                start = CrossLayerTranscoder.from_pretrained(
                    c.from_pretrained_path, device=layout.device, dtype=c.dtype
                )
                clt.load_inference_weights(start)
            layout.sync_replicas(clt)

        kl_batches = self.kl_token_batches() if c.kl_coefficient else []
        checkpoint_steps = self._checkpoint_steps(steps)
        warm = max(1, clt.cfg.l0_warm_up_steps)
        wandb_run = self._wandb_init() if layout.is_main else None
        pbar = tqdm(
            total=steps,
            initial=self.step,
            desc="training CLT",
            disable=not (c.verbose and layout.is_main),
            unit="step",
        )
        params = list(clt.parameters())
        t0 = time.perf_counter()
        tokens_at_start = self.n_tokens
        while self.step < steps:
            x, y = source.batch(self.step)
            x = x.to(clt.dtype) * clt.in_scale[:, None]
            y = y.to(clt.dtype) * clt.out_scale[:, None]
            l0_coef = c.l0_coefficient * min(1.0, (self.step + 1) / warm)
            out = clt.training_losses(x, y, l0_coef)
            loss, parts, acts = out.loss, out.parts, out.acts
            if kl_batches:
                tokens = kl_batches[self.step % len(kl_batches)]
                parts["kl_loss"] = c.kl_coefficient * clt.replacement_kl(self.model, tokens)
                loss = loss + parts["kl_loss"]
            if not layout.agree(bool(torch.isfinite(loss))):
                pbar.close()
                last = self._last_checkpoint()
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at step {self.step} on {layout.describe()} "
                    f"(parts: { {k: v.item() for k, v in parts.items()} }); no update was "
                    "applied. "
                    + (f"The last good checkpoint is {last}. " if last else "")
                    + "Lower lr or l0_coefficient, or check the activations for inf/NaN."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            layout.average_gradients(params)
            optimizer.step()
            scheduler.step()
            clt.after_optimizer_step()
            self.step += 1
            self.n_tokens += c.train_batch_size_tokens
            with torch.no_grad():
                fired = layout.any_over_data(acts.fired()).cpu()  # [L, F_shard]
                steps_since_fired += 1
                steps_since_fired[fired] = 0
            if self.step % c.log_every_n_steps == 0 or self.step == steps:
                m = self._metrics(parts, acts, out.y_hat, y, steps_since_fired, l0_coef)
                m["lr"] = scheduler.get_last_lr()[0]
                m["elapsed_s"] = time.perf_counter() - t0
                m["tokens_per_s"] = (self.n_tokens - tokens_at_start) / max(1e-9, m["elapsed_s"])
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
        self.training_clt = clt
        return self._finish(clt, optimizer, steps_since_fired)

    def _training_metadata(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "training_tokens": self.n_tokens,
            "training_steps": self.step,
            "training_config": {k: v for k, v in c.to_dict().items() if k != "model_kwargs"},
        }

    def _finish(self, clt, optimizer, steps_since_fired) -> CrossLayerTranscoder | None:
        """Step 5: the inference CLT (merged from the shards when the features are sharded)."""
        c, layout = self.cfg, self.layout
        assert layout is not None
        if layout.tp == 1:
            inference = clt.to_inference()
            for k, v in self._training_metadata().items():
                setattr(inference.cfg.metadata, k, v)
            if c.output_path and layout.is_main:
                inference.save_model(c.output_path)
            layout.barrier()
            return inference
        # sharded: the final checkpoint holds the merged CLT (a temporary one without
        # checkpoint_path, in output_path so that every rank can write to it)
        if c.checkpoint_path:
            final = Path(c.checkpoint_path) / f"step_{self.step}"
        else:
            final = Path(c.output_path) / ".shards" / f"step_{self.step}"  # type: ignore[arg-type]
            self.save_checkpoint(clt, optimizer, steps_since_fired, folder=final)
        result = None
        if layout.is_main:
            merged = final / checkpoints.INFERENCE_FOLDER
            if c.output_path:
                out = Path(c.output_path)
                out.mkdir(parents=True, exist_ok=True)
                for name in ("cfg.json", "sae_weights.safetensors"):
                    tmp = out / f".{name}.copy"
                    shutil.copyfile(merged / name, tmp)
                    tmp.replace(out / name)
                merged = out
            result = CrossLayerTranscoder.load_from_disk(merged, device=layout.device)
            if not c.checkpoint_path:
                shutil.rmtree(Path(c.output_path) / ".shards", ignore_errors=True)  # type: ignore[arg-type]
        layout.barrier()
        return result

    # ------------------------------------------------------------------ pieces
    def kl_token_batches(self) -> list[torch.Tensor]:
        """Token batches ``[kl_batch_size_prompts, context_size]`` for the KL term.

        From up to 4,000 documents of the training dataset (a seeded shuffle), packed as in
        evaluation; step ``i`` uses batch ``i mod n``, so a resumed run sees the same ones.
        """
        ds = self.dataset if self.dataset is not None else live.load_dataset_for(self.cfg)
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
        device = self.layout.device if self.layout else self.cfg.device
        batches = [b.to(device) for b in batches if b.shape[0] == self.cfg.kl_batch_size_prompts]
        if not batches:
            raise ValueError("kl_coefficient > 0: the dataset is too small for one KL batch")
        return batches

    @torch.no_grad()
    def _estimate_norms_and_init(self, clt: TrainingCrossLayerTranscoder, source) -> None:
        batches = source.norm_batches(self.cfg.n_batches_for_norm_estimate)
        x = torch.cat([b[0].float() for b in batches])
        y = torch.cat([b[1].float() for b in batches])
        # per-layer scalars so that E||x_l||² = d_in and E||y_l||² = d_out
        clt.in_scale.copy_((self.d_in / x.pow(2).sum(-1).mean(0)).sqrt())
        clt.out_scale.copy_((self.d_out / y.pow(2).sum(-1).mean(0)).sqrt())
        clt.initialize_from_data(x * clt.in_scale[:, None])

    @torch.no_grad()
    def _metrics(self, parts, acts, y_hat, y, steps_since_fired, l0_coef) -> dict[str, float]:
        """Global metrics of the step (sums over the job, :meth:`ParallelLayout.global_sums`)."""
        layout = self.layout
        assert layout is not None
        sharded_names = [k for k in parts if k in ("l0_loss", "pre_act_loss")]
        replicated_names = [k for k in parts if k not in sharded_names]
        dead = (steps_since_fired >= self.cfg.dead_feature_window).sum()
        N, L, _ = acts.shape
        active = (acts.values != 0).sum()
        sharded = torch.stack(
            [*(parts[k].detach().double().cpu() for k in sharded_names)]
            + [active.double().cpu(), dead.double()]
        )
        yf, yh = y.double(), y_hat.double()
        replicated = torch.cat(
            [
                torch.stack([parts[k].detach().double().cpu() for k in replicated_names])
                if replicated_names
                else torch.zeros(0, dtype=torch.float64),
                torch.stack(
                    [
                        (yh - yf).pow(2).sum(),
                        yf.pow(2).sum(),
                        torch.tensor(float(N), device=yf.device, dtype=torch.float64),
                    ]
                ).cpu(),
                yf.sum(0).reshape(-1).cpu(),
            ]
        )
        total = layout.global_sums(sharded, replicated)
        dp = layout.dp
        ns = len(sharded_names)
        m = {k: total[i].item() / dp for i, k in enumerate(sharded_names)}
        active_total, dead_total = total[ns].item(), total[ns + 1].item()
        rep = total[ns + 2 :]
        nr = len(replicated_names)
        m.update({k: rep[i].item() / dp for i, k in enumerate(replicated_names)})
        sq_err, y_sq, n_tokens = rep[nr].item(), rep[nr + 1].item(), rep[nr + 2].item()
        y_sum = rep[nr + 3 :]
        var = y_sq - (y_sum.pow(2).sum().item() / n_tokens)
        out = {k: m[k] for k in parts}
        out["loss"] = sum(out.values())
        out["nmse"] = sq_err / var
        out["l0"] = active_total / max(1.0, n_tokens * L)
        out["dead_features"] = int(round(dead_total / dp))
        out["l0_coefficient"] = l0_coef
        out["step"] = self.step
        out["tokens"] = self.n_tokens
        return out

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
        path = Path(self.cfg.checkpoint_path)
        return checkpoints.latest_checkpoint(path) if path.is_dir() else None

    def save_checkpoint(
        self,
        clt: TrainingCrossLayerTranscoder,
        optimizer: torch.optim.Optimizer,
        steps_since_fired: torch.Tensor,
        folder: Path | None = None,
    ) -> Path:
        """Write ``checkpoint_path/step_{N}`` (every rank calls this; step 4)."""
        layout = self.layout
        assert layout is not None
        if folder is None:
            assert self.cfg.checkpoint_path
            folder = Path(self.cfg.checkpoint_path) / f"step_{self.step}"
        staging = checkpoints.staging_folder(folder)
        if layout.is_main:
            checkpoints.begin(folder)
        layout.barrier()
        if layout.dp_rank == 0:
            checkpoints.write_shard(
                staging, clt, optimizer, steps_since_fired, layout.tp_rank, layout.tp
            )
        if layout.is_data_leader:
            checkpoints.write_rng(staging, torch.get_rng_state(), layout.dp_rank, layout.dp)
        layout.barrier()
        if layout.is_main:
            progress = checkpoints.Checkpoint(
                self.step,
                self.n_tokens,
                self.source.batches_drawn,
                steps_since_fired,
                None,
                layout.tp,
                layout.dp,
                self.source.kind,
            )
            clt_config = clt.cfg.to_dict()
            clt_config["d_sae"] = self.cfg.d_sae
            dims = checkpoints.state_feature_dims(clt, optimizer)
            checkpoints.write_state_json(
                staging, progress, optimizer, dims, self.cfg.to_dict(), clt_config
            )
            inference = staging / checkpoints.INFERENCE_FOLDER
            if layout.tp == 1:
                clt.save_inference_model(inference)
            else:
                merge_checkpoint(
                    staging, inference, metadata=self._training_metadata(), verbose=False
                )
            expected = [checkpoints.shard_filename(t, layout.tp) for t in range(layout.tp)]
            expected += [checkpoints.rng_filename(d, layout.dp) for d in range(layout.dp)]
            checkpoints.commit(staging, folder, expected)
        layout.barrier()
        return folder

    def _resume(self, path: Path, clt, optimizer, scheduler, source) -> torch.Tensor:
        """Load a checkpoint and bring the data to it; returns steps_since_fired."""
        layout = self.layout
        assert layout is not None
        folder = checkpoints.latest_checkpoint(path) if path.is_dir() else None
        if folder is None:
            raise ValueError(
                f"resume_from_checkpoint={path}: no complete checkpoint there (a step_N folder "
                "with training_state.json, or the checkpoint_path holding them)"
            )
        state = checkpoints.load_checkpoint(
            folder, clt, optimizer, layout.shard(self.cfg.d_sae), layout.dp_rank, layout.dp
        )
        if state.data_source != source.kind:
            raise ValueError(
                f"resuming from {folder}: it was trained from the {state.data_source} data, this "
                f"run reads the {source.kind} data; resume with the original data source"
            )
        if source.kind == "cache":
            saved = state.runner_config
            changed = [
                f"{k}: checkpoint {saved.get(k)!r}, run {getattr(self.cfg, k)!r}"
                for k in ("seed", "train_batch_size_tokens", "n_batches_for_norm_estimate",
                          "cache_shuffle", "cached_activations_path")
                if k in saved and saved[k] != getattr(self.cfg, k)
            ]  # fmt: skip
            if changed:
                raise ValueError(
                    f"resuming from {folder}: these settings decide which rows each step reads "
                    "and differ from the checkpoint's (" + "; ".join(changed) + "): resume "
                    "with the checkpoint's values"
                )
        if source.kind == "live" and state.dp != layout.dp:
            raise ValueError(
                f"resuming from {folder}: it ran with {state.dp} data-parallel group(s), this job "
                f"has {layout.dp}; from the live store each group streams its own part of the "
                "data, so the data-parallel size must stay (change tensor_parallel_size freely, "
                "or train from an activation cache to change either)"
            )
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state.step):
                scheduler.step()  # the schedule is a pure function of the step
        source.replay(
            state.batches_drawn,
            lambda it: tqdm(
                it,
                desc="replaying data stream",
                disable=not (self.cfg.verbose and layout.is_main),
                leave=False,
            ),
        )
        replayed = not (
            source.kind == "live"
            and layout.is_data_leader
            and state.rng_state is not None
            and not torch.equal(torch.get_rng_state(), state.rng_state)
        )
        if not layout.agree(replayed):  # every rank learns it, so every rank stops
            raise ValueError(
                f"resuming from {folder}: the replayed data stream does not match the checkpoint "
                "(different dataset, seed or settings?); resume with the original config"
            )
        self.step, self.n_tokens = state.step, state.n_tokens
        source.batches_drawn = state.batches_drawn
        return state.steps_since_fired


def train_clt(cfg: CLTTrainingRunnerConfig, **overrides: Any) -> CrossLayerTranscoder:
    """Shortcut for ``CLTTrainingRunner(cfg, **overrides).run()``."""
    return CLTTrainingRunner(cfg, **overrides).run()
