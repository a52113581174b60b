"""Shared fixtures: small random CLTs of every flavour."""

from __future__ import annotations

import pytest
import torch

from sae_lens_clt import CrossLayerTranscoder, CrossLayerTranscoderConfig


def make_clt(
    n_layers: int = 3,
    d_in: int = 16,
    d_sae: int = 24,
    d_out: int | None = None,
    activation_fn: str = "jumprelu",
    skip: bool = False,
    k: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> CrossLayerTranscoder:
    """A random CLT whose thresholds / biases leave a fair share of features active."""
    cfg = CrossLayerTranscoderConfig(
        n_layers=n_layers,
        d_in=d_in,
        d_out=d_out or d_in,
        d_sae=d_sae,
        activation_fn=activation_fn,  # type: ignore[arg-type]
        k=k,
        skip_connection=skip,
        dtype=dtype,
    )
    cfg.metadata.model_name = "test-model"
    clt = CrossLayerTranscoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clt.reset_parameters(generator=gen)
        clt.W_enc.normal_(0, 1 / d_in**0.5, generator=gen)
        clt.b_enc.normal_(0, 0.1, generator=gen)
        clt.b_dec.normal_(0, 0.1, generator=gen)
        for w in clt.W_dec:
            w.normal_(0, 0.2, generator=gen)
        if activation_fn == "jumprelu":
            clt.threshold.uniform_(0.2, 0.6, generator=gen)
        if skip:
            clt.W_skip.normal_(0, 0.1, generator=gen)
    return clt


FLAVOURS = [
    pytest.param({"activation_fn": "jumprelu"}, id="jumprelu"),
    pytest.param({"activation_fn": "relu"}, id="relu"),
    pytest.param({"activation_fn": "topk", "k": 4}, id="topk"),
    pytest.param({"activation_fn": "jumprelu", "skip": True}, id="jumprelu-skip"),
    pytest.param({"activation_fn": "relu", "d_out": 12}, id="relu-dout12"),
]


@pytest.fixture(params=FLAVOURS)
def any_clt(request: pytest.FixtureRequest) -> CrossLayerTranscoder:
    return make_clt(**request.param)
