"""Describe an exported artifact for people and JSON (:func:`describe_artifact`).

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .manifest import check_manifest
from .reading import _read_info


# ------------------------------------------------------------------------------------ describe
def describe_artifact(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of an exported model (``cordsnet-cli info MODEL.onnx``).

    The metadata is checked against the graph's I/O (ONNX) and against the manifest beside the
    artifact, when there is one (a manifest that belongs to another artifact is refused).

    Returns:
        :meth:`ArtifactInfo.to_dict` plus "path", "format", "size_bytes", "manifest" (its path or
        None) and, for ONNX, "graph_inputs"/"graph_outputs" as the file declares them, "opset" and
        "ir_version".
    """
    path = Path(path)
    info, io, fmt = _read_info(path, None)
    manifest = check_manifest(path, info=info)
    out: dict[str, Any] = {"path": str(path), "format": fmt, "size_bytes": path.stat().st_size}
    out.update(info.to_dict())
    out["manifest"] = str(manifest.path) if manifest is not None else None
    if fmt == "onnx":
        out["graph_inputs"], out["graph_outputs"], versions = io
        out.update(versions)
    return out
