"""The shipped variants against the contract suite, and what is special to each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sae_lens_clt import registry
from sae_lens_clt.testing import check_transcoder, random_transcoder
from sae_lens_clt.transcoders import (
    CrossLayerTranscoder,
    CrossLayerTranscoderConfig,
    PerLayerTranscoder,
    PerLayerTranscoderConfig,
    SkipCrossLayerTranscoder,
    SkipCrossLayerTranscoderConfig,
    TopKCrossLayerTranscoder,
    TopKCrossLayerTranscoderConfig,
    TopKPerLayerTranscoder,
    TopKPerLayerTranscoderConfig,
    TrainingTopKCrossLayerTranscoder,
    TrainingTopKCrossLayerTranscoderConfig,
)

VARIANTS = {
    "clt": (CrossLayerTranscoder, CrossLayerTranscoderConfig, {}),
    "clt-relu": (CrossLayerTranscoder, CrossLayerTranscoderConfig, {"activation_fn": "relu"}),
    "plt": (PerLayerTranscoder, PerLayerTranscoderConfig, {}),
    "skip": (SkipCrossLayerTranscoder, SkipCrossLayerTranscoderConfig, {}),
    "topk": (TopKCrossLayerTranscoder, TopKCrossLayerTranscoderConfig, {"k": 6}),
    "topk-plt": (TopKPerLayerTranscoder, TopKPerLayerTranscoderConfig, {"k": 6}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_passes_the_contract(name: str, tmp_path: Path) -> None:
    cls, cfg_cls, extra = VARIANTS[name]
    ran = check_transcoder(
        lambda **dims: random_transcoder(cls, cfg_cls, **dims, **extra), tmp_path
    )
    assert len(ran) == 11


def test_plt_allocates_no_cross_layer_block() -> None:
    plt = random_transcoder(PerLayerTranscoder, PerLayerTranscoderConfig, n_layers=6, d_in=8)
    assert [tuple(w.shape) for w in plt.W_dec] == [(24, 1, 8)] * 6
    clt = random_transcoder(CrossLayerTranscoder, CrossLayerTranscoderConfig, n_layers=6, d_in=8)
    n_plt = sum(w.numel() for w in plt.W_dec)
    assert sum(w.numel() for w in clt.W_dec) == n_plt * (6 + 1) // 2  # L(L+1)/2 blocks vs L
    assert [plt.sources(t) for t in range(6)] == [[t] for t in range(6)]


def test_batch_topk_converts_to_jumprelu_with_the_tracked_thresholds() -> None:
    torch.manual_seed(0)
    cfg = TrainingTopKCrossLayerTranscoderConfig(n_layers=2, d_in=8, d_sae=32, k=4, batch_topk=True)
    clt = TrainingTopKCrossLayerTranscoder(cfg)
    x, y = torch.randn(256, 2, 8), torch.randn(256, 2, 8)
    out = clt.training_losses(x, y, 0.0)
    n_active = (out.acts.values != 0).sum().item()
    assert n_active == 4 * 256 * 2  # k per token on average, over the batch, at each layer
    per_token = (out.acts.to_dense() != 0).sum(-1).float()  # [N, L]
    assert per_token.std() > 0  # tokens share the budget unevenly (BatchTopK, not TopK)
    for _ in range(20):
        clt.training_losses(torch.randn(256, 2, 8), y, 0.0)
    inference = clt.to_inference()
    assert type(inference) is CrossLayerTranscoder and inference.cfg.activation_fn == "jumprelu"
    assert inference.cfg.architecture() == registry.CLT
    theta = clt.kept_threshold
    torch.testing.assert_close(inference.threshold, theta[:, None].expand(2, 32))
    # on fresh tokens the JumpReLU keeps about what BatchTopK keeps: ~k per token and layer
    with torch.no_grad():
        l0 = (inference.encode(torch.randn(4096, 2, 8)) != 0).sum(-1).float().mean()
    assert 2.5 < l0 < 6.0, l0
    assert inference.circuit_tracer_exportable() is None  # the converted CLT goes to circuit-tracer


def test_topk_keeps_k_per_token_and_layer() -> None:
    clt = random_transcoder(TopKCrossLayerTranscoder, TopKCrossLayerTranscoderConfig, k=3)
    with torch.no_grad():
        acts = clt.encode(torch.randn(50, 3, 16))
    assert ((acts != 0).sum(-1) <= 3).all() and ((acts != 0).sum(-1) == 3).float().mean() > 0.9


def test_train_cli_imports_plugins_and_takes_variant_options() -> None:
    from sae_lens_clt.cli import build_parser
    from sae_lens_clt.cli.train import config_from_args

    args = [
        "train",
        "--import",
        "sae_lens_clt.transcoders",
        "--architecture",
        "topk_cross_layer_transcoder",
    ]
    cfg = config_from_args(build_parser().parse_args([*args, "--transcoder-options", '{"k": 7}']))
    assert cfg.architecture == registry.TOPK_CLT and cfg.transcoder_options == {"k": 7}
    with pytest.raises(SystemExit, match="--import no_such_plugin"):
        config_from_args(build_parser().parse_args(["train", "--import", "no_such_plugin"]))


@pytest.mark.parametrize("name", ["skip", "topk"])
def test_round_one_cfg_json_loads_as_the_variant(name: str, tmp_path: Path) -> None:
    """Round-1 files said architecture cross_layer_transcoder with skip_connection / topk flags."""
    import json

    import sae_lens

    from sae_lens_clt.formats.errors import CLTFormatError
    from sae_lens_clt.loading.pretrained import sae_lens_disk_loader
    from sae_lens_clt.testing import assert_same_transcoder

    cls, cfg_cls, extra = VARIANTS[name]
    clt = random_transcoder(cls, cfg_cls, **extra)
    clt.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = registry.CLT
    if name == "skip":
        cfg["skip_connection"] = True
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    for loaded in (
        CrossLayerTranscoder.from_pretrained(str(tmp_path)),
        CrossLayerTranscoder.load_from_disk(tmp_path),
        sae_lens.SAE.load_from_disk(tmp_path, converter=sae_lens_disk_loader),
    ):
        assert_same_transcoder(clt, loaded)
    # SAELens' own loader builds configs from the registry without our upgrade: it refuses
    # with directions, and a re-save makes the folder current
    with pytest.raises((CLTFormatError, ValueError), match="load_from_disk.*upgrade"):
        sae_lens.SAE.load_from_disk(tmp_path)
    CrossLayerTranscoder.load_from_disk(tmp_path).save_model(tmp_path)
    assert_same_transcoder(clt, sae_lens.SAE.load_from_disk(tmp_path))


def test_runner_flags_name_the_architecture() -> None:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

    def arch(**kw):
        return CLTTrainingRunnerConfig(**kw).architecture

    assert arch() == registry.CLT
    assert arch(cross_layer_decoders=False) == registry.PLT
    assert arch(skip_connection=True) == registry.SKIP_CLT
    assert arch(activation_fn="topk", k=4) == registry.TOPK_CLT
    assert arch(activation_fn="topk", k=4, cross_layer_decoders=False) == registry.TOPK_PLT
    assert arch(batch_topk=True, k=4, architecture=registry.PLT) == registry.TOPK_PLT


def test_batch_topk_per_layer_converts_to_a_jumprelu_plt() -> None:
    from sae_lens_clt.transcoders import (
        TrainingTopKPerLayerTranscoder,
        TrainingTopKPerLayerTranscoderConfig,
    )

    cfg = TrainingTopKPerLayerTranscoderConfig(n_layers=3, d_in=8, d_sae=16, k=2, batch_topk=True)
    clt = TrainingTopKPerLayerTranscoder(cfg)
    clt.training_losses(torch.randn(64, 3, 8), torch.randn(64, 3, 8), 0.0)
    inference = clt.to_inference()
    assert type(inference) is PerLayerTranscoder and inference.cfg.activation_fn == "jumprelu"
    assert [tuple(w.shape) for w in inference.W_dec] == [(16, 1, 8)] * 3


def test_topk_refuses_to_fold_decoder_norms() -> None:
    clt = random_transcoder(TopKCrossLayerTranscoder, TopKCrossLayerTranscoderConfig, k=3)
    with pytest.raises(NotImplementedError, match="which k features win"):
        clt.fold_W_dec_norm()


def test_contradictory_runner_flags_are_refused() -> None:
    from sae_lens_clt.training.config import CLTTrainingRunnerConfig

    for kw in (
        {"skip_connection": True, "cross_layer_decoders": False},
        {"skip_connection": True, "activation_fn": "topk", "k": 4},
        {"architecture": registry.SKIP_CLT, "cross_layer_decoders": False},
    ):
        with pytest.raises(ValueError, match="skip_connection|contradicts"):
            CLTTrainingRunnerConfig(**kw)


def test_round_one_topk_with_skip_is_refused_clearly(tmp_path: Path) -> None:
    import json

    from sae_lens_clt.formats.errors import CLTFormatError

    clt = random_transcoder(SkipCrossLayerTranscoder, SkipCrossLayerTranscoderConfig)
    clt.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg.update(architecture=registry.CLT, skip_connection=True, activation_fn="topk", k=3)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CLTFormatError, match="TopK CLT with a skip connection"):
        CrossLayerTranscoder.load_from_disk(tmp_path)


def test_lazy_load_of_a_file_missing_a_decoder_names_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from sae_lens_clt.formats.errors import CLTFormatError

    random_transcoder(CrossLayerTranscoder, CrossLayerTranscoderConfig).save_model(tmp_path)
    weights = tmp_path / "sae_weights.safetensors"
    tensors = load_file(weights)
    del tensors["W_dec.2"]
    save_file(tensors, weights)
    with pytest.raises(CLTFormatError, match="W_dec.2"):
        CrossLayerTranscoder.from_pretrained(str(tmp_path), lazy=True)


def test_saelens_registration_survives_an_installed_check() -> None:
    """``importlib.util.find_spec("sae_lens")`` before the import must not use up the hook."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sae_lens_clt\n"
        "assert importlib.util.find_spec('sae_lens') is not None\n"
        "import sae_lens\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "assert 'per_layer_transcoder' in SAE_CLASS_REGISTRY, sorted(SAE_CLASS_REGISTRY)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
