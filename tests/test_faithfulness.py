"""Faithfulness reports: a graph's predicted feature effects against interventions.

1. The prediction (total effect over all graph paths x the change of activation) *is* the
   frozen replacement model's response when no other feature crosses its threshold
   (checked per feature; crossings read from the intervention's activations).
2. With linear MLPs that a CLT reproduces exactly for every input (a pair of ReLU features
   ``±u`` per hidden unit: ``relu(z) - relu(-z) = z``), the real model with frozen attention
   and norms responds exactly as the replacement model; with GELU MLPs it does not (an
   exact reconstruction at the clean point does not make the nonlinear response equal).
3. The report: flags, the partial-graph warning, JSON, validation, the CLI option, and the
   figures on the shipped default model's Dallas graph.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch

from sae_lens_clt import PerLayerTranscoder, PerLayerTranscoderConfig
from sae_lens_clt.attribution import AttributionGraph, FaithfulnessReport, attribute, faithfulness
from sae_lens_clt.attribution.faithfulness import total_effects
from sae_lens_clt.attribution.paths import linear_effects, total_effect
from tests.architectures import build as build_family
from tests.architectures import perturb_norms
from tests.test_attribution import random_clt, random_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = torch.tensor([0, 5, 17, 42, 8, 91, 23, 64, 3, 77])


def tiny_setup(seed: int = 0, family: str = "ln"):
    """``ln``: a LayerNorm GELU model; ``gemma2``: RMS norms before and after attention and
    MLP, gated MLP, GQA, rotary, a final logit soft-cap (tests/architectures.py)."""
    if family == "gemma2":
        fam = build_family("gemma2", seed=seed)
        return fam.model, fam.clt
    model = random_model(n_layers=3, seed=seed)
    perturb_norms(model, seed)  # non-identity norm weights and biases
    clt = random_clt(model, d_sae=64, active_frac=0.06, seed=seed)
    return model, clt


# ---------------------------------------------------------------------- 1. exactness
@pytest.mark.parametrize(
    ("family", "kw"),
    [
        ("ln", {"value": 0.0}),
        ("ln", {"scale": 0.9}),
        ("ln", {"scale": 3.0}),
        ("gemma2", {"value": 0.0}),
        ("gemma2", {"scale": 0.9}),
    ],
)
def test_prediction_is_the_replacement_run_where_no_threshold_is_crossed(family, kw) -> None:
    model, clt = tiny_setup(family=family)
    graph = attribute(model, clt, PROMPT)
    report = faithfulness(graph, model, clt, top_k=40, **kw)
    assert not report.partial_graph
    exact = report.exact_mask
    assert int(exact.sum()) >= 5, f"only {int(exact.sum())} of 40 cases cross no threshold"
    scale = max(float(report.predicted.abs().max()), 1.0)
    torch.testing.assert_close(
        report.replacement[exact], report.predicted[exact], atol=1e-4 * scale, rtol=1e-4
    )
    assert report.self_check_error() <= 1e-4 * scale
    # a crossing does show: some runs that crossed a threshold differ from the prediction
    crossed = ~exact
    if crossed.any():
        assert (report.replacement[crossed] - report.predicted[crossed]).abs().max() > 1e-3


def test_total_effects_equal_the_path_sums() -> None:
    model, clt = tiny_setup(seed=1)
    graph = attribute(model, clt, PROMPT)
    effects, at = total_effects(graph), linear_effects(graph)
    for i in torch.randperm(graph.n_features, generator=torch.Generator().manual_seed(0))[:5]:
        for j in range(graph.n_logits):
            expected = total_effect(at, int(i), graph.logit_offset + j)
            assert effects[j, i].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------- 2. real model
def pair_transcoder(model) -> PerLayerTranscoder:
    """A per-layer ReLU transcoder with features ``±u_j`` -> ``±W_out[j]`` for every hidden
    unit ``j``, ``u_j`` its input weights with ln2's weight and bias folded in (the CLT reads
    ``ln2.hook_normalized``, before them): it outputs ``MLP(ln2(x))`` for an affine MLP."""
    L, d, h = model.cfg.n_layers, model.cfg.d_model, model.cfg.d_mlp
    cfg = PerLayerTranscoderConfig(n_layers=L, d_in=d, d_out=d, d_sae=2 * h, activation_fn="relu")
    clt = PerLayerTranscoder(cfg)
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            mlp, ln = block.mlp, block.ln2
            w_in = ln.w[:, None] * mlp.W_in  # [d_model, d_mlp]
            b_in = ln.b @ mlp.W_in + mlp.b_in  # [d_mlp]
            clt.W_enc[layer] = torch.cat([w_in, -w_in], dim=1)
            clt.b_enc[layer] = torch.cat([b_in, -b_in])
            clt.W_dec[layer][:, 0] = torch.cat([mlp.W_out, -mlp.W_out], dim=0)
            clt.b_dec[layer] = mlp.b_out
    return clt


@pytest.mark.parametrize("linear", [True, False])
def test_real_model_with_frozen_attention_is_the_replacement_for_linear_mlps(linear) -> None:
    model = random_model(n_layers=3, seed=4)
    perturb_norms(model, 4)
    if linear:
        for block in model.blocks:
            block.mlp.act_fn = lambda x: x  # the MLP is affine: the CLT is exact everywhere
    clt = pair_transcoder(model)
    graph = attribute(model, clt, PROMPT[:7])
    report = faithfulness(graph, model, clt, top_k=12)
    gap = (report.real_frozen_attn - report.replacement).abs().max()
    scale = max(float(report.replacement.abs().max()), 1.0)
    if linear:
        assert gap <= 1e-4 * scale
        # attention and norms free: a different model, a different response
        assert (report.real - report.real_frozen_attn).abs().max() > 1e-3 * scale
        # a pair's members cross zero together and their sum stays linear: the graph's
        # prediction is then exact for every feature, crossings or not
        assert (report.crossings > 0).any()
        torch.testing.assert_close(
            report.real_frozen_attn, report.predicted, atol=1e-4 * scale, rtol=1e-4
        )
    else:
        assert gap > 1e-3 * scale, "GELU MLPs respond unlike their linearisation"


# ---------------------------------------------------------------------- 3. the report
def test_report_prints_and_serialises() -> None:
    model, clt = tiny_setup()
    graph = attribute(model, clt, PROMPT)
    labels = {tuple(graph.active_features[0, [0, 2]].tolist()): "first feature"}
    report = graph.faithfulness(model, clt, top_k=12, labels=labels)
    assert isinstance(report, FaithfulnessReport)
    K, k = report.predicted.shape
    assert (K, k) == (12, graph.n_logits)
    for m in ("replacement", "real_frozen_attn", "real"):
        assert getattr(report, m).shape == (K, k)
    influence = graph.prune().node_influence[: graph.n_features]
    assert report.nodes.tolist() == torch.argsort(influence, descending=True)[:12].tolist()
    text = str(report)
    assert "full graph" in text and "worst features" in text and "... 2 more" in text
    assert len(text.splitlines()) == 2 + 1 + 10 + 1 + 1 + 3 + 1 + 5
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert len(data["rows"]) == 12 and set(data["summary"]) == {
        "replacement",
        "real_frozen_attn",
        "real",
    }
    row = data["rows"][0]
    assert row["node"] == int(report.nodes[0]) and len(row["real"]) == k
    assert row["activation"] == pytest.approx(float(graph.activation_values[report.nodes[0]]))
    if any(r["label"] for r in data["rows"]):
        assert "first feature" in text
    # one target: the same numbers as its column of the full report
    one = faithfulness(graph, model, clt, top_k=12, targets=[int(graph.logit_token_ids[1])])
    torch.testing.assert_close(one.predicted[:, 0], report.predicted[:, 1])
    torch.testing.assert_close(one.real[:, 0], report.real[:, 1])


def test_partial_graph_is_flagged() -> None:
    model, clt = tiny_setup()
    graph = attribute(model, clt, PROMPT, max_feature_nodes=8)
    report = faithfulness(graph, model, clt, top_k=4)
    assert report.partial_graph and not report.exact_mask.any()
    assert "PARTIAL graph" in str(report)
    assert report.to_dict()["partial_graph"] is True


def test_bad_arguments_are_refused() -> None:
    model, clt = tiny_setup()
    graph = attribute(model, clt, PROMPT)
    with pytest.raises(ValueError, match="top_k"):
        faithfulness(graph, model, clt, top_k=0)
    with pytest.raises(ValueError, match="value or scale"):
        faithfulness(graph, model, clt, value=1.0, scale=2.0)
    with pytest.raises(ValueError, match="logit nodes"):
        faithfulness(graph, model, clt, targets=[99999])
    with pytest.raises(ValueError, match="targets must be"):
        faithfulness(graph, model, clt, targets="features")
    other = random_clt(model, d_sae=64, active_frac=0.06, seed=7)
    with pytest.raises(ValueError, match="do not reproduce the graph"):
        faithfulness(graph, model, other, top_k=2)


# ---------------------------------------------------------------------- CLI
def test_cli_prints_the_report_and_writes_json(tmp_path: Path, monkeypatch, capsys) -> None:
    from sae_lens_clt.cli import attribute as cli

    model = random_model(tokenizer=True)
    monkeypatch.setattr(cli, "load_model_by_name", lambda name, device: model)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    base = ["attribute", "--clt", "random", "--prompt", "w1 w2 w3 w4 w5 w6 w7", "--d-sae", "64"]
    for extra, k in ((["--faithfulness"], 20), (["--faithfulness", "3", "--slug", "g3"], 3)):
        args = parser.parse_args([*base, "--out", str(tmp_path / "out"), *extra])
        assert args.func(args) == 0
        printed = capsys.readouterr().out
        slug = args.slug
        path = tmp_path / "out" / f"{slug}-faithfulness.json"
        assert "faithfulness:" in printed and "real model, attention + norms free" in printed
        assert f"wrote {path}" in printed
        data = json.loads(path.read_text())
        graph = AttributionGraph.load(tmp_path / "out" / f"{slug}.safetensors")
        assert len(data["rows"]) == min(k, graph.n_features)


def test_cli_refuses_a_bad_k_in_one_line(tmp_path: Path, capsys) -> None:
    from sae_lens_clt.cli import main

    status = main(
        ["attribute", "--prompt", "hi", "--out", str(tmp_path / "o"), "--faithfulness", "0"]
    )
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "--faithfulness 0: K must be >= 1" in err


# ---------------------------------------------------------------------- default model
def test_default_model_dallas_graph() -> None:
    demo = pytest.importorskip("sae_lens_clt.cli.demo")
    try:
        model, clt, labels, _, _ = demo.load_default(None)
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        pytest.skip(f"default model / CLT not available: {e}")
    graph = attribute(model, clt, demo.PROMPT.format(city="Dallas"))
    start = time.perf_counter()
    report = graph.faithfulness(model, clt, labels=labels)
    seconds = time.perf_counter() - start
    print(report)
    assert seconds < 20, f"faithfulness took {seconds:.1f}s"
    assert report.target_tokens[0] == " Austin" and not report.partial_graph
    assert report.exact_mask.any()
    assert report.self_check_error() < 1e-3
    # the graph's predictions track the real model (the figures of the final report)
    assert report.summary["replacement"].pearson > 0.8
    assert report.summary["real"].pearson > 0.3
    assert report.summary["real"].sign_agreement > 0.6
