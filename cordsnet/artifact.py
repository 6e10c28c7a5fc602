"""The artifact contract: what an exported CordsNet graph is, carries and promises. Torch-free.

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

import base64
import binascii
import dataclasses
import json
import logging
import math
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__, validate
from ._io import check_regular, file_sha256, load_json, open_regular, read_json_file
from .config import MAX_STEPS, CordsNetConfig
from .decision import DecisionRule

__all__ = [
    "ArtifactFormat",
    "ArtifactInfo",
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
    "MAX_OPSET",
    "MAX_STEPS",
    "MIN_OPSET",
    "Manifest",
    "PREFIX",
    "PTE_METADATA_METHOD",
    "READOUTS",
    "REDUCED_DTYPES",
    "SUPPORTED_FORMAT_VERSIONS",
    "artifact_format",
    "check_artifact_file",
    "check_manifest",
    "companion_path",
    "decode_spontaneous_state",
    "describe_artifact",
    "encode_path",
    "encode_spontaneous_state",
    "file_sha256",
    "io_names",
    "manifest_path",
    "read_info",
    "read_manifest",
    "read_metadata",
]

PREFIX = "cordsnet."
FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS: tuple[str, ...] = ("1",)
EXTRA_FILE = "cordsnet.json"  # TorchScript / ExportedProgram extra file holding the map as JSON
MANIFEST_SUFFIX = ".cordsnet.json"  # the client manifest: <artifact file name> + this
MANIFEST_VERSION = 1
PTE_METADATA_METHOD = "cordsnet_metadata"  # ExecuTorch: constant method of a .pte returning the map as JSON

# ONNX: opsets the exporter writes (the legacy exporter's range) and the IR version files are pinned
# to (onnx >= 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses; IR 10 loads from 1.20 on).
DEFAULT_OPSET = 18
MIN_OPSET = 14
MAX_OPSET = 20
IR_VERSION = 10

# Longest protocol (stimulus or spontaneous steps) an artifact may claim: the config's bound (one
# definition, cordsnet.config.MAX_STEPS). A claim beyond it is refused as corrupt metadata instead of
# hanging a reader; run longer with StepSession.step in your own loop.

READOUTS: tuple[str, ...] = ("last", "all")  # "last": logits (B, K); "all": logits at every step (T, B, K)

# Precisions of an artifact's arithmetic (``cordsnet.dtype``) -> the numpy dtype of its floating-point
# inputs and outputs. float32/float16: weights, activations and I/O in that type. bfloat16: weights
# stored as bfloat16, float32 I/O (numpy has no bfloat16; a backend with bf16 units computes in it).
# int8: static QDQ quantisation (int8 weights per channel, uint8 activations), float32 I/O.
# See docs/precision.md.
DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                               "bfloat16": np.dtype(np.float32), "int8": np.dtype(np.float32)}
REDUCED_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "int8")  # verified by top-1 agreement, not tolerance


# ------------------------------------------------------------------------------------- graph kinds
@dataclass(frozen=True)
class GraphKind:
    """One graph kind of the contract.

    Attributes:
        name: registry key (the ``cordsnet.graph`` value).
        description: one line for docs and ``--help``.
        inputs, outputs: I/O name templates in order; ``state_*``/``next_state_*`` expand to one name
            per area, ``rates_*`` to one per recorded area.
        session: what runs it: "whole" (the protocol in one call, ``runtime.Session``), "step" (one
            Euler step per call, ``runtime.StepSession``) or None (a companion run by its parent).
        per_step_outputs: readout "all" and recorded areas are possible.
        companions: roles of companion graphs written beside it (``<stem>.<role><suffix>``).
        exported: False for a kind that is only written as another kind's companion.
        multi_step: one call advances ``steps_per_call`` Euler steps (a metadata key), not one.
    """

    name: str
    description: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    session: str | None
    per_step_outputs: bool = False
    companions: tuple[str, ...] = ()
    exported: bool = True
    multi_step: bool = False

    @property
    def steps_input(self) -> bool:
        """The step count is an input (``steps``, an int64 scalar) rather than fixed in the graph."""
        return "steps" in self.inputs


GRAPH_KINDS: dict[str, GraphKind] = {k.name: k for k in (
    GraphKind("unrolled", "the time loop unrolled, steps fixed in the graph; input image",
              ("image",), ("logits", "rates_*"), "whole", per_step_outputs=True),
    GraphKind("loop", "the time loop as a loop in the graph; inputs image and steps (int64 scalar)",
              ("image", "steps"), ("logits", "rates_*"), "whole", per_step_outputs=True),
    GraphKind("stepwise", "one Euler step; inputs image and state_0..state_{D-1}",
              ("image", "state_*"), ("logits", "next_state_*"), "step"),
    GraphKind("stepwise-drive", "one Euler step from precomputed drive terms (skip, ff0), with an encode graph",
              ("skip", "ff0", "state_*"), ("logits", "next_state_*"), "step", companions=("encode",)),
    GraphKind("multistep", "K Euler steps per call (K = steps_per_call in the metadata); inputs image and "
              "state_0..state_{D-1}", ("image", "state_*"), ("logits", "next_state_*"), "step", multi_step=True),
    GraphKind("encode", "image -> drive terms (skip, ff0): the companion of a stepwise-drive graph",
              ("image",), ("skip", "ff0"), None, exported=False),
)}

# The kinds a user can export (name -> description), in registry order.
GRAPHS: dict[str, str] = {k.name: k.description for k in GRAPH_KINDS.values() if k.exported}


def _kind(graph: str, name: str = "graph") -> GraphKind:
    return GRAPH_KINDS[validate.choice(name, graph, list(GRAPH_KINDS))]


def io_names(graph: str, depth: int, readout: str = "last", record: Sequence[int] = ()) -> tuple[list[str], list[str]]:
    """Input and output names of a graph kind, in order (the contract applications rely on).

    Args:
        graph: a key of :data:`GRAPH_KINDS`.
        depth: number of areas D.
        readout: "last" or "all" (names do not depend on it; kept for symmetry).
        record: recorded areas (outputs ``rates_<area>``) of an unrolled/loop graph.

    Returns:
        (inputs, outputs), e.g. (["image", "state_0", "state_1"], ["logits", "next_state_0", "next_state_1"]).
    """
    kind = _kind(graph)

    def expand(templates: Sequence[str]) -> list[str]:
        out: list[str] = []
        for t in templates:
            if t.endswith("state_*"):
                out += [t[:-1] + str(i) for i in range(depth)]
            elif t == "rates_*":
                out += [f"rates_{a}" for a in record]
            else:
                out.append(t)
        return out

    return expand(kind.inputs), expand(kind.outputs)


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


# ----------------------------------------------------------------------------- spontaneous state
def encode_spontaneous_state(state: Sequence[np.ndarray]) -> str:
    """The ``cordsnet.spontaneous_state`` value: a JSON list, one ``{"shape", "dtype", "data"}`` per area.

    Args:
        state: one (1, c_i, H_i, W_i) array per area; ``data`` is its bytes, little-endian, C order, base64.
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

    Only the encoding is checked here; :meth:`ArtifactInfo.from_metadata` also checks the shapes
    against the config and that every value is finite.

    Args:
        value: the ``cordsnet.spontaneous_state`` string, or a whole metadata map.

    Raises:
        ValueError: the value is missing or malformed.
    """
    if isinstance(value, Mapping):
        if PREFIX + "spontaneous_state" not in value:
            raise ValueError("metadata: no 'cordsnet.spontaneous_state' key (not a cordsnet artifact?)")
        value = value[PREFIX + "spontaneous_state"]
    try:
        entries = _loads(value)
        if not isinstance(entries, list):
            raise ValueError(f"expected a JSON list, got {type(entries).__name__}")
        out = []
        for e in entries:
            dtype = np.dtype(validate.choice("dtype", e["dtype"], list(DTYPES))).newbyteorder("<")
            shape = [validate.integer("shape", d, min=1, max=1 << 20) for d in e["shape"]]
            arr = np.frombuffer(base64.b64decode(e["data"], validate=True), dtype=dtype).reshape(shape)
            out.append(arr.astype(arr.dtype.newbyteorder("="), copy=True))
        return out
    except (TypeError, KeyError, ValueError, RecursionError, binascii.Error) as exc:
        raise ValueError(f"metadata: malformed 'cordsnet.spontaneous_state' ({exc})") from None


# --------------------------------------------------------------------------------- ArtifactInfo
def _loads(text: str) -> Any:
    """Every JSON value of the contract, parsed within :data:`cordsnet._io.JSON_LIMITS` (size, depth, numbers)."""
    return load_json(text, "JSON", max_bytes=MAX_METADATA_BYTES)


_SHA256 = re.compile(r"^([0-9a-f]{64})?$")


@dataclass(frozen=True)
class ArtifactInfo:
    """The parsed, validated ``cordsnet.*`` metadata of one artifact (or of its manifest).

    Attributes:
        graph: a key of :data:`GRAPH_KINDS` ("encode" for a stepwise-drive export's encode graph).
        config: the model's :class:`~cordsnet.config.CordsNetConfig`.
        steps, spontaneous_steps, alpha: the protocol baked into (or defaulted by) the graph.
        readout: "last" or "all"; record: areas whose rates are outputs ``rates_<area>``.
        dtype: a key of :data:`DTYPES` (the arithmetic's precision; I/O dtype ``DTYPES[dtype]``).
        batch: the static batch size, or None for a dynamic batch.
        steps_per_call: Euler steps one call of the graph advances (a "multistep" graph; 1 otherwise).
        preset: ``DatasetPreset.to_dict()`` (normalisation, class names) or None.
        spontaneous: the state after the spontaneous phase, one (1, c_i, H_i, W_i) array per area.
        version: the cordsnet version that exported it; exporter: the exporter's name.
        checkpoint_sha256: sha256 of the source checkpoint file ("" when exported from memory).
        state_dict_sha256: sha256 of the weights (see ``cordsnet.checkpoint.state_dict_sha256``).
        format_version: the contract version (:data:`FORMAT_VERSION`).
        decision: the decision rule with the graph's own no-image baseline (client manifests; None
            where the export could not run the graph, see docs/export.md).
        metadata: the raw string map.
    """

    graph: str
    config: CordsNetConfig
    steps: int
    spontaneous_steps: int
    alpha: float
    readout: str = "last"
    record: tuple[int, ...] = ()
    dtype: str = "float32"
    batch: int | None = None
    steps_per_call: int = 1
    preset: dict[str, Any] | None = None
    spontaneous: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)
    version: str = __version__
    exporter: str = ""
    checkpoint_sha256: str = ""
    state_dict_sha256: str = ""
    format_version: str = FORMAT_VERSION
    decision: DecisionRule | None = field(default=None, repr=False, compare=False)
    metadata: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------------------------ parse
    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "model") -> "ArtifactInfo":
        """Parse and validate the ``cordsnet.*`` map (the one parser of the contract).

        Required keys: format_version, graph, config, steps, spontaneous_steps, alpha, batch and
        spontaneous_state (may be absent when spontaneous_steps is 0). Defaults otherwise: readout
        "last", record [], dtype "float32", preset null, version/exporter/hashes "".

        Args:
            meta: the string map (extra keys without the prefix are ignored).
            source: what to call the artifact in messages (usually its path).

        Raises:
            ValueError: one line naming the key, the value and what was expected.
        """
        where = f"model: {source}"
        if not isinstance(meta, Mapping):
            raise ValueError(f"{where}: expected a metadata map, got {type(meta).__name__}")
        if PREFIX + "format_version" not in meta:
            raise ValueError(f"{where} is not a cordsnet export (no '{PREFIX}format_version' metadata)")

        def get(key: str, default: str | None = None) -> str:
            if PREFIX + key not in meta:
                if default is not None:
                    return default
                raise ValueError(f"{where} lacks the metadata key '{PREFIX}{key}'")
            value = meta[PREFIX + key]
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{PREFIX}{key}' must be a string, got {type(value).__name__}")
            return value

        def parse(key: str, conv: Callable[[str], Any], default: str | None = None) -> Any:
            text = get(key, default)
            try:
                return conv(text)
            except (ValueError, TypeError, KeyError) as exc:
                msg = str(exc)
                raise ValueError(f"{where} has a bad '{PREFIX}{key}' = {text[:80]!r}: {msg}") from None

        version = get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(f"{where} has cordsnet.format_version {version!r}; this cordsnet reads "
                             f"{list(SUPPORTED_FORMAT_VERSIONS)}")
        graph = parse("graph", lambda t: validate.choice("graph", t, list(GRAPH_KINDS)))
        config = parse("config", lambda t: CordsNetConfig.from_dict(validate.mapping("config", _loads(t))))
        why = "the metadata claims a longer protocol than any export writes (corrupt or hostile file?)"
        steps = parse("steps", lambda t: validate.integer("steps", _int_text(t), min=1, max=MAX_STEPS, why=why))
        spont = parse("spontaneous_steps",
                      lambda t: validate.integer("spontaneous_steps", _int_text(t), min=0, max=MAX_STEPS, why=why))
        alpha = parse("alpha", lambda t: validate.fraction("alpha", float(t)))
        readout = parse("readout", lambda t: validate.choice("readout", t, READOUTS), "last")
        record = parse("record", lambda t: validate.areas("record", _json_list(t), config.depth), "[]")
        dtype = parse("dtype", lambda t: validate.choice("dtype", t, list(DTYPES)), "float32")
        batch = parse("batch", _batch_text)
        per_call = parse("steps_per_call", lambda t: validate.integer("steps_per_call", _int_text(t), min=1,
                                                                      max=MAX_STEPS, why=why), "1")
        preset = parse("preset", lambda t: _preset(_loads(t), config), "null")
        kind = GRAPH_KINDS[graph]
        if per_call != 1 and not kind.multi_step:
            raise ValueError(f"{where}: a {graph!r} graph advances one step per call, got steps_per_call {per_call}")
        if kind.multi_step and steps % per_call:
            raise ValueError(f"{where}: steps {steps} is not a multiple of steps_per_call {per_call}")
        if not kind.per_step_outputs and (readout != "last" or record):
            raise ValueError(f"{where}: a {graph!r} graph has readout 'last' and no recorded areas, got readout "
                             f"{readout!r} and record {list(record)}")
        for key in ("checkpoint_sha256", "state_dict_sha256"):
            if not _SHA256.match(get(key, "")):
                raise ValueError(f"{where} has a bad '{PREFIX}{key}': expected 64 hex digits or '', got "
                                 f"{get(key)[:80]!r}")
        ins, outs = io_names(graph, config.depth, readout, record)
        for key, want in (("inputs", ins), ("outputs", outs)):
            have = parse(key, _json_list, json.dumps(want))
            if list(have) != want:
                raise ValueError(f"{where}: '{PREFIX}{key}' lists {have}, but a {graph!r} graph of depth "
                                 f"{config.depth} has {want}")
        spontaneous = _spontaneous(meta, config, spont, dtype, where)
        decision = parse("decision", lambda t: None if t == "null" else DecisionRule.from_manifest(
            _loads(t), steps=steps, num_classes=config.num_classes), "null")
        return cls(graph=graph, config=config, steps=steps, spontaneous_steps=spont, alpha=alpha, readout=readout,
                   record=tuple(record), dtype=dtype, batch=batch, preset=preset, spontaneous=spontaneous,
                   steps_per_call=per_call,
                   version=get("version", ""), exporter=get("exporter", ""),
                   checkpoint_sha256=get("checkpoint_sha256", ""), state_dict_sha256=get("state_dict_sha256", ""),
                   format_version=version, decision=decision, metadata={str(k): v for k, v in meta.items()})

    # -------------------------------------------------------------------------------- serialise
    def to_metadata(self) -> dict[str, str]:
        """The ``cordsnet.*`` string map (what exports embed; :meth:`from_metadata` reads it back)."""
        ins, outs = self.io_names()
        return {
            PREFIX + "format_version": self.format_version,
            PREFIX + "graph": self.graph,
            PREFIX + "config": self.config.to_json(),
            PREFIX + "steps": str(self.steps),
            PREFIX + "spontaneous_steps": str(self.spontaneous_steps),
            PREFIX + "alpha": repr(float(self.alpha)),
            PREFIX + "readout": self.readout,
            PREFIX + "record": json.dumps(list(self.record)),
            PREFIX + "dtype": self.dtype,
            PREFIX + "batch": "dynamic" if self.batch is None else str(self.batch),
            PREFIX + "preset": json.dumps(self.preset) if self.preset is not None else "null",
            PREFIX + "version": self.version,
            PREFIX + "checkpoint_sha256": self.checkpoint_sha256,
            PREFIX + "state_dict_sha256": self.state_dict_sha256,
            PREFIX + "spontaneous_state": encode_spontaneous_state(
                [np.asarray(s, DTYPES[self.dtype]) for s in self.spontaneous]),
            PREFIX + "inputs": json.dumps(ins),
            PREFIX + "outputs": json.dumps(outs),
            PREFIX + "exporter": self.exporter,
            **({PREFIX + "steps_per_call": str(self.steps_per_call)} if self.steps_per_call != 1 else {}),
            **({PREFIX + "decision": json.dumps(self.decision.to_manifest())} if self.decision is not None else {}),
        }

    def companion(self, role: str) -> "ArtifactInfo":
        """The info of a companion graph (e.g. "encode"): the same protocol, its own kind and I/O."""
        kind = self.kind
        if role not in kind.companions:
            raise ValueError(f"role: a {self.graph!r} graph has companions {list(kind.companions)}, got {role!r}")
        return dataclasses.replace(self, graph=role, readout="last", record=(), decision=None, metadata={})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field (config as a dict, batch None when dynamic), spontaneous state summarised."""
        ins, outs = self.io_table()
        return {
            "format_version": self.format_version,
            "graph": self.graph,
            "config": self.config.to_dict(),
            "steps": self.steps,
            "spontaneous_steps": self.spontaneous_steps,
            "alpha": self.alpha,
            "readout": self.readout,
            "record": list(self.record),
            "dtype": self.dtype,
            "batch": self.batch,
            "steps_per_call": self.steps_per_call,
            "preset": self.preset,
            "version": self.version,
            "exporter": self.exporter,
            "checkpoint_sha256": self.checkpoint_sha256,
            "state_dict_sha256": self.state_dict_sha256,
            "inputs": ins,
            "outputs": outs,
            "spontaneous_state": [
                {"area": i, "shape": list(r.shape), "dtype": str(r.dtype), "mean": float(np.mean(r)),
                 "max": float(np.max(r))} for i, r in enumerate(self.spontaneous)],
        }

    def to_manifest(self, *, file: str, format: str, sha256: str, size_bytes: int,
                    companions: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
        """The client manifest (schema in docs/export.md): plain JSON, no protobuf needed to read it.

        Args:
            file: the artifact's file name (no directory).
            format: a key of :data:`FORMATS`.
            sha256, size_bytes: of the artifact's final bytes.
            companions: ``{"role", "file", "sha256"}`` per companion file (encode graph, external data).
        """
        ins, outs = self.io_table()
        preset = self.preset
        return {
            "cordsnet_manifest": MANIFEST_VERSION,
            "format_version": self.format_version,
            "cordsnet_version": self.version,
            "artifact": {"file": file, "format": format, "sha256": sha256, "size_bytes": int(size_bytes)},
            "companions": [dict(c) for c in companions],
            "graph": self.graph,
            "config": self.config.to_dict(),
            "protocol": {"steps": self.steps, "spontaneous_steps": self.spontaneous_steps, "alpha": self.alpha,
                         "dt_ms": self.alpha * 10.0, "readout": self.readout, "record": list(self.record),
                         **({"steps_per_call": self.steps_per_call} if self.steps_per_call != 1 else {})},
            "dtype": self.dtype,
            "batch": self.batch,
            "inputs": ins,
            "outputs": outs,
            "preset": preset,
            "spontaneous_state": {"encoding": "base64-float32-le", "areas": [
                {"shape": list(s.shape),
                 "data": base64.b64encode(np.ascontiguousarray(s, dtype="<f4").tobytes()).decode("ascii")}
                for s in self.spontaneous]},
            **({"decision": self.decision.to_manifest()} if self.decision is not None else {}),
            "checkpoint_sha256": self.checkpoint_sha256,
            "state_dict_sha256": self.state_dict_sha256,
            "exporter": self.exporter,
        }

    # ------------------------------------------------------------------------------------ I/O
    @property
    def kind(self) -> GraphKind:
        return GRAPH_KINDS[self.graph]

    def io_names(self) -> tuple[list[str], list[str]]:
        """(inputs, outputs) names of this graph (:func:`io_names`)."""
        return io_names(self.graph, self.config.depth, self.readout, self.record)

    def io_table(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every input and output with its shape and dtype, as the manifest lists them.

        Shapes use "batch" for a dynamic batch dimension and "steps" for the time dimension of a
        graph whose step count is an input; per-step outputs are time-major (steps, B, ...).
        """
        c = self.config
        b: int | str = "batch" if self.batch is None else self.batch
        t: int | str = "steps" if self.kind.steps_input else self.steps
        shapes: dict[str, list[int | str]] = {"image": [b, *c.input_shape], "steps": [],
                                              "skip": [b, *c.drive_shape], "ff0": [b, *c.drive_shape],
                                              "logits": [t, b, c.num_classes] if self.readout == "all"
                                              else [b, c.num_classes]}
        for i, s in enumerate(c.state_shapes):
            shapes[f"state_{i}"] = shapes[f"next_state_{i}"] = [b, *s]
            shapes[f"rates_{i}"] = [t, b, *s]
        ins, outs = self.io_names()

        def table(names: list[str]) -> list[dict[str, Any]]:
            return [{"name": n, "shape": shapes[n], "dtype": "int64" if n == "steps" else DTYPES[self.dtype].name}
                    for n in names]

        return table(ins), table(outs)

    def batch_axis(self, name: str) -> int:
        """The batch dimension of input/output `name`: 1 for time-major per-step outputs, else 0."""
        return 1 if name.startswith("rates_") or (name == "logits" and self.readout == "all") else 0

    def check_graph_io(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]],
                       source: str = "model") -> None:
        """Check the metadata against the graph's own inputs and outputs.

        Args:
            inputs, outputs: ``{"name", "shape", "dtype"}`` per graph input/output, as the graph
                declares them (a dimension is an int, or a str/None when symbolic or unknown).
            source: what to call the artifact in messages.

        Raises:
            ValueError: one line saying which claim (graph kind, num_classes, image_size, batch,
                dtype, ...) the graph contradicts.
        """
        want_in, want_out = self.io_table()
        for what, have, want in (("inputs", inputs, want_in), ("outputs", outputs, want_out)):
            names = [h["name"] for h in have]
            if names != [w["name"] for w in want]:
                raise ValueError(f"model: {source}: its metadata describes a {self.graph!r} graph of depth "
                                 f"{self.config.depth} with {what} {[w['name'] for w in want]}, but the graph's "
                                 f"{what} are {names} (metadata from another graph?)")
            for h, w in zip(have, want):
                dtype = str(h.get("dtype") or w["dtype"])
                if dtype != w["dtype"]:
                    raise ValueError(f"model: {source}: {what[:-1]} {h['name']!r} is {dtype}, but the metadata "
                                     f"claims {w['dtype']} (cordsnet.dtype {self.dtype!r})")
                shape = h.get("shape")
                if shape is None:
                    continue
                if len(shape) != len(w["shape"]) or not all(_dim_ok(d, e) for d, e in zip(shape, w["shape"])):
                    raise ValueError(f"model: {source}: {what[:-1]} {h['name']!r} has shape {list(shape)}, but the "
                                     f"metadata implies {w['shape']} ({self._claims()})")

    def _claims(self) -> str:
        c = self.config
        return (f"config num_classes {c.num_classes}, in_channels {c.in_channels}, image_size {c.image_size}, "
                f"depth {c.depth}; batch {'dynamic' if self.batch is None else self.batch}; steps {self.steps}; "
                f"readout {self.readout!r}")

    def spontaneous_state(self) -> list[np.ndarray]:
        """The state after the spontaneous phase as float32, one (1, c_i, H_i, W_i) array per area."""
        return [np.asarray(s, dtype=np.float32) for s in self.spontaneous]


def _dim_ok(have: Any, want: int | str) -> bool:
    if isinstance(want, str):  # symbolic: any symbolic or unknown dimension, never a fixed size
        return not isinstance(have, (int, np.integer)) or isinstance(have, bool)
    if have is None:  # unknown: cannot contradict
        return True
    if isinstance(have, str):  # symbolic where the metadata claims a fixed size (e.g. batch 2 vs dynamic)
        return False
    return int(have) == want


def _int_text(text: str) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?\d{1,30}", text):
        raise ValueError(f"expected an integer, got {text[:40]!r}")
    return int(text)


def _batch_text(text: str) -> int | None:
    if text == "dynamic":
        return None
    return validate.integer("batch", _int_text(text), min=1, max=1 << 20, why="or 'dynamic'")


def _json_list(text: str) -> list[Any]:
    value = _loads(text)
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list, got {type(value).__name__}")
    return value


def _preset(value: Any, config: CordsNetConfig) -> dict[str, Any] | None:
    """A preset dict checked against the config (channels, classes, finite positive std)."""
    if value is None:
        return None
    value = dict(validate.mapping("preset", value))
    for key in ("mean", "std"):
        v = value.get(key)
        if not isinstance(v, list) or len(v) != config.in_channels:
            raise ValueError(f"preset {key}: expected a list of {config.in_channels} numbers (one per input channel), "
                             f"got {v!r}")
        for x in v:
            validate.number(f"preset {key}", x, low=0.0 if key == "std" else None, low_open=key == "std")
    names = value.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != config.num_classes
                              or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"preset class_names: expected null or {config.num_classes} names (config num_classes), "
                         f"got {len(names) if isinstance(names, list) else type(names).__name__}")
    validate.number("preset resize_ratio", value.get("resize_ratio", 1.0), low=0.0, high=16.0, low_open=True)
    return value


def _spontaneous(meta: Mapping[str, str], config: CordsNetConfig, steps: int, dtype: str,
                 where: str) -> tuple[np.ndarray, ...]:
    shapes = [(1, *s) for s in config.state_shapes]
    if PREFIX + "spontaneous_state" not in meta:
        if steps == 0:
            return tuple(np.zeros(s, DTYPES[dtype]) for s in shapes)
        raise ValueError(f"{where} lacks 'cordsnet.spontaneous_state' (needed to start from the state after "
                         f"{steps} spontaneous steps)")
    try:
        states = decode_spontaneous_state(meta[PREFIX + "spontaneous_state"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if len(states) != len(shapes):
        raise ValueError(f"{where}: 'cordsnet.spontaneous_state' must list {len(shapes)} areas (config depth), "
                         f"got {len(states)}")
    for i, (arr, shape) in enumerate(zip(states, shapes)):
        if arr.shape != shape:
            raise ValueError(f"{where}: 'cordsnet.spontaneous_state' area {i} has shape {arr.shape}, expected {shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: 'cordsnet.spontaneous_state' area {i} holds NaN or infinite rates; "
                             "the artifact is corrupt (export it again)")
    return tuple(states)


# ------------------------------------------------------------------------------------ reading
MAX_METADATA_BYTES = 64 << 20  # a metadata map or manifest: the largest spontaneous state is a few MB
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
    from ._quiet import native_stderr_captured

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


def _load_manifest_json(path: Path) -> dict[str, Any]:
    data = read_json_file(path, "manifest", max_bytes=MAX_METADATA_BYTES)
    if not isinstance(data, dict) or "cordsnet_manifest" not in data:
        raise ValueError(f"manifest: {str(path)!r} is not a cordsnet manifest (no 'cordsnet_manifest' key)")
    if data["cordsnet_manifest"] != MANIFEST_VERSION or isinstance(data["cordsnet_manifest"], bool):
        raise ValueError(f"manifest: {str(path)!r} has cordsnet_manifest {data['cordsnet_manifest']!r}; this "
                         f"cordsnet reads {MANIFEST_VERSION}")
    return data


def _manifest_to_metadata(data: Mapping[str, Any], source: str) -> dict[str, str]:
    """The ``cordsnet.*`` map a manifest stands for, so that one parser validates both."""
    def need(obj: Mapping[str, Any], key: str, where: str = "") -> Any:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ValueError(f"manifest: {source} lacks {where}{key!r}")
        return obj[key]

    protocol = need(data, "protocol")
    spont = need(data, "spontaneous_state")
    if need(spont, "encoding", "spontaneous_state.") != "base64-float32-le":
        raise ValueError(f"manifest: {source}: spontaneous_state.encoding: expected 'base64-float32-le', got "
                         f"{spont.get('encoding')!r}")
    areas = need(spont, "areas", "spontaneous_state.")
    if not isinstance(areas, list):
        raise ValueError(f"manifest: {source}: spontaneous_state.areas: expected a list, got {type(areas).__name__}")
    batch = need(data, "batch")
    alpha = need(protocol, "alpha", "protocol.")
    dt = need(protocol, "dt_ms", "protocol.")
    if not (isinstance(alpha, (int, float)) and isinstance(dt, (int, float)) and math.isclose(dt, alpha * 10.0)):
        raise ValueError(f"manifest: {source}: protocol.dt_ms {dt!r} is not alpha * 10 ms (alpha {alpha!r})")
    return {
        PREFIX + "format_version": str(need(data, "format_version")),
        PREFIX + "graph": str(need(data, "graph")),
        PREFIX + "config": json.dumps(need(data, "config")),
        PREFIX + "steps": json.dumps(need(protocol, "steps", "protocol.")),
        PREFIX + "spontaneous_steps": json.dumps(need(protocol, "spontaneous_steps", "protocol.")),
        PREFIX + "alpha": json.dumps(alpha),
        PREFIX + "readout": str(need(protocol, "readout", "protocol.")),
        PREFIX + "record": json.dumps(need(protocol, "record", "protocol.")),
        PREFIX + "dtype": str(need(data, "dtype")),
        PREFIX + "batch": "dynamic" if batch is None else json.dumps(batch),
        PREFIX + "preset": json.dumps(data.get("preset")),
        PREFIX + "version": str(data.get("cordsnet_version", "")),
        PREFIX + "checkpoint_sha256": str(data.get("checkpoint_sha256", "")),
        PREFIX + "state_dict_sha256": str(data.get("state_dict_sha256", "")),
        PREFIX + "exporter": str(data.get("exporter", "")),
        PREFIX + "steps_per_call": json.dumps(protocol.get("steps_per_call", 1)),
        PREFIX + "spontaneous_state": json.dumps([{"shape": need(a, "shape", "spontaneous_state.areas[]."),
                                                   "dtype": "float32",
                                                   "data": need(a, "data", "spontaneous_state.areas[].")}
                                                  for a in areas]),
        **({PREFIX + "decision": json.dumps(data["decision"])} if "decision" in data else {}),
    }


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
    if not isinstance(file, str) or not file or Path(file).name != file:
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
            and Path(c["file"]).name == c["file"] and isinstance(c.get("sha256"), str) for c in companions):
        raise ValueError(f"manifest: {source}: companions: expected a list of {{'role', 'file', 'sha256'}} objects")
    want_in, want_out = info.io_table()
    if data.get("inputs") != want_in or data.get("outputs") != want_out:
        raise ValueError(f"manifest: {source}: inputs/outputs do not match its graph kind and config (expected "
                         f"inputs {[w['name'] for w in want_in]} with shapes {[w['shape'] for w in want_in]})")
    return Manifest(path=path, info=info, file=file, format=fmt, sha256=sha, size_bytes=size,
                    companions=tuple(dict(c) for c in companions), data=data)


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
        if p.exists() and file_sha256(p) != c["sha256"]:
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
    return manifest


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
