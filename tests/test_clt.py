"""The CrossLayerTranscoder itself: math, causality, sparse decode, SAELens integration."""

from __future__ import annotations

import importlib

import pytest
import sae_lens
import torch
from sae_lens.registry import SAE_CLASS_REGISTRY

import sae_lens_clt
from sae_lens_clt import (
    ARCHITECTURE,
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    PerLayerTranscoder,
)
from sae_lens_clt.registry import registration
from tests.conftest import has_skip, make_clt


def reference_forward(clt: CrossLayerTranscoder, x: torch.Tensor) -> torch.Tensor:
    """The docs/design.md §3 formula written out with explicit loops over (s, t)."""
    L = clt.cfg.n_layers
    acts = []
    for s in range(L):
        z = x[..., s, :] @ clt.W_enc[s] + clt.b_enc[s]
        if clt.cfg.activation_fn == "jumprelu":
            a = z * (z > clt.threshold[s])
        elif clt.cfg.activation_fn == "relu":
            a = torch.relu(z)
        else:
            top = z.topk(clt.cfg.k, dim=-1)
            a = torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
        acts.append(a)
    outs = []
    for t in range(L):
        y = clt.b_dec[t].expand(*x.shape[:-2], -1).clone()
        # a CLT feature read at s writes to every t >= s, a per-layer transcoder's to s only
        for s in [t] if isinstance(clt, PerLayerTranscoder) else range(t + 1):
            y = y + acts[s] @ clt.decoder_block(s, t)
        if has_skip(clt):
            y = y + x[..., t, :] @ clt.W_skip[t]
        outs.append(y)
    return torch.stack(outs, dim=-2)


def test_forward_matches_formula(any_clt: CrossLayerTranscoder) -> None:
    x = torch.randn(7, any_clt.cfg.n_layers, any_clt.cfg.d_in)
    with torch.no_grad():
        torch.testing.assert_close(any_clt(x), reference_forward(any_clt, x))


def test_shapes_and_leading_dims(any_clt: CrossLayerTranscoder) -> None:
    c = any_clt.cfg
    x = torch.randn(2, 5, c.n_layers, c.d_in)
    acts = any_clt.encode(x)
    assert acts.shape == (2, 5, c.n_layers, c.d_sae)
    assert any_clt.decode(acts, x).shape == (2, 5, c.n_layers, c.d_out)
    for layer in range(c.n_layers):
        torch.testing.assert_close(
            any_clt.encode_layer(x[..., layer, :], layer), acts[..., layer, :]
        )


def test_only_lower_triangle_is_allocated() -> None:
    clt = make_clt(n_layers=5, d_in=8, d_sae=10)
    n_dec = sum(w.numel() for w in clt.W_dec)
    assert n_dec == 10 * 8 * (5 * 6 // 2)  # L(L+1)/2 blocks, not L²
    with pytest.raises(IndexError, match="writes only to layers"):
        clt.decoder_block(3, 1)


def test_causality_later_inputs_never_change_earlier_outputs(any_clt: CrossLayerTranscoder) -> None:
    L = any_clt.cfg.n_layers
    x = torch.randn(4, L, any_clt.cfg.d_in)
    with torch.no_grad():
        base = any_clt(x)
        for s in range(L):
            x2 = x.clone()
            x2[:, s] += 3 * torch.randn_like(x2[:, s])
            out = any_clt(x2)
            assert torch.equal(out[:, :s], base[:, :s]), f"input at layer {s} leaked backwards"
            assert not torch.allclose(out[:, s:], base[:, s:])


def test_sparse_decode_equals_dense(any_clt: CrossLayerTranscoder) -> None:
    x = torch.randn(3, 6, any_clt.cfg.n_layers, any_clt.cfg.d_in)
    with torch.no_grad():
        acts = any_clt.encode(x)
        assert 0 < (acts > 0).float().mean() < 1
        dense = any_clt.decode(acts, x)
        torch.testing.assert_close(any_clt.decode_sparse(acts, x), dense)
        torch.testing.assert_close(any_clt.decode_sparse(acts.to_sparse(), x), dense)
        # all-zero activations: only biases (and skip) remain
        zero = torch.zeros_like(acts)
        torch.testing.assert_close(any_clt.decode_sparse(zero, x), any_clt.decode(zero, x))


def test_sparse_decode_gradients_equal_dense() -> None:
    clt = make_clt(n_layers=4, d_in=12, d_sae=20)
    x = torch.randn(9, 4, 12)
    acts = clt.encode(x).detach()
    target = torch.randn(9, 4, 12)
    grads = []
    for fn in (clt.decode, clt.decode_sparse):
        clt.zero_grad()
        a = acts.clone().requires_grad_(True)
        loss = ((fn(a) - target) ** 2).sum()
        loss.backward()
        grads.append((a.grad * (acts != 0), [w.grad.clone() for w in clt.W_dec], clt.b_dec.grad))
    (ga_d, gw_d, gb_d), (ga_s, gw_s, gb_s) = grads
    torch.testing.assert_close(ga_s, ga_d, atol=1e-4, rtol=1e-4)
    for a, b in zip(gw_s, gw_d, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gb_s, gb_d)


def test_registered_in_saelens_and_reimport_is_harmless() -> None:
    assert SAE_CLASS_REGISTRY[ARCHITECTURE][0] is CrossLayerTranscoder
    importlib.reload(importlib.import_module("sae_lens_clt.registry"))  # forgets the table
    assert registration(ARCHITECTURE).cls is CrossLayerTranscoder  # the built-ins come back
    sae_lens_clt.register_architecture(
        ARCHITECTURE, CrossLayerTranscoder, CrossLayerTranscoderConfig
    )
    assert ARCHITECTURE in SAE_CLASS_REGISTRY


def test_register_refuses_to_overwrite_another_class() -> None:
    class Other(CrossLayerTranscoder):
        pass

    with pytest.raises(ValueError, match="already registered"):
        sae_lens_clt.register_architecture(ARCHITECTURE, Other, CrossLayerTranscoderConfig)


def test_sae_from_dict_builds_a_clt() -> None:
    clt = make_clt(skip=True)
    cfg = sae_lens.SAEConfig.from_dict(clt.cfg.to_dict())
    assert isinstance(cfg, CrossLayerTranscoderConfig)
    assert cfg == clt.cfg
    rebuilt = sae_lens.SAE.from_dict(clt.cfg.to_dict())
    assert isinstance(rebuilt, CrossLayerTranscoder)
    rebuilt.load_state_dict(clt.state_dict())
    x = torch.randn(3, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), clt(x))


def test_metadata_hooks() -> None:
    clt = make_clt()
    assert clt.cfg.hook_in(2) == "blocks.2.ln2.hook_normalized"
    assert clt.cfg.hook_out(0) == "blocks.0.hook_mlp_out"
    assert clt.cfg.metadata.model_name == "test-model"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_layers": 0}, "n_layers must be a positive integer"),
        ({"activation_fn": "gelu"}, "activation_fn must be"),
        ({"activation_fn": "topk"}, "TopK CLTs are TopKCrossLayerTranscoder"),
        ({"apply_b_dec_to_input": True}, "apply_b_dec_to_input must be False"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations must be 'none'"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, message: str) -> None:
    base = {"n_layers": 2, "d_in": 4, "d_sae": 8}
    with pytest.raises(ValueError, match=message):
        CrossLayerTranscoderConfig(**{**base, **kwargs})


def test_bad_input_shape_is_explained() -> None:
    clt = make_clt()
    with pytest.raises(ValueError, match=r"shape \[\.\.\., n_layers=3, 16\]"):
        clt.encode(torch.randn(5, 16))


def test_to_dtype_and_device_move_like_saelens() -> None:
    clt = make_clt().to(dtype=torch.float64)
    assert clt.cfg.dtype == "float64" and clt.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in clt.parameters())
    x = torch.randn(2, 3, 16)
    assert clt(x).dtype == torch.float64
    clt = clt.to("cpu")
    assert clt.cfg.device == "cpu"


def test_bfloat16_runs() -> None:
    clt = make_clt(dtype="bfloat16")
    out = clt.decode_sparse(clt.encode(torch.randn(2, 3, 16)))
    assert out.dtype == torch.bfloat16


def test_fold_W_dec_norm_keeps_outputs() -> None:
    clt = make_clt()
    x = torch.randn(6, 3, 16)
    with torch.no_grad():
        before = clt(x)
        clt.fold_W_dec_norm()
        torch.testing.assert_close(clt(x), before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clt.decoder_norms(), torch.ones(3, 24))


def test_fold_input_output_scaling() -> None:
    clt = make_clt(skip=True)
    x = torch.randn(6, 3, 16)
    s_in, s_out = torch.tensor([2.0, 0.5, 3.0]), torch.tensor([4.0, 0.25, 1.5])
    with torch.no_grad():
        expected = clt(x * s_in[:, None]) / s_out[:, None]
        clt.fold_input_output_scaling(s_in, s_out)
        torch.testing.assert_close(clt(x), expected, atol=1e-5, rtol=1e-5)
