"""File formats: SAELens layout, circuit-tracer layout, and clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sae_lens
import torch
import yaml
from safetensors.torch import load_file, save_file

from sae_lens_clt import CLTFormatError, CrossLayerTranscoder
from tests.conftest import FLAVOURS, has_skip, make_clt


def _same_outputs(a: CrossLayerTranscoder, b: CrossLayerTranscoder) -> None:
    x = torch.randn(5, a.cfg.n_layers, a.cfg.d_in)
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x))
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_saelens_round_trip(tmp_path: Path, flavour: dict) -> None:
    clt = make_clt(**flavour)
    clt.save_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == clt.cfg.architecture()
    for loaded in (
        sae_lens.SAE.load_from_disk(tmp_path),
        CrossLayerTranscoder.load_from_disk(tmp_path),
    ):
        assert isinstance(loaded, CrossLayerTranscoder)
        assert loaded.cfg == clt.cfg
        _same_outputs(clt, loaded)


def test_saelens_load_with_dtype(tmp_path: Path) -> None:
    make_clt().save_model(tmp_path)
    loaded = sae_lens.SAE.load_from_disk(tmp_path, dtype="float64")
    assert loaded.W_enc.dtype == torch.float64
    assert CrossLayerTranscoder.load_from_disk(tmp_path, dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize(
    "flavour", [f for f in FLAVOURS if f.id in ("jumprelu", "relu", "jumprelu-skip")]
)
def test_circuit_tracer_round_trip(tmp_path: Path, flavour: dict) -> None:
    clt = make_clt(**flavour)
    clt.to_circuit_tracer(tmp_path, model_name="my-model", allow_extensions=has_skip(clt))
    L = clt.cfg.n_layers
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"config.yaml"} | {f"W_enc_{i}.safetensors" for i in range(L)} | {
        f"W_dec_{i}.safetensors" for i in range(L)
    }
    enc0 = load_file(tmp_path / "W_enc_0.safetensors")
    assert enc0["W_enc_0"].shape == (24, 16)  # [F, d_model]: transposed vs SAELens
    assert load_file(tmp_path / "W_dec_1.safetensors")["W_dec_1"].shape == (24, L - 1, 16)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config == {
        "model_name": "my-model",
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": "ln2.hook_normalized",  # the same tensor, not mlp.hook_in
        "feature_output_hook": "hook_mlp_out",
    }
    loaded = CrossLayerTranscoder.from_circuit_tracer(tmp_path)
    assert loaded.cfg.metadata.hook_name == clt.cfg.metadata.hook_name
    assert loaded.cfg.metadata.hook_name_out == clt.cfg.metadata.hook_name_out
    assert loaded.cfg.metadata.model_name == "my-model"
    _same_outputs(clt, loaded)


@pytest.mark.parametrize("lazy_decoder", [False, True])
@pytest.mark.parametrize("flavour", [f for f in FLAVOURS if f.id in ("jumprelu", "relu")])
def test_circuit_tracer_load_clt_gives_same_outputs(
    tmp_path: Path, flavour: dict, lazy_decoder: bool
) -> None:
    ct = pytest.importorskip("circuit_tracer.transcoder.cross_layer_transcoder")
    clt = make_clt(**flavour)
    clt.to_circuit_tracer(tmp_path)
    theirs = ct.load_clt(
        str(tmp_path),
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_decoder=lazy_decoder,
    )
    x = torch.randn(6, clt.cfg.n_layers, clt.cfg.d_in)  # ours: [pos, L, d]; theirs: [L, pos, d]
    with torch.no_grad():
        ours_acts, ours_out = clt.encode(x), clt(x)
        their_acts = theirs.encode(x.transpose(0, 1)).transpose(0, 1)
        their_out = theirs(x.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(their_acts, ours_acts)
    torch.testing.assert_close(their_out, ours_out, atol=1e-5, rtol=1e-5)
    assert (ours_acts > 0).any()


def test_circuit_tracer_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(CLTFormatError, match="d_in == d_out"):
        make_clt(d_out=12).to_circuit_tracer(tmp_path)
    with pytest.raises(CLTFormatError, match="not TopK"):
        make_clt(activation_fn="topk", k=3).to_circuit_tracer(tmp_path)
    with pytest.raises(CLTFormatError, match="reads no skip-connection weights"):
        make_clt(skip=True).to_circuit_tracer(tmp_path)
    bad = make_clt()
    bad.cfg.metadata.hook_name = "blocks.{layer}.attn.hook_pattern"
    with pytest.raises(CLTFormatError, match="not a residual-width hook point"):
        bad.to_circuit_tracer(tmp_path)
    bad.cfg.metadata.hook_name = "hook_embed"
    with pytest.raises(CLTFormatError, match="does not start with"):
        bad.to_circuit_tracer(tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was written


# ---------------------------------------------------------------- bad files, clear errors
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    make_clt().save_model(tmp_path)
    return tmp_path


def _edit_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "sae_weights.safetensors")
    edit(tensors)
    save_file(tensors, folder / "sae_weights.safetensors")


LOADERS = [
    pytest.param(CrossLayerTranscoder.load_from_disk, id="clt"),
    pytest.param(sae_lens.SAE.load_from_disk, id="saelens"),
]


@pytest.mark.parametrize("load", LOADERS)
def test_missing_tensor(saved: Path, load) -> None:
    _edit_weights(saved, lambda t: t.pop("W_dec.2"))
    with pytest.raises(CLTFormatError, match=r"sae_weights\.safetensors.*missing tensor.*W_dec\.2"):
        load(saved)


@pytest.mark.parametrize("load", LOADERS)
def test_wrong_shape(saved: Path, load) -> None:
    _edit_weights(saved, lambda t: t.update(b_enc=torch.zeros(3, 25)))
    with pytest.raises(
        CLTFormatError, match=r"sae_weights\.safetensors.*b_enc: expected \[3, 24\], got \[3, 25\]"
    ):
        load(saved)


@pytest.mark.parametrize("load", LOADERS)
def test_config_disagrees_with_weights(saved: Path, load) -> None:
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["d_sae"] = 32
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CLTFormatError, match=r"config says .*d_sae=32.*disagree"):
        load(saved)


def test_wrong_architecture(saved: Path) -> None:
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["architecture"] = "jumprelu"
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CLTFormatError,
        match=r"cfg\.json: architecture 'jumprelu' is not a registered transcoder",
    ):
        CrossLayerTranscoder.load_from_disk(saved)


def test_truncated_safetensors(saved: Path) -> None:
    weights = saved / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(
        CLTFormatError,
        match=r"sae_weights\.safetensors: not a readable safetensors file.*truncated",
    ):
        CrossLayerTranscoder.load_from_disk(saved)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(
        CLTFormatError, match=r"holds no CLT: expected cfg\.json \+ sae_weights\.safetensors"
    ):
        CrossLayerTranscoder.load_from_disk(tmp_path)
    with pytest.raises(CLTFormatError, match="not a folder"):
        CrossLayerTranscoder.load_from_disk(tmp_path / "nope")
    with pytest.raises(CLTFormatError, match="no W_enc_"):
        CrossLayerTranscoder.from_circuit_tracer(tmp_path)


def test_bad_json(saved: Path) -> None:
    (saved / "cfg.json").write_text("{not json")
    with pytest.raises(CLTFormatError, match=r"cfg\.json: not valid JSON"):
        CrossLayerTranscoder.load_from_disk(saved)


def test_circuit_tracer_bad_files(tmp_path: Path) -> None:
    make_clt().to_circuit_tracer(tmp_path)
    dec = tmp_path / "W_dec_1.safetensors"
    save_file({"W_dec_1": torch.zeros(24, 3, 16)}, dec)
    with pytest.raises(
        CLTFormatError,
        match=r"W_dec_1\.safetensors: wrong shape.*expected \[24, 2, 16\], got \[24, 3, 16\]",
    ):
        CrossLayerTranscoder.from_circuit_tracer(tmp_path)
    save_file({"W_dec_x": torch.zeros(24, 2, 16)}, dec)
    with pytest.raises(CLTFormatError, match=r"W_dec_1\.safetensors: missing tensor.*W_dec_1"):
        CrossLayerTranscoder.from_circuit_tracer(tmp_path)
    make_clt().to_circuit_tracer(tmp_path)
    enc = tmp_path / "W_enc_2.safetensors"
    enc.write_bytes(enc.read_bytes()[:100])
    with pytest.raises(CLTFormatError, match=r"W_enc_2\.safetensors: not a readable"):
        CrossLayerTranscoder.from_circuit_tracer(tmp_path)
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\n")
    with pytest.raises(CLTFormatError, match="model_kind is 'transcoder_set'"):
        CrossLayerTranscoder.from_circuit_tracer(tmp_path)


def test_loading_never_unpickles(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    CrossLayerTranscoder.load_from_disk(saved)
    sae_lens.SAE.load_from_disk(saved)


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clt = make_clt()
    clt.save_model(tmp_path)
    before = (tmp_path / "sae_weights.safetensors").read_bytes()
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        clt.b_dec.add_(1)
    with pytest.raises(OSError, match="disk full"):
        clt.save_model(tmp_path)
    assert (tmp_path / "sae_weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]


def test_from_circuit_tracer_reads_that_layout_in_a_folder_with_both(tmp_path: Path) -> None:
    """Hub folders hold both layouts; from_circuit_tracer must read the circuit-tracer files."""
    saelens_clt, ct_clt = make_clt(seed=1), make_clt(seed=2)
    saelens_clt.save_model(tmp_path)
    ct_clt.to_circuit_tracer(tmp_path)
    torch.testing.assert_close(
        CrossLayerTranscoder.from_circuit_tracer(tmp_path).W_enc, ct_clt.W_enc
    )
    torch.testing.assert_close(
        CrossLayerTranscoder.load_from_disk(tmp_path).W_enc, saelens_clt.W_enc
    )


def test_file_names_are_saelens_own() -> None:
    """formats.saelens spells SAELens' file names (importing sae_lens there would cost the
    light commands seconds); they must stay SAELens' constants."""
    from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

    from sae_lens_clt.formats import saelens

    assert (saelens.CFG_FILENAME, saelens.WEIGHTS_FILENAME) == (
        SAE_CFG_FILENAME,
        SAE_WEIGHTS_FILENAME,
    )
