"""Reading an artifact's metadata from its file, bounded and checked (:func:`read_metadata`, :func:`read_info`).

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.

ExecuTorch programs are loaded by :func:`load_pte_program` and nothing else (the metadata reader, the
runtime's :class:`~cordsnet.runtime.executorch.PteStepSession`, the exporter's verification, hence
``info``, ``verify``, ``predict``). The native runtime aborts the process (SIGABRT) on some
structure-valid but hostile programs (an operator name that is not UTF-8, for one), which no Python
``try`` catches. So bytes this toolkit has not seen load safely are first loaded, program and every
method's plan, in a child process; a child that dies by a signal or fails refuses the program with one
line (ValueError). Bytes that loaded safely there, and the programs the exporter writes, are remembered by
sha256 (with the ExecuTorch version) in ``<cache dir>/pte-screened.json`` (:data:`PTE_SCREENED_MAX`
entries, the oldest dropped; written atomically), so later opens of the same bytes skip the child.
``CORDSNET_PTE_SCREEN=0`` turns the child off (trusted programs, a system without ``fork``/``exec``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from .. import validate
from .._io import atomic_path, cache_dir, check_regular, open_regular, output_lock, read_json_file
from .formats import FORMATS, artifact_format, manifest_path
from .info import ArtifactInfo, _load_manifest_json, _loads, _manifest_to_metadata
from .kinds import EXTRA_FILE, MAX_METADATA_BYTES, PREFIX, PTE_METADATA_METHOD

logger = logging.getLogger("cordsnet.artifact")

# ------------------------------------------------------------------------------------ reading
# The largest file each format can be: protobuf parses no message over 2 GiB (larger weights go to the
# external data file); the others hold one model's weights (4 GiB leaves room over CordsNet-R8).
MAX_ARTIFACT_BYTES: dict[str, int] = {"onnx": (2 << 30) - 1, "torchscript": 4 << 30, "exported-program": 4 << 30,
                                      "executorch": 4 << 30}
PTE_IDENTIFIER = re.compile(rb"ET[0-9]{2}")  # the flatbuffer file identifier at bytes 4..8 ("ET12")
PTE_EXTENDED_HEADER = b"eh00"  # optional header at bytes 8..12: its length, program and segment sizes


def check_pte_file(path: str | os.PathLike) -> None:
    """Refuse bytes that are not an ExecuTorch program before the native runtime sees them.

    The runtime aborts the interpreter (SIGABRT) on some malformed headers instead of raising; with the
    flatbuffer's identifier, root offset and extended header checked here, the runtime's own verifier
    (``Verification.InternalConsistency``) rejects most of the rest with a Python error, and
    :func:`load_pte_program` loads what this toolkit has not seen load safely in a child process first.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, too large, or not an ExecuTorch flatbuffer (one line).
    """
    path = Path(path)
    size = check_regular(path, "model", MAX_ARTIFACT_BYTES["executorch"])
    with open_regular(path, "model", MAX_ARTIFACT_BYTES["executorch"]) as f:
        head = f.read(64)
    _check_pte_header(path, head, size)


def _check_pte_header(path: Path, head: bytes, size: int) -> None:
    """:func:`check_pte_file` of the first 64 bytes `head` of a `size`-byte program."""
    why = None
    if len(head) < 16:
        why = f"{len(head)} bytes, too short"
    elif not PTE_IDENTIFIER.fullmatch(head[4:8]):
        why = f"no ExecuTorch file identifier at bytes 4..8 (found {head[4:8]!r})"
    else:
        root = struct.unpack_from("<I", head, 0)[0]
        if not 8 <= root <= size - 4:
            why = f"its root table offset {root} lies outside the file ({size} bytes)"
        elif head[8:12] == PTE_EXTENDED_HEADER:
            if len(head) < 40:
                why = "its extended header is truncated"
            else:
                length, program, base, data = struct.unpack_from("<IQQQ", head, 12)
                if length < 32 or program > size or base > size or data > size - min(base, size) or \
                        (data and base < program):
                    why = (f"its extended header claims sizes beyond the file (program {program}, segments "
                           f"{base}+{data}, file {size} bytes)")
    if why is not None:
        raise ValueError(f"model: {str(path)!r} is not an ExecuTorch program: {why}")


# ------------------------------------------------------------------------- loading .pte programs
PTE_SCREEN_ENV = "CORDSNET_PTE_SCREEN"  # "0": load .pte programs in this process without the child
PTE_SCREENED_FILE = "pte-screened.json"  # in cache_dir(): the sha256 of bytes known to load safely
PTE_SCREENED_FORMAT = "cordsnet.pte-screened/1"
PTE_SCREENED_MAX = 1024  # digests kept (about 70 kB); the oldest are dropped
PTE_SCREEN_TIMEOUT_S = 600.0  # a child that has not loaded the program by then refuses it
SHA256_HEX = re.compile(r"[0-9a-f]{64}")  # a digest in the record
# The child: load the program from stdin and every method's plan (what info, verify and the sessions load),
# and run the metadata method as the reader does. It imports nothing of cordsnet, and calls the native module
# that executorch.runtime wraps (with the same verification) directly: that skips executorch.runtime's import
# of torch (about 1 s instead of 10 here); where that module's interface differs, executorch.runtime itself.
_PTE_CHILD = f"""
import sys
data = sys.stdin.buffer.read()
try:
    from executorch.extension.pybindings._C import Verification, _load_program_from_buffer
    program = _load_program_from_buffer(data, enable_etdump=False, debug_buffer_size=0, data_path=None,
                                        program_verification=Verification.InternalConsistency)
    names = [program.get_method_name(i) for i in range(program.num_methods())]
    call = lambda method: method.call([])
except (ImportError, TypeError, AttributeError):  # another executorch layout: its public runtime (imports torch)
    import logging
    logging.disable(logging.CRITICAL)
    from executorch.runtime import Runtime
    program = Runtime.get().load_program(data)
    names, call = sorted(program.method_names), lambda method: method.execute([])
for name in names:
    method = program.load_method(name)
    if name == {PTE_METADATA_METHOD!r}:
        call(method)
"""
_screened_here: set[str] = set()  # digests this process has screened or written (also when the record is not writable)
_record_lock = threading.Lock()


def load_pte_program(path: str | os.PathLike) -> Any:
    """The ``executorch.runtime`` Program of `path`, loaded in this process only once it cannot abort it.

    The bytes are read once: checked (:func:`check_pte_file`), hashed, screened in a child process unless
    this toolkit has seen them load safely (see the module docstring), then loaded from memory, so a file
    swapped meanwhile is never the one loaded. The Program holds those bytes and its methods do not: keep
    it referenced for as long as a method of it runs.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ExecuTorch program, or one that killed (or failed in) the screening child.
        ImportError: executorch is not installed.
    """
    path = Path(path)
    with open_regular(path, "model", MAX_ARTIFACT_BYTES["executorch"]) as f:
        data = f.read()
    _check_pte_header(path, data[:64], len(data))
    from executorch.runtime import Runtime

    from .._quiet import native_stderr_captured

    digest = hashlib.sha256(data).hexdigest()
    if os.environ.get(PTE_SCREEN_ENV, "1") != "0" and not _known_safe(digest):
        _screen_pte(path, data)
        remember_safe_pte(digest)
    try:
        with native_stderr_captured():  # the runtime's native start-up lines (fd 2, not ours)
            return Runtime.get().load_program(data)
    except Exception as exc:  # the runtime raises RuntimeError for a bad flatbuffer
        first = " ".join(str(exc).split())[:200]
        raise ValueError(f"model: {str(path)!r} is not a loadable ExecuTorch program: {first}") from None


def _screen_pte(path: Path, data: bytes) -> None:
    """Load `data` (program and every method) in a child process; ValueError naming `path` if it dies or fails."""
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, "-c", _PTE_CHILD], input=data, capture_output=True,
                             timeout=PTE_SCREEN_TIMEOUT_S, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise ValueError(f"model: {str(path)!r} did not load within {PTE_SCREEN_TIMEOUT_S:g} s in a screening "
                         f"process; refused ({PTE_SCREEN_ENV}=0 loads it here unscreened)") from None
    logger.debug("screened %s in a child process in %.2f s (exit status %d)", path, time.perf_counter() - t0,
                res.returncode)
    if res.returncode < 0:
        try:
            name = signal.Signals(-res.returncode).name
        except ValueError:
            name = f"signal {-res.returncode}"
        raise ValueError(f"model: {str(path)!r} killed the ExecuTorch runtime ({name}) when a screening process "
                         "loaded it; refused (a malformed or hostile program)")
    if res.returncode != 0:
        lines = [line for line in res.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        last = " ".join((lines[-1] if lines else f"exit status {res.returncode}").split())[:200]
        raise ValueError(f"model: {str(path)!r} is not a loadable ExecuTorch program: {last}")


def _executorch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:  # a source build without package metadata
        return "unknown"


def _record_path() -> Path:
    return cache_dir() / PTE_SCREENED_FILE


def _read_record() -> list[str]:
    """The digests of the record (of this ExecuTorch version); [] when it is missing, damaged or another's."""
    path = _record_path()
    if not path.is_file():
        return []
    try:
        data = read_json_file(path, "pte record", max_bytes=PTE_SCREENED_MAX * 80 + 1024)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring the screened-program record: %s", exc)
        return []
    if not isinstance(data, dict) or data.get("format") != PTE_SCREENED_FORMAT \
            or data.get("executorch") != _executorch_version() or not isinstance(data.get("sha256"), list):
        return []
    return [d for d in data["sha256"] if isinstance(d, str) and SHA256_HEX.fullmatch(d)]


def _known_safe(digest: str) -> bool:
    return digest in _screened_here or digest in _read_record()


def remember_safe_pte(digest: str) -> None:
    """Record the sha256 `digest` of a program that loads safely (screened, or written by the exporter).

    Kept in this process in any case; in ``<cache dir>/pte-screened.json`` too when it is writable and no
    other process is writing it (a record lost that way only costs one more screening).
    """
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise ValueError(f"digest: expected the hex sha256 of a program (64 lowercase hex digits), got {digest!r}")
    with _record_lock:
        _screened_here.add(digest)
        path = _record_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with output_lock(path, "pte record"):
                digests = [d for d in _read_record() if d != digest] + [digest]
                text = json.dumps({"format": PTE_SCREENED_FORMAT, "executorch": _executorch_version(),
                                   "sha256": digests[-PTE_SCREENED_MAX:]}, indent=0)
                with atomic_path(path) as tmp:
                    tmp.write_text(text + "\n", encoding="ascii")
        except (OSError, ValueError) as exc:  # a read-only cache, or another process writing it
            logger.debug("the screened-program record was not updated: %s", exc)


def _read_onnx(path: Path) -> tuple[dict[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]]:
    """(cordsnet.* map, (inputs, outputs, {"ir_version", "opset"})) of an ONNX file, without loading
    external data or a session (one parse serves every reader)."""
    import onnx

    try:
        with open_regular(path, "model", MAX_ARTIFACT_BYTES["onnx"]) as f:
            proto = onnx.load_model_from_string(f.read())  # external data is never loaded from bytes
    except Exception as exc:  # protobuf raises its own DecodeError, onnx its own errors
        first = " ".join(str(exc).split())[:200]
        raise ValueError(f"model: {str(path)!r} is not a readable ONNX file (truncated, corrupt or not ONNX): "
                         f"{first}") from None
    meta = {p.key: p.value for p in proto.metadata_props if p.key.startswith(PREFIX)}
    versions = {"ir_version": int(proto.ir_version),
                "opset": {op.domain or "ai.onnx": int(op.version) for op in proto.opset_import}}
    return meta, ([_value_info(v) for v in proto.graph.input], [_value_info(v) for v in proto.graph.output], versions)


def _value_info(v: Any) -> dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else (int(d.dim_value) if d.HasField("dim_value") else None)
            for d in t.shape.dim]
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
    except Exception:  # an element type numpy lacks
        dtype = f"onnx-elem-{t.elem_type}"
    return {"name": v.name, "shape": dims if t.HasField("shape") else None, "dtype": dtype}


def _read_zip_extra(path: Path) -> tuple[dict[str, str], None]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/extra/" + EXTRA_FILE) or n == "extra/" + EXTRA_FILE]
            if not names:
                return {}, None
            info = zf.getinfo(names[0])
            if info.file_size > MAX_METADATA_BYTES:
                raise ValueError(f"its {EXTRA_FILE} claims {info.file_size} bytes, more than any metadata")
            with zf.open(info) as member:  # never more than the cap inflated, whatever the header claims
                text = member.read(MAX_METADATA_BYTES + 1)
            if len(text) > MAX_METADATA_BYTES:
                raise ValueError(f"its {EXTRA_FILE} inflates beyond {MAX_METADATA_BYTES} bytes")
            data = _loads(text.decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"model: {str(path)!r} is not a readable TorchScript/ExportedProgram archive ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"model: {str(path)!r} has a malformed {EXTRA_FILE} (expected a JSON object)")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}, None


def _read_manifest_only(path: Path) -> tuple[dict[str, str], None]:
    """For a format that embeds no metadata: the map rebuilt from the manifest beside it."""
    return _manifest_to_metadata(_load_manifest_json(manifest_path(path)), str(manifest_path(path))), None


def _read_pte(path: Path) -> tuple[dict[str, str], None]:
    """ExecuTorch: the map the program returns from its constant method :data:`PTE_METADATA_METHOD`
    (``executorch.runtime``, imported on use); without executorch, the manifest beside the program."""
    # executorch imports torch, whose pytree module logs a deprecation about executorch's own enums.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import executorch.runtime  # noqa: F401
    except ImportError:
        return _read_manifest_only(path)
    program = load_pte_program(path)
    if PTE_METADATA_METHOD not in program.method_names:
        return {}, None
    (text,) = program.load_method(PTE_METADATA_METHOD).execute([])
    data = _loads(text) if isinstance(text, str) else None
    if not isinstance(data, dict):
        raise ValueError(f"model: {str(path)!r} has a malformed {PTE_METADATA_METHOD} (expected a JSON object)")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}, None


# How each format stores its cordsnet.* map: reader(path) -> (map, graph I/O or None when unknown).
METADATA_READERS: dict[str, Callable[[Path], tuple[dict[str, str], Any]]] = {
    "onnx": _read_onnx,
    "zip-extra": _read_zip_extra,
    "manifest": _read_manifest_only,
    "pte": _read_pte,
}


def check_artifact_file(path: Path) -> None:
    """Refuse a missing path, anything but a regular file (directory, device, FIFO, socket), an empty file
    or one larger than its format can hold, with one line (FileNotFoundError / ValueError), unread."""
    try:
        fmt: str | None = artifact_format(path)
    except ValueError:
        fmt = None
    size = check_regular(path, "model", MAX_ARTIFACT_BYTES.get(fmt or "", max(MAX_ARTIFACT_BYTES.values())))
    if size == 0:
        raise ValueError(f"model: {str(path)!r} is empty, not an exported model")


def _read(path: Path, format: str | None) -> tuple[dict[str, str], Any, str]:
    check_artifact_file(path)
    fmt = artifact_format(path) if format is None else validate.choice("format", format, list(FORMATS))
    meta, io = METADATA_READERS[FORMATS[fmt].metadata](path)
    if PREFIX + "format_version" not in meta:
        raise ValueError(f"model: {str(path)!r} is not a cordsnet export (no '{PREFIX}format_version' metadata)")
    return meta, io, fmt


def read_metadata(path: str | os.PathLike, format: str | None = None) -> dict[str, str]:
    """The raw ``cordsnet.*`` string map of an artifact (no onnxruntime session, no torch).

    Args:
        path: the artifact (.onnx, .pt/.ts, .pt2).
        format: a key of :data:`FORMATS`; default: from the suffix.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable artifact, or it carries no cordsnet metadata.
    """
    return _read(Path(path), format)[0]


def read_info(path: str | os.PathLike, format: str | None = None, *, check_io: bool = True) -> ArtifactInfo:
    """The parsed metadata of an artifact, checked against the graph's own I/O where the format declares it.

    Reads the file directly (``onnx.load(..., load_external_data=False)`` for ONNX): no onnxruntime
    session is created, so this is fast even for a 100-step unrolled graph.
    """
    return _read_info(Path(path), format, check_io)[0]


def _read_info(path: Path, format: str | None, check_io: bool = True) -> tuple[ArtifactInfo, Any, str]:
    """(info, what the format declares of its graph or None, format): one read of the file."""
    meta, io, fmt = _read(path, format)
    info = ArtifactInfo.from_metadata(meta, repr(str(path)))
    if check_io and io is not None:
        info.check_graph_io(io[0], io[1], repr(str(path)))
    return info, io, fmt
