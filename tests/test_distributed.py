"""Distributed training on CPU with gloo, launched by the real ``torchrun``.

Every job here is compared with the one-process run of the same config (same seed, same
global batch): the weights must agree to float tolerance, for features sharded over two
ranks (tp = 2, live store) and for two data-parallel ranks (dp = 2, disk cache); a
checkpoint written at one world size resumes at another; a killed rank stops the job and
the last complete checkpoint resumes to the uninterrupted weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from sae_lens_clt import CrossLayerTranscoder
from sae_lens_clt.activations.cache import build_activation_cache
from sae_lens_clt.training import checkpoints
from sae_lens_clt.training.merge import merge_checkpoint
from sae_lens_clt.training.runner import CLTTrainingRunner
from tests.conftest import make_text_dataset, make_tiny_lm
from tests.test_training import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
ATOL = 2e-5


def torchrun_command(nproc: int, config: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        str(WORKER),
        str(config),
        str(out),
    ]


def launch(nproc: int, cfg, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.json"
    config.write_text(json.dumps(cfg.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen(
        torchrun_command(nproc, config, out),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def torchrun(nproc: int, cfg, out: Path, timeout: float = 180) -> CrossLayerTranscoder:
    """Run the job to the end; rank 0's inference CLT."""
    proc = launch(nproc, cfg, out)
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-4000:]
    return CrossLayerTranscoder.load_from_disk(out / "clt")


def one_process(cfg, cache: bool = False) -> tuple[CLTTrainingRunner, CrossLayerTranscoder]:
    kwargs = (
        {} if cache else {"override_model": make_tiny_lm(), "override_dataset": make_text_dataset()}
    )
    runner = CLTTrainingRunner(cfg, **kwargs)
    return runner, runner.run()


def assert_same_weights(
    a: CrossLayerTranscoder, b: CrossLayerTranscoder, atol: float = ATOL
) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        diff = (sa[k].float() - sb[k].float()).abs().max().item()
        assert diff <= atol, f"{k}: max |diff| = {diff:.3g}"


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's activations for the runs below, built once (4 shards)."""
    path = tmp_path_factory.mktemp("cache") / "acts"
    cfg = tiny_cfg(activations_mixing_fraction=0.0)
    build_activation_cache(
        cfg,
        path,
        n_tokens=60 * 128,
        batches_per_shard=4,
        model=make_tiny_lm(),
        dataset=make_text_dataset(),
        verbose=False,
    )
    return path


@pytest.fixture(scope="module")
def tp2_job(tmp_path_factory: pytest.TempPathFactory):
    """A tp = 2 job from the live store with a checkpoint half-way, and its 1-process twin."""
    root = tmp_path_factory.mktemp("tp2")
    cfg = tiny_cfg(tensor_parallel_size=2, checkpoint_path=str(root / "ckpt"), n_checkpoints=1)
    got = torchrun(2, cfg, root / "job")
    ref_cfg = tiny_cfg(checkpoint_path=str(root / "ref_ckpt"), n_checkpoints=1)
    runner, ref = one_process(ref_cfg)
    return root, got, ref, runner


def test_tensor_parallel_2_equals_one_process(tp2_job) -> None:
    root, got, ref, runner = tp2_job
    assert_same_weights(got, ref)
    metrics = json.loads((root / "job" / "metrics.json").read_text())
    for m_job, m_ref in zip(metrics, runner.metrics_history, strict=True):
        for key in ("mse_loss", "l0_loss", "nmse", "l0", "dead_features"):
            assert m_job[key] == pytest.approx(m_ref[key], rel=1e-5, abs=1e-6), key
    # the shards hold half of every layer's features each; the merged CLT all of them
    step = root / "ckpt" / "step_24"
    state = json.loads((step / checkpoints.STATE_JSON).read_text())
    assert (state["tp"], state["dp"], state["clt_config"]["d_sae"]) == (2, 1, 32)
    assert state["feature_dims"]["clt.W_enc"] == 2 and state["feature_dims"]["clt.b_dec"] is None
    assert all((step / checkpoints.shard_filename(t, 2)).is_file() for t in range(2))
    assert_same_weights(CrossLayerTranscoder.load_from_disk(step / "clt"), ref)


def test_tp2_checkpoint_resumes_in_one_process_and_back(tp2_job, tmp_path: Path) -> None:
    root, _, ref, _ = tp2_job
    # the tp = 2 job's half-way checkpoint, resumed by one process
    cfg = tiny_cfg(resume_from_checkpoint=str(root / "ckpt" / "step_12"))
    _, resumed = one_process(cfg)
    assert_same_weights(resumed, ref)
    # the one-process run's half-way checkpoint, resumed by a tp = 2 job
    cfg = tiny_cfg(
        tensor_parallel_size=2,
        resume_from_checkpoint=str(root / "ref_ckpt" / "step_12"),
        output_path=str(tmp_path / "out"),
    )
    assert_same_weights(torchrun(2, cfg, tmp_path / "job"), ref)


def test_data_parallel_2_from_cache_equals_one_process(cache_path: Path, tmp_path: Path) -> None:
    base = {"cached_activations_path": str(cache_path)}
    _, ref = one_process(tiny_cfg(**base), cache=True)
    got = torchrun(
        2,
        tiny_cfg(**base, checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1),
        tmp_path / "job",
    )
    assert_same_weights(got, ref)
    # its half-way checkpoint resumes in one process (a different data-parallel size)
    cfg = tiny_cfg(**base, resume_from_checkpoint=str(tmp_path / "ckpt" / "step_12"))
    _, resumed = one_process(cfg, cache=True)
    assert_same_weights(resumed, ref)


def test_training_from_the_cache_equals_the_live_store(cache_path: Path) -> None:
    """Same tokens in the same order: the cache read in build order against the live store
    with SAELens' mixing buffer as a passthrough."""
    _, live = one_process(tiny_cfg(activations_mixing_fraction=0.0))
    _, cached = one_process(
        tiny_cfg(cached_activations_path=str(cache_path), cache_shuffle=False), cache=True
    )
    assert_same_weights(cached, live, atol=1e-6)


def test_live_store_resume_refuses_another_data_parallel_size(tmp_path: Path) -> None:
    cfg = tiny_cfg(checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1)
    one_process(cfg)
    state = json.loads((tmp_path / "ckpt" / "step_12" / checkpoints.STATE_JSON).read_text())
    state["dp"] = 2  # as if a dp = 2 job had written it
    (tmp_path / "ckpt" / "step_12" / checkpoints.STATE_JSON).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="data-parallel size must stay"):
        one_process(tiny_cfg(resume_from_checkpoint=str(tmp_path / "ckpt" / "step_12")))


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank):
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank} appeared")


def test_killed_rank_stops_the_job_and_the_last_checkpoint_resumes(
    cache_path: Path, tmp_path: Path
) -> None:
    steps = 240
    base = {
        "cached_activations_path": str(cache_path),
        "training_tokens": steps * 128,
        "log_every_n_steps": 40,
    }
    ckpt = tmp_path / "ckpt"
    cfg = tiny_cfg(**base, checkpoint_path=str(ckpt), n_checkpoints=11)  # every 20 steps
    proc = launch(2, cfg, tmp_path / "job")
    victim = _rank_pid(proc, rank=1)
    deadline = time.monotonic() + 120
    while not (ckpt / "step_40").is_dir():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # torchrun's failure summary names the rank that died and how
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]
    assert "SIGKILL" in output or "exitcode  : -9" in output, output[-3000:]
    done = sorted(int(p.name[5:]) for p in ckpt.glob("step_*"))
    assert done and done[-1] < steps, done  # stopped before the end
    last = checkpoints.latest_checkpoint(ckpt)
    assert last is not None and last.name == f"step_{done[-1]}"
    # resume from the checkpoint path (its newest complete step) in one process
    _, resumed = one_process(tiny_cfg(**base, resume_from_checkpoint=str(ckpt)), cache=True)
    _, uninterrupted = one_process(tiny_cfg(**base), cache=True)
    assert_same_weights(resumed, uninterrupted)


def test_merge_writes_both_layouts_from_the_shards(tp2_job, tmp_path: Path) -> None:
    from sae_lens.saes.sae import SAE

    root, got, ref, _ = tp2_job
    out = merge_checkpoint(root / "ckpt", tmp_path / "saelens", verbose=False)
    assert_same_weights(CrossLayerTranscoder.load_from_disk(out), got, atol=0)
    sae = SAE.load_from_disk(str(out))  # SAELens' own loader dispatches to our class
    assert isinstance(sae, CrossLayerTranscoder)
    # circuit-tracer's layout, read by circuit-tracer's own loader
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

    ct = merge_checkpoint(root / "ckpt", tmp_path / "ct", layout="circuit-tracer", verbose=False)
    said = yaml.safe_load((ct / "config.yaml").read_text())  # what our files say
    theirs = load_clt(
        str(ct),
        feature_input_hook=said["feature_input_hook"],
        feature_output_hook=said["feature_output_hook"],
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_decoder=False,
    )
    x = torch.randn(5, ref.cfg.n_layers, ref.cfg.d_in) * 3
    ours = ref.forward(x)
    their_acts = theirs.encode(x.transpose(0, 1))  # [L, n, F]
    assert torch.allclose(their_acts.transpose(0, 1), ref.encode(x), atol=1e-5)
    assert torch.allclose(theirs.decode(their_acts).transpose(0, 1), ours, atol=1e-5)


def test_a_checkpoint_of_the_previous_layout_still_resumes(tmp_path: Path) -> None:
    """0.2 wrote one ``training_state.safetensors`` (with the RNG state) and no layout."""
    from safetensors.torch import load_file, save_file

    cfg = tiny_cfg(checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1)
    _, ref = one_process(cfg)
    step = tmp_path / "ckpt" / "step_12"
    tensors = load_file(str(step / checkpoints.shard_filename(0, 1)))
    tensors.update(load_file(str(step / checkpoints.rng_filename(0, 1))))
    save_file(tensors, str(step / checkpoints.LEGACY_STATE_TENSORS))
    (step / checkpoints.shard_filename(0, 1)).unlink()
    (step / checkpoints.rng_filename(0, 1)).unlink()
    state = json.loads((step / checkpoints.STATE_JSON).read_text())
    for key in ("tp", "dp", "data_source", "feature_dims"):
        del state[key]
    (step / checkpoints.STATE_JSON).write_text(json.dumps(state))
    _, resumed = one_process(tiny_cfg(resume_from_checkpoint=str(step)))
    assert_same_weights(resumed, ref, atol=1e-6)


@pytest.mark.slow
def test_tp2_by_dp2_on_four_processes_equals_one_process(cache_path: Path, tmp_path: Path) -> None:
    base = {"cached_activations_path": str(cache_path)}
    _, ref = one_process(tiny_cfg(**base), cache=True)
    got = torchrun(
        4,
        tiny_cfg(**base, tensor_parallel_size=2, output_path=str(tmp_path / "out")),
        tmp_path / "job",
        timeout=400,
    )
    assert_same_weights(got, ref)


def test_a_cache_resume_refuses_settings_that_move_the_data(
    cache_path: Path, tmp_path: Path
) -> None:
    base = {"cached_activations_path": str(cache_path)}
    one_process(
        tiny_cfg(**base, checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1), cache=True
    )
    resume = str(tmp_path / "ckpt" / "step_12")
    with pytest.raises(ValueError, match="seed: checkpoint 7, run 8"):
        one_process(tiny_cfg(**base, seed=8, resume_from_checkpoint=resume), cache=True)
