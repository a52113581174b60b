"""Train the CLT shipped with the package for the embedded default model.

1. Train with ``CLTTrainingRunner`` on the default model's corpus (settings below, all
   recorded in the CLT's metadata).
2. Evaluate on held-out text, facts and natural text separately (NMSE, L0, loss recovered,
   KL, top-1 agreement).
3. Write the CLT (SAELens layout, scales folded) to ``sae_lens_clt/default_model/default_clt`` with
   the evaluation in ``cfg.json``'s metadata, and print the figures.
4. Compute the feature labels over a sample of the training corpus and cache them next to
   the CLT (``feature_labels.json``).

Run: ``python scripts/train_default_clt.py [--training-tokens N] [--out DIR]``.
``--finetune-tokens N`` adds a second stage: continue from the stage-1 CLT for N tokens
with the end-to-end KL term (``--finetune-kl``), which raises the replacement model's
agreement with the original at almost the same reconstruction error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from sae_lens_clt.default_model import DEFAULT_MODEL, held_out_texts, load_model
from sae_lens_clt.evals import evaluate_clt, token_batches_from_texts
from sae_lens_clt.training.runner import CLTTrainingRunner, CLTTrainingRunnerConfig

OUT = Path(__file__).resolve().parents[1] / "sae_lens_clt" / "default_model" / "default_clt"


def label_default_clt(model, clt, folder: Path, n_docs: int = 1500) -> None:
    """Compute and cache feature labels over a sample of the training corpus."""
    from sae_lens_clt.default_model import load_default_dataset
    from sae_lens_clt.labels import compute_labels, save_labels

    texts = load_default_dataset("train")["text"][:n_docs]
    save_labels(compute_labels(model, clt, texts), folder)


def evaluate_held_out(model, clt) -> dict:
    """Evaluate on held-out facts and natural text (12 batches of 16 x 128 tokens each)."""
    results = {}
    for name, texts in held_out_texts().items():
        batches = token_batches_from_texts(model, texts, context_size=128, batch_size=16)[:12]
        r = evaluate_clt(model, clt, batches)
        results[name] = r.to_dict()
        print(f"[{name}] {r.summary()}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--training-tokens", type=int, default=2_400_000)
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--l0-coefficient", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)"
    )
    p.add_argument("--skip", action="store_true", help="train with a linear skip connection")
    p.add_argument("--kl-coefficient", type=float, default=0.0, help="end-to-end KL term weight")
    p.add_argument("--from-pretrained", default=None, help="start from this trained CLT")
    p.add_argument("--l0-warm-up-steps", type=int, default=None, help="default: 25 %% of steps")
    p.add_argument(
        "--finetune-tokens",
        type=int,
        default=600_000,
        help="stage 2: continue for this many tokens with the KL term (0: no stage 2)",
    )
    p.add_argument("--finetune-kl", type=float, default=50.0, help="stage 2 kl_coefficient")
    p.add_argument("--finetune-lr", type=float, default=3e-4, help="stage 2 learning rate")
    p.add_argument(
        "--stage1-out",
        type=Path,
        default=None,
        help="keep the stage-1 CLT here (default: a temp folder)",
    )
    p.add_argument("--no-labels", action="store_true", help="skip computing feature labels")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--checkpoint-path", default=None)
    p.add_argument("--labels-only", action="store_true", help="only recompute the labels")
    p.add_argument("--eval-only", action="store_true", help="only evaluate the CLT in --out")
    p.add_argument("--model-dir", default=None, help="default model folder (default: package)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.labels_only or args.eval_only:
        from sae_lens_clt.transcoders.clt import CrossLayerTranscoder

        model = load_model(model_dir=args.model_dir)
        clt = CrossLayerTranscoder.load_from_disk(args.out)
        if args.eval_only:
            evaluate_held_out(model, clt)
        else:
            label_default_clt(model, clt, args.out)
        return
    cfg = CLTTrainingRunnerConfig(
        model_name=DEFAULT_MODEL,
        d_sae=args.d_sae,
        training_tokens=args.training_tokens,
        train_batch_size_tokens=args.batch,
        context_size=128,
        store_batch_size_prompts=32,
        lr=args.lr,
        l0_coefficient=args.l0_coefficient,
        skip_connection=args.skip,
        kl_coefficient=args.kl_coefficient,
        from_pretrained_path=args.from_pretrained,
        l0_warm_up_steps=args.l0_warm_up_steps,
        checkpoint_path=args.checkpoint_path,
        n_checkpoints=4 if args.checkpoint_path else 0,
        log_every_n_steps=25,
        seed=0,
    )
    t0 = time.time()
    model = load_model(model_dir=args.model_dir)
    runner = CLTTrainingRunner(cfg, override_model=model)
    clt = runner.run()
    clt.save_model(args.out)  # save first: evaluation must never lose a trained CLT
    stages = [clt.cfg.metadata.training_config]
    n_tokens = runner.n_tokens
    if args.finetune_tokens:
        # stage 2: from the stage-1 CLT (kept in --stage1-out), fresh data (seed + 1),
        # sparsity at full strength from the first step, plus the end-to-end KL term
        stage1 = args.stage1_out or Path(tempfile.mkdtemp(prefix="clt_stage1_"))
        clt.save_model(stage1)
        cfg2 = replace(
            cfg,
            from_pretrained_path=str(stage1),
            training_tokens=args.finetune_tokens,
            kl_coefficient=args.finetune_kl,
            lr=args.finetune_lr,
            l0_warm_up_steps=0,
            seed=cfg.seed + 1,
            checkpoint_path=None,
            n_checkpoints=0,
        )
        runner = CLTTrainingRunner(cfg2, override_model=model)
        clt = runner.run()
        clt.save_model(args.out)
        stages.append(clt.cfg.metadata.training_config)
        n_tokens += runner.n_tokens
    train_s = time.time() - t0
    results = evaluate_held_out(model, clt)
    md = clt.cfg.metadata
    md.eval_held_out = results
    md.training_seconds = round(train_s)
    md.training_stages = stages  # the config of every stage, in order
    md.training_tokens = n_tokens  # all stages
    md.trained_by = "scripts/train_default_clt.py"
    clt.save_model(args.out)
    (args.out / "eval.json").write_text(json.dumps(results, indent=2))
    if not args.no_labels:
        label_default_clt(model, clt, args.out)
    print(f"trained {n_tokens} tokens in {train_s:.0f}s; saved to {args.out}")


if __name__ == "__main__":
    main()
