"""``cordsnet-cli web``: serve the browser app (``web/``) with a stepwise ONNX graph and its client manifest.

The page (``web/index.html``) runs the graph with onnxruntime-web, step by step, and reads everything
else it needs (protocol, preset normalisation, class names, the spontaneous state) from the client
manifest ``<artifact>.cordsnet.json`` that the exporter writes beside every artifact
(:mod:`cordsnet.artifact`); a manifest that belongs to another artifact is refused. The server:

* ``/`` and the page's own files: from ``web/`` of the source checkout;
* ``/vendor/ort/<file>``: onnxruntime-web's ``dist`` files from ``web/node_modules`` (``npm ci`` in web/);
* ``/model/manifest.json`` and ``/model/<artifact file>``: the served graph's manifest (the exporter's
  file, byte for byte) and the graph;
* every response carries the cross-origin isolation headers (COOP/COEP) that threaded WASM needs.

Without an ARTIFACT the bundled model's stepwise graph is exported (and verified) once into a cache
folder (``$CORDSNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/cordsnet``, else ``~/.cache/cordsnet``).

Torch is imported only to export the default graph on first use.
"""

from __future__ import annotations

import http.server
import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._io import file_sha256
from ..artifact import Manifest, check_manifest, manifest_path

__all__ = ["DEFAULT_PORT", "WEB_DIR", "cache_dir", "default_artifact", "load_manifest", "make_server",
           "serve_in_thread", "web_command"]

logger = logging.getLogger("cordsnet.web")

WEB_DIR = Path(__file__).resolve().parents[2] / "web"  # the page's static files (source checkout)
ORT_DIST = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"  # vendored by `npm ci` in web/
DEFAULT_PORT = 8765  # port of `cordsnet-cli web` unless --port is given (0: any free port)
# Cross-origin isolation (SharedArrayBuffer, hence WASM threads) and no caching of changing files.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
              ".json": "application/json", ".onnx": "application/octet-stream", ".html": "text/html",
              ".css": "text/css", ".png": "image/png", ".map": "application/json"}


# ------------------------------------------------------------------------------- manifest
def load_manifest(artifact: str | os.PathLike) -> Manifest:
    """The client manifest the exporter wrote beside `artifact`, checked to belong to its bytes.

    Raises:
        ValueError: there is no manifest beside the artifact, it is malformed, or it belongs to
            another artifact (its sha256 or size differs).
    """
    artifact = Path(artifact)
    if not manifest_path(artifact).is_file():
        raise ValueError(f"artifact: {str(artifact)!r} has no client manifest beside it "
                         f"({manifest_path(artifact).name}); export it with `cordsnet-cli export --graph stepwise`, "
                         "which writes both")
    manifest = check_manifest(artifact)
    assert manifest is not None
    return manifest


def _check_servable(manifest: Manifest, artifact: Path) -> None:
    fmt, graph = manifest.format, manifest.info.graph
    if fmt != "onnx" or graph != "stepwise":
        raise ValueError(f"artifact: the web app runs a stepwise ONNX graph, got {graph!r} ({fmt}) in "
                         f"{str(artifact)!r}; export one with `cordsnet-cli export --graph stepwise`")
    if manifest.info.dtype != "float32":
        raise ValueError(f"artifact: the web app runs float32 graphs, got dtype {manifest.info.dtype!r}")
    if any(c["role"] == "external-data" for c in manifest.companions):
        raise ValueError(f"artifact: {str(artifact)!r} keeps its weights in an external data file; the web app "
                         "loads single-file ONNX graphs")


# ----------------------------------------------------------------------------- default graph
def cache_dir() -> Path:
    """The folder the default graph is exported to (created on use)."""
    if os.environ.get("CORDSNET_CACHE_DIR"):
        return Path(os.environ["CORDSNET_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cordsnet"


def default_artifact(folder: str | os.PathLike | None = None) -> Path:
    """The bundled model's stepwise ONNX graph (and its manifest), exported and verified on first use.

    Args:
        folder: cache folder; default :func:`cache_dir` ``/ "web"``.

    Returns:
        Path of the ``.onnx`` file (named after the bundled weights' hash, so new weights export anew).
    """
    from ..checkpoint import default_checkpoint_path

    source = default_checkpoint_path()
    digest = file_sha256(source)
    folder = Path(folder) if folder is not None else cache_dir() / "web"
    path = folder / f"{source.name.split('.')[0]}-stepwise-{digest[:12]}.onnx"
    if path.is_file() and manifest_path(path).is_file():
        try:
            check_manifest(path)
            return path
        except ValueError as exc:  # a stale or damaged cache: export anew
            logger.warning("re-exporting the cached graph: %s", exc)
    folder.mkdir(parents=True, exist_ok=True)
    from ..checkpoint import load_checkpoint
    from ..export import export

    logger.info("exporting the bundled model's stepwise graph to %s (first use)", path)
    export(load_checkpoint(None), path, format="onnx", graph="stepwise", checkpoint_sha256=digest)  # + its manifest
    return path


# ------------------------------------------------------------------------------------ server
def _web_dir_ready() -> None:
    if not (WEB_DIR / "index.html").is_file():
        raise FileNotFoundError(f"web: the page's files are not at {str(WEB_DIR)!r} (run from a source checkout)")
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        raise FileNotFoundError(f"web: onnxruntime-web is not installed in {str(ORT_DIST.parent)!r}; "
                                f"run `npm ci` in {str(WEB_DIR)!r}")


def make_server(artifact: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT
                ) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the page and `artifact` (call ``serve_forever``; port 0 picks a free one).

    Raises:
        ValueError: the artifact is not a float32 stepwise ONNX graph, or its manifest is another's.
        FileNotFoundError: web/ or its onnxruntime-web files are missing.
    """
    artifact = Path(artifact)
    manifest = load_manifest(artifact)  # the user's input first, then the installation
    _check_servable(manifest, artifact)
    _web_dir_ready()
    routes: dict[str, tuple[Path | bytes, str]] = {  # the manifest as the exporter wrote it, and its artifact
        "/model/manifest.json": (manifest.path.read_bytes(), "application/json"),
        f"/model/{manifest.file}": (artifact, "application/octet-stream"),
    }

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(WEB_DIR), **kwargs)

        def end_headers(self) -> None:
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
            super().end_headers()

        def guess_type(self, path: Any) -> str:
            return MIME_TYPES.get(Path(str(path)).suffix.lower()) or super().guess_type(path)

        def send_head(self) -> Any:
            route = self.path.split("?", 1)[0].split("#", 1)[0]
            if route in routes:
                body, ctype = routes[route]
                data = body if isinstance(body, bytes) else body.read_bytes()
                return self._bytes(data, ctype)
            if route.startswith("/vendor/ort/"):
                name = route[len("/vendor/ort/"):]
                target = ORT_DIST / name
                if "/" in name or name.startswith(".") or not target.is_file():
                    self.send_error(404, "no such onnxruntime-web file")
                    return None
                return self._bytes(target.read_bytes(), self.guess_type(target))
            if route.startswith(("/node_modules", "/model/")):
                self.send_error(404)
                return None
            return super().send_head()

        def _bytes(self, data: bytes, ctype: str) -> Any:
            import io

            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return io.BytesIO(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            logger.debug("%s - %s", self.address_string(), format % args)

    return http.server.ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(artifact: str | os.PathLike, host: str = "127.0.0.1", port: int = 0
                    ) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start :func:`make_server` in a daemon thread; returns (server, base URL). Stop with ``shutdown()``."""
    server = make_server(artifact, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}/"


# ---------------------------------------------------------------------------------------- CLI
def web_command(
    artifact: Annotated[Optional[Path], typer.Argument(
        exists=True, dir_okay=False,
        help="A stepwise ONNX graph (float32); default: the bundled model's, exported to a cache folder on first use.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = DEFAULT_PORT,
) -> None:
    """Serve the browser app: the stepwise graph runs in the page (onnxruntime-web), step by step."""
    if artifact is None:
        from rich.console import Console

        with Console(stderr=True).status("exporting the bundled model's stepwise graph (first use)"):
            artifact = default_artifact()
    server = make_server(artifact, host, port)
    h, p = server.server_address[:2]
    typer.echo(f"serving {artifact} at http://{h}:{p}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
