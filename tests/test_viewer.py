"""The offline viewer (``sae-lens-clt serve``) in a real headless browser.

Debian's chromium, driven by Playwright: the page loads with no console errors and makes no
request that leaves the machine; clicking a node shows its label and its feature file;
hovering an edge shows its weight; pins and supernodes are saved into the graph's qParams
and survive a reload; the saved JSON stays valid for circuit-tracer's viewer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from sae_lens_clt.attribution.export import validate_graph_json
from sae_lens_clt.viewer.server import list_graphs, save_qparams, start

CHROMIUM = os.environ.get("SAE_LENS_CLT_CHROMIUM") or shutil.which("chromium")
REQUIRED = bool(os.environ.get("SAE_LENS_CLT_REQUIRE_BROWSER"))  # set by .ci/run
PROMPTS = {
    "dallas": "The capital of the state containing Dallas is",
    "ohio": "The state containing Columbus is",
}


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two graphs of the default model, with labels and the feature files of their nodes."""
    from sae_lens_clt.attribution.attribute import attribute
    from sae_lens_clt.dashboards import compute_dashboards, write_feature_files
    from sae_lens_clt.default_model import DEFAULT_MODEL, load_default_dataset, load_model
    from sae_lens_clt.evals import token_batches_from_texts
    from sae_lens_clt.labels import load_with_labels
    from sae_lens_clt.loading.releases import DEFAULT_CLT

    out = tmp_path_factory.mktemp("graphs")
    model = load_model(DEFAULT_MODEL)
    clt, labels, scan = load_with_labels(DEFAULT_CLT)
    texts = load_default_dataset("train", natural=None)["text"][:150]
    state = compute_dashboards(
        model, clt, token_batches_from_texts(model, texts, 64, 32), progress=False
    )
    for slug, prompt in PROMPTS.items():
        graph = attribute(model, clt, prompt)
        pruned = graph.prune()
        graph.to_json(out / f"{slug}.json", labels=labels, pruned=pruned, scan=scan)
        kept = pruned.node_mask[: graph.n_features].nonzero()[:, 0]
        feats = [(int(graph.active_features[i, 0]), int(graph.active_features[i, 2])) for i in kept]
        write_feature_files(
            model, clt, state, out / "features", scan=scan, features=feats, progress=False
        )
    return out


def test_server_lists_graphs_and_refuses_escapes(graph_dir: Path) -> None:
    import urllib.error
    import urllib.request

    assert [g["slug"] for g in list_graphs(graph_dir)] == sorted(PROMPTS)
    server = start(graph_dir, port=0)
    try:
        host, port = server.httpd.server_address[:2]
        assert host == "127.0.0.1"  # this machine only, by default
        other = socket.gethostbyname(socket.gethostname())
        if not other.startswith("127."):  # a container may have no other interface
            with pytest.raises(OSError):  # not reachable on another interface of this machine
                socket.create_connection((other, port), timeout=1)
        for bad in (
            "/data/../graphs",
            "/data/%2e%2e/%2e%2e/etc/passwd",
            "/features/../dallas.json",
        ):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(server.url.rstrip("/") + bad)
            assert e.value.code == 404
        data = json.load(urllib.request.urlopen(server.url + "data/dallas.json"))
        assert data["metadata"]["prompt"] == PROMPTS["dallas"]

        def post(slug: str, body: bytes, content_type: str = "application/json") -> int:
            req = urllib.request.Request(
                server.url + "save_graph/" + slug, data=body, method="POST",
                headers={"Content-Type": content_type},
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req)
            return e.value.code

        good = b'{"qParams": {"pinnedIds": [], "supernodes": []}}'
        assert post("dallas", b'{"qParams": {"pinnedIds": 3}}') == 400  # bad qParams refused
        assert post("dallas", good, content_type="text/plain") == 415  # a cross-site form post
        (graph_dir / "features" / "notes.json").write_text("{}")
        assert post("features/notes", good) == 404  # only graph files directly in DIR
        assert post("graph-metadata", good) == 404
        (graph_dir / "not_a_graph.json").write_text('{"a": 1}')
        assert post("not_a_graph", good) == 404
        assert json.loads((graph_dir / "not_a_graph.json").read_text()) == {"a": 1}
        (graph_dir / "notes.txt").write_text("x")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "data/notes.txt")
        assert e.value.code == 404  # only JSON is served
        assert json.loads((graph_dir / "dallas.json").read_text())["qParams"]["pinnedIds"] == []
    finally:
        server.stop()
    with pytest.raises(FileNotFoundError):
        save_qparams(graph_dir, "../outside", {})


@pytest.fixture()
def browser():
    if not CHROMIUM or not Path(CHROMIUM).exists():
        if REQUIRED:
            pytest.fail("chromium is required here (SAE_LENS_CLT_REQUIRE_BROWSER) but not found")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_viewer_in_headless_chromium(graph_dir: Path, browser, tmp_path: Path) -> None:
    folder = tmp_path / "graphs"
    shutil.copytree(graph_dir, folder)
    server = start(folder, port=0)
    requests: list[str] = []
    problems: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(server.url + "?slug=dallas")
        page.wait_for_selector("#nodes .node")

        graph = json.loads((folder / "dallas.json").read_text())
        feature = min(
            (
                n
                for n in graph["nodes"]
                if n["feature_type"] == "cross layer transcoder" and n["clerp"]
            ),
            key=lambda n: n["influence"],
        )
        node_id = feature["node_id"]
        # a click on a node shows its label, its feature file and its strongest edges
        page.click(f'#nodes .node[data-id="{node_id}"] .mark')
        page.wait_for_selector("#contexts .context")
        assert page.inner_text("#detail-label") == feature["clerp"]
        assert "fires on" in page.inner_text("#density")
        assert page.locator(".promoted span").count() == 10
        assert page.locator(".link-list li").count() > 0
        # hovering an edge shows its weight
        edge = page.locator(".edge-hit").last
        weight = float(edge.get_attribute("data-weight"))
        edge.hover(force=True)
        assert f"{weight:.4g}"[:4] in page.inner_text("#tooltip")

        # pin two nodes, group them, and check the file
        other = next(n["node_id"] for n in graph["nodes"] if n["feature_type"] == "embedding")
        page.click(f'#nodes .node[data-id="{node_id}"] .mark', modifiers=["Shift"])
        page.click(f'#nodes .node[data-id="{other}"] .mark', modifiers=["Shift"])
        for box in page.locator("#pinned-list input").all():
            box.check()
        page.fill("#supernode-name", "Texas")
        page.click("#group-button")
        page.wait_for_function("document.getElementById('status').textContent === 'saved'")
        saved = json.loads((folder / "dallas.json").read_text())
        assert saved["qParams"]["pinnedIds"] == [node_id, other]
        assert saved["qParams"]["supernodes"] == [["Texas", node_id, other]]
        assert saved["qParams"]["clickedId"] == node_id
        assert saved["nodes"] == graph["nodes"] and saved["links"] == graph["links"]
        validate_graph_json(saved)
        from circuit_tracer.frontend.graph_models import Model

        Model(**saved)  # still a graph circuit-tracer's viewer reads

        # the pins survive a reload
        page.reload()
        page.wait_for_selector(f'#nodes .node.pinned[data-id="{node_id}"]')
        assert page.locator("#nodes .node.pinned").count() == 2
        assert "Texas" in page.inner_text("#supernode-list")
        assert page.inner_text("#detail-label") == feature["clerp"]  # clicked node restored

        # switch to the other graph
        page.select_option("#graph-select", "ohio")
        page.wait_for_function(
            f"document.getElementById('prompt').textContent === {json.dumps(PROMPTS['ohio'])}"
        )
        assert page.locator("#nodes .node.pinned").count() == 0
        page.screenshot(path=str(tmp_path / "viewer.png"))
    finally:
        server.stop()
    assert not problems, problems
    assert requests and all(u.startswith(server.url) for u in requests), requests
