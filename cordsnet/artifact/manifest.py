"""The client manifest ``<artifact>.cordsnet.json``: read, checked against its artifact (:func:`check_manifest`).

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import validate
from .._io import file_sha256
from ..decision import DEFAULT_MARGIN, DEFAULT_THRESHOLD, DecisionRule
from .formats import FORMATS, artifact_format, manifest_path
from .info import ArtifactInfo, _load_manifest_json, _manifest_to_metadata
from .kinds import MANIFEST_SUFFIX, PREFIX
from .reading import _read_info, check_artifact_file


# Which graphs the exporter writes a "decision" block for: format -> the session kinds whose per-step
# logits its runtime gives here (onnxruntime: step and whole graphs; ExecuTorch: step programs).
DECISION_SESSIONS: dict[str, tuple[str, ...]] = {"onnx": ("step", "whole"), "executorch": ("step",)}


def decision_expected(info: ArtifactInfo, format: str) -> bool:
    """Whether the exporter writes a decision block (rule, threshold, margin, no-image baseline) for a
    graph: a runtime here gives its logits after every step (a step graph, or readout "all"), one step
    per call. The exporter and :func:`check_manifest` both ask this."""
    per_step = info.kind.session == "step" or info.readout == "all"
    return info.kind.session in DECISION_SESSIONS.get(format, ()) and per_step and info.steps_per_call == 1


def check_decision_block(manifest: "Manifest") -> None:
    """Refuse a decision block that the exporter cannot have written: missing where it writes one, present
    where it writes none, or a threshold / margin other than the exporter's (the baseline's values are
    checked by running the graph: :func:`cordsnet.runtime.reference.check_decision`).

    Raises:
        ValueError: naming the manifest and what is wrong.
    """
    where = f"manifest: {str(manifest.path)!r}"
    rule, expected = manifest.info.decision, decision_expected(manifest.info, manifest.format)
    if expected and rule is None:
        raise ValueError(f"{where} lacks the decision block the exporter writes for a {manifest.info.graph!r} "
                         f"{manifest.format} graph; the manifest was edited: export again")
    if rule is not None and not expected:
        raise ValueError(f"{where} has a decision block, which the exporter never writes for a "
                         f"{manifest.info.graph!r} {manifest.format} graph; the manifest was edited: export again")
    if rule is not None and (rule.threshold, rule.margin) != (DEFAULT_THRESHOLD, DEFAULT_MARGIN):
        raise ValueError(f"{where}: its decision rule (threshold {rule.threshold:g}, margin {rule.margin:g}) is not "
                         f"the exporter's (threshold {DEFAULT_THRESHOLD:g}, margin {DEFAULT_MARGIN:g}); the manifest "
                         "was edited: export again")


# ----------------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class Manifest:
    """A parsed client manifest.

    Attributes:
        path: the manifest file.
        info: the artifact's :class:`ArtifactInfo` (parsed by the same parser as the metadata).
        file, format, sha256, size_bytes: the artifact it belongs to.
        companions: ``{"role", "file", "sha256"}`` per companion file.
        data: the raw JSON object.

    The decision rule, when the manifest has one, is ``info.decision`` (:attr:`decision`).
    """

    path: Path
    info: ArtifactInfo
    file: str
    format: str
    sha256: str
    size_bytes: int
    companions: tuple[dict[str, str], ...]
    data: dict[str, Any] = field(repr=False)

    @property
    def artifact_path(self) -> Path:
        return self.path.with_name(self.file)

    @property
    def decision(self) -> DecisionRule | None:
        """The manifest's decision rule (threshold, margin, no-image baseline (T, K)), or None."""
        return self.info.decision


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a client manifest.

    Args:
        path: the manifest (``*.cordsnet.json``) or the artifact it sits beside.

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: not a valid manifest (one line naming the field).
    """
    path = Path(path)
    if not path.name.endswith(MANIFEST_SUFFIX):
        path = manifest_path(path)
    data = _load_manifest_json(path)
    source = repr(str(path))
    info = ArtifactInfo.from_metadata(_manifest_to_metadata(data, source), source)
    art = data.get("artifact")
    if not isinstance(art, dict):
        raise ValueError(f"manifest: {source} lacks the 'artifact' object")
    file = art.get("file")
    if not _file_name(file):
        raise ValueError(f"manifest: {source}: artifact.file: expected a file name beside the manifest, got {file!r}")
    fmt = art.get("format")
    validate.choice("manifest artifact.format", fmt, list(FORMATS))
    sha = art.get("sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError(f"manifest: {source}: artifact.sha256: expected 64 hex digits, got {sha!r}")
    size = validate.integer("manifest artifact.size_bytes", art.get("size_bytes"), min=0)
    companions = data.get("companions", [])
    if not isinstance(companions, list) or not all(
            isinstance(c, dict) and isinstance(c.get("role"), str) and isinstance(c.get("file"), str)
            and _file_name(c["file"]) and isinstance(c.get("sha256"), str) for c in companions):
        raise ValueError(f"manifest: {source}: companions: expected a list of {{'role', 'file', 'sha256'}} objects, "
                         "each file a plain name beside the manifest")
    want_in, want_out = info.io_table()
    if data.get("inputs") != want_in or data.get("outputs") != want_out:
        raise ValueError(f"manifest: {source}: inputs/outputs do not match its graph kind and config (expected "
                         f"inputs {[w['name'] for w in want_in]} with shapes {[w['shape'] for w in want_in]})")
    return Manifest(path=path, info=info, file=file, format=fmt, sha256=sha, size_bytes=size,
                    companions=tuple(dict(c) for c in companions), data=data)


def _file_name(name: object) -> bool:
    """A plain file name beside the manifest: no folder part, not ``.`` or ``..``."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def manifest_disagreements(artifact: ArtifactInfo, manifest: ArtifactInfo) -> list[str]:
    """The fields a manifest states differently from its artifact's own metadata ([] when they agree).

    Every compared field of :class:`ArtifactInfo` (graph, config, protocol, dtype, batch, preset with its
    class names and normalisation, hashes, versions) and the spontaneous state, compared as the float32
    the manifest stores. The inputs/outputs follow from these (:func:`read_manifest` checks them).
    """
    names = [f.name for f in dataclasses.fields(ArtifactInfo) if f.compare and f.name != "version"]
    diffs = [n for n in names if getattr(artifact, n) != getattr(manifest, n)]
    if artifact.version and manifest.version and artifact.version != manifest.version:
        diffs.append("version")
    a, m = artifact.spontaneous, manifest.spontaneous
    if len(a) != len(m) or any(x.shape != y.shape or not np.array_equal(np.asarray(x, np.float32),
                                                                         np.asarray(y, np.float32))
                               for x, y in zip(a, m)):
        diffs.append("spontaneous_state")
    return diffs


def check_manifest(artifact: str | os.PathLike, manifest: Manifest | None = None, *,
                   info: ArtifactInfo | None = None) -> Manifest | None:
    """Refuse a manifest beside `artifact` that belongs to another artifact or says something else.

    The manifest must name the artifact, match its bytes (sha256, size, companions' sha256) and agree
    with the metadata the artifact itself holds, field by field (:func:`manifest_disagreements`): a
    client handed a checked manifest reads what the graph was exported with.

    Args:
        artifact: the artifact file.
        manifest: its manifest, already read; default: read ``<artifact>.cordsnet.json`` if it exists.
        info: the artifact's own info, already read (default: read here).

    Returns:
        The manifest, or None when the artifact has none.

    Raises:
        ValueError: the manifest names another file, its sha256/size (or a companion's) do not
            match the files' bytes, or one of its fields disagrees with the artifact's metadata.
    """
    artifact = Path(artifact)
    if manifest is None:
        if not manifest_path(artifact).exists():
            return None
        manifest = read_manifest(manifest_path(artifact))
    where = f"manifest: {str(manifest.path)!r}"
    if manifest.file != artifact.name:
        raise ValueError(f"{where} belongs to {manifest.file!r}, not to {artifact.name!r}")
    check_artifact_file(artifact)
    actual = file_sha256(artifact)
    if actual != manifest.sha256 or artifact.stat().st_size != manifest.size_bytes:
        raise ValueError(f"{where} belongs to another artifact: its sha256 {manifest.sha256[:12]}... does not match "
                         f"{artifact.name} (sha256 {actual[:12]}...); export again or delete the stale manifest")
    for c in manifest.companions:
        p = artifact.with_name(c["file"])
        if not p.exists():  # every export writes its companions: the artifact is incomplete without it
            raise ValueError(f"{where}: companion {c['file']!r} ({c['role']}) is missing beside {artifact.name}; "
                             "copy it along or export again")
        if file_sha256(p) != c["sha256"]:
            raise ValueError(f"{where}: companion {c['file']!r} ({c['role']}) does not match its sha256 in the "
                             "manifest; export again")
    if manifest.format != artifact_format(artifact):
        raise ValueError(f"{where} describes a {manifest.format} artifact, but {artifact.name} is "
                         f"{artifact_format(artifact)}; export again")
    if FORMATS[manifest.format].metadata != "manifest":
        own = info if info is not None else _read_info(artifact, manifest.format)[0]
        if own.metadata.get(PREFIX + "format_version") is not None:  # read from the artifact, not the manifest
            diffs = manifest_disagreements(own, manifest.info)
            if diffs:
                raise ValueError(f"{where} disagrees with the metadata inside {artifact.name} on {', '.join(diffs)}; "
                                 "the manifest was edited or belongs to another export: export again")
    check_decision_block(manifest)
    return manifest
