"""Export CordsNet to ONNX, TorchScript and ExportedProgram graphs, verified, with metadata and a manifest.

``from cordsnet.export import export, verify_artifact, describe_artifact``. Importing this package
does not import torch: the torch-backed names load on first use. The artifact contract itself (graph
kinds, formats, metadata, manifest) is :mod:`cordsnet.artifact`, torch-free; its reading functions
are re-exported here. See ``docs/export.md`` for the graph kinds, their I/O and the manifest schema.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..extras import require
from ..artifact import (
    DTYPES,
    FORMATS,
    GRAPHS,
    ArtifactInfo,
    Manifest,
    check_manifest,
    decode_spontaneous_state,
    describe_artifact,
    encode_path,
    io_names,
    manifest_path,
    read_info,
    read_manifest,
    read_metadata,
)

_LAZY = {
    "export": "cordsnet.export.api",
    "ExportReport": "cordsnet.export.api",
    "ExportSpec": "cordsnet.export.spec",
    "EXPORTERS": "cordsnet.export.spec",
    "verify_artifact": "cordsnet.export.verify",
    "VerificationError": "cordsnet.export.verify",
    "VerificationReport": "cordsnet.export.verify",
}

__all__ = ["DTYPES", "FORMATS", "GRAPHS", "ArtifactInfo", "Manifest", "check_manifest", "decode_spontaneous_state",
           "describe_artifact", "encode_path", "io_names", "manifest_path", "read_info",
           "read_manifest", "read_metadata", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        require("torch", f"cordsnet.export.{name}")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cordsnet.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
