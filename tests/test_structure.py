"""The package's shape: no import circle, no import that runs up a layer, a fast CLI.

Every ``import`` / ``from ... import`` in every module of ``sae_lens_clt`` is read with
``ast`` (module level, inside functions and under ``TYPE_CHECKING`` alike), mapped to the
module it names, and checked against the layers below (a module may import its own layer
or lower ones). Run ``pytest tests/test_structure.py -q`` to check a change.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sae_lens_clt"

# lowest first; a module belongs to the first prefix it starts with
LAYERS: list[tuple[str, ...]] = [
    ("sae_lens_clt.registry", "sae_lens_clt.hooks", "sae_lens_clt.default_model"),
    ("sae_lens_clt.formats",),
    ("sae_lens_clt.loading",),
    ("sae_lens_clt.transcoders.sparse", "sae_lens_clt.replacement"),
    ("sae_lens_clt.transcoders",),
    (
        "sae_lens_clt.evals",
        "sae_lens_clt.publish",
        "sae_lens_clt.attribution",
        "sae_lens_clt.activations",
    ),
    ("sae_lens_clt.dashboards", "sae_lens_clt.viewer"),  # read graphs and features
    ("sae_lens_clt.labels", "sae_lens_clt.training"),
    ("sae_lens_clt.circuits",),  # prompt sets, global weights, supernodes
    ("sae_lens_clt.testing",),
    ("sae_lens_clt.cli",),
    ("sae_lens_clt",),  # the package's public face
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py: add it")


def imports_of(path: Path, modules: set[str], me: str | None = None) -> set[str]:
    """Package modules that ``path`` (module ``me``) imports (the longest known prefix of each)."""
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from pkg import sub` depends on pkg.sub; `from pkg import name` on pkg itself
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_no_import_runs_up_a_layer() -> None:
    upward = [
        f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})"
        for mod, deps in import_graph().items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(mod)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                circle = path[path.index(dep) :] + [dep]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)


def test_the_check_sees_imports(tmp_path: Path) -> None:
    """The reader finds what it should (else the two tests above prove nothing)."""
    graph = import_graph()
    assert "sae_lens_clt.formats.saelens" in graph["sae_lens_clt.transcoders.clt"]
    assert "sae_lens_clt.registry" in graph["sae_lens_clt.formats.saelens"]
    assert "sae_lens_clt.attribution.prune" in graph["sae_lens_clt.attribution.graph"]
    assert layer_of("sae_lens_clt.cli.demo") > layer_of("sae_lens_clt.attribution.paths")
    # a name taken from a package (not a submodule) is an import of the package itself
    fake = PACKAGE / "formats" / "_probe_for_test.py"
    fake.write_text(
        "from sae_lens_clt import attribute\nfrom sae_lens_clt.formats import saelens\n"
    )
    try:
        modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
        assert imports_of(fake, modules) == {"sae_lens_clt", "sae_lens_clt.formats.saelens"}
    finally:
        fake.unlink()


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["cache-activations", "--help"]])
def test_cli_help_is_fast(args: list[str]) -> None:
    """``sae-lens-clt --help`` imports neither torch nor SAELens: well under 1.5 s."""
    code = (
        "import sys; from sae_lens_clt.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'sae_lens' not in sys.modules, 'heavy import'\n"
    )
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
        )
        best = min(best, time.perf_counter() - start)
        assert res.returncode == 0, res.stderr[-2000:]
    assert "usage: sae-lens-clt" in res.stdout
    assert best < 1.5, f"sae-lens-clt {' '.join(args)} took {best:.2f}s"
