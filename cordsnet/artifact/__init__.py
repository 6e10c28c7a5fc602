"""The artifact contract: what an exported CordsNet graph is, carries and promises. Torch-free.

A package split by reason to change: :mod:`.kinds` (constants, precisions, graph kinds), :mod:`.formats`
(file formats, companion and manifest paths), :mod:`.info` (the metadata map and :class:`ArtifactInfo`),
:mod:`.reading` (reading a file's metadata), :mod:`.manifest` (the client manifest), :mod:`.describe`.

One module owns every name an exported artifact relies on, so the exporter (:mod:`cordsnet.export`),
the runtime (:mod:`cordsnet.runtime`), the CLI and clients in other languages agree by construction:

* :data:`GRAPH_KINDS`: the graph kinds (``unrolled``, ``loop``, ``stepwise``, ``stepwise-drive`` and
  the companion kind ``encode``), each with its inputs and outputs (:func:`io_names`,
  :meth:`ArtifactInfo.io_table`) and how it is run. Adding a kind is one entry here (plus its
  traced wrapper in ``cordsnet/export/wrappers.py``).
* :data:`FORMATS`: the file formats (``onnx`` ``.onnx``, ``torchscript`` ``.pt``, ``exported-program``
  ``.pt2``, ``executorch`` ``.pte``), each with its suffix, its backend module and where its metadata
  lives. Adding a format is one entry here plus its backend module.
* The ``cordsnet.*`` metadata map every artifact carries (ONNX ``metadata_props``; for the torch
  formats the JSON extra file ``cordsnet.json``), parsed by ONE parser into :class:`ArtifactInfo`,
  which also checks it against the graph's own inputs and outputs (:meth:`ArtifactInfo.check_graph_io`).
* The client manifest ``<artifact>.cordsnet.json`` (:func:`read_manifest`, :meth:`ArtifactInfo.to_manifest`):
  the same facts as plain JSON for clients without a protobuf parser (browsers, Node, phones),
  with the sha256 of the artifact it belongs to. It is the metadata's second serialisation and is
  read back through the same parser. It also carries the decision rule (``"decision"``:
  :class:`cordsnet.decision.DecisionRule`, the no-image baseline computed by the runtime on the
  exported graph) so that clients decide exactly as :mod:`cordsnet.decision` does.

Only the standard library and numpy are needed (``onnx`` to read ``.onnx`` files, ``executorch`` to
read ``.pte`` files, both imported on use).
See ``docs/export.md`` for the contract in prose.
"""

from __future__ import annotations

from .._io import file_sha256
from ..config import MAX_STEPS
from .describe import describe_artifact
from .formats import (
    FORMATS,
    ArtifactFormat,
    artifact_format,
    companion_path,
    encode_path,
    manifest_path,
)
from .info import ArtifactInfo, decode_spontaneous_state, encode_spontaneous_state
from .kinds import (
    DEFAULT_GRAPH,
    DEFAULT_OPSET,
    DTYPES,
    EXTRA_FILE,
    FORMAT_VERSION,
    GRAPH_KINDS,
    GRAPHS,
    IR_VERSION,
    MANIFEST_SUFFIX,
    MANIFEST_VERSION,
    MAX_METADATA_BYTES,
    MAX_OPSET,
    MIN_OPSET,
    PREFIX,
    PTE_METADATA_METHOD,
    READOUTS,
    REDUCED_DTYPES,
    SUPPORTED_FORMAT_VERSIONS,
    GraphKind,
    io_names,
)
from .manifest import (DECISION_SESSIONS, Manifest, check_decision_block, check_manifest, decision_expected,
                       read_manifest)
from .reading import (
    PTE_SCREEN_ENV,
    check_artifact_file,
    check_pte_file,
    load_pte_program,
    read_info,
    read_metadata,
    remember_safe_pte,
)

__all__ = [
    "ArtifactFormat",
    "ArtifactInfo",
    "DECISION_SESSIONS",
    "DEFAULT_GRAPH",
    "DEFAULT_OPSET",
    "DTYPES",
    "EXTRA_FILE",
    "FORMATS",
    "FORMAT_VERSION",
    "GRAPHS",
    "GRAPH_KINDS",
    "GraphKind",
    "IR_VERSION",
    "MANIFEST_SUFFIX",
    "MANIFEST_VERSION",
    "MAX_METADATA_BYTES",
    "MAX_OPSET",
    "MAX_STEPS",
    "MIN_OPSET",
    "Manifest",
    "PREFIX",
    "PTE_METADATA_METHOD",
    "PTE_SCREEN_ENV",
    "READOUTS",
    "REDUCED_DTYPES",
    "SUPPORTED_FORMAT_VERSIONS",
    "artifact_format",
    "check_artifact_file",
    "check_decision_block",
    "check_manifest",
    "decision_expected",
    "check_pte_file",
    "companion_path",
    "decode_spontaneous_state",
    "describe_artifact",
    "encode_path",
    "encode_spontaneous_state",
    "file_sha256",
    "io_names",
    "load_pte_program",
    "manifest_path",
    "read_info",
    "read_manifest",
    "read_metadata",
    "remember_safe_pte",
]
