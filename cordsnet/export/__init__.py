"""Export CordsNet to ONNX, TorchScript and ExportedProgram graphs, verified, with metadata.

``from cordsnet.export import export, verify_artifact, describe_artifact``. Importing this package
does not import torch: the torch-backed names load on first use, and :mod:`cordsnet.export.metadata`
(reading an artifact's metadata and spontaneous state) needs only numpy (and onnx for ``.onnx``).
See ``docs/export.md`` for the graph kinds, their I/O contract and the metadata.
"""

from __future__ import annotations

import importlib
from typing import Any

from .metadata import decode_spontaneous_state, describe_artifact, encode_path, parse_metadata, read_metadata

_LAZY = {
    "export": "cordsnet.export.api",
    "ExportReport": "cordsnet.export.api",
    "ExportSpec": "cordsnet.export.api",
    "GRAPHS": "cordsnet.export.api",
    "FORMATS": "cordsnet.export.api",
    "DTYPES": "cordsnet.export.api",
    "EXPORTERS": "cordsnet.export.api",
    "io_names": "cordsnet.export.api",
    "verify_artifact": "cordsnet.export.verify",
    "VerificationError": "cordsnet.export.verify",
    "VerificationReport": "cordsnet.export.verify",
}

__all__ = ["decode_spontaneous_state", "describe_artifact", "encode_path", "parse_metadata", "read_metadata",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cordsnet.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
