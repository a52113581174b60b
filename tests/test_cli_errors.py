"""A catalogue of CLI mistakes: each ends in one line on stderr and a non-zero exit status."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from sae_lens_clt.cli import main
from tests.test_attribution_tools import hand_graph

LONG_PROMPT = " ".join(["the capital of the state"] * 40)  # > 128 tokens of the default model


def cases(tmp: Path, busy_port: int) -> list[tuple[list[str], str]]:
    a_file = tmp / "a_file.txt"
    a_file.write_text("x")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("learning_rate: 1\n")
    attribute = ["attribute", "--out", str(tmp / "out")]
    graphs = tmp / "graphs"
    hand_graph().to_json(graphs / "hand.json")
    other_cache = tmp / "other_cache"  # an activation cache of another context size
    other_cache.mkdir()
    (other_cache / "cache_config.json").write_text(
        '{"format": "sae_lens_clt.activation_cache", "version": 1, "context_size": 999, '
        '"complete": false, "shards": [], "n_rows": 0}'
    )
    return [
        ([*attribute, "--prompt", ""], r"--prompt is empty"),
        ([*attribute, "--prompt", "   "], r"--prompt is empty"),
        (
            ["attribute", "--prompt", "hi", "--out", str(a_file)],
            r"--out .* is a file — give a folder",
        ),
        ([*attribute, "--prompt", "hi", "--device", "cuda"], r"no CUDA GPU — use --device cpu"),
        (
            [*attribute, "--prompt", "hi", "--device", "gpu0"],
            r"--device 'gpu0' is not a torch device",
        ),
        (
            [*attribute, "--prompt", LONG_PROMPT, "--clt", "random"],
            r"prompt is \d+ tokens .* context is 128",
        ),
        ([*attribute, "--prompt", "hi", "--clt", str(tmp / "no_such_clt")], r"no_such_clt"),
        ([*attribute, "--prompt", "hi", "--max-n-logits", "0"], r"max_n_logits >= 1"),
        ([*attribute, "--prompt", "hi", "--memory-budget", "lots"], r"--memory-budget 'lots'"),
        (
            [*attribute, "--prompt", "hi", "--memory-budget", "1KB"],
            r"memory_budget 1 KiB is too small .* raise memory_budget",
        ),
        (["info", str(tmp / "missing")], r"missing"),
        (["info", str(tmp)], r"holds no CLT"),
        (["info", "--device", "cuda"], r"no CUDA GPU"),
        (["push", str(tmp), "noslash"], r"REPO_ID 'noslash' is not 'org/name'"),
        (["push", "sae-lens-clt/tiny-states-clt", "me/x", "--out", str(a_file)], r"is a file"),
        (["list", "--releases", str(tmp / "none.yaml")], r"cannot read release file"),
        (["train", "--config", str(tmp / "none.yaml")], r"--config .*: file not found"),
        (
            ["train", "--config", str(bad_yaml)],
            r"unknown CLTTrainingRunnerConfig field.*learning_rate",
        ),
        (["train", "--import", "no_such_plugin_module"], r"--import no_such_plugin_module"),
        (["train", "--device", "cuda", "--training-tokens", "1024"], r"no CUDA GPU"),
        (["demo", "--out", str(a_file)], r"is a file"),
        ([*attribute, "--prompt", "hi", "--model", "gpt-2"], r"not a TransformerLens .*gpt2"),
        (["serve", str(tmp / "no_graphs")], r"no_graphs is not a folder"),
        (["serve", str(tmp), "--port", "99999"], r"--port 99999 is not a port"),
        (["serve", str(tmp)], r"holds no graph JSON — write one with `sae-lens-clt attribute`"),
        (["serve", str(graphs), "--port", str(busy_port)], r"cannot listen .* another --port"),
        (["features", "--out", str(a_file)], r"--out .* is a file"),
        (["features", "--clt", str(tmp / "no_clt"), "--out", str(tmp / "f")], r"no_clt"),
        (["cache-activations", "--out", str(a_file)], r"--out .* is a file"),
        (
            ["cache-activations", "--out", str(other_cache), "--context-size", "32"],
            r"other settings: .*context_size 999 \(cache\) vs 32 \(now\).* another folder",
        ),
        (["cache-activations", "--out", str(tmp / "c"), "--n-tokens", "0"], r"--n-tokens 0"),
    ]


def test_every_mistake_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CUDA cases need a machine without a GPU")
    with socket.socket() as busy:  # a port something else listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        catalogue = cases(tmp_path, busy.getsockname()[1])
        assert len(catalogue) >= 12
        for argv, expected in catalogue:
            status = main(argv)
            err = capsys.readouterr().err.strip()
            assert status != 0, argv
            assert "Traceback" not in err and len(err.splitlines()) == 1, (argv, err)
            assert err.startswith("sae-lens-clt: error: "), (argv, err)
            assert re.search(expected, err), (argv, err)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="holds no CLT"):
        main(["--debug", "info", str(tmp_path)])


def test_argparse_mistakes_are_short_too(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["no-such-command"], ["train", "--lr", "fast"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err.splitlines()[-1]


def test_info_takes_a_release_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "sae-lens-clt/tiny-states-clt"]) == 0
    assert "CrossLayerTranscoder(n_layers=4" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "no network"])
@pytest.mark.parametrize(
    "argv",
    [
        ["info", "org/not-cached"],
        ["info", "mntss/clt-gemma-2-2b-426k"],  # a registered name: never "closest names"
        ["attribute", "--prompt", "hi", "--model", "gpt2"],
    ],
)
def test_the_hub_offline_fails_in_seconds_with_one_message(
    argv: list[str], how: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Offline, a name that is not cached fails at once. "no network" patches only the
    network call itself (the socket connect of the reachability probe)."""
    from huggingface_hub import constants

    from sae_lens_clt.loading import hub
    from sae_lens_clt.testing import offline_hub_cache

    hub.forget_probes()
    saved_offline = constants.HF_HUB_OFFLINE
    if how == "no network":

        def unreachable(*args, **kwargs):
            raise OSError("Network is unreachable")

        monkeypatch.setattr(socket, "create_connection", unreachable)
    with offline_hub_cache(tmp_path / "hub") as _:  # restores HF_HUB_OFFLINE on exit
        if how == "no network":
            constants.HF_HUB_OFFLINE = False
        start = time.perf_counter()
        status = main([*argv, "--out", str(tmp_path / "out")] if argv[0] == "attribute" else argv)
        elapsed = time.perf_counter() - start
    hub.forget_probes()
    assert constants.HF_HUB_OFFLINE == saved_offline  # nothing leaks into later tests
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"not in the local Hugging Face cache and .* run once online", err), err
    assert "Closest" not in err and "closest" not in err
    assert elapsed < 5.0, f"{argv} took {elapsed:.1f} s offline"


def test_offline_switch_is_shared_and_restored(monkeypatch) -> None:
    """Nested (or concurrent) blocks share the switch; the last to leave restores it."""
    from huggingface_hub import constants

    from sae_lens_clt.loading import hub

    def unreachable(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.forget_probes()
    try:
        with hub.offline_unless_reachable() as outer:
            assert outer and constants.HF_HUB_OFFLINE
            with hub.offline_unless_reachable() as inner:
                assert inner and constants.HF_HUB_OFFLINE
            assert constants.HF_HUB_OFFLINE  # the outer block is still offline
        assert constants.HF_HUB_OFFLINE is False
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # only the proxy knows
        hub.forget_probes()
        with hub.offline_unless_reachable() as offline:
            assert not offline and constants.HF_HUB_OFFLINE is False
    finally:
        hub.forget_probes()
