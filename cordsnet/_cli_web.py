"""``cordsnet-cli web``: serve the browser app (``web/``) with a stepwise ONNX graph and its client manifest.

The page (``web/index.html``) runs the graph with onnxruntime-web, step by step, and reads everything
else it needs (protocol, preset normalisation, class names, the spontaneous state) from the client
manifest ``<artifact>.cordsnet.json``. The server:

* ``/`` and the page's own files: from ``web/`` of the source checkout;
* ``/vendor/ort/<file>``: onnxruntime-web's ``dist`` files from ``web/node_modules`` (``npm ci`` in web/);
* ``/model/manifest.json`` and ``/model/<artifact file>``: the served graph and its manifest;
* every response carries the cross-origin isolation headers (COOP/COEP) that threaded WASM needs.

Without an ARTIFACT the bundled model's stepwise graph is exported (and verified) once into a cache
folder (``$CORDSNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/cordsnet``, else ``~/.cache/cordsnet``).

Torch is imported only to export the default graph on first use.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from . import __version__
from ._io import atomic_path, file_sha256

__all__ = ["DEFAULT_PORT", "MANIFEST_SUFFIX", "WEB_DIR", "cache_dir", "default_artifact", "load_manifest",
           "manifest_path", "make_server", "register", "standin_manifest"]

logger = logging.getLogger("cordsnet.web")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the page's static files (source checkout)
ORT_DIST = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"  # vendored by `npm ci` in web/
MANIFEST_SUFFIX = ".cordsnet.json"  # <artifact file name> + this suffix: the client manifest
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
def manifest_path(artifact: str | os.PathLike) -> Path:
    """Where the client manifest of `artifact` lives: ``<artifact file name>.cordsnet.json`` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def standin_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    """STAND-IN client manifest of an exported artifact, built from its ``cordsnet.*`` metadata.

    This follows the schema agreed in the project brief (issue 12) field by field. It stands in for
    the artifact contract module's manifest writer until that lands; the lead replaces this function
    with that writer at merge (``load_manifest`` then only reads the file the exporter wrote).

    Args:
        artifact: an exported graph (.onnx, .pt, .pt2) carrying cordsnet metadata.

    Returns:
        The manifest as a JSON-ready dict.
    """
    from .export.metadata import artifact_format, decode_spontaneous_state, encode_path, parse_metadata, \
        read_metadata

    artifact = Path(artifact)
    meta = read_metadata(artifact)
    info = parse_metadata(meta)
    spont = decode_spontaneous_state(meta)
    cfg, preset = info["config"], info["preset"]
    batch = None if info["batch"] == "dynamic" else int(info["batch"])
    b: Any = "batch" if batch is None else batch
    k, c, s = cfg["num_classes"], cfg["in_channels"], cfg["image_size"]
    drive = [b, 64, s // 4, s // 4]
    shapes: dict[str, list[Any]] = {"image": [b, c, s, s], "skip": drive, "ff0": drive, "steps": [],
                                    "logits": [info["steps"], b, k] if info["readout"] == "all" else [b, k]}
    for i, r in enumerate(spont):
        shapes[f"state_{i}"] = shapes[f"next_state_{i}"] = [b, *r.shape[1:]]
        shapes[f"rates_{i}"] = [info["steps"], b, *r.shape[1:]]
    dtype = info["dtype"]

    def io(name: str) -> dict[str, Any]:
        return {"name": name, "shape": shapes[name], "dtype": "int64" if name == "steps" else dtype}

    companions = []
    if info["graph"] == "stepwise-drive":
        enc = encode_path(artifact)
        companions.append({"role": "encode", "file": enc.name, "sha256": file_sha256(enc)})
    return {
        "cordsnet_manifest": 1,
        "format_version": info["format_version"],
        "cordsnet_version": info["version"] or __version__,
        "artifact": {"file": artifact.name, "format": artifact_format(artifact), "sha256": file_sha256(artifact),
                     "size_bytes": artifact.stat().st_size},
        "companions": companions,
        "graph": info["graph"],
        "config": cfg,
        "protocol": {"steps": info["steps"], "spontaneous_steps": info["spontaneous_steps"], "alpha": info["alpha"],
                     "dt_ms": info["alpha"] * 10.0, "readout": info["readout"], "record": info["record"]},
        "dtype": dtype,
        "batch": batch,
        "inputs": [io(n) for n in info["inputs"]],
        "outputs": [io(n) for n in info["outputs"]],
        "preset": preset,
        "spontaneous_state": {
            "encoding": "base64-float32-le",
            "areas": [{"shape": list(r.shape),
                       "data": base64.b64encode(np.ascontiguousarray(r, dtype="<f4").tobytes()).decode("ascii")}
                      for r in spont],
        },
        "checkpoint_sha256": info["checkpoint_sha256"],
        "state_dict_sha256": info["state_dict_sha256"],
    }


def load_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    """The client manifest of `artifact`: the file beside it, else the stand-in built from its metadata.

    Raises:
        ValueError: the manifest file is malformed or belongs to another artifact (sha256 differs).
    """
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not path.is_file():
        return standin_manifest(artifact)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        want = manifest["artifact"]["sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"manifest: {str(path)!r} is not a cordsnet client manifest ({exc})") from None
    got = file_sha256(artifact)
    if want != got:
        raise ValueError(f"manifest: {str(path)!r} belongs to another artifact (sha256 {want[:12]}..., "
                         f"expected {got[:12]}... of {artifact.name})")
    return manifest


def _check_servable(manifest: dict[str, Any], artifact: Path) -> None:
    fmt, graph = manifest["artifact"]["format"], manifest["graph"]
    if fmt != "onnx" or graph != "stepwise":
        raise ValueError(f"artifact: the web app runs a stepwise ONNX graph, got {graph!r} ({fmt}) in "
                         f"{str(artifact)!r}; export one with `cordsnet-cli export --graph stepwise`")
    if manifest["dtype"] != "float32":
        raise ValueError(f"artifact: the web app runs float32 graphs, got dtype {manifest['dtype']!r}")


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
    from .checkpoint import default_checkpoint_path

    source = default_checkpoint_path()
    digest = file_sha256(source)
    folder = Path(folder) if folder is not None else cache_dir() / "web"
    path = folder / f"{source.name.split('.')[0]}-stepwise-{digest[:12]}.onnx"
    if path.is_file() and manifest_path(path).is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    from .checkpoint import load_checkpoint
    from .export import export

    logger.info("exporting the bundled model's stepwise graph to %s (first use)", path)
    export(load_checkpoint(None), path, format="onnx", graph="stepwise", checkpoint_sha256=digest)
    if not manifest_path(path).is_file():  # the exporter writes it once the artifact module lands
        with atomic_path(manifest_path(path)) as tmp:
            tmp.write_text(json.dumps(standin_manifest(path)), encoding="utf-8")
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
    _web_dir_ready()
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    _check_servable(manifest, artifact)
    manifest_bytes = json.dumps(manifest).encode("utf-8")
    routes: dict[str, tuple[Path | bytes, str]] = {
        "/model/manifest.json": (manifest_bytes, "application/json"),
        f"/model/{manifest['artifact']['file']}": (artifact, "application/octet-stream"),
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


def register(app: typer.Typer) -> None:
    """Add the ``web`` command to the CLI `app`."""
    app.command("web")(web_command)
