"""Evaluate the embedded default model: held-out LM loss and planted-fact accuracies.

Algorithm:

1. Load the model with ``sae_lens_clt.default_model.load_model`` (offline) and time it.
2. Held-out LM loss, facts and natural text separately: fact documents from the evaluation
   seed (same facts, sentences never trained on) and the Shakespeare works kept out of
   training, each packed into BOS-prefixed windows of the model's context; mean next-token
   cross-entropy over up to ``--max-windows`` windows.
3. Greedy accuracies (the answer string must come out exactly, e.g. " Salt Lake City"):
   one-hop prompts (states, capitals, countries, languages, opposites, plurals, calendar,
   numbers), "The capital of {state} is", and the two-hop template
   "The capital of the state containing {city} is" for template cities and for held-out
   cities separately.

Usage::

    python benchmarks/eval_default_model.py [--model-dir DIR] [--natural PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_lens_clt.default_model import (  # noqa: E402
    EVAL_SEED_OFFSET,
    corpus,  # noqa: E402
    greedy_completions,
    load_model,
)


@torch.no_grad()
def lm_loss(model, docs: list[str], max_windows: int) -> tuple[float, int]:
    """Mean next-token loss over BOS-prefixed windows packed from ``docs``.

    Returns:
        (mean loss in nats, number of predicted tokens).
    """
    ctx = model.cfg.n_ctx
    bos = model.tokenizer.bos_token_id
    stream: list[int] = []
    for d in docs:
        stream += model.tokenizer.encode(d) + [bos]
        if len(stream) >= max_windows * (ctx - 1):
            break
    n = min(max_windows, len(stream) // (ctx - 1))
    body = torch.tensor(stream[: n * (ctx - 1)]).view(n, ctx - 1)
    tokens = torch.cat([torch.full((n, 1), bos), body], dim=1)  # [n, ctx]
    total, count = 0.0, 0
    for chunk in tokens.split(16):
        loss = model(chunk, return_type="loss", loss_per_token=True)  # [b, ctx-1]
        total += loss.sum().item()
        count += loss.numel()
    return total / count, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--natural", type=str, default=None, help="sdist/folder; default: cache")
    ap.add_argument("--max-windows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    model = load_model(model_dir=args.model_dir)
    load_s = time.perf_counter() - t0

    results: dict[str, float | int | str] = {"load_model_s": round(load_s, 3)}
    fact_docs = corpus.fact_documents(2_000, seed=args.seed + EVAL_SEED_OFFSET)
    loss, n = lm_loss(model, fact_docs, args.max_windows)
    results["heldout_loss_facts"] = round(loss, 4)
    results["heldout_tokens_facts"] = n
    source = args.natural or corpus.find_natural_text()
    if source is not None:
        nat_docs = corpus.natural_documents(source, split="eval")
        loss, n = lm_loss(model, nat_docs, args.max_windows)
        results["heldout_loss_natural"] = round(loss, 4)
        results["heldout_tokens_natural"] = n
    else:
        results["heldout_loss_natural"] = "n/a (natural text not fetched)"

    suites = {
        "one_hop": corpus.one_hop_prompts(),
        "state_capital": corpus.state_capital_prompts(),
        "two_hop_template": corpus.two_hop_prompts(args.seed, held_out=False),
        "two_hop_held_out": corpus.two_hop_prompts(args.seed, held_out=True),
    }
    wrong: dict[str, list[str]] = {}
    for name, pairs in suites.items():
        ok = greedy_completions(model, pairs)
        results[f"acc_{name}"] = round(sum(ok) / len(ok), 4)
        results[f"n_{name}"] = len(ok)
        wrong[name] = [p for (p, _), good in zip(pairs, ok, strict=True) if not good]
    dallas = [("The capital of the state containing Dallas is", " Austin")]
    results["dallas_to_austin"] = str(greedy_completions(model, dallas)[0])

    if args.json:
        print(json.dumps(results))
        return
    for k, v in results.items():
        print(f"{k:28s} {v}")
    for name, prompts in wrong.items():
        if prompts:
            shown = "; ".join(prompts[:8]) + (" ..." if len(prompts) > 8 else "")
            print(f"wrong {name} ({len(prompts)}): {shown}")


if __name__ == "__main__":
    main()
