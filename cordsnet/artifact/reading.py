"""Reading an artifact's metadata from its file, bounded and checked (:func:`read_metadata`, :func:`read_info`).

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

from .. import validate
from .._io import check_regular, open_regular
from .formats import FORMATS, artifact_format, manifest_path
from .info import ArtifactInfo, _load_manifest_json, _loads, _manifest_to_metadata
from .kinds import EXTRA_FILE, MAX_METADATA_BYTES, PREFIX, PTE_METADATA_METHOD

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
    (``Verification.InternalConsistency``) rejects the rest with a Python error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, too large, or not an ExecuTorch flatbuffer (one line).
    """
    path = Path(path)
    size = check_regular(path, "model", MAX_ARTIFACT_BYTES["executorch"])
    with open_regular(path, "model", MAX_ARTIFACT_BYTES["executorch"]) as f:
        head = f.read(64)
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
        from executorch.runtime import Runtime
    except ImportError:
        return _read_manifest_only(path)
    from .._quiet import native_stderr_captured

    check_pte_file(path)  # the runtime aborts the process on some malformed headers
    try:
        with native_stderr_captured():  # the runtime's native start-up lines (fd 2, not ours)
            program = Runtime.get().load_program(path)
    except Exception as exc:  # the runtime raises RuntimeError for a bad flatbuffer
        first = " ".join(str(exc).split())[:200]
        raise ValueError(f"model: {str(path)!r} is not a loadable ExecuTorch program: {first}") from None
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
