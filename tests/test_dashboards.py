"""Feature dashboards: statistics against brute force, resume, circuit-tracer's feature model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_lens_clt.attribution.export import cantor_pairing
from sae_lens_clt.dashboards import (
    STATE_FILENAME,
    DashboardSettings,
    compute_dashboards,
    write_feature_files,
)
from sae_lens_clt.evals import cache_clt_io
from tests.conftest import make_clt, make_tiny_lm

SETTINGS = DashboardSettings(top_k=3, before=4, after=2, n_logits=4, dataset="random")


def _batches(n: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(2, 50, (2, 12), generator=g)
        tokens[:, 0] = 0
        out.append(tokens)
    return out


@torch.no_grad()
def _acts(model, clt, tokens) -> torch.Tensor:
    _, x, _ = cache_clt_io(model, clt, tokens)
    acts = clt.encode(x).float().flatten(2)  # [B, T, L*F]
    acts[:, 0] = 0
    return acts


def test_statistics_match_brute_force() -> None:
    model = make_tiny_lm()
    clt = make_clt(n_layers=2, d_in=32, d_sae=8, activation_fn="relu", seed=1)
    batches = _batches()
    state = compute_dashboards(model, clt, batches, SETTINGS, progress=False)
    acts = torch.cat([_acts(model, clt, t) for t in batches])  # [n_rows, T, L*F]
    tokens = torch.cat(batches)  # [n_rows, T]
    n_rows, T, n_feat = acts.shape
    flat = acts.reshape(-1, n_feat)
    torch.testing.assert_close(state.top_values, flat.topk(3, dim=0).values)
    assert state.n_positions == n_rows * (T - 1)
    torch.testing.assert_close(state.fired, (flat > 0).sum(0))
    torch.testing.assert_close(state.hist.sum(1), (flat > 0).sum(0))
    positive = torch.where(flat > 0, flat, torch.inf)
    torch.testing.assert_close(state.act_min, positive.min(0).values)
    # the window of feature j's best example: tokens and activations around it
    j = int(state.fired.argmax())
    r, p = divmod(int(flat[:, j].argmax()), T)
    for w in range(SETTINGS.window):
        q = p - SETTINGS.before + w
        if 0 <= q < T:
            assert int(state.top_tokens[0, j, w]) == int(tokens[r, q])
            assert float(state.top_acts[0, j, w]) == pytest.approx(float(acts[r, q, j]))
        else:
            assert int(state.top_tokens[0, j, w]) == -1


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    model = make_tiny_lm()
    clt = make_clt(n_layers=2, d_in=32, d_sae=8, activation_fn="relu", seed=2)
    batches = _batches(6)
    whole = compute_dashboards(model, clt, batches, SETTINGS, progress=False)

    def interrupted():
        for i, tokens in enumerate(batches):
            if i == 4:
                raise KeyboardInterrupt
            yield tokens

    with pytest.raises(KeyboardInterrupt):
        compute_dashboards(
            model, clt, interrupted(), SETTINGS, state_dir=tmp_path, save_every=2, progress=False
        )
    # the resumed run must skip the 4 saved batches: give it other tokens there
    others = _batches(4, seed=9) + batches[4:]
    resumed = compute_dashboards(
        model, clt, others, SETTINGS, state_dir=tmp_path, save_every=2, progress=False
    )
    assert resumed.batches_done == 6
    for name, value in whole.tensors().items():
        torch.testing.assert_close(resumed.tensors()[name], value, msg=name)
    # other settings do not resume from that state
    other = DashboardSettings(top_k=2, before=4, after=2, n_logits=4, dataset="random")
    fresh = compute_dashboards(model, clt, batches[:1], other, state_dir=tmp_path, progress=False)
    assert fresh.batches_done == 1
    assert (tmp_path / STATE_FILENAME).is_file()


def test_feature_files_are_circuit_tracer_models(tmp_path: Path) -> None:
    from circuit_tracer.frontend.feature_models import Model

    model = make_tiny_lm()
    clt = make_clt(n_layers=2, d_in=32, d_sae=8, activation_fn="relu", seed=3)
    state = compute_dashboards(model, clt, _batches(), SETTINGS, progress=False)
    folder = write_feature_files(
        model, clt, state, tmp_path, scan="tiny/scan", settings=SETTINGS, progress=False
    )
    assert folder == tmp_path / "tiny/scan"
    files = sorted(folder.glob("*.json"))
    assert len(files) == 2 * 8
    layer, feat = 1, int(state.fired[8:].argmax())
    data = json.loads((folder / f"{cantor_pairing(layer, feat)}.json").read_text())
    record = Model.model_validate(data)  # circuit-tracer's own feature model
    assert record.index == cantor_pairing(layer, feat)
    j = layer * 8 + feat
    assert record.act_max == pytest.approx(float(state.top_values[0, j]), abs=1e-4)
    assert record.activation_frequency == pytest.approx(float(state.fired[j]) / state.n_positions)
    top = record.examples_quantiles[0].examples[0]
    assert len(top.tokens) == len(top.tokens_acts_list)
    assert top.tokens_acts_list[top.train_token_ind] == pytest.approx(record.act_max, abs=1e-3)
    assert len(record.top_logits) == len(record.bottom_logits) == 4
    q = record.quantile_values
    assert len(q) == 100 and q == sorted(q) and q[-1] <= record.act_max + 1e-6
    assert sum(record.histogram) == pytest.approx(float(state.fired[j]))
