"""Pretrained CLTs: registry, name resolution, local / Hub-cache loading, lazy decoders."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sae_lens
import torch
import yaml
from safetensors.torch import save_file

from sae_lens_clt import CrossLayerTranscoder
from sae_lens_clt.formats import folder as layouts
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.loading import pretrained as fetching
from sae_lens_clt.loading import releases as P
from sae_lens_clt.testing import put_in_hub_cache
from sae_lens_clt.transcoders import CrossLayerTranscoder as _CLT
from tests.conftest import FLAVOURS, has_skip, make_clt

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(autouse=True)
def clean_user_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(P.RELEASES_ENV, raising=False)
    monkeypatch.setattr(P, "_user_releases", {})


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache used in offline mode."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


put_in_cache = put_in_hub_cache  # the contract suite's helper: the Hub cache layout


def same_outputs(a: CrossLayerTranscoder, b: CrossLayerTranscoder, atol: float = 1e-5) -> None:
    x = torch.randn(6, a.cfg.n_layers, a.cfg.d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts_a, acts_b = a.encode(x), b.encode(x)
        torch.testing.assert_close(acts_b, acts_a)
        assert (acts_a > 0).any()
        torch.testing.assert_close(
            b.decode_sparse(acts_b, x), a.decode(acts_a, x), atol=atol, rtol=atol
        )
        torch.testing.assert_close(b(x), a(x), atol=atol, rtol=atol)


# ---------------------------------------------------------------------- registry
def test_builtin_registry() -> None:
    reg = P.get_registry()
    assert P.DEFAULT_CLT == "sae-lens-clt/tiny-states-clt"
    for name, model in [
        ("mntss/clt-gemma-2-2b-426k", "google/gemma-2-2b"),
        ("mntss/clt-gemma-2-2b-2.5M", "google/gemma-2-2b"),
        ("mntss/clt-llama-3.2-1b-524k", "meta-llama/Llama-3.2-1B"),
    ]:
        assert reg[name].model == model
        assert reg[name].repo_id == name
        assert reg[name].location() == f"hf://{name}"
    assert reg["mntss/clt-gemma-2-2b-426k"].n_layers == 26
    assert reg["mntss/clt-llama-3.2-1b-524k"].d_sae == 32768
    assert reg[P.DEFAULT_CLT].local_folder() == P.PACKAGE_DIR / "default_model" / "default_clt"


def test_default_clt_by_name_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    import sae_lens_clt

    clt = make_clt()
    monkeypatch.setattr(P, "PACKAGE_DIR", tmp_path)
    clt.save_model(tmp_path / "default_model" / "default_clt")
    assert sae_lens_clt.DEFAULT_CLT == P.DEFAULT_CLT
    loaded = CrossLayerTranscoder.from_pretrained(sae_lens_clt.DEFAULT_CLT)
    assert loaded.cfg == clt.cfg
    same_outputs(clt, loaded)
    lazy = _CLT.from_pretrained(P.DEFAULT_CLT, lazy=True)
    same_outputs(clt, lazy)


def test_default_clt_missing_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "PACKAGE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="default CLT .* is not installed"):
        _CLT.from_pretrained(P.DEFAULT_CLT)


def test_unknown_name_lists_closest() -> None:
    with pytest.raises(P.UnknownCLTError) as err:
        _CLT.from_pretrained("sae-lens-clt/tiny-state-clt")
    assert P.DEFAULT_CLT in str(err.value)
    with pytest.raises(P.UnknownCLTError) as err:
        _CLT.from_pretrained("clt-gemma-2-2b-426k")  # no org: not a Hub id either
    assert "mntss/clt-gemma-2-2b-426k" in str(err.value)
    assert "sae-lens-clt list" in str(err.value)


def test_uncached_hub_id_offline_is_clear(hub_cache: Path) -> None:
    with pytest.raises(P.UnknownCLTError, match="not in the local Hugging Face cache") as err:
        _CLT.from_pretrained("mntss/clt-gemma-2-2b-462k")
    assert "mntss/clt-gemma-2-2b-426k" in str(err.value)  # closest names offered
    with pytest.raises(P.UnknownCLTError, match="not in the local Hugging Face cache") as err:
        _CLT.from_pretrained("mntss/clt-llama-3.2-1b-524k")  # a release, not cached
    closest = str(err.value).partition("Closest registered names:")[2].partition(" (")[0]
    assert "mntss/clt-llama-3.2-1b-524k" not in closest  # never suggests the name itself


def test_user_releases_yaml_function_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clt = make_clt(seed=3)
    clt.save_model(tmp_path / "mine")
    spec = {"me/yaml-clt": {"model": "test-model", "path": "mine", "n_layers": 3, "d_sae": 24}}
    (tmp_path / "releases.yaml").write_text(yaml.safe_dump(spec))
    assert P.load_releases(tmp_path / "releases.yaml") == ["me/yaml-clt"]
    assert P.get_registry()["me/yaml-clt"].local_folder() == tmp_path / "mine"
    same_outputs(clt, _CLT.from_pretrained("me/yaml-clt"))
    with pytest.raises(ValueError, match="already registered"):
        P.load_releases(tmp_path / "releases.yaml")

    P.register_release("me/func-clt", path=str(tmp_path / "mine"), model="test-model")
    same_outputs(clt, _CLT.from_pretrained("me/func-clt"))
    P.unregister_release("me/func-clt")
    assert "me/func-clt" not in P.get_registry()

    env_spec = {"me/env-clt": {"path": str(tmp_path / "mine")}}
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(env_spec))
    monkeypatch.setenv(P.RELEASES_ENV, str(tmp_path / "env.yaml"))
    same_outputs(clt, _CLT.from_pretrained("me/env-clt"))


def test_bad_release_entries() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        P.register_release("me/none")
    with pytest.raises(TypeError, match="unknown release field"):
        P.register_release("me/typo", repo_id="me/x", n_layer=3)
    with pytest.raises(ValueError, match="layout must be"):
        P.register_release("me/layout", repo_id="me/x", layout="npz")


# ---------------------------------------------------------------------- local folders
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_local_saelens_layout(tmp_path: Path, flavour: dict, lazy: bool) -> None:
    clt = make_clt(**flavour)
    clt.save_model(tmp_path)
    assert layouts.detect_layout(tmp_path) == "saelens"
    loaded = CrossLayerTranscoder.from_pretrained(str(tmp_path), lazy=lazy)
    assert loaded.cfg == clt.cfg
    assert (loaded.lazy_decoder is not None) == lazy
    same_outputs(clt, loaded)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize(
    "flavour", [f for f in FLAVOURS if f.id in ("jumprelu", "relu", "jumprelu-skip")]
)
def test_local_circuit_tracer_layout(tmp_path: Path, flavour: dict, lazy: bool) -> None:
    clt = make_clt(**flavour)
    clt.to_circuit_tracer(tmp_path, allow_extensions=has_skip(clt))
    assert layouts.detect_layout(tmp_path) == "circuit_tracer"
    loaded = _CLT.from_pretrained(str(tmp_path), lazy=lazy)
    same_outputs(clt, loaded)
    torch.testing.assert_close(loaded.decoder_norms(), clt.decoder_norms())
    torch.testing.assert_close(loaded.decoder_block(1, 2), clt.decoder_block(1, 2))


def test_dtype_and_device_options(tmp_path: Path) -> None:
    clt = make_clt()
    clt.save_model(tmp_path / "a")
    clt.to_circuit_tracer(tmp_path / "b")
    for sub in ("a", "b"):
        for lazy in (False, True):
            loaded = _CLT.from_pretrained(str(tmp_path / sub), dtype="float64", lazy=lazy)
            assert loaded.W_enc.dtype == torch.float64 and loaded.cfg.dtype == "float64"
            assert loaded.decoder_rows(0, torch.tensor([1, 2])).dtype == torch.float64


def test_not_a_clt_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CLTFormatError, match="holds no CLT"):
        _CLT.from_pretrained(str(tmp_path))


def test_truncated_decoder_file(tmp_path: Path) -> None:
    make_clt().to_circuit_tracer(tmp_path)
    dec = tmp_path / "W_dec_1.safetensors"
    dec.write_bytes(dec.read_bytes()[:-100])
    with pytest.raises(CLTFormatError, match="W_dec_1"):
        _CLT.from_pretrained(str(tmp_path))


# ---------------------------------------------------------------------- exact circuit-tracer fixture
def write_circuit_tracer_fixture(folder: Path, n_layers: int = 3, d: int = 8, F: int = 12):
    """Write a CLT by hand in circuit-tracer's exact layout (bf16, as the public CLTs)."""
    gen = torch.Generator().manual_seed(7)
    bf = torch.bfloat16
    raw: dict[str, list[torch.Tensor]] = {k: [] for k in ("W_enc", "b_enc", "b_dec", "th", "W_dec")}
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_layers):
        W_enc = (torch.randn(F, d, generator=gen) / d**0.5).to(bf)
        b_enc = (0.1 * torch.randn(F, generator=gen)).to(bf)
        b_dec = (0.1 * torch.randn(d, generator=gen)).to(bf)
        th = (0.1 + 0.3 * torch.rand(F, generator=gen)).to(bf)
        W_dec = (0.2 * torch.randn(F, n_layers - i, d, generator=gen)).to(bf)
        save_file(
            {f"W_enc_{i}": W_enc, f"b_enc_{i}": b_enc, f"b_dec_{i}": b_dec, f"threshold_{i}": th},
            str(folder / f"W_enc_{i}.safetensors"),
        )
        save_file({f"W_dec_{i}": W_dec}, str(folder / f"W_dec_{i}.safetensors"))
        for k, v in zip(raw, (W_enc, b_enc, b_dec, th, W_dec), strict=True):
            raw[k].append(v)
    (folder / "config.yaml").write_text(
        'model_name: "google/gemma-2-2b"\nmodel_kind: cross_layer_transcoder\n'
        "feature_input_hook: hook_resid_mid\nfeature_output_hook: hook_mlp_out\n"
    )
    return raw


def reference_forward(raw: dict[str, list[torch.Tensor]], x: torch.Tensor):
    """The CLT math straight from the raw tensors: ``x [N, L, d] -> (acts, recon)``."""
    L = len(raw["W_enc"])
    x = x.float()
    acts = []
    for s in range(L):
        z = x[:, s] @ raw["W_enc"][s].float().T + raw["b_enc"][s].float()
        acts.append(z * (z > raw["th"][s].float()))
    recon = []
    for t in range(L):
        y = raw["b_dec"][t].float().expand(x.shape[0], -1).clone()
        for s in range(t + 1):
            y = y + acts[s] @ raw["W_dec"][s][:, t - s].float()
        recon.append(y)
    return torch.stack(acts, 1), torch.stack(recon, 1)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_exact_circuit_tracer_fixture(tmp_path: Path, lazy: bool) -> None:
    raw = write_circuit_tracer_fixture(tmp_path)
    clt = _CLT.from_pretrained(str(tmp_path), dtype="float32", lazy=lazy)
    assert clt.cfg.metadata.model_name == "google/gemma-2-2b"
    assert clt.cfg.hook_in(3) == "blocks.3.hook_resid_mid"
    assert clt.cfg.hook_out(3) == "blocks.3.hook_mlp_out"
    assert clt.cfg.activation_fn == "jumprelu"
    x = torch.randn(10, 3, 8, generator=torch.Generator().manual_seed(2))
    want_acts, want_recon = reference_forward(raw, x)
    with torch.no_grad():
        acts = clt.encode(x)
        torch.testing.assert_close(acts, want_acts)
        assert (acts > 0).any() and (acts == 0).any()
        torch.testing.assert_close(clt.decode_sparse(acts), want_recon, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clt(x), want_recon, atol=1e-5, rtol=1e-5)
    native = _CLT.from_pretrained(str(tmp_path))  # dtype of the files
    assert native.dtype == torch.bfloat16


def test_lazy_reads_only_active_rows(tmp_path: Path) -> None:
    clt = make_clt(n_layers=4, d_in=16, d_sae=64)
    with torch.no_grad():
        clt.threshold.fill_(0.9)  # few active features
    clt.to_circuit_tracer(tmp_path)
    lazy = _CLT.from_pretrained(str(tmp_path), lazy=True)
    dec = lazy.lazy_decoder
    assert dec is not None and dec.rows_read == 0
    x = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts = lazy.encode(x)
        out = lazy.decode_sparse(acts)
    torch.testing.assert_close(out, clt.decode(acts), atol=1e-5, rtol=1e-5)
    active_pairs = int((acts != 0).any(0).sum())  # distinct (layer, feature) active
    assert 0 < active_pairs < 4 * 64 // 2
    assert dec.rows_read == active_pairs
    row_bytes = sum(((acts[:, s] != 0).any(0).sum().item()) * (4 - s) * 16 * 4 for s in range(4))
    assert dec.bytes_read == row_bytes
    assert all(w.is_meta for w in lazy.W_dec)  # the decoder never came into memory


# ---------------------------------------------------------------------- Hub cache
def test_hub_cache_offline_round_trips(tmp_path: Path, hub_cache: Path) -> None:
    clt_ct = make_clt(seed=1)
    clt_ct.to_circuit_tracer(tmp_path / "ct")
    put_in_cache(hub_cache, "someone/clt-ct", tmp_path / "ct")
    clt_sl = make_clt(seed=2, activation_fn="topk", k=4)
    clt_sl.save_model(tmp_path / "sl")
    sha = put_in_cache(hub_cache, "someone/clts", tmp_path / "sl", subfolder="run-3")

    same_outputs(clt_ct, _CLT.from_pretrained("someone/clt-ct"))
    same_outputs(clt_ct, _CLT.from_pretrained("someone/clt-ct", lazy=True))
    same_outputs(clt_sl, _CLT.from_pretrained("someone/clts/run-3"))
    same_outputs(clt_sl, _CLT.from_pretrained("someone/clts/run-3", revision=sha))
    with pytest.raises(CLTFormatError, match=r"holds neither[^\n]*offline"):
        _CLT.from_pretrained("someone/clts/run-4")  # repo cached, subfolder not
    with pytest.raises(P.UnknownCLTError, match="not in the local Hugging Face cache"):
        _CLT.from_pretrained("someone/other")


def test_public_release_name_from_cache(tmp_path: Path, hub_cache: Path) -> None:
    raw = write_circuit_tracer_fixture(tmp_path / "fake426k")
    put_in_cache(hub_cache, "mntss/clt-gemma-2-2b-426k", tmp_path / "fake426k")
    clt = _CLT.from_pretrained("mntss/clt-gemma-2-2b-426k", dtype="float32", lazy=True)
    x = torch.randn(4, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(clt(x), reference_forward(raw, x)[1], atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # a fresh interpreter importing sae_lens takes 10-30 s on a shared CPU
def test_hub_cache_with_real_env_vars(tmp_path: Path) -> None:
    """HF_HUB_OFFLINE=1 / HF_HUB_CACHE set in the environment of a fresh interpreter."""
    clt = make_clt(seed=4)
    clt.to_circuit_tracer(tmp_path / "ct")
    put_in_cache(tmp_path / "cache", "someone/env-clt", tmp_path / "ct")
    clt.save_model(tmp_path / "ref")
    code = (
        "import torch, sae_lens_clt as s\n"
        "from sae_lens_clt.transcoders import CrossLayerTranscoder\n"
        "a = CrossLayerTranscoder.from_pretrained('someone/env-clt')\n"
        f"b = s.CrossLayerTranscoder.load_from_disk({str(tmp_path / 'ref')!r})\n"
        "x = torch.randn(4, 3, 16)\n"
        "torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)\n"
        "print('ok')\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("ok")


# ---------------------------------------------------------------------- SAELens interop
def test_saelens_from_pretrained_with_converter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    clt = make_clt()
    monkeypatch.setattr(P, "PACKAGE_DIR", tmp_path)
    clt.save_model(tmp_path / "default_model" / "default_clt")
    sae = sae_lens.SAE.from_pretrained(
        P.DEFAULT_CLT, fetching.SAELENS_SAE_ID, converter=fetching.sae_lens_loader
    )
    assert isinstance(sae, CrossLayerTranscoder)
    same_outputs(clt, sae)

    clt.to_circuit_tracer(tmp_path / "ct")
    put_in_cache(hub_cache, "someone/ct", tmp_path / "ct")
    sae = sae_lens.SAE.from_pretrained("someone/ct", "clt", converter=fetching.sae_lens_loader)
    same_outputs(clt, sae)
    sae = sae_lens.SAE.load_from_disk(tmp_path / "ct", converter=fetching.sae_lens_disk_loader)
    same_outputs(clt, sae)


# ---------------------------------------------------------------------- CLI
def test_cli_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sae_lens_clt.cli import list as list_cmd

    (tmp_path / "r.yaml").write_text(
        yaml.safe_dump({"me/cli-clt": {"repo_id": "me/clt", "model": "gpt2"}})
    )
    parser = argparse.ArgumentParser()
    list_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["list", "--releases", str(tmp_path / "r.yaml")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "mntss/clt-gemma-2-2b-2.5M" in out and "98,304" in out and "hf://mntss/" in out
    assert P.DEFAULT_CLT in out and "package:sae_lens_clt/default_model/default_clt" in out
    assert "me/cli-clt" in out and "gpt2" in out


def test_describe_fills_local_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "PACKAGE_DIR", tmp_path)
    assert P.describe(P.get_registry()[P.DEFAULT_CLT]).n_layers is None  # not installed
    make_clt(n_layers=2, d_sae=40).save_model(tmp_path / "default_model" / "default_clt")
    filled = P.describe(P.get_registry()[P.DEFAULT_CLT])
    assert (filled.n_layers, filled.d_sae, filled.d_model) == (2, 40, 16)
    assert filled.model == "sae-lens-clt/tiny-states"  # the registry's own value wins
    row = next(r for r in P.release_table() if r["name"] == P.DEFAULT_CLT)
    assert (
        row["d_sae"] == 40 and row["location"] == "package:sae_lens_clt/default_model/default_clt"
    )


def test_attribution_with_lazy_clt_matches_eager(tmp_path: Path) -> None:
    """Attribution reads decoder rows through decoder_rows / decode_sparse: lazy == eager."""
    from sae_lens_clt.attribution import attribute
    from tests.test_attribution import random_clt, random_model

    model = random_model(n_layers=2, d_model=32)
    clt = random_clt(model, d_sae=48)
    clt.to_circuit_tracer(tmp_path)
    lazy = _CLT.from_pretrained(str(tmp_path), lazy=True)
    prompt = torch.randint(0, model.cfg.d_vocab, (8,), generator=torch.Generator().manual_seed(0))
    eager_graph = attribute(model, clt, prompt)
    lazy_graph = attribute(model, lazy, prompt)
    assert torch.equal(lazy_graph.active_features, eager_graph.active_features)
    torch.testing.assert_close(lazy_graph.adjacency, eager_graph.adjacency, atol=1e-5, rtol=1e-4)
    assert lazy.lazy_decoder is not None and lazy.lazy_decoder.rows_read > 0
