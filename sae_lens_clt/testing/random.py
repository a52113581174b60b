"""Random transcoders for tests: any registered class, weights that are not identity-like.

``random_transcoder(cls, config_cls, n_layers, d_in, d_sae, seed, **cfg)``:

1. Build ``cls(config_cls(n_layers=..., d_in=..., d_sae=..., **cfg))``.
2. Draw every parameter from a seeded normal: encoder ``N(0, 1/d_in)`` (pre-activations of
   order 1 on unit-variance inputs), decoder ``N(0, 0.2²)``, biases ``N(0, 0.1²)``,
   JumpReLU thresholds ``U(0.2, 0.6)``, skip weights ``N(0, 0.1²)``; so a fair share of
   features fires on inputs of the scale a model's normalised activations have.
"""

from __future__ import annotations

from typing import Any

import torch


def random_transcoder(
    cls: type,
    config_cls: type,
    n_layers: int = 3,
    d_in: int = 16,
    d_sae: int = 24,
    seed: int = 0,
    **cfg: Any,
) -> Any:
    clt = cls(config_cls(n_layers=n_layers, d_in=d_in, d_sae=d_sae, **cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in clt.named_parameters():
            if name == "W_enc":
                p.copy_(torch.randn(p.shape, generator=gen) / d_in**0.5)
            elif name == "threshold":
                p.copy_(torch.rand(p.shape, generator=gen) * 0.4 + 0.2)
            elif name.startswith("W_dec"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            else:  # biases, skip weights and whatever a variant adds
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    clt.cfg.metadata.model_name = "test-model"
    return clt
