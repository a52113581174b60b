"""The README's main command on the shipped default model and CLT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae_lens_clt.default_model import DEFAULT_MODEL_DIR
from sae_lens_clt.loading.releases import PACKAGE_DIR

DEFAULT_CLT_DIR = PACKAGE_DIR / "default_model" / "default_clt"
pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model.safetensors").exists()
    or not (DEFAULT_CLT_DIR / "sae_weights.safetensors").exists(),
    reason="the shipped default model / CLT are not built yet",
)


def test_demo_validates_the_two_hop_circuit(tmp_path: Path) -> None:
    from sae_lens_clt.cli.demo import PROMPT, run_demo
    from sae_lens_clt.default_model.corpus import TWO_HOP_PROMPT

    assert PROMPT == TWO_HOP_PROMPT

    r = run_demo(tmp_path, verbose=False)
    assert r.top_predictions[0][0] == " Austin"
    before, after = r.ablation
    assert after < 0.5 * before, r.ablation  # " Austin" falls sharply
    assert r.steering[2] == " Sacramento", r.steering  # top-1 after steering
    # supernodes of the 150 city prompts: Texas' say-capital group carries part of the
    # effect, and its ablation is predicted by the graph
    assert [f for f in r.supernodes["say Austin"]] and r.shares["say Austin"] > 0.1
    check = next(c for c in r.checks if c.name == "say Austin")
    assert check.replacement[0] < 0 and check.agrees(rel_tol=0.25), str(check)
    assert check.real[0] < 0
    n_group, p_before, p_after = r.group_ablation  # ablating Texas' group lowers " Austin"
    assert n_group >= 3 and p_after < 0.5 * p_before, r.group_ablation
    # the Texas -> California swap makes " Sacramento" top-1 with far fewer features
    scale, n_swapped, top, p_top, _ = r.swap[-1]
    assert top == " Sacramento" and n_swapped < r.n_steered / 4, r.swap
    # the verdict on a state representation comes with its evidence
    assert r.routes_through_state is False and len(r.evidence) >= 2
    assert r.faithfulness.summary["real"].pearson > 0.2
    assert r.paths and all("Dallas" in names[0] and "Austin" in names[-1] for _, names in r.paths)
    for key in ("json", "figure", "supernode_figure"):
        assert Path(r.files[key]).stat().st_size > 1000
    data = json.loads(Path(r.files["json"]).read_text())
    groups = {name: members for name, *members in data["qParams"]["supernodes"]}
    assert "say Austin" in groups and all(m.endswith("_8") for m in groups["say Austin"])
    assert any(
        n.get("clerp") for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"
    )
    assert 0 < r.replacement_score <= 1 and 0 < r.completeness_score <= 1


def test_default_clt_loads_offline_with_labels() -> None:
    from sae_lens_clt import DEFAULT_CLT, CrossLayerTranscoder
    from sae_lens_clt.labels import load_labels

    clt = CrossLayerTranscoder.from_pretrained(DEFAULT_CLT)
    assert clt.cfg.metadata.model_name == "sae-lens-clt/tiny-states"
    assert clt.cfg.metadata.training_tokens > 0
    labels = load_labels(DEFAULT_CLT_DIR)
    assert labels is not None and len(labels["features"]) == clt.cfg.n_layers * clt.cfg.d_sae
