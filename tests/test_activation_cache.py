"""The multi-hook activation cache: what it stores, resuming, dtypes, the shuffled stream,
memory-mapped reads, errors and the CLI (the default model, small batches: a few seconds)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_lens_clt.activations import cache as C
from sae_lens_clt.activations import live
from sae_lens_clt.activations.cache import ActivationCache, build_activation_cache
from sae_lens_clt.formats.errors import CLTFormatError
from sae_lens_clt.training.config import CLTTrainingRunnerConfig

BPS = 3  # token batches per shard in these tests (a token batch: 4 x 32 tokens, ~122 rows)


def build(*args, **kwargs) -> ActivationCache:
    return build_activation_cache(*args, verbose=False, **kwargs)


def small_cfg(**kw) -> CLTTrainingRunnerConfig:
    base = dict(
        context_size=32,
        store_batch_size_prompts=4,
        train_batch_size_tokens=128,
        training_tokens=1024,
        n_batches_for_norm_estimate=2,
        verbose=False,
    )
    return CLTTrainingRunnerConfig(**{**base, **kw})


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Dataset is not tokenized"),
    pytest.mark.filterwarnings("ignore:All samples in the training dataset"),
    pytest.mark.filterwarnings("ignore:The training dataset contains fewer samples"),
]


@pytest.fixture(scope="module")
def model():
    return live.load_model_for(small_cfg())


@pytest.fixture(scope="module")
def dataset():
    return live.load_dataset_for(small_cfg())


@pytest.fixture(scope="module")
def built(tmp_path_factory, model, dataset) -> ActivationCache:
    """1,400 rows in shards of 3 token batches (float32)."""
    path = tmp_path_factory.mktemp("cache") / "c"
    return build(
        small_cfg(), path, n_tokens=1400, batches_per_shard=BPS, model=model, dataset=dataset
    )


def live_rows(model, dataset, cfg, n: int, token_batches: bool) -> tuple[torch.Tensor, ...]:
    """The first ``n`` rows of the live store at mixing fraction 0 (its stream, or
    ``token_batch_rows`` batch after batch), and the rows of each token batch."""
    torch.manual_seed(cfg.seed)
    store, hooks = live.make_store(model, dataset, cfg, mixing_fraction=0.0)
    xs, ys, got = [], [], 0
    if token_batches:
        while got < n:
            x, y = live.token_batch_rows(store, hooks, store.get_batch_tokens())
            xs.append(x), ys.append(y)
            got += len(x)
    else:
        for x, y in live.stream(store, hooks):
            xs.append(x), ys.append(y)
            got += len(x)
            if got >= n:
                break
    return torch.cat(xs)[:n], torch.cat(ys)[:n], torch.tensor([len(x) for x in xs])


def test_rows_are_the_live_stream_at_mixing_zero(built, model, dataset) -> None:
    cfg = small_cfg()
    N = built.n_rows
    assert N >= 1400 and (built.n_layers, built.d_in, built.d_out) == (4, 128, 128)
    x, y = built.read_positions(0, N, shuffle=False)
    assert x.shape == (N, 4, 128) and x.dtype == torch.float32
    for token_batches in (True, False):
        lx, ly, per_batch = live_rows(model, dataset, cfg, N, token_batches)
        assert torch.equal(x, lx) and torch.equal(y, ly)  # bitwise
    # shard i holds token batches i*BPS .. (i+1)*BPS - 1
    _, _, per_batch = live_rows(model, dataset, cfg, N, True)
    for i, entry in enumerate(built.config["shards"]):
        assert entry["n_rows"] == int(per_batch[i * BPS : (i + 1) * BPS].sum())
    cfgd = built.config
    assert cfgd["format"] == "sae_lens_clt.activation_cache" and cfgd["version"] == 1
    assert cfgd["complete"] and cfgd["n_rows"] == N and cfgd["dtype"] == "float32"
    assert cfgd["hooks_in"][0] == "blocks.0.ln2.hook_normalized"
    assert cfgd["hook_name_out"] == "blocks.{layer}.hook_mlp_out"
    assert set(cfgd["model_processing"]) == {"fold_ln", "center_writing_weights", "center_unembed"}
    assert built.bytes_per_row == 4 * 256 * 4
    # the epoch after the first starts again at row 0
    x2, _ = built.read_positions(N - 5, N + 5, shuffle=False)
    assert torch.equal(x2, torch.cat([x[-5:], x[:5]]))


def test_a_new_dataset_epoch_begins_as_in_the_live_store(tmp_path, model, dataset) -> None:
    """The live store drops an epoch's partial last token batch; so does the cache."""
    from datasets import Dataset

    docs = [t for t in dataset.select(range(400))["text"] if len(t) < 300][:40]
    small = Dataset.from_dict({"text": docs})
    cfg = small_cfg()
    cache = build(
        cfg, tmp_path / "c", n_tokens=2500, batches_per_shard=4, model=model, dataset=small
    )
    lx, ly, _ = live_rows(model, small, cfg, cache.n_rows, token_batches=False)
    x, y = cache.read_positions(0, cache.n_rows, shuffle=False)
    assert torch.equal(x, lx) and torch.equal(y, ly)


def forward_counter(model) -> tuple[list[int], object]:
    calls = [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def test_an_interrupted_build_resumes_to_the_same_bytes(tmp_path, model, dataset, monkeypatch):
    cfg, kw = small_cfg(), dict(n_tokens=1400, batches_per_shard=BPS, dataset=dataset)
    whole = build(cfg, tmp_path / "whole", model=model, **kw)
    n_batches = sum(s["n_batches"] for s in whole.config["shards"])

    saved = C.atomic.atomic_save_safetensors
    count = [0]

    def fail_on_third(*args, **kwargs):
        if count[0] == 2:
            raise RuntimeError("killed")
        count[0] += 1
        return saved(*args, **kwargs)

    monkeypatch.setattr(C.atomic, "atomic_save_safetensors", fail_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        build(cfg, tmp_path / "part", model=model, **kw)
    monkeypatch.setattr(C.atomic, "atomic_save_safetensors", saved)
    part = tmp_path / "part"
    assert sorted(p.name for p in part.iterdir()) == [
        "cache_config.json",
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]  # no half-written shard, no temporary left behind
    with pytest.raises(CLTFormatError, match="incomplete"):
        ActivationCache(part)
    assert ActivationCache(part, allow_incomplete=True).n_shards == 2

    calls, handle = forward_counter(model)
    try:
        resumed = build(cfg, part, model=model, **kw)
    finally:
        handle.remove()
    hook_width_passes = 2  # live.store_hooks reads the two hook widths
    assert calls[0] == hook_width_passes + n_batches - 2 * BPS  # finished shards not re-run
    assert resumed.build_info["shards_reused"] == 2
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in part.iterdir())
    for name in names:
        assert (tmp_path / "whole" / name).read_bytes() == (part / name).read_bytes(), name

    # a complete cache is returned as is, without loading the model
    monkeypatch.setattr(live, "load_model_for", lambda cfg: pytest.fail("model loaded"))
    again = build(cfg, part, n_tokens=1400)
    assert again.build_info["shards_written"] == 0 and again.n_rows == whole.n_rows


def test_a_model_failure_keeps_the_shard_being_written(tmp_path, model, dataset, monkeypatch):
    cfg, kw = small_cfg(), dict(n_tokens=1400, batches_per_shard=BPS, model=model, dataset=dataset)
    rows, calls = live.token_batch_rows, [0]

    def fail_in_shard_2(*args):
        calls[0] += 1
        if calls[0] == 2 * BPS + 2:  # while shard 1 is being written
            raise RuntimeError("model failed")
        return rows(*args)

    monkeypatch.setattr(live, "token_batch_rows", fail_in_shard_2)
    with pytest.raises(RuntimeError, match="model failed"):
        build(cfg, tmp_path / "c", **kw)
    monkeypatch.setattr(live, "token_batch_rows", rows)
    part = ActivationCache(tmp_path / "c", allow_incomplete=True)
    assert part.n_shards == 2  # shards 0 and 1, whole
    done = build(cfg, tmp_path / "c", **kw)
    assert done.build_info["shards_reused"] == 2
    fresh = build(cfg, tmp_path / "fresh", **kw)
    assert torch.equal(
        done.read_positions(0, done.n_rows)[0], fresh.read_positions(0, done.n_rows)[0]
    )


def test_a_complete_cache_is_extended_like_a_fresh_build(tmp_path, model, dataset) -> None:
    cfg, kw = small_cfg(), dict(batches_per_shard=BPS, model=model, dataset=dataset)
    build(cfg, tmp_path / "a", n_tokens=500, **kw)  # its last shard is short
    a = build(cfg, tmp_path / "a", n_tokens=1400, **kw)
    b = build(cfg, tmp_path / "b", n_tokens=1400, **kw)
    assert a.config["shards"] == b.config["shards"]
    assert torch.equal(a.read_positions(0, a.n_rows)[0], b.read_positions(0, b.n_rows)[0])


def test_other_settings_are_refused_by_name(tmp_path, built, model, dataset) -> None:
    with pytest.raises(
        ValueError, match=r"context_size 32 \(cache\) vs 64 \(now\).*another folder"
    ):
        build(small_cfg(context_size=64), built.path, n_tokens=10)
    with pytest.raises(ValueError, match=r"dtype 'float32' \(cache\) vs 'bfloat16'"):
        build(small_cfg(), built.path, n_tokens=10, dtype="bfloat16")
    with pytest.raises(ValueError, match=r"batches_per_shard 3 \(cache\) vs 5"):
        build(small_cfg(), built.path, n_tokens=10, batches_per_shard=5)
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build(small_cfg(), a_file, model=model, dataset=dataset)
    with pytest.raises(ValueError, match="not an activation cache"):
        build(small_cfg(), tmp_path, model=model, dataset=dataset)
    with pytest.raises(ValueError, match="not a storage dtype"):
        build(small_cfg(), tmp_path / "new", dtype="int8", model=model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_storage_round_trips(tmp_path, built, model, dataset, dtype) -> None:
    name = str(dtype).removeprefix("torch.")
    half = build(
        small_cfg(),
        tmp_path / name,
        n_tokens=1400,
        batches_per_shard=BPS,
        dtype=name,
        model=model,
        dataset=dataset,
    )
    assert half.dtype == dtype and half.config["dtype"] == name
    assert half.bytes_per_row == built.bytes_per_row // 2
    x32, y32 = built.read_positions(0, built.n_rows, shuffle=False)
    x, y = half.read_positions(0, half.n_rows, shuffle=False, dtype=dtype)
    assert x.dtype == dtype and torch.equal(x, x32.to(dtype)) and torch.equal(y, y32.to(dtype))
    xf, _ = half.read_positions(0, half.n_rows, shuffle=True, seed=3)  # float32 out
    rows = half.positions_to_rows(0, half.n_rows, shuffle=True, seed=3)
    assert xf.dtype == torch.float32 and torch.equal(xf, x32[rows].to(dtype).float())
    assert C._shard_layout(half.shard_files[0], half.config, half.config["shards"][0]["n_rows"])


def test_the_shuffled_stream(built) -> None:
    cache = ActivationCache(built.path, shuffle_window_shards=2)
    N, S = cache.n_rows, cache.n_shards
    assert S >= 4
    epochs = [cache.positions_to_rows(e * N, (e + 1) * N, shuffle=True, seed=0) for e in range(3)]
    for rows in epochs:
        assert torch.equal(rows.sort().values, torch.arange(N))  # a permutation of all rows
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not torch.equal(epochs[0], cache.positions_to_rows(0, N, seed=1))
    # windows: the first window's rows come from exactly 2 shards
    starts = cache._starts
    first = epochs[0][: int(cache._epoch(0, 0)[1][1])]
    assert len(torch.unique(torch.searchsorted(starts, first, right=True) - 1)) == 2
    # a pure function: any split reads the same rows as the whole, on any instance
    whole_rows = cache.positions_to_rows(N - 300, 2 * N + 200, seed=5)
    whole_x, whole_y = cache.read_positions(N - 300, 2 * N + 200, seed=5)
    gen = torch.Generator().manual_seed(0)
    cuts = sorted(torch.randint(N - 300, 2 * N + 200, (9,), generator=gen).tolist())
    bounds = [N - 300, *cuts, 2 * N + 200]
    fresh = ActivationCache(built.path, shuffle_window_shards=2)
    parts = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)][::-1]  # read backwards
    got = {(a, b): fresh.read_positions(a, b, seed=5) for a, b in parts}
    assert torch.equal(torch.cat([got[p][0] for p in parts[::-1]]), whole_x)
    assert torch.equal(torch.cat([got[p][1] for p in parts[::-1]]), whole_y)
    assert torch.equal(
        torch.cat([fresh.positions_to_rows(a, b, seed=5) for a, b in parts[::-1]]), whole_rows
    )
    # rows(): any order, repeats allowed, equals a gather of the sequential read
    xs, ys = cache.read_positions(0, N, shuffle=False)
    index = torch.tensor([5, 0, N - 1, 5, 300, 299])
    x, y = cache.rows(index)
    assert torch.equal(x, xs[index]) and torch.equal(y, ys[index])
    assert torch.equal(whole_x, xs[whole_rows])
    with pytest.raises(IndexError):
        cache.rows(torch.tensor([N]))


def test_reads_are_memory_mapped_and_touch_only_the_asked_rows(built, monkeypatch) -> None:
    from sae_lens_clt.formats import safetensors as st

    cache = ActivationCache(built.path)
    x_all, _ = cache.read_positions(0, cache.n_rows, shuffle=False)
    fresh = ActivationCache(built.path)
    shard_bytes = cache.shard_files[0].stat().st_size
    # nothing may read a whole file
    monkeypatch.setattr(st, "read_tensors", lambda *a, **k: pytest.fail("read_tensors"))
    monkeypatch.setattr(Path, "read_bytes", lambda *a, **k: pytest.fail("read_bytes"))
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: pytest.fail("np.fromfile"))
    index = torch.tensor([3, 700, 1, 1200])
    tracemalloc.start()
    x, _ = fresh.rows(index)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert torch.equal(x, x_all[index])
    assert peak < shard_bytes / 10, (peak, shard_bytes)
    maps = list(fresh._open.values())
    assert maps and all(isinstance(m, np.memmap) and m.mode == "r" for pair in maps for m in pair)
    assert fresh.reads == 1 and fresh.bytes_read == 4 * fresh.bytes_per_row


def test_clear_errors(tmp_path, built) -> None:
    import shutil

    with pytest.raises(CLTFormatError, match="no such folder"):
        ActivationCache(tmp_path / "none")
    with pytest.raises(CLTFormatError, match="cache_config.json: missing"):
        ActivationCache(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(built.path, bad)
    cfg = json.loads((bad / "cache_config.json").read_text())
    (bad / "cache_config.json").write_text(json.dumps({**cfg, "format": "other"}))
    with pytest.raises(CLTFormatError, match="not an activation cache"):
        ActivationCache(bad)
    (bad / "cache_config.json").write_text(json.dumps(cfg))
    shard1 = bad / "shard_00001.safetensors"
    data = shard1.read_bytes()
    shard1.write_bytes(data[: len(data) // 2])
    with pytest.raises(CLTFormatError, match=r"shard_00001.safetensors is truncated"):
        ActivationCache(bad)
    shard1.write_bytes((bad / "shard_00000.safetensors").read_bytes())  # other row count
    if cfg["shards"][0]["n_rows"] != cfg["shards"][1]["n_rows"]:
        with pytest.raises(CLTFormatError, match=r"shard_00001.safetensors: tensor 'mlp_in'"):
            ActivationCache(bad)
    shard1.unlink()
    with pytest.raises(CLTFormatError, match=r"shard_00001.safetensors: missing"):
        ActivationCache(bad)
    # a resumed build rebuilds from the first shard that is not whole
    (bad / "cache_config.json").write_text(json.dumps({**cfg, "complete": False}))
    assert [s["file"] for s in C._kept_shards(bad, cfg, BPS)] == ["shard_00000.safetensors"]


def test_cli_builds_and_resumes(tmp_path, capsys, dataset, monkeypatch) -> None:
    from sae_lens_clt.cli import main

    monkeypatch.setattr(live, "load_dataset_for", lambda cfg: dataset)  # loaded once per module

    out = tmp_path / "cache"
    argv = [
        "cache-activations",
        "--out", str(out),
        "--n-tokens", "600",
        "--batches-per-shard", "2",
        "--cache-dtype", "bfloat16",
        "--context-size", "32",
        "--store-batch-size-prompts", "4",
        "--train-batch-size-tokens", "128",
        "--training-tokens", "256",
        "--no-verbose",
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    cache = ActivationCache(out)
    assert cache.n_rows >= 600 and cache.config["dtype"] == "bfloat16"
    assert f"{cache.n_rows:,} rows" in text and f"{cache.n_shards} shards" in text
    assert "MB/s" in text and "tokens/s" in text and str(out) in text
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out
