"""Our graph against circuit-tracer's, as a circuit-tracer user gets it from our export.

For the shipped model + CLT (the demo prompt) and for every family of the architecture
matrix (tests/architectures.py, random weights, norms away from identity): export with
``to_circuit_tracer``, load with circuit-tracer 0.5's ``load_clt`` and the hooks of the
written ``config.yaml``, trace with its ``attribute``; print the active-feature counts,
whether they are identical, and the largest edge difference relative to the largest edge
(embedding columns left out where we add learned positions).

Run: ``python benchmarks/circuit_tracer_fidelity.py`` (from the repository root).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import circuit_tracer  # noqa: E402

import sae_lens_clt  # noqa: E402
from sae_lens_clt import CrossLayerTranscoder, attribute  # noqa: E402
from sae_lens_clt.attribution import to_tokens  # noqa: E402
from tests.architectures import FAMILIES, build  # noqa: E402
from tests.test_architectures import circuit_tracer_model  # noqa: E402
from tests.test_attribution import toy_tokenizer  # noqa: E402


def compare(name, model, clt, prompt) -> None:
    folder = Path(tempfile.mkdtemp()) / "clt"
    clt.to_circuit_tracer(folder)
    ours = attribute(model, clt, prompt)
    tokens = to_tokens(model, prompt)
    theirs = circuit_tracer.attribute(tokens, circuit_tracer_model(model, folder), batch_size=128)
    same = torch.equal(ours.active_features, theirs.active_features)
    cols = torch.arange(ours.n_nodes)
    if model.cfg.positional_embedding_type == "standard":
        cols = torch.cat([cols[: ours.embedding_offset], cols[ours.logit_offset :]])
    rel = float("nan")
    if same:
        diff = (theirs.adjacency_matrix[:, cols] - ours.adjacency[:, cols]).abs().max()
        rel = (diff / ours.adjacency.abs().max()).item()
    print(
        f"{name:>18}: features ours {ours.n_features:4d} / circuit-tracer "
        f"{theirs.active_features.shape[0]:4d}, identical {same}, max edge diff / max edge {rel:.1e}"
    )


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    model = sae_lens_clt.load_model(sae_lens_clt.DEFAULT_MODEL)
    clt = CrossLayerTranscoder.from_pretrained(sae_lens_clt.DEFAULT_CLT)
    compare("shipped model+CLT", model, clt, "The capital of the state containing Dallas is")
    for name in FAMILIES:
        fam = build(name, tokenizer=toy_tokenizer())
        compare(name, fam.model, fam.clt, fam.prompt)


if __name__ == "__main__":
    main()
