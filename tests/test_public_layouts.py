"""The public CLT layouts in miniature, loaded by name from the Hub cache, traced like the peer.

Each fixture is written the way the public repository is (file names, tensor names and
orientation, ``config.yaml`` fields), by circuit-tracer's own writer where it has one, and
put in the Hugging Face cache layout; only the network is absent (``HF_HUB_OFFLINE``).

1. ``mntss/clt-gemma-2-2b-426k`` and ``mntss/clt-llama-3.2-1b-524k``: circuit-tracer's
   layout (``W_enc_{i}`` / ``W_dec_{i}.safetensors``) with the repositories' ``config.yaml``
   (``hook_resid_mid`` -> ``hook_mlp_out``), on tiny Gemma-2 / Llama-3.2 models. We load the
   release by its registered name; circuit-tracer loads the same repository with its own
   ``load_transcoder_from_hub``. Same features, same graph.
2. Gemma Scope 2: a ``config.yaml`` listing ``hf://`` per-layer ``params_layer_{i}``
   files (``w_enc [d, F]``, ``w_dec [F, L, d]``, ...), on a tiny Gemma-3-shaped model, read by
   circuit-tracer's ``load_gemma_scope_2_clt``. Same features, same graph.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from sae_lens_clt import CrossLayerTranscoder
from sae_lens_clt.attribution import attribute
from tests.architectures import build
from tests.test_architectures import assert_same_graph, circuit_tracer_replacement_model
from tests.test_attribution import toy_tokenizer
from tests.test_pretrained import hub_cache, put_in_cache  # noqa: F401  (fixture)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]
ct = pytest.importorskip("circuit_tracer")


@pytest.mark.parametrize(
    "family, repo_id, model_name",
    [
        ("gemma2", "mntss/clt-gemma-2-2b-426k", "google/gemma-2-2b"),
        ("llama3", "mntss/clt-llama-3.2-1b-524k", "meta-llama/Llama-3.2-1B"),
    ],
)
def test_mntss_layout_by_name(
    family: str,
    repo_id: str,
    model_name: str,
    tmp_path: Path,
    hub_cache: Path,  # noqa: F811
) -> None:
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    fam = build(family, tokenizer=toy_tokenizer())
    # the repository's files, written by circuit-tracer's own writer, and its config.yaml
    fam.clt.to_circuit_tracer(tmp_path / "ours")
    written = load_clt(str(tmp_path / "ours"), device=torch.device("cpu"), dtype=torch.float32,
                       lazy_decoder=False)  # fmt: skip
    repo = tmp_path / "repo"
    written.to_safetensors(str(repo))
    config = {"model_name": model_name, "model_kind": "cross_layer_transcoder",
              "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out"}  # fmt: skip
    (repo / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    put_in_cache(hub_cache, repo_id, repo)

    clt = CrossLayerTranscoder.from_pretrained(repo_id)  # the registered release, offline
    assert clt.cfg.metadata.hook_name == "blocks.{layer}.hook_resid_mid"
    assert clt.cfg.metadata.hook_name_out == "blocks.{layer}.hook_mlp_out"
    assert clt.cfg.metadata.model_processing == {
        "fold_ln": False, "center_writing_weights": False, "center_unembed": False,
    }  # fmt: skip
    their_clt, _ = load_transcoder_from_hub(repo_id, device=torch.device("cpu"), use_cache=False,
                                            lazy_decoder=False)  # fmt: skip
    ours = attribute(fam.model, clt, fam.prompt)
    theirs = ct.attribute(
        fam.prompt, circuit_tracer_replacement_model(fam.model, their_clt), batch_size=64
    )
    assert ours.n_features > 10
    assert_same_graph(ours, theirs, fam.model)


def test_gemma_scope_2_layout(tmp_path: Path, hub_cache: Path) -> None:  # noqa: F811
    from circuit_tracer.transcoder.cross_layer_transcoder import load_gemma_scope_2_clt

    fam = build("gemma3", tokenizer=toy_tokenizer())
    clt, L = fam.clt, fam.clt.cfg.n_layers
    gen = torch.Generator().manual_seed(7)
    repo_id, sub = "google/gemma-scope-2-tiny-pt", "clt/width_64"
    repo = tmp_path / "repo"
    (repo / sub).mkdir(parents=True)
    for i in range(L):
        w_dec = torch.randn(clt.cfg.d_sae, L, clt.cfg.d_in, generator=gen)  # layers < i: unused
        w_dec[:, i:] = clt.W_dec[i].detach()
        save_file(
            {"w_enc": clt.W_enc[i].detach().contiguous(), "b_enc": clt.b_enc[i].detach(),
             "threshold": clt.threshold[i].detach(), "b_dec": clt.b_dec[i].detach(),
             "w_dec": w_dec},
            str(repo / sub / f"params_layer_{i}.safetensors"),
        )  # fmt: skip
    files = [f"hf://{repo_id}/{sub}/params_layer_{i}.safetensors" for i in range(L)]
    config = {"model_name": "google/gemma-3-tiny", "model_kind": "cross_layer_transcoder",
              "feature_input_hook": "hook_resid_mid", "feature_output_hook": "hook_mlp_out",
              "transcoders": files}  # fmt: skip
    (repo / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    put_in_cache(hub_cache, repo_id, repo)

    loaded = CrossLayerTranscoder.from_pretrained(repo_id)
    for name, value in clt.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    # circuit-tracer 0.5 loads range(max(paths)) layers, one too few for {0..L-1} (a bug of
    # its load_gemma_scope_2_clt): one extra key makes it read all L files
    paths = {i: str(repo / sub / f"params_layer_{i}.safetensors") for i in range(L)}
    their_clt = load_gemma_scope_2_clt({**paths, L: ""}, device=torch.device("cpu"),
                                       dtype=torch.float32)  # fmt: skip
    ours = attribute(fam.model, loaded, fam.prompt)
    theirs = ct.attribute(
        fam.prompt, circuit_tracer_replacement_model(fam.model, their_clt), batch_size=64
    )
    assert_same_graph(ours, theirs, fam.model)
