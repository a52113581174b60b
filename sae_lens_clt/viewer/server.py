"""A local, offline HTTP server for the graph viewer.

Algorithm:

1. Bind to ``127.0.0.1`` (``host`` to change it) on ``port`` (0 picks a free one) and serve
   from three roots, nothing else:
   - ``/`` the viewer's own page, script and style, shipped in the package
     (``viewer/static``); no file is fetched from any other machine;
   - ``/data/<slug>.json`` and ``/graph_data/<slug>.json`` the graph JSON files of ``DIR``,
     and ``/data/graph-metadata.json`` their index (the index file when ``DIR`` has one,
     plus every graph JSON it does not list), the paths circuit-tracer's server uses;
   - ``/features/<scan>/<index>.json`` the feature files under ``DIR/features``
     (written by ``sae-lens-clt features``, circuit-tracer's feature-file layout), and
     ``/api/feature?scan=&index=`` the same file as ``{"feature": ...}``, ``null`` when
     there is none (so the page asks without a failed request).
2. Every path is resolved and refused unless it stays inside its root (no ``..``).
3. ``POST /save_graph/<slug>`` with ``{"qParams": {...}}`` replaces the graph's ``qParams``
   (pinned nodes, supernodes, clicked node) after checking them against the graph JSON
   schema, and writes the file atomically; the rest of the file is unchanged.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sae_lens_clt.attribution.export import GRAPH_JSON_SCHEMA, check_against_schema
from sae_lens_clt.formats.atomic import atomic_write_json

STATIC_DIR = Path(str(files("sae_lens_clt.viewer") / "static"))
INDEX_FILENAME = "graph-metadata.json"
FEATURES_DIRNAME = "features"
DEFAULT_PORT = 8041
MAX_POST_BYTES = 16 * 2**20  # a qParams body is small; refuse anything larger


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` when it stays inside ``root`` and is a file, else None."""
    path = (root / relative).resolve()
    root = root.resolve()
    if path != root and root not in path.parents:
        return None
    return path if path.is_file() else None


def _is_graph(data: Any) -> bool:
    return isinstance(data, dict) and {"metadata", "nodes", "links"} <= data.keys()


def list_graphs(folder: Path) -> list[dict[str, Any]]:
    """The index of the graphs in ``folder``: the index file's entries whose file exists,
    then every other graph JSON file (its ``metadata``), sorted by slug."""
    entries: dict[str, dict[str, Any]] = {}
    index = folder / INDEX_FILENAME
    if index.is_file():
        for entry in json.loads(index.read_text()).get("graphs", []):
            if (folder / f"{entry.get('slug')}.json").is_file():
                entries[entry["slug"]] = entry
    for path in sorted(folder.glob("*.json")):
        if path.name == INDEX_FILENAME or path.stem in entries:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _is_graph(data):
            entries[path.stem] = {**data["metadata"], "slug": path.stem}
    return [entries[slug] for slug in sorted(entries)]


def save_qparams(folder: Path, slug: str, qparams: Any) -> None:
    """Step 3: replace the ``qParams`` of the graph ``folder/<slug>.json``, atomically.

    Only a graph file directly in ``folder`` is written (never the index, a feature file or
    anything outside)."""
    path = _inside(folder, f"{slug}.json")
    if path is None or "/" in slug or "\\" in slug or path.name == INDEX_FILENAME:
        raise FileNotFoundError(f"no graph {slug!r} in {folder}")
    data = json.loads(path.read_text())
    if not _is_graph(data):
        raise FileNotFoundError(f"{path.name} in {folder} is not a graph JSON file")
    problems: list[str] = []
    check_against_schema(qparams, GRAPH_JSON_SCHEMA["properties"]["qParams"], "qParams", problems)
    if problems:
        raise ValueError("; ".join(problems))
    data["qParams"] = qparams
    atomic_write_json(path, data)


class ViewerHandler(SimpleHTTPRequestHandler):
    """Steps 1-3 for one request; ``folder`` is the graph folder."""

    folder: Path
    quiet = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(STATIC_DIR), **kwargs)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if not self.quiet:
            super().log_message(format, *args)

    def _send_body(self, body: bytes, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send_body(json.dumps(data).encode(), status)

    def _send_file(self, path: Path | None) -> None:
        """A JSON file (graphs and feature files are all the data there is), else 404."""
        if path is None or path.suffix != ".json":
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self._send_body(path.read_bytes())

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        route = unquote(url.path)
        if route == "/api/feature":
            query = parse_qs(url.query)
            scan, index = query.get("scan", [""])[0], query.get("index", [""])[0]
            path = _inside(self.folder / FEATURES_DIRNAME, f"{scan}/{index}.json")
            feature = json.loads(path.read_text()) if path and index.isdigit() else None
            self._send_json({"feature": feature})
            return
        for prefix in ("/data/", "/graph_data/"):
            if route.startswith(prefix):
                name = route[len(prefix) :]
                if name == INDEX_FILENAME:
                    self._send_json({"graphs": list_graphs(self.folder)})
                else:
                    self._send_file(_inside(self.folder, name))
                return
        if route.startswith("/features/"):
            name = route[len("/features/") :]
            self._send_file(_inside(self.folder / FEATURES_DIRNAME, name))
            return
        super().do_GET()

    def do_POST(self) -> None:
        route = unquote(urlsplit(self.path).path)
        if not route.startswith("/save_graph/"):
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        slug = route[len("/save_graph/") :].strip("/")
        # only the viewer's own fetch: a JSON body (other sites' pages cannot send one to
        # this server without a CORS preflight, which it never answers)
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._send_json({"error": "send application/json"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 <= length <= MAX_POST_BYTES:
                raise ValueError(f"Content-Length {length} is not in 0..{MAX_POST_BYTES}")
            payload = json.loads(self.rfile.read(length))
            save_qparams(self.folder, slug, payload["qParams"])
        except FileNotFoundError as e:
            self._send_json({"error": str(e)}, HTTPStatus.NOT_FOUND)
        except (ValueError, KeyError, TypeError) as e:
            self._send_json({"error": f"bad qParams: {e}"}, HTTPStatus.BAD_REQUEST)
        else:
            self._send_json({"saved": slug})


@dataclass
class RunningServer:
    """A server running in a background thread (:func:`start`)."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def make_server(
    folder: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, quiet: bool = True
) -> ThreadingHTTPServer:
    """The viewer's HTTP server for the graphs in ``folder`` (not yet serving)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of graph JSON files")
    handler = type("BoundViewerHandler", (ViewerHandler,), {"folder": folder, "quiet": quiet})
    return ThreadingHTTPServer((host, port), handler)


def start(folder: str | Path, **kwargs: Any) -> RunningServer:
    """Serve ``folder`` in a background thread; ``.url`` and ``.stop()`` on the result."""
    httpd = make_server(folder, **kwargs)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return RunningServer(httpd, thread)
