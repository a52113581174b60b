"""Every code block of the README and ``docs/`` runs as written, so the docs cannot drift.

Each page runs top to bottom in its own namespace and its own working folder:

- ``python`` blocks are executed. Two kinds of edit are applied first, both listed below and
  each required to match the page (a stale entry fails): ``SMALLER`` shrinks training runs
  to seconds (fewer tokens, shorter contexts), and nothing else changes in the code.
- ``yaml`` blocks whose first line is ``# NAME`` are written to the file ``NAME`` (after the
  ``SMALLER`` edits): the config files the commands below them read.
- ``bash`` blocks: each ``sae-lens-clt ...`` command runs through the CLI's ``main`` and must
  exit 0; each ``torchrun ...`` command runs as it is (``python -m torch.distributed.run``,
  one thread per process) and must exit 0; the set-up lines (``python3 -m venv``, ``source``, ``pip install``) are what made
  this environment, and ``python -m pytest`` is this run, so those are not rerun. Any other
  command fails the test until the runner is taught it.
- A ``text`` block right after a command shows that command's output: it must equal what
  the command prints now (times excepted).
- A block marked ``<!-- docs-test: compile-only (reason) -->`` needs what CI cannot have (a
  GPU, gated weights from the Hub). It is compiled, every ``sae_lens_clt`` name it imports
  must exist, and every keyword it passes to one of them must be a parameter of it.
- Blocks without a language (file trees, synopses) are not code.

What a page assumes exists is made first (``PAGE_FIXTURES``): the public repositories it
names sit in an offline Hugging Face cache (tiny CLTs in circuit-tracer's layout), local
folders and release files it names are written, and ``push_to_hub``'s network calls are
replaced (only ``HfApi.create_repo`` / ``upload_folder`` themselves).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import os
import re
import shlex
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/tutorial.md", "docs/pretrained.md", "docs/design.md"]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
COMPILE_ONLY = re.compile(r"<!-- docs-test: compile-only \((.+?)\) -->\s*$")
SETUP_COMMANDS = ("python3 -m venv", "source ", "pip install", "python -m pytest")
TIME = re.compile(r"\bin \d+(\.\d+)?s\b")

_SMALL_RUN = (
    "train_batch_size_tokens=512, context_size=32, store_batch_size_prompts=4, "
    "n_batches_for_norm_estimate=2, verbose=False,"
)
SMALLER: dict[str, list[tuple[str, str]]] = {
    "README.md": [
        ("training_tokens=2_400_000,", f"training_tokens=4_096, {_SMALL_RUN}"),
        (
            "training_tokens: 2_000_000\n",
            "training_tokens: 4_096\ncontext_size: 64\nverbose: false\n",
        ),
    ],
    "docs/tutorial.md": [
        ("training_tokens=2_400_000,", "training_tokens=4_096,"),
        ("train_batch_size_tokens=1024,", _SMALL_RUN),
        ("training_tokens=600_000,", f"training_tokens=2_048, {_SMALL_RUN}"),
    ],
}


@dataclasses.dataclass
class Block:
    lang: str
    code: str
    line: int
    compile_only: str | None  # the reason, when marked


def blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = COMPILE_ONLY.search(before)
        found.append(
            Block(
                lang=m.group(1).strip().split(" ")[0],
                code=m.group(2),
                line=text[: m.start()].count("\n") + 1,
                compile_only=marker.group(1) if marker else None,
            )
        )
    return found


def test_every_page_is_run() -> None:
    """A new page in docs/ must be listed here (or in its own test, like the variant page)."""
    pages = {"README.md"} | {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages == {*PAGES, "docs/contributing_a_variant.md"}


# ---------------------------------------------------------------------- page fixtures
def _write_hub_repos(cache: Path, work: Path) -> None:
    from sae_lens_clt import DEFAULT_CLT, CrossLayerTranscoder
    from sae_lens_clt.testing import put_in_hub_cache

    clt = CrossLayerTranscoder.from_pretrained(DEFAULT_CLT)
    ct = work / ".fixture_ct"
    clt.to_circuit_tracer(ct)
    for repo in ("mntss/clt-gemma-2-2b-426k", "mntss/clt-gemma-2-2b-2.5M"):
        put_in_hub_cache(cache, repo, ct)
    put_in_hub_cache(cache, "me/my-clts", ct, subfolder="run-3")


def _pretrained_page(work: Path) -> None:
    from sae_lens_clt import DEFAULT_CLT, CrossLayerTranscoder

    clt = CrossLayerTranscoder.from_pretrained(DEFAULT_CLT)
    clt.save_model(work / "my_clt")
    clt.to_circuit_tracer(work / "circuit_tracer_folder")
    (work / "my_releases.yaml").write_text("me/yaml-clt:\n  path: my_clt\n  model: tiny\n")


PAGE_FIXTURES: dict[str, Callable[[Path], None]] = {"docs/pretrained.md": _pretrained_page}


@contextlib.contextmanager
def page_environment(work: Path) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """cwd = ``work``; an offline Hub cache with the public repos; push's network calls
    recorded; releases the page registers forgotten afterwards."""
    import huggingface_hub

    from sae_lens_clt.loading import releases
    from sae_lens_clt.testing import offline_hub_cache

    calls: list[tuple[str, dict[str, Any]]] = []

    class Commit:
        commit_url = "https://huggingface.co/me/repo/commit/0"

    def create_repo(self: Any, **kw: Any) -> None:
        calls.append(("create_repo", kw))

    def upload_folder(self: Any, **kw: Any) -> Commit:
        kw["files"] = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls.append(("upload_folder", kw))
        return Commit()

    before = set(releases.get_registry())
    saved = (huggingface_hub.HfApi.create_repo, huggingface_hub.HfApi.upload_folder)
    huggingface_hub.HfApi.create_repo, huggingface_hub.HfApi.upload_folder = (
        create_repo,
        upload_folder,
    )
    old_cwd = Path.cwd()
    os.chdir(work)
    try:
        with offline_hub_cache(work / ".hf_cache") as cache:
            _write_hub_repos(cache, work)
            yield calls
    finally:
        os.chdir(old_cwd)
        huggingface_hub.HfApi.create_repo, huggingface_hub.HfApi.upload_folder = saved
        for name in set(releases.get_registry()) - before:
            releases.unregister_release(name)


# ---------------------------------------------------------------------- running blocks
def run_command(line: str) -> str:
    """One ``sae-lens-clt`` command through the CLI; returns its stdout. ``serve DIR`` would
    serve until stopped: it is started on a free port, its page and graph list fetched, and
    stopped."""
    from sae_lens_clt.cli import main

    argv = shlex.split(line)[1:]
    if argv[0] == "serve":
        return check_serve(Path(argv[1] if len(argv) > 1 else "."))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    assert status == 0, f"`{line}` exited {status}"
    return out.getvalue()


def check_serve(folder: Path) -> str:
    import json
    import urllib.request

    from sae_lens_clt.viewer.server import INDEX_FILENAME, start

    server = start(folder, port=0)
    try:
        page = urllib.request.urlopen(server.url).read().decode()
        graphs = json.load(urllib.request.urlopen(f"{server.url}data/{INDEX_FILENAME}"))["graphs"]
    finally:
        server.stop()
    assert "viewer.js" in page and graphs, f"serve {folder}: no page or no graphs"
    return ""


def run_torchrun(line: str) -> str:
    """A ``torchrun ...`` command of a page, as a real job; returns rank 0's stdout."""
    import subprocess

    argv = [sys.executable, "-m", "torch.distributed.run", *shlex.split(line)[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (
        f"`{line}` exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    )
    return r.stdout


def commands(code: str) -> list[str]:
    lines = code.replace("\\\n", " ").splitlines()
    return [ln.split("  #", 1)[0].strip() for ln in lines if ln.strip()]


def check_compile_only(block: Block, where: str, namespace: dict[str, Any]) -> None:
    """Compile; every ``sae_lens_clt`` name it imports exists, and every call of one (or of
    one the page's earlier blocks defined) takes the keywords given."""
    tree = ast.parse(block.code, where)
    names: dict[str, Any] = {
        k: v
        for k, v in namespace.items()
        if callable(v) and (getattr(v, "__module__", None) or "").startswith("sae_lens_clt")
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sae_lens_clt"):
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: {node.module}.{alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        target = None
        if isinstance(func, ast.Name) and func.id in names:
            target = names[func.id]
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in names
        ):
            target = getattr(names[func.value.id], func.attr, None)
            assert target is not None, f"{where}: {func.value.id}.{func.attr} does not exist"
        if target is None:
            continue
        params = inspect.signature(target).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            continue
        for kw in node.keywords:
            if kw.arg is not None:
                assert kw.arg in params, f"{where}: {kw.arg}= is not a parameter of {target}"
                checked += 1
    assert checked, f"{where}: the compile-only block checks no keyword (is it still code?)"


def run_page(page: str, work: Path) -> dict[str, Any]:
    text = (ROOT / page).read_text()
    edits = SMALLER.get(page, [])
    for old, _ in edits:
        assert old in text, f"{page}: SMALLER entry {old!r} no longer matches the page"
    module = types.ModuleType("docs_" + re.sub(r"\W", "_", page))
    sys.modules[module.__name__] = module  # dataclasses in a block need a real module
    namespace = module.__dict__
    last_output: str | None = None
    try:
        with page_environment(work):
            fixture = PAGE_FIXTURES.get(page)
            if fixture:
                fixture(work)
            for block in blocks(page):
                where = f"{page}:{block.line}"
                if block.compile_only:
                    assert block.lang == "python", f"{where}: only python can be compile-only"
                    check_compile_only(block, where, namespace)
                    continue
                if block.lang == "python":
                    code = block.code
                    for old, new in edits:
                        code = code.replace(old, new)
                    exec(compile(code, where, "exec"), namespace)
                    last_output = None
                elif block.lang == "yaml" and block.code.startswith("# "):
                    code = block.code
                    for old, new in edits:
                        code = code.replace(old, new)
                    name = code.splitlines()[0][2:].strip()
                    (work / name).write_text(code)
                elif block.lang == "bash":
                    last_output = ""
                    for line in commands(block.code):
                        if line.startswith(SETUP_COMMANDS):
                            continue
                        if line.startswith("torchrun "):
                            last_output += run_torchrun(line)
                            continue
                        assert line.startswith("sae-lens-clt "), f"{where}: cannot run `{line}`"
                        last_output += run_command(line)
                elif block.lang == "text" and last_output:
                    shown = TIME.sub("in Ts", block.code.strip())
                    assert TIME.sub("in Ts", last_output.strip()) == shown, (
                        f"{where}: the output shown is not what the command prints now:\n"
                        f"{last_output}"
                    )
                    last_output = None
    finally:
        del sys.modules[module.__name__]
    return namespace


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("SAE_LENS_CLT_RELEASES", "")
    namespace = run_page(page, tmp_path)
    if page == "README.md":  # what the README promises beyond its own lines
        assert (tmp_path / "demo_out" / "graph.json").is_file()
        assert (tmp_path / "my_clt" / "cfg.json").is_file()
        assert (tmp_path / "my_clt_ct" / "config.yaml").is_file()
        assert (tmp_path / "my_big_clt_ct" / "config.yaml").is_file()
        assert (tmp_path / "acts" / "cache_config.json").is_file()
    if page == "docs/tutorial.md":
        assert 0 <= float(namespace["p_austin"]) <= 1


def test_compile_only_blocks_are_few_and_say_why() -> None:
    marked = [(p, b) for p in PAGES for b in blocks(p) if b.compile_only]
    assert len(marked) <= 2, [f"{p}:{b.line}" for p, b in marked]
    assert all(len(b.compile_only or "") > 10 for _, b in marked)


# ---------------------------------------------------------------------- the variant page
def python_blocks(page: str) -> list[str]:
    return [b.code for b in blocks(page) if b.lang == "python"]


def test_contributing_a_variant_runs_and_is_short(tmp_path: Path) -> None:
    code = python_blocks("docs/contributing_a_variant.md")
    variant = code[0]
    n_lines = len(variant.strip().splitlines())
    assert n_lines < 100, "the example variant must stay short"
    page = (ROOT / "docs/contributing_a_variant.md").read_text()
    assert f"A variant in {n_lines} lines" in page, "the heading states the example's length"
    module = types.ModuleType("contributing_a_variant")  # dataclasses need a real module
    module.tmp_path = tmp_path
    sys.modules[module.__name__] = module
    namespace = module.__dict__
    try:
        for block in code:
            exec(compile(block, "docs/contributing_a_variant.md", "exec"), namespace)
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
