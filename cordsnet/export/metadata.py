"""Artifact metadata: the ``cordsnet.*`` string map every exported graph carries. Torch-free.

ONNX files hold it as ``metadata_props``; TorchScript (``.pt``) and ExportedProgram (``.pt2``) archives
hold the same map as JSON in the extra file ``cordsnet.json`` (``<archive>/extra/cordsnet.json`` inside
the zip). Everything here needs only the standard library and numpy (and ``onnx`` to read ``.onnx``
files), so an application without torch can read an artifact's protocol and spontaneous state.
"""

from __future__ import annotations

import base64
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "EXTRA_FILE",
    "FORMAT_VERSION",
    "KEYS",
    "PREFIX",
    "artifact_format",
    "decode_spontaneous_state",
    "describe_artifact",
    "encode_spontaneous_state",
    "parse_metadata",
    "read_metadata",
]

PREFIX = "cordsnet."
FORMAT_VERSION = "1"
EXTRA_FILE = "cordsnet.json"  # TorchScript / ExportedProgram extra file holding the map as JSON

# Every key an artifact carries (values are strings), in the order they are written.
KEYS: tuple[str, ...] = (
    "cordsnet.format_version",
    "cordsnet.graph",
    "cordsnet.config",
    "cordsnet.steps",
    "cordsnet.spontaneous_steps",
    "cordsnet.alpha",
    "cordsnet.readout",
    "cordsnet.record",
    "cordsnet.dtype",
    "cordsnet.batch",
    "cordsnet.preset",
    "cordsnet.version",
    "cordsnet.checkpoint_sha256",
    "cordsnet.spontaneous_state",
    # Additions beyond the minimal contract: positional I/O names (TorchScript and ExportedProgram
    # modules have no named inputs) and the exporter that produced the graph.
    "cordsnet.inputs",
    "cordsnet.outputs",
    "cordsnet.exporter",
    # sha256 over the state dict's names, shapes, dtypes and bytes: identifies the weights whether or
    # not they came from a file (checkpoint_sha256 is the file's hash, "" for an in-memory model).
    "cordsnet.state_dict_sha256",
)

# Suffix -> artifact format name.
_SUFFIX_FORMATS: dict[str, str] = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".pt2": "exported-program",
    ".pte": "executorch",
}


def encode_spontaneous_state(state: Sequence[np.ndarray]) -> str:
    """JSON list, one ``{"shape", "dtype", "data"}`` entry per area (data: base64, little-endian).

    Args:
        state: one (1, c_i, H_i, W_i) array per area.
    """
    entries = []
    for r in state:
        arr = np.ascontiguousarray(np.asarray(r))
        little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        entries.append({"shape": list(arr.shape), "dtype": str(arr.dtype),
                        "data": base64.b64encode(little.tobytes()).decode("ascii")})
    return json.dumps(entries)


def decode_spontaneous_state(value: str | Mapping[str, str]) -> list[np.ndarray]:
    """The spontaneous end state stored in an artifact: one (1, c_i, H_i, W_i) array per area.

    Args:
        value: the ``cordsnet.spontaneous_state`` string, or a whole metadata map.

    Raises:
        ValueError: the value is missing or malformed.
    """
    if isinstance(value, Mapping):
        if "cordsnet.spontaneous_state" not in value:
            raise ValueError("metadata: no 'cordsnet.spontaneous_state' key (not a cordsnet artifact?)")
        value = value["cordsnet.spontaneous_state"]
    try:
        entries = json.loads(value)
        out = []
        for e in entries:
            dtype = np.dtype(e["dtype"]).newbyteorder("<")
            arr = np.frombuffer(base64.b64decode(e["data"]), dtype=dtype).reshape(e["shape"])
            out.append(arr.astype(arr.dtype.newbyteorder("="), copy=True))
        return out
    except (TypeError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"metadata: malformed 'cordsnet.spontaneous_state' ({exc})") from None


def artifact_format(path: str | os.PathLike) -> str:
    """The format of an artifact from its suffix: "onnx", "torchscript" or "exported-program"."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise ValueError(f"path: expected an exported model with suffix one of {sorted(_SUFFIX_FORMATS)}, "
                         f"got {str(path)!r}")
    return _SUFFIX_FORMATS[suffix]


def read_metadata(path: str | os.PathLike, format: str | None = None) -> dict[str, str]:
    """The ``cordsnet.*`` string map of an exported artifact (.onnx, .pt/.ts, .pt2).

    Args:
        path: the artifact.
        format: "onnx", "torchscript" or "exported-program"; default: from the suffix.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable artifact, or it carries no cordsnet metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact: no such file {str(path)!r}")
    fmt = artifact_format(path) if format is None else format
    if fmt == "onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises its own DecodeError
            raise ValueError(f"artifact: {str(path)!r} is not a readable ONNX file ({exc})") from None
        meta = {p.key: p.value for p in proto.metadata_props if p.key.startswith(PREFIX)}
    elif fmt == "executorch":  # the program's constant method (needs the optional executorch package)
        from .executorch import read_pte_metadata

        meta = read_pte_metadata(path)
    else:
        meta = _read_zip_extra(path)
    if "cordsnet.format_version" not in meta:
        raise ValueError(f"artifact: {str(path)!r} carries no cordsnet metadata (not exported by cordsnet?)")
    return meta


def _read_zip_extra(path: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/extra/" + EXTRA_FILE) or n == "extra/" + EXTRA_FILE]
            if not names:
                return {}
            data = json.loads(zf.read(names[0]).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"artifact: {str(path)!r} is not a readable TorchScript/ExportedProgram archive "
                         f"({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"artifact: {str(path)!r} has a malformed {EXTRA_FILE}")
    return {str(k): str(v) for k, v in data.items()}


def parse_metadata(meta: Mapping[str, str]) -> dict[str, Any]:
    """Decode the string map into Python values (config dict, ints, lists), spontaneous state omitted.

    Returns:
        {"graph", "config", "steps", "spontaneous_steps", "alpha", "readout", "record", "dtype",
        "batch" (int or "dynamic"), "preset", "version", "checkpoint_sha256", "inputs", "outputs",
        "exporter", "format_version"}.
    """
    def get(key: str, default: str | None = None) -> str:
        full = PREFIX + key
        if full not in meta:
            if default is not None:
                return default
            raise ValueError(f"metadata: missing key {full!r}")
        return meta[full]

    try:
        batch_text = get("batch")
        out: dict[str, Any] = {
            "format_version": get("format_version"),
            "graph": get("graph"),
            "config": json.loads(get("config")),
            "steps": int(get("steps")),
            "spontaneous_steps": int(get("spontaneous_steps")),
            "alpha": float(get("alpha")),
            "readout": get("readout"),
            "record": json.loads(get("record")),
            "dtype": get("dtype"),
            "batch": batch_text if batch_text == "dynamic" else int(batch_text),
            "preset": json.loads(get("preset")),
            "version": get("version"),
            "checkpoint_sha256": get("checkpoint_sha256"),
            "inputs": json.loads(get("inputs", "null")),
            "outputs": json.loads(get("outputs", "null")),
            "exporter": get("exporter", ""),
            "state_dict_sha256": get("state_dict_sha256", ""),
        }
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"metadata: malformed cordsnet metadata ({exc})") from None
    return out


def describe_artifact(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of an exported model (used by ``cordsnet-cli info MODEL.onnx``).

    Returns:
        The decoded metadata plus "path", "format", "size_bytes", the spontaneous state's shapes and
        summary statistics and, for ONNX, the inputs/outputs with their element types and shapes,
        the opset and the IR version.
    """
    path = Path(path)
    meta = read_metadata(path)
    info: dict[str, Any] = {"path": str(path), "format": artifact_format(path),
                            "size_bytes": path.stat().st_size}
    info.update(parse_metadata(meta))
    spont = decode_spontaneous_state(meta)
    info["spontaneous_state"] = [
        {"area": i, "shape": list(r.shape), "dtype": str(r.dtype), "mean": float(r.mean()), "max": float(r.max())}
        for i, r in enumerate(spont)
    ]
    if info["format"] == "onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        info["ir_version"] = int(proto.ir_version)
        info["opset"] = {op.domain or "ai.onnx": int(op.version) for op in proto.opset_import}
        info["inputs"] = [_value_info(v) for v in proto.graph.input]
        info["outputs"] = [_value_info(v) for v in proto.graph.output]
    return info


def _value_info(v: Any) -> dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else (int(d.dim_value) if d.HasField("dim_value") else "?")
            for d in t.shape.dim]
    return {"name": v.name, "type": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}


def encode_path(path: str | os.PathLike) -> Path:
    """Where the encode graph of a stepwise-drive export lives: ``<stem>.encode<suffix>`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.encode{path.suffix}")


def encode_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    """The metadata of a stepwise-drive export's encode graph: the step graph's, with its own I/O and kind."""
    out = dict(meta)
    out["cordsnet.inputs"], out["cordsnet.outputs"] = '["image"]', '["skip", "ff0"]'
    out["cordsnet.graph"] = "encode"
    return out
