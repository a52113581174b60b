"""Publishing: the pushed folder loads everywhere, the model card, the upload calls."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import sae_lens
import torch
import yaml

from sae_lens_clt import CrossLayerTranscoder
from sae_lens_clt.publish import PushResult, model_card, push_to_hub
from sae_lens_clt.transcoders import CrossLayerTranscoder as _CLT
from tests.conftest import make_clt

pytestmark = pytest.mark.usefixtures("no_network")


def trained_looking_clt(**kw: Any) -> CrossLayerTranscoder:
    clt = make_clt(**kw)
    clt.cfg.metadata.model_name = "google/gemma-2-2b"
    clt.cfg.metadata.l0 = 12.5
    clt.cfg.metadata.nmse = 0.123
    clt.cfg.metadata.loss_recovered = 0.91
    clt.cfg.metadata.training_tokens = 50_000_000
    return clt


def front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def test_pushed_folder_loads_everywhere(tmp_path: Path) -> None:
    clt = trained_looking_clt()
    result = push_to_hub(clt, "me/my-clt", out_dir=tmp_path)
    assert result == PushResult("me/my-clt", tmp_path, None, ("saelens", "circuit_tracer"))
    L = clt.cfg.n_layers
    assert {p.name for p in tmp_path.iterdir()} == {
        "cfg.json",
        "sae_weights.safetensors",
        "config.yaml",
        "README.md",
        *(f"W_enc_{i}.safetensors" for i in range(L)),
        *(f"W_dec_{i}.safetensors" for i in range(L)),
    }
    x = torch.randn(7, L, clt.cfg.d_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_acts, want_out = clt.encode(x), clt(x)
        assert (want_acts > 0).any()
        for loaded in (
            _CLT.from_pretrained(str(tmp_path)),
            _CLT.from_pretrained(str(tmp_path), lazy=True),
            sae_lens.SAE.load_from_disk(tmp_path),
        ):
            assert isinstance(loaded, CrossLayerTranscoder)
            assert torch.equal(loaded.encode(x), want_acts)
            torch.testing.assert_close(loaded(x), want_out, atol=1e-6, rtol=1e-6)

        ct = pytest.importorskip("circuit_tracer.transcoder.cross_layer_transcoder")
        config = yaml.safe_load((tmp_path / "config.yaml").read_text())
        assert config["model_name"] == "google/gemma-2-2b"
        for lazy_decoder in (False, True):
            theirs = ct.load_clt(
                str(tmp_path),
                feature_input_hook=config["feature_input_hook"],
                feature_output_hook=config["feature_output_hook"],
                device=torch.device("cpu"),
                dtype=torch.float32,
                lazy_decoder=lazy_decoder,
            )
            their_acts = theirs.encode(x.transpose(0, 1)).transpose(0, 1)  # theirs: [L, pos, d]
            their_out = theirs(x.transpose(0, 1)).transpose(0, 1)
            assert torch.equal(their_acts, want_acts)
            torch.testing.assert_close(their_out, want_out, atol=1e-5, rtol=1e-5)


def test_model_card(tmp_path: Path) -> None:
    clt = trained_looking_clt()
    push_to_hub(clt, "me/my-clt", out_dir=tmp_path)
    readme = (tmp_path / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["library_name"] == "sae-lens-clt"
    assert meta["base_model"] == "google/gemma-2-2b"
    assert {"cross-layer-transcoder", "saelens", "circuit-tracer"} <= set(meta["tags"])
    for text in (
        "blocks.{layer}.ln2.hook_normalized",
        "blocks.{layer}.hook_mlp_out",
        "| Layers | 3 |",
        "| Features per layer | 24 |",
        "12.5",
        "0.123",
        "0.91",
        "50,000,000",
        'CrossLayerTranscoder.from_pretrained("me/my-clt")',
        'sae_lens.SAE.from_pretrained("me/my-clt", "clt", converter=sae_lens_loader)',
        "ReplacementModel.from_pretrained",
    ):
        assert text in readme, text
    assert "Not recorded" not in readme


def test_model_card_eval_sets() -> None:
    clt = make_clt()
    clt.cfg.metadata.training_tokens = 2_000_000
    clt.cfg.metadata.eval_held_out = {
        "states": {"nmse": 0.25, "l0": 7.5, "fraction_loss_recovered": 0.8},
        "shakespeare": {"nmse": 0.5, "l0": 9.0},
    }
    card = model_card(clt, "me/x", ["saelens"])
    for row in (
        "| NMSE (states) | 0.25 |",
        "| NMSE (shakespeare) | 0.5 |",
        "| L0 (states) | 7.5 |",
        "| Loss recovered (states) | 0.8 |",
        "| Training tokens | 2,000,000 |",
    ):
        assert row in card, row
    assert "Not recorded" not in card


def test_model_card_without_metrics_or_hub_model() -> None:
    clt = make_clt(activation_fn="topk", k=4)  # model_name "test-model": not a Hub id
    card = model_card(clt, "me/x", ["saelens"])
    assert "base_model" not in front_matter(card)
    assert "Not recorded with this CLT: L0, NMSE, Loss recovered, Training tokens" in card
    assert "ReplacementModel" not in card and "W_enc_{i}" not in card


def test_topk_gets_saelens_layout_only(tmp_path: Path) -> None:
    clt = make_clt(activation_fn="topk", k=4)
    result = push_to_hub(clt, "me/topk", out_dir=tmp_path)
    assert result.layouts == ("saelens",)
    assert not list(tmp_path.glob("W_enc_*"))
    x = torch.randn(3, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(_CLT.from_pretrained(str(tmp_path))(x), clt(x))


class FakeCommit:
    commit_url = "https://huggingface.co/me/my-clt/commit/abc123"


@pytest.mark.parametrize("revision", ["main", "v2"])
def test_upload_calls(monkeypatch: pytest.MonkeyPatch, revision: str) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: Any, **kw: Any) -> None:
        calls.append(("create_repo", kw))

    def create_branch(self: Any, **kw: Any) -> None:
        calls.append(("create_branch", kw))

    def upload_folder(self: Any, **kw: Any) -> FakeCommit:
        folder = Path(kw["folder_path"])
        kw["files"] = sorted(p.name for p in folder.iterdir())  # what would be uploaded
        kw["token"] = self.token
        calls.append(("upload_folder", kw))
        return FakeCommit()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    clt = trained_looking_clt()
    result = push_to_hub(clt, "me/my-clt", revision=revision, private=True, token="hf_x")
    assert result.commit_url == FakeCommit.commit_url and result.folder is None
    names = [c[0] for c in calls]
    assert names == [
        "create_repo",
        *(["create_branch"] if revision != "main" else []),
        "upload_folder",
    ]
    assert calls[0][1] == {
        "repo_id": "me/my-clt",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
    }
    if revision != "main":
        assert calls[1][1] == {"repo_id": "me/my-clt", "branch": "v2", "exist_ok": True}
    up = calls[-1][1]
    assert up["repo_id"] == "me/my-clt" and up["revision"] == revision
    assert up["repo_type"] == "model" and up["token"] == "hf_x"
    assert {
        "cfg.json",
        "sae_weights.safetensors",
        "config.yaml",
        "README.md",
        "W_enc_0.safetensors",
        "W_dec_2.safetensors",
    } <= set(up["files"])
    assert not Path(up["folder_path"]).exists()  # the temporary folder is cleaned up


def test_bad_repo_id_and_lazy_clt(tmp_path: Path) -> None:
    clt = make_clt()
    with pytest.raises(ValueError, match="org/name"):
        push_to_hub(clt, "no-org", out_dir=tmp_path / "a")
    clt.save_model(tmp_path / "b")
    lazy = _CLT.from_pretrained(str(tmp_path / "b"), lazy=True)
    with pytest.raises(ValueError, match="lazy=True"):
        push_to_hub(lazy, "me/x", out_dir=tmp_path / "c")


def test_cli_push_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sae_lens_clt.cli import push as push_cmd

    clt = make_clt()
    clt.to_circuit_tracer(tmp_path / "src")
    parser = argparse.ArgumentParser()
    push_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "push",
            str(tmp_path / "src"),
            "me/cli-clt",
            "--out",
            str(tmp_path / "out"),
            "--model-name",
            "google/gemma-2-2b",
        ]
    )
    assert args.func(args) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            sae_lens.SAE.load_from_disk(tmp_path / "out")(x), clt(x), atol=1e-6, rtol=1e-6
        )
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "me/cli-clt" in readme and front_matter(readme)["base_model"] == "google/gemma-2-2b"
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["model_name"] == "google/gemma-2-2b"


def test_rewriting_a_folder_removes_stale_layers(tmp_path: Path) -> None:
    push_to_hub(make_clt(n_layers=4), "me/x", out_dir=tmp_path)
    smaller = make_clt(n_layers=2)
    push_to_hub(smaller, "me/x", out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("W_enc_*")) == [
        "W_enc_0.safetensors",
        "W_enc_1.safetensors",
    ]
    x = torch.randn(3, 2, 16)
    with torch.no_grad():
        for sub in (
            _CLT.from_pretrained(str(tmp_path)),
            CrossLayerTranscoder.from_circuit_tracer(tmp_path),
        ):
            torch.testing.assert_close(sub(x), smaller(x))
    push_to_hub(make_clt(n_layers=2, activation_fn="topk", k=3), "me/x", out_dir=tmp_path)
    assert not list(tmp_path.glob("W_*")) and not (tmp_path / "config.yaml").exists()
