"""CLT training: losses, runner on SAELens' ActivationsStore, checkpoints, resume, evals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sae_lens
import torch
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

from sae_lens_clt import ARCHITECTURE, CrossLayerTranscoder
from sae_lens_clt.evals import evaluate_clt, token_batches_from_texts
from sae_lens_clt.registry import architectures, registration
from sae_lens_clt.training.runner import (
    CLTTrainingRunner,
    CLTTrainingRunnerConfig,
    TrainingDivergedError,
)
from sae_lens_clt.transcoders import (
    PerLayerTranscoder,
    TrainingCrossLayerTranscoder,
    TrainingCrossLayerTranscoderConfig,
    TrainingPerLayerTranscoder,
    TrainingPerLayerTranscoderConfig,
    TrainingSkipCrossLayerTranscoder,
    TrainingSkipCrossLayerTranscoderConfig,
)
from tests.conftest import make_clt, make_text_dataset, make_tiny_lm

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**overrides) -> CLTTrainingRunnerConfig:
    base = {
        "model_name": "tiny",
        "d_sae": 32,
        "training_tokens": 24 * 128,
        "train_batch_size_tokens": 128,
        "context_size": 32,
        "store_batch_size_prompts": 4,
        "n_batches_for_norm_estimate": 2,
        "log_every_n_steps": 4,
        "lr": 3e-3,
        "verbose": False,
        "seed": 7,
    }
    return CLTTrainingRunnerConfig(**{**base, **overrides})


def run_tiny(cfg: CLTTrainingRunnerConfig) -> tuple[CLTTrainingRunner, CrossLayerTranscoder]:
    runner = CLTTrainingRunner(
        cfg, override_model=make_tiny_lm(), override_dataset=make_text_dataset()
    )
    return runner, runner.run()


def test_training_classes_are_registered_with_us_not_with_saelens_trainer() -> None:
    """SAELens' trainer cannot run a multi-layer transcoder (no training_forward_pass on one
    hook), so its training registry does not list ours; our runner finds them in ours."""
    reg = registration(ARCHITECTURE)
    assert (reg.training_class, reg.training_config_class) == (
        TrainingCrossLayerTranscoder,
        TrainingCrossLayerTranscoderConfig,
    )
    for arch in architectures():
        assert arch not in SAE_TRAINING_CLASS_REGISTRY
    cfg = TrainingCrossLayerTranscoderConfig(n_layers=2, d_in=8, d_sae=16)
    again = TrainingCrossLayerTranscoderConfig.from_dict(cfg.to_dict())
    assert isinstance(again, TrainingCrossLayerTranscoderConfig)
    assert again.l0_coefficient == cfg.l0_coefficient


def test_losses_match_the_formula() -> None:
    torch.manual_seed(0)
    cfg = TrainingCrossLayerTranscoderConfig(
        n_layers=3, d_in=8, d_sae=16, pre_act_loss_coefficient=0.5
    )
    clt = TrainingCrossLayerTranscoder(cfg)
    x, y = torch.randn(10, 3, 8), torch.randn(10, 3, 8)
    clt.initialize_from_data(x)
    loss, parts, acts, _ = clt.training_losses(x, y, l0_coefficient=0.1)
    with torch.no_grad():
        z = torch.einsum("nli,lif->nlf", x, clt.W_enc) + clt.b_enc
        a = z * (z > clt.threshold)
        norms = torch.stack([w.flatten(1).norm(dim=1) for w in clt.W_dec])  # [L, F]
        mse = (clt.decode(a) - y).pow(2).sum((1, 2)).mean()
        tanh = 0.1 * torch.tanh(4.0 * a * norms).sum((1, 2)).mean()
        pre = 0.5 * ((clt.threshold - z).relu() * norms).sum((1, 2)).mean()
    torch.testing.assert_close(acts.to_dense(), a)
    torch.testing.assert_close(parts["mse_loss"], mse)
    torch.testing.assert_close(parts["l0_loss"], tanh)
    torch.testing.assert_close(parts["pre_act_loss"], pre)
    torch.testing.assert_close(loss, mse + tanh + pre)
    loss.backward()
    assert clt.threshold.grad is not None and clt.threshold.grad.abs().sum() > 0  # STE


def reference_jumprelu_loss(clt: TrainingCrossLayerTranscoder, x, y, l0_coefficient):
    """DESIGN §3 with plain autograd, SAELens' JumpReLU and a dense decode by explicit loops."""
    from sae_lens.saes.jumprelu_sae import JumpReLU

    cfg = clt.cfg
    z = torch.einsum("nli,lif->nlf", x, clt.W_enc) + clt.b_enc
    a = JumpReLU.apply(z, clt.threshold, cfg.jumprelu_bandwidth, False)
    y_hat = clt.b_dec.expand(x.shape[0], -1, -1)
    for t in range(cfg.n_layers):
        y_hat = y_hat.index_add(
            1,
            torch.tensor([t]),
            sum(a[:, s] @ clt.W_dec[s][:, t - s] for s in range(t + 1))[:, None],
        )
    norms = torch.stack([w.flatten(1).norm(dim=1) for w in clt.W_dec])
    mse = (y_hat - y).pow(2).sum((1, 2)).mean()
    tanh = l0_coefficient * torch.tanh(cfg.jumprelu_tanh_scale * a * norms).sum((1, 2)).mean()
    pre = cfg.pre_act_loss_coefficient * ((clt.threshold - z).relu() * norms).sum((1, 2)).mean()
    return mse + tanh + pre


@pytest.mark.parametrize("decode", ["sparse", "dense"])
def test_fused_jumprelu_gradients_equal_plain_autograd(decode: str) -> None:
    """The fused sparse path gives every parameter the gradient of the dense formula,
    including the threshold's straight-through gradient from entries just below θ
    (off, so they decode to nothing, but inside the window)."""
    torch.manual_seed(0)
    cfg = TrainingCrossLayerTranscoderConfig(
        n_layers=3,
        d_in=8,
        d_sae=32,
        jumprelu_bandwidth=0.4,
        pre_act_loss_coefficient=0.05,
        decode_sparse_below=1.0 if decode == "sparse" else 0.0,
        dtype="float64",
    )
    clt = TrainingCrossLayerTranscoder(cfg)
    x, y = torch.randn(64, 3, 8, dtype=torch.float64), torch.randn(64, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        clt.threshold.uniform_(0.2, 1.0)
        for w in clt.W_dec:
            w.normal_()
    z = torch.einsum("nli,lif->nlf", x, clt.W_enc) + clt.b_enc
    gap = (z - clt.threshold).detach()
    assert ((gap > -0.2) & (gap <= 0)).sum() > 20  # off entries inside the window exist
    assert ((gap > 0) & (gap < 0.2)).sum() > 20  # and on entries inside it

    fused = clt.training_losses(x, y, 0.3).loss
    fused.backward()
    grads = {k: p.grad.clone() for k, p in clt.named_parameters()}
    clt.zero_grad()
    ref = reference_jumprelu_loss(clt, x, y, 0.3)
    ref.backward()
    torch.testing.assert_close(fused, ref)
    for k, p in clt.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, msg=f"gradient of {k} differs")
    assert grads["threshold"].abs().sum() > 0


def test_init_starts_features_alive() -> None:
    torch.manual_seed(0)
    cfg = TrainingCrossLayerTranscoderConfig(
        n_layers=2, d_in=16, d_sae=64, init_active_fraction=0.1
    )
    clt = TrainingCrossLayerTranscoder(cfg)
    x = torch.randn(2000, 2, 16)
    clt.initialize_from_data(x)
    freq = (clt.encode(x) > 0).float().mean(0)  # [L, F]
    assert (freq > 0).all()
    assert abs(freq.mean().item() - 0.1) < 0.02


def test_per_layer_transcoder_allocates_and_trains_only_diagonal_blocks() -> None:
    cfg = TrainingPerLayerTranscoderConfig(n_layers=3, d_in=8, d_sae=16)
    clt = TrainingPerLayerTranscoder(cfg)
    assert [tuple(w.shape) for w in clt.W_dec] == [(16, 1, 8)] * 3  # no cross-layer block
    x, y = torch.randn(10, 3, 8), torch.randn(10, 3, 8)
    before = [w.detach().clone() for w in clt.W_dec]
    loss = clt.training_losses(x, y, 0.1).loss
    loss.backward()
    torch.optim.Adam(clt.parameters(), lr=0.1).step()
    clt.after_optimizer_step()
    assert all(not torch.equal(w, b) for w, b in zip(clt.W_dec, before, strict=True))
    inference = clt.to_inference()
    assert type(inference) is PerLayerTranscoder and inference.sources(2) == [2]


def test_save_folds_normalization() -> None:
    cfg = TrainingSkipCrossLayerTranscoderConfig(n_layers=2, d_in=8, d_sae=16)
    clt = TrainingSkipCrossLayerTranscoder(cfg)
    with torch.no_grad():
        clt.in_scale.copy_(torch.tensor([0.5, 3.0]))
        clt.out_scale.copy_(torch.tensor([2.0, 0.25]))
        clt.W_skip.normal_()
    x = torch.randn(5, 2, 8)
    with torch.no_grad():
        normalized = clt(x * clt.in_scale[:, None]) / clt.out_scale[:, None]
        torch.testing.assert_close(clt.to_inference()(x), normalized, atol=1e-5, rtol=1e-5)


def test_runner_trains_saves_and_loads(tmp_path: Path) -> None:
    runner, clt = run_tiny(tiny_cfg(output_path=str(tmp_path / "out")))
    hist = runner.metrics_history
    assert hist[-1]["nmse"] < hist[0]["nmse"], hist
    assert hist[-1]["step"] == 24 and hist[-1]["tokens"] == 24 * 128
    assert isinstance(clt, CrossLayerTranscoder) and not isinstance(
        clt, TrainingCrossLayerTranscoder
    )
    loaded = sae_lens.SAE.load_from_disk(tmp_path / "out")
    assert isinstance(loaded, CrossLayerTranscoder)
    assert loaded.cfg.metadata.training_tokens == 24 * 128
    assert loaded.cfg.metadata.training_config["d_sae"] == 32
    x = torch.randn(3, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), clt(x))
    # the saved CLT works on raw activations: it beats predicting the mean on fresh text
    model = make_tiny_lm()
    batches = token_batches_from_texts(model, make_text_dataset(20, seed=1)["text"], 32, 8)
    result = evaluate_clt(model, clt, batches)
    assert result.nmse < 1.0
    assert result.n_tokens > 100


def test_load_inference_weights_round_trips() -> None:
    torch.manual_seed(0)
    cfg = TrainingSkipCrossLayerTranscoderConfig(n_layers=3, d_in=8, d_sae=16)
    source = TrainingSkipCrossLayerTranscoder(cfg)
    with torch.no_grad():
        source.in_scale.copy_(torch.tensor([0.5, 3.0, 1.5]))
        source.out_scale.copy_(torch.tensor([2.0, 0.25, 4.0]))
        source.W_skip.normal_()
        source.threshold.uniform_(0.0, 0.3)
    trained = source.to_inference()
    fresh = TrainingSkipCrossLayerTranscoder(cfg)
    with torch.no_grad():
        fresh.in_scale.copy_(torch.tensor([1.0, 2.0, 0.3]))  # the new run's own scales
        fresh.out_scale.copy_(torch.tensor([0.7, 1.0, 5.0]))
    fresh.load_inference_weights(trained)
    x = torch.randn(6, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh.to_inference()(x), trained(x), atol=1e-5, rtol=1e-5)
    wrong = TrainingCrossLayerTranscoder(
        TrainingCrossLayerTranscoderConfig(n_layers=3, d_in=8, d_sae=32)
    )
    with pytest.raises(ValueError, match=r"d_sae: 16 \(run: 32\)"):
        wrong.load_inference_weights(trained)


def test_runner_continues_from_a_trained_clt(tmp_path: Path) -> None:
    _, first = run_tiny(tiny_cfg(output_path=str(tmp_path / "first")))
    runner, _ = run_tiny(
        tiny_cfg(from_pretrained_path=str(tmp_path / "first"), training_tokens=4 * 128, lr=1e-9)
    )
    start = runner.metrics_history[0]
    # at lr ~0 the continued run reconstructs as well as the first run ended, from step 1
    scratch, _ = run_tiny(tiny_cfg(training_tokens=4 * 128, lr=1e-9))
    assert start["nmse"] < 0.9 * scratch.metrics_history[0]["nmse"]
    x = torch.randn(3, 2, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            runner.training_clt.to_inference()(x), first(x), atol=1e-4, rtol=1e-4
        )


def test_replacement_kl_matches_evaluation_and_trains(tmp_path: Path) -> None:
    """The end-to-end term is the KL that evaluate_clt reports, and it has gradients."""
    runner, clt = run_tiny(tiny_cfg())
    model = make_tiny_lm()
    for p in model.parameters():
        p.requires_grad_(False)
    tokens = token_batches_from_texts(model, make_text_dataset(20, seed=3)["text"], 32, 4)[0]
    tclt = runner.training_clt
    kl = tclt.replacement_kl(model, tokens)
    reported = evaluate_clt(model, clt, [tokens]).kl_to_original
    assert abs(kl.item() - reported) < 1e-4 * max(1.0, reported)
    kl.backward()
    assert tclt.W_enc.grad.abs().sum() > 0 and tclt.W_dec[0].grad.abs().sum() > 0
    assert tclt.threshold.grad.abs().sum() > 0
    # in the runner: logged as a loss part; the user's model keeps its requires_grad flags
    model2 = make_tiny_lm()
    r2 = CLTTrainingRunner(
        tiny_cfg(kl_coefficient=1.0, kl_batch_size_prompts=4),
        override_model=model2,
        override_dataset=make_text_dataset(),
    )
    r2.run()
    assert all("kl_loss" in h for h in r2.metrics_history)
    assert all(p.requires_grad for p in model2.parameters())
    with pytest.raises(ValueError, match=r"needs a \(non-streaming\) datasets.Dataset"):
        CLTTrainingRunner(
            tiny_cfg(kl_coefficient=1.0, dataset_path="some/dataset"), override_model=model2
        ).kl_token_batches()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.test_training import tiny_cfg, run_tiny
    from sae_lens_clt.training import runner as r

    original = r.CLTTrainingRunner.save_checkpoint

    def save_then_die(self, *args, **kwargs):
        path = original(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)  # a hard kill right after the first checkpoint
        return path

    r.CLTTrainingRunner.save_checkpoint = save_then_die
    run_tiny(tiny_cfg(checkpoint_path={ckpt!r}, n_checkpoints=2))
    """
)


def test_kill_and_resume_ends_at_same_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    script = KILL_SCRIPT.format(root=str(ROOT), ckpt=str(ckpt))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = sorted(p.name for p in ckpt.iterdir())
    assert saved == ["step_8"], saved  # killed after the first of checkpoints 8, 16, 24
    state = json.loads((ckpt / "step_8" / "training_state.json").read_text())
    assert state["step"] == 8 and state["batches_drawn"] == 2 + 8

    _, resumed = run_tiny(tiny_cfg(resume_from_checkpoint=str(ckpt / "step_8")))
    _, straight = run_tiny(tiny_cfg())
    for (name, a), (_, b) in zip(
        resumed.state_dict().items(), straight.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs")


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = TrainingCrossLayerTranscoder.training_losses
    calls = {"n": 0}

    def poisoned(self, x, y, l0_coefficient):
        calls["n"] += 1
        if calls["n"] > 10:
            x = x * float("nan")
        return original(self, x, y, l0_coefficient)

    monkeypatch.setattr(TrainingCrossLayerTranscoder, "training_losses", poisoned)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 10.*step_8"):
        run_tiny(tiny_cfg(checkpoint_path=str(ckpt), n_checkpoints=2))
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_8"]
    good = CrossLayerTranscoder.load_from_disk(ckpt / "step_8" / "clt")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_runner_config_errors() -> None:
    with pytest.raises(ValueError, match="must contain '\\{layer\\}'"):
        CLTTrainingRunnerConfig(hook_name="blocks.0.hook_resid_mid")
    with pytest.raises(ValueError, match="needs a checkpoint_path"):
        CLTTrainingRunnerConfig(n_checkpoints=2)
    with pytest.raises(ValueError, match="unknown CLTTrainingRunnerConfig field"):
        CLTTrainingRunnerConfig.from_dict({"learning_rate": 1.0})
    runner = CLTTrainingRunner(
        tiny_cfg(hook_name="blocks.{layer}.nope"),
        override_model=make_tiny_lm(),
        override_dataset=make_text_dataset(5),
    )
    with pytest.raises(ValueError, match="the model has no hook point"):
        runner.run()


def test_eval_zero_clt_equals_zero_ablation() -> None:
    model = make_tiny_lm()
    clt = make_clt(n_layers=2, d_in=32, d_sae=16, activation_fn="relu")
    clt.cfg.metadata.hook_name = "blocks.{layer}.ln2.hook_normalized"
    with torch.no_grad():
        for w in clt.W_dec:
            w.zero_()
        clt.b_dec.zero_()
    batches = token_batches_from_texts(model, make_text_dataset(8)["text"], 32, 4)
    r = evaluate_clt(model, clt, batches)
    assert r.loss_replacement == pytest.approx(r.loss_zero_ablation, rel=1e-6)
    assert r.fraction_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert r.nmse >= 1.0
    assert 0 <= r.top1_agreement <= 1 and r.kl_to_original > 0


def test_cli_train_with_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from sae_lens_clt.cli import main

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"d_sae": 16, "training_tokens": 2048}))
    # only the default model has a built-in dataset: a clear error, not a traceback
    argv = ["train", "--config", str(cfg), "--model-name", "gpt2", "--output-path", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "dataset_path" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_flags_override_yaml(tmp_path: Path) -> None:
    import yaml

    from sae_lens_clt.cli.train import config_from_args

    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"d_sae": 16, "lr": 0.5, "log_to_wandb": False}))
    from sae_lens_clt.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--config", str(cfg), "--lr", "0.1", "--log-to-wandb", "--l0-warm-up-steps", "5"]
    )
    c = config_from_args(args)
    assert (c.d_sae, c.lr, c.log_to_wandb, c.l0_warm_up_steps) == (16, 0.1, True, 5)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"learning_rate": 1}))
    with pytest.raises(SystemExit, match="learning_rate"):
        config_from_args(build_parser().parse_args(["train", "--config", str(bad)]))


def test_eval_replacement_with_skip_connection_uses_the_skip_path() -> None:
    """A CLT whose only output is an identity skip from ln2 reproduces ``ln2 @ W_skip``."""
    model = make_tiny_lm()
    clt = make_clt(n_layers=2, d_in=32, d_sae=16, activation_fn="relu", skip=True)
    with torch.no_grad():
        for w in clt.W_dec:
            w.zero_()
        clt.b_dec.zero_()
    batches = token_batches_from_texts(model, make_text_dataset(8)["text"], 32, 4)
    with_skip = evaluate_clt(model, clt, batches)
    with torch.no_grad():
        clt.W_skip.zero_()
    without = evaluate_clt(model, clt, batches)
    assert without.loss_replacement == pytest.approx(without.loss_zero_ablation, rel=1e-6)
    assert with_skip.loss_replacement != pytest.approx(with_skip.loss_zero_ablation, rel=1e-6)


@pytest.mark.parametrize("route", ["sparse", "dense"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_jumprelu_half_precision_sums_stay_accurate(dtype: str, route: str) -> None:
    """Sums over many tokens (pre-activation loss, b_enc and θ gradients) accumulate in
    float32: with features that fire on 90 % of 4,096 tokens they stay close to float64."""
    torch.manual_seed(0)
    kw = {"n_layers": 2, "d_in": 8, "d_sae": 16, "pre_act_loss_coefficient": 0.05}
    kw["init_active_fraction"] = 0.9
    kw["decode_sparse_below"] = 1.0 if route == "sparse" else 0.0
    ref = TrainingCrossLayerTranscoder(TrainingCrossLayerTranscoderConfig(**kw, dtype="float64"))
    half = TrainingCrossLayerTranscoder(TrainingCrossLayerTranscoderConfig(**kw, dtype=dtype))
    x, y = (
        torch.randn(4096, 2, 8, dtype=torch.float64),
        torch.randn(4096, 2, 8, dtype=torch.float64),
    )
    ref.initialize_from_data(x)
    half.load_state_dict({k: v.to(half.dtype) for k, v in ref.state_dict().items()})
    out_ref, out_half = ref.training_losses(x, y, 0.1), half.training_losses(x, y, 0.1)
    pre_ref, pre_half = out_ref.parts["pre_act_loss"], out_half.parts["pre_act_loss"]
    assert abs(pre_half.item() - pre_ref.item()) < 0.02 * abs(pre_ref.item()) + 1e-4
    out_ref.loss.backward()
    out_half.loss.backward()
    for name in ("b_enc", "threshold"):
        g_ref, g_half = getattr(ref, name).grad, getattr(half, name).grad.double()
        assert (g_half - g_ref).norm() < 0.05 * g_ref.norm(), name
