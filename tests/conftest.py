"""Shared fixtures: small random CLTs of every flavour."""

from __future__ import annotations

import socket

import pytest
import torch

from sae_lens_clt import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    PerLayerTranscoder,
    PerLayerTranscoderConfig,
    SkipCrossLayerTranscoder,
    SkipCrossLayerTranscoderConfig,
    TopKCrossLayerTranscoder,
    TopKCrossLayerTranscoderConfig,
)
from sae_lens_clt.testing import text_dataset, tiny_lm


def new_transcoder(
    activation_fn: str = "jumprelu",
    skip: bool = False,
    plt: bool = False,
    k: int | None = None,
    **cfg,
) -> CrossLayerTranscoder:
    """A freshly initialised transcoder of the class the flags name (TopK, skip, PLT or CLT)."""
    if activation_fn == "topk":
        return TopKCrossLayerTranscoder(TopKCrossLayerTranscoderConfig(k=k or 4, **cfg))
    if skip:
        return SkipCrossLayerTranscoder(
            SkipCrossLayerTranscoderConfig(activation_fn=activation_fn, **cfg)
        )
    if plt:
        return PerLayerTranscoder(PerLayerTranscoderConfig(activation_fn=activation_fn, **cfg))
    return CrossLayerTranscoder(CrossLayerTranscoderConfig(activation_fn=activation_fn, **cfg))


def has_skip(clt: CrossLayerTranscoder) -> bool:
    return isinstance(clt, SkipCrossLayerTranscoder)


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
    plt: bool = False,
) -> CrossLayerTranscoder:
    """A random transcoder whose thresholds / biases leave a fair share of features active."""
    clt = new_transcoder(
        activation_fn,
        skip,
        plt,
        k,
        n_layers=n_layers,
        d_in=d_in,
        d_out=d_out or d_in,
        d_sae=d_sae,
        dtype=dtype,
    )
    clt.cfg.metadata.model_name = "test-model"
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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread avoids thread hand-off costs on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


FLAVOURS = [
    pytest.param({"activation_fn": "jumprelu"}, id="jumprelu"),
    pytest.param({"activation_fn": "relu"}, id="relu"),
    pytest.param({"activation_fn": "topk", "k": 4}, id="topk"),
    pytest.param({"activation_fn": "jumprelu", "skip": True}, id="jumprelu-skip"),
    pytest.param({"activation_fn": "relu", "d_out": 12}, id="relu-dout12"),
    pytest.param({"activation_fn": "jumprelu", "plt": True}, id="plt"),
]


@pytest.fixture(params=FLAVOURS)
def any_clt(request: pytest.FixtureRequest) -> CrossLayerTranscoder:
    return make_clt(**request.param)


def make_tiny_lm(n_layers: int = 2, d_model: int = 32, seed: int = 0, **overrides):
    """A small random HookedTransformer with a real word-level tokenizer (BOS id 0)."""
    return tiny_lm(n_layers=n_layers, d_model=d_model, seed=seed, **overrides)


def make_text_dataset(n_docs: int = 200, seed: int = 0):
    return text_dataset(n_docs, seed)
