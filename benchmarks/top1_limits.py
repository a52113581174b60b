"""What limits the replacement model's top-1 agreement: which layers, and how much error.

For a CLT of the default model, on held-out facts and natural text (as the training script
evaluates), measure the top-1 agreement of the replacement model with the original when

1. every layer's MLP output is replaced (the standard replacement model),
2. only one layer is replaced (the others keep their true MLP outputs),
3. every layer's output is ``y + α (ŷ − y)``: the CLT's error scaled by α, i.e. a CLT with
   α² times the NMSE (α = 1 is case 1; α = 0 is the original model).

Run: ``python benchmarks/top1_limits.py [--clt NAME_OR_FOLDER] [--batches 4]``.
"""

from __future__ import annotations

import argparse

import torch

from sae_lens_clt import DEFAULT_CLT, CrossLayerTranscoder
from sae_lens_clt.default_model import held_out_texts, load_model
from sae_lens_clt.evals import token_batches_from_texts
from sae_lens_clt.replacement import ReplacementHooks


def scaled_hooks(clt: CrossLayerTranscoder, alpha: float, layers: set[int]) -> list:
    """Replacement hooks whose output at ``layers`` is ``y + alpha * (y_hat - y)``."""
    hooks = []
    for name, fn in ReplacementHooks(clt, keep_first=1).hooks():
        layer = int(name.split(".")[1])
        if name != clt.cfg.hook_out(layer):
            hooks.append((name, fn))  # the reading hooks: keep
            continue

        def write(value, hook, fn=fn, layer=layer):
            if layer not in layers:
                return value
            return value + alpha * (fn(value.clone(), hook) - value)

        hooks.append((name, write))
    return hooks


@torch.no_grad()
def agreement(model, batches, hooks) -> float:
    agree = n = 0
    for tokens in batches:
        clean = model(tokens)[:, 1:-1].argmax(-1)
        replaced = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, 1:-1].argmax(-1)
        agree += (clean == replaced).sum().item()
        n += clean.numel()
    return agree / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clt", default=DEFAULT_CLT)
    p.add_argument("--batches", type=int, default=4, help="batches of 16 x 128 tokens per text")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    clt = CrossLayerTranscoder.from_pretrained(args.clt)
    L = clt.cfg.n_layers
    cases = [("all layers", 1.0, set(range(L)))]
    cases += [(f"only layer {layer}", 1.0, {layer}) for layer in range(L)]
    cases += [(f"all layers, error x {a}", a, set(range(L))) for a in (0.7, 0.5, 0.3)]
    texts = held_out_texts()
    print(f"CLT {args.clt}: top-1 agreement of the replacement model with the original")
    print(f"{'replaced':<26}" + "".join(f"{name:>10}" for name in texts))
    batches = {
        name: token_batches_from_texts(model, t, 128, 16)[: args.batches]
        for name, t in texts.items()
    }
    for label, alpha, layers in cases:
        hooks = scaled_hooks(clt, alpha, layers)
        row = [agreement(model, batches[name], hooks) for name in texts]
        print(f"{label:<26}" + "".join(f"{v:>10.1%}" for v in row))
    print("how sure the original model is (same positions):")
    for name in texts:
        with torch.no_grad():
            probs = torch.cat([model(t)[:, 1:-1].softmax(-1).flatten(0, 1) for t in batches[name]])
        top2 = probs.topk(2, dim=-1).values
        close = (top2[:, 0] - top2[:, 1] < 0.05).float().mean().item()
        print(
            f"  {name}: median top-1 probability {top2[:, 0].median().item():.2f}; "
            f"top-1 and top-2 within 5 points at {close:.1%} of positions"
        )


if __name__ == "__main__":
    main()
