"""The ``cordsnet.*`` metadata map, parsed by one parser into :class:`ArtifactInfo`; the spontaneous state's encoding.

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import __version__, validate
from .._io import load_json, read_json_file
from ..config import MAX_STEPS, CordsNetConfig
from ..decision import DecisionRule
from .kinds import (
    DTYPES,
    FORMAT_VERSION,
    GRAPH_KINDS,
    MANIFEST_VERSION,
    MAX_METADATA_BYTES,
    PREFIX,
    READOUTS,
    SUPPORTED_FORMAT_VERSIONS,
    GraphKind,
    io_names,
)


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
        return not validate.is_int(have)
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


# --------------------------------------------------------------- the manifest, read back into the map
def _load_manifest_json(path: Path) -> dict[str, Any]:
    data = read_json_file(path, "manifest", max_bytes=MAX_METADATA_BYTES)
    if not isinstance(data, dict) or "cordsnet_manifest" not in data:
        raise ValueError(f"manifest: {str(path)!r} is not a cordsnet manifest (no 'cordsnet_manifest' key)")
    if not validate.is_int(data["cordsnet_manifest"]) or data["cordsnet_manifest"] != MANIFEST_VERSION:
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
