"""The artifact contract's file formats (:data:`FORMATS`) and the paths of companions and manifests.

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .kinds import MANIFEST_SUFFIX


# ------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class ArtifactFormat:
    """One artifact file format.

    Attributes:
        name: registry key (``--format``).
        suffix: the suffix exports get by default.
        read_suffixes: suffixes recognised as this format when reading (the first is ``suffix``).
        backend: module that writes and runs it (imports torch): ``write``, ``open_runner``, ``staged``.
        metadata: where the ``cordsnet.*`` map lives: a key of :data:`METADATA_READERS`.
        description: one line for docs.
    """

    name: str
    suffix: str
    read_suffixes: tuple[str, ...]
    backend: str
    metadata: str
    description: str


FORMATS: dict[str, ArtifactFormat] = {f.name: f for f in (
    ArtifactFormat("onnx", ".onnx", (".onnx",), "cordsnet.export.onnx", "onnx",
                   "ONNX (onnxruntime, any language); metadata in metadata_props"),
    ArtifactFormat("torchscript", ".pt", (".pt", ".ts"), "cordsnet.export.torchscript", "zip-extra",
                   "TorchScript (libtorch, C++); metadata in the extra file cordsnet.json"),
    ArtifactFormat("exported-program", ".pt2", (".pt2",), "cordsnet.export.exported_program", "zip-extra",
                   "torch.export ExportedProgram; metadata in the extra file cordsnet.json"),
    ArtifactFormat("executorch", ".pte", (".pte",), "cordsnet.export.executorch", "pte",
                   "ExecuTorch program (XNNPACK delegate, on-device); metadata from its constant method "
                   "cordsnet_metadata"),
)}


def artifact_format(path: str | os.PathLike) -> str:
    """The format of an artifact from its suffix (a key of :data:`FORMATS`).

    Raises:
        ValueError: the suffix is none of the formats'.
    """
    suffix = Path(path).suffix.lower()
    for f in FORMATS.values():
        if suffix in f.read_suffixes:
            return f.name
    known = sorted(s for f in FORMATS.values() for s in f.read_suffixes)
    raise ValueError(f"path: expected an exported model with suffix one of {known}, got {str(path)!r}")


def companion_path(path: str | os.PathLike, role: str) -> Path:
    """Where a companion graph lives: ``<stem>.<role><suffix>`` beside the artifact."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{role}{path.suffix}")


def encode_path(path: str | os.PathLike) -> Path:
    """Where the encode graph of a stepwise-drive export lives: ``<stem>.encode<suffix>`` beside it."""
    return companion_path(path, "encode")


def manifest_path(path: str | os.PathLike) -> Path:
    """Where the client manifest of an artifact lives: ``<artifact file name>.cordsnet.json``."""
    path = Path(path)
    return path.with_name(path.name + MANIFEST_SUFFIX)
