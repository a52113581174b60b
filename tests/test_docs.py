"""Code blocks of the docs run as written (in order, one namespace per page)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / page).read_text())


def test_contributing_a_variant_runs_and_is_short(tmp_path: Path) -> None:
    blocks = python_blocks("docs/contributing_a_variant.md")
    variant = blocks[0]
    n_lines = len(variant.strip().splitlines())
    assert n_lines < 100, "the example variant must stay short"
    page = (ROOT / "docs/contributing_a_variant.md").read_text()
    assert f"A variant in {n_lines} lines" in page, "the heading states the example's length"
    module = types.ModuleType("contributing_a_variant")  # dataclasses need a real module
    module.tmp_path = tmp_path
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    try:
        for code in blocks:
            exec(compile(code, "docs/contributing_a_variant.md", "exec"), namespace)
    finally:
        del sys.modules[module.__name__]
    # what the page promises beyond its own asserts
    from sae_lens_clt.registry import registration

    assert registration("windowed_cross_layer_transcoder").cls is namespace["WindowedCLT"]


@pytest.fixture(autouse=True)
def _forget_registered_example():
    yield
    from sae_lens_clt.registry import unregister_architecture

    unregister_architecture("windowed_cross_layer_transcoder")
