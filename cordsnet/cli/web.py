"""``cordsnet-cli web``: serve the browser app with a stepwise ONNX graph and its client manifest.

The page (``web/index.html`` in the source tree, installed as the package data ``cordsnet.webapp``) runs
the graph with onnxruntime-web, step by step, and reads everything else it needs (protocol, preset
normalisation, class names, the spontaneous state, the decision rule's baseline) from the client
manifest ``<artifact>.cordsnet.json`` that the exporter writes beside every artifact
(:mod:`cordsnet.artifact`); a manifest that belongs to another artifact is refused. The server answers
an allow-list and nothing else:

* ``/`` and the page's own files (:data:`APP_FILES`);
* ``/vendor/ort/<file>``: onnxruntime-web's files, vendored in the package (``web/vendor/ort``, pinned in
  ``web/package.json``, written by ``tools/vendor-ort.sh``, with their licence): no npm, no network;
* ``/model/manifest.json`` and ``/model/<artifact file>``: the served graph's manifest (the exporter's
  file, byte for byte) and the graph;
* every response carries the cross-origin isolation headers (COOP/COEP) that threaded WASM needs.

Without an ARTIFACT the bundled model's stepwise graph, shipped in the package
(``cordsnet/weights/digits_r4-stepwise.onnx``), is served: no torch needed.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import socket
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._io import cache_dir, file_sha256, forget_input
from ..artifact import GRAPH_KINDS, Manifest, check_manifest, manifest_path

__all__ = ["APP_FILES", "DEFAULT_PORT", "ORT_DIST", "WEB_DIR", "cache_dir", "connection_limits", "default_artifact",
           "load_manifest", "make_server", "serve_in_thread", "web_command", "web_dir"]

logger = logging.getLogger("cordsnet.web")


def web_dir() -> Path:
    """The browser app's folder: the package data ``cordsnet.webapp`` (``web/`` of the source tree)."""
    try:
        return Path(str(resources.files("cordsnet.webapp")))
    except ModuleNotFoundError:  # run from a source tree that is not installed (PYTHONPATH=.)
        return Path(__file__).resolve().parents[2] / "web"


WEB_DIR = web_dir()  # the page's static files
ORT_DIST = WEB_DIR / "vendor" / "ort"  # onnxruntime-web's files, vendored (tools/vendor-ort.sh)
# The page's own files: the only paths of WEB_DIR the server hands out (besides ORT_DIST's files).
APP_FILES = ("index.html", "app.mjs", "cordsnet.mjs", "style.css", "digits.json")
DEFAULT_PORT = 8765  # port of `cordsnet-cli web` unless --port is given (0: any free port)
# The graph kind the page runs (one Euler step from the image, no companion graph), from the kinds' entries.
WEB_GRAPH = next(k.name for k in GRAPH_KINDS.values() if k.exported and k.image_step)
IDLE_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed
HEADER_TIMEOUT_S = 10.0  # a request's line and headers must arrive within this long of its first byte
LISTEN_BACKLOG = 128  # pending connections the socket queues
MAX_CONNECTIONS = 64  # connections served at once (one thread each); more wait in the backlog
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
    if fmt != "onnx" or not GRAPH_KINDS[graph].image_step:
        raise ValueError(f"artifact: the web app runs a stepwise ONNX graph, got {graph!r} ({fmt}) in "
                         f"{str(artifact)!r}; export one with `cordsnet-cli export --graph stepwise`")
    if manifest.info.dtype != "float32":
        raise ValueError(f"artifact: the web app runs float32 graphs, got dtype {manifest.info.dtype!r}")
    if any(c["role"] == "external-data" for c in manifest.companions):
        raise ValueError(f"artifact: {str(artifact)!r} keeps its weights in an external data file; the web app "
                         "loads single-file ONNX graphs")


# ----------------------------------------------------------------------------- default graph
def default_artifact(folder: str | os.PathLike | None = None) -> Path:
    """The bundled model's stepwise ONNX graph (with its manifest).

    Args:
        folder: None: the graph shipped in the package (no torch needed). A folder: export the bundled
            model's stepwise graph there (verified; needs the ``torch`` extra), reusing an earlier export of
            the same weights and exporter whose manifest still checks.

    Returns:
        Path of the ``.onnx`` file.
    """
    from ..weights import BUNDLED_STEPWISE

    if folder is None:  # checked where it is used (make_server checks the graph against its manifest once)
        return Path(str(resources.files("cordsnet.weights").joinpath(BUNDLED_STEPWISE)))
    from ..extras import require

    require("torch", "exporting the bundled model's stepwise graph")
    from ..checkpoint import default_checkpoint_path

    source = default_checkpoint_path()
    digest = file_sha256(source)
    folder = Path(folder)
    path = folder / f"{source.name.split('.')[0]}-stepwise-{digest[:12]}.onnx"
    if path.is_file() and manifest_path(path).is_file():
        try:
            manifest = check_manifest(path)
            if manifest is not None and manifest.decision is not None:  # an export of the current format
                return path
            logger.info("re-exporting the cached graph: its manifest predates the decision rule")
        except ValueError as exc:  # a stale or damaged cache: export anew
            logger.warning("re-exporting the cached graph: %s", exc)
    for stale in (path, manifest_path(path)):  # the cache's own files, rewritten by design
        forget_input(stale)
    folder.mkdir(parents=True, exist_ok=True)
    from ..checkpoint import load_checkpoint
    from ..export import export

    logger.info("exporting the bundled model's stepwise graph to %s", path)
    export(load_checkpoint(None), path, format="onnx", graph=WEB_GRAPH, checkpoint_sha256=digest)  # + its manifest
    return path


# ------------------------------------------------------------------------------------ server
def _web_dir_ready() -> None:
    missing = [name for name in APP_FILES if not (WEB_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(f"web: the page's files {missing} are not in {str(WEB_DIR)!r} (a broken installation: "
                                "reinstall cordsnet)")
    if not (ORT_DIST / "ort.wasm.min.mjs").is_file():
        raise FileNotFoundError(f"web: onnxruntime-web's files are not in {str(ORT_DIST)!r} (a source checkout "
                                "without them: run `bash tools/vendor-ort.sh`)")


def routes(graph: bytes, manifest: Manifest) -> dict[str, tuple[Path | bytes, str]]:
    """The allow-list the server answers: URL path -> (file or bytes, content type); nothing else exists.

    The page's :data:`APP_FILES`, the vendored onnxruntime-web files (regular files only, no dotfiles), the
    manifest as the exporter wrote it and the graph's checked bytes. A path outside this table (a directory, a dotfile,
    ``package.json``, an encoded or ``..`` path, a symlink) is a 404.
    """
    table: dict[str, tuple[Path | bytes, str]] = {"/": (WEB_DIR / "index.html", MIME_TYPES[".html"])}
    for name in APP_FILES:
        table[f"/{name}"] = (WEB_DIR / name, _mime(name))
    for entry in sorted(ORT_DIST.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_file():
            continue
        table[f"/vendor/ort/{entry.name}"] = (entry, _mime(entry.name))
    table["/model/manifest.json"] = (manifest.path.read_bytes(), MIME_TYPES[".json"])
    table[f"/model/{manifest.file}"] = (graph, MIME_TYPES[".onnx"])
    return table


def _mime(name: str) -> str:
    return MIME_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def connection_limits(idle_timeout: Any, max_connections: Any, header_timeout: Any = None, *,
                      names: tuple[str, str, str] = ("idle_timeout", "max_connections", "header_timeout")
                      ) -> tuple[float, int, float]:
    """The server's connection limits, checked: timeouts > 0 seconds and at least one connection.

    Args:
        idle_timeout: seconds a connection may stay silent (and a waiting one may wait for a slot).
        max_connections: connections served at once.
        header_timeout: seconds a request's line and headers may take to arrive in full, counted from its
            first byte (None: :data:`HEADER_TIMEOUT_S` or `idle_timeout`, the smaller).
        names: the three arguments' names as the caller knows them (the CLI's options, the library's keywords).

    Returns:
        (idle_timeout, max_connections, header_timeout) as float, int and float.

    Raises:
        ValueError: any is out of range or of the wrong kind, naming it.
    """
    from .. import validate

    idle = validate.number(names[0], idle_timeout, low=0.0, low_open=True)
    header = min(HEADER_TIMEOUT_S, idle) if header_timeout is None else \
        validate.number(names[2], header_timeout, low=0.0, low_open=True)
    return idle, validate.positive_int(names[1], max_connections), header


class _HeaderDeadline(io.RawIOBase):
    """A connection's reading side whose every read waits at most until the current request's deadline.

    Each ``recv`` gets the socket timeout shrunk to the time left, so a client that trickles bytes (a header
    line every few seconds, a byte at a time) is cut off at the deadline, not merely after a silent gap.
    Every read's end restores the idle timeout, which writes keep; ``deadline = None`` gives reads the idle
    timeout again (the wait for a request's first byte).
    """

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        super().__init__()
        self._sock, self._idle = sock, idle_timeout
        self.deadline: float | None = None  # time.monotonic() by which the request's head must be in

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self._idle
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request's line and headers did not arrive in time")
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._idle)


def make_server(artifact: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                idle_timeout: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                header_timeout: float | None = None) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the page and `artifact` (call ``serve_forever``; port 0 picks a free one).

    It answers GET and HEAD for the paths of :func:`routes` only; a connection that sends nothing for
    `idle_timeout` seconds is closed, at most `max_connections` are served at once (one thread each; the
    next ones wait in the listen backlog of :data:`LISTEN_BACKLOG`, and one that waits longer than
    `idle_timeout` for a slot is closed), so no number of clients exhausts the threads. A request's line and
    headers must arrive in full within `header_timeout` seconds of its first byte (None: :data:`HEADER_TIMEOUT_S`
    or `idle_timeout`, the smaller), however the client trickles them; the connection is closed otherwise. A
    request line without an HTTP version (HTTP/0.9) is answered 505 at once and the connection closed.

    Raises:
        ValueError: the artifact is not a float32 stepwise ONNX graph, or its manifest is another's.
        FileNotFoundError: the page's files or its onnxruntime-web files are missing.
    """
    idle_timeout, max_connections, header_timeout = connection_limits(idle_timeout, max_connections, header_timeout)
    artifact = Path(artifact)
    manifest = load_manifest(artifact)  # the user's input first, then the installation
    _check_servable(manifest, artifact)
    from ..runtime.reference import check_decision

    check_decision(artifact, manifest)  # the page decides with the manifest's baseline: it must be the graph's
    _web_dir_ready()
    # The checked bytes, not whatever the path holds later: a file swapped after the check is never served.
    graph = artifact.read_bytes()
    if hashlib.sha256(graph).hexdigest() != manifest.sha256:
        raise ValueError(f"artifact: {str(artifact)!r} changed while it was checked; start the server again")
    table = routes(graph, manifest)

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = idle_timeout  # socket timeout: a silent or half-sent request does not hold a thread
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # the plain reader's hold on the socket, replaced by the deadline's reader
            self._reader = _HeaderDeadline(self.connection, idle_timeout)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            # The first byte of a request may take the idle timeout (the wait between keep-alive requests);
            # from it on, its line and headers have `header_timeout` in all.
            self._reader.deadline = None
            try:
                if self.rfile.peek(1):
                    self._reader.deadline = time.monotonic() + header_timeout
            except TimeoutError:
                self.close_connection = True
                return
            super().handle_one_request()

        def parse_request(self) -> bool:
            line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")  # decoded as the base class does
            if len(line.split()) == 2:  # no version: an HTTP/0.9 request, whose headers would never come
                self.requestline, self.command, self.close_connection = line, None, True
                self.request_version = self.protocol_version  # so the refusal carries a status line and headers
                self.send_error(505, explain="HTTP/0.9 requests are not served: send an HTTP/1.x request line")
                return False
            try:
                return super().parse_request()  # reads the headers, against the deadline
            finally:
                self._reader.deadline = None  # the response and what follows: the idle timeout again

        def do_GET(self) -> None:  # noqa: N802 (the base class's name)
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            route = self.path.split("?", 1)[0].split("#", 1)[0]
            if route not in table:
                self.send_error(404)
                return
            source, ctype = table[route]
            data = source if isinstance(source, bytes) else source.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            logger.debug("%s - %s", self.address_string(), format % args)

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = LISTEN_BACKLOG
        slots = threading.BoundedSemaphore(max_connections)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(timeout=idle_timeout):  # every slot busy for a whole idle period
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self.slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    return Server((host, port), Handler)



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
        help="A stepwise ONNX graph (float32) with its manifest beside it; default: the bundled model's (shipped).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = DEFAULT_PORT,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", metavar="SECONDS",
        help="Close a connection that sends nothing for this long; a connection waiting this long for a free "
             "slot is closed too (> 0).")] = IDLE_TIMEOUT_S,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", metavar="N",
        help=f"Connections served at once, one thread each (>= 1); more wait in the listen backlog "
             f"({LISTEN_BACKLOG}).")] = MAX_CONNECTIONS,
    header_timeout: Annotated[Optional[float], typer.Option(
        "--header-timeout", metavar="SECONDS", show_default=False,
        help=f"Close a connection whose request line and headers have not all arrived this long after the "
             f"request's first byte, however they trickle in (> 0; default: {HEADER_TIMEOUT_S:g} or the idle "
             f"timeout, the smaller).")] = None,
) -> None:
    """Serve the browser app: the stepwise graph runs in the page (onnxruntime-web), step by step."""
    idle_timeout, max_connections, header_timeout = connection_limits(
        idle_timeout, max_connections, header_timeout, names=("--idle-timeout", "--max-connections", "--header-timeout"))
    if artifact is None:
        artifact = default_artifact()
    server = make_server(artifact, host, port, idle_timeout=idle_timeout, max_connections=max_connections,
                         header_timeout=header_timeout)
    h, p = server.server_address[:2]
    typer.echo(f"serving {artifact} at http://{h}:{p}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
