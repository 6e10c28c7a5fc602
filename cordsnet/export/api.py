"""``export``: turn a CordsNet into a verified ONNX / TorchScript / ExportedProgram graph with metadata.

Flow: validate the options -> build the graph wrapper(s) -> write every file to a temporary path
(:func:`cordsnet._io.atomic_path`) -> verify the temporary files against the PyTorch model -> rename
them into place. A failure at any point (exporter error, checker error, verification failure,
interrupt) leaves no new file and never touches a file already at the destination.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__
from ..model import CordsNet, READOUTS
from .metadata import FORMAT_VERSION, encode_path, encode_spontaneous_state

__all__ = [
    "DEFAULT_EXPORTER",
    "DTYPES",
    "EXPORTERS",
    "ExportReport",
    "ExportSpec",
    "FORMATS",
    "GRAPHS",
    "encode_path",
    "export",
    "io_names",
]

logger = logging.getLogger("cordsnet.export")

# Graph kinds and what each needs; formats -> (suffix, backend module). Registries, not if/elif chains.
GRAPHS: dict[str, str] = {
    "unrolled": "the time loop unrolled, steps fixed in the graph; input image",
    "loop": "the time loop as an ONNX Loop / scripted loop; inputs image and steps (int64 scalar)",
    "stepwise": "one Euler step; inputs image and state_0..state_{D-1}",
    "stepwise-drive": "one Euler step from precomputed drive terms (skip, ff0), with an encode graph",
}
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": (".onnx", "cordsnet.export.onnx"),
    "torchscript": (".pt", "cordsnet.export.torchscript"),
    "exported-program": (".pt2", "cordsnet.export.exported_program"),
    "executorch": (".pte", "cordsnet.export.executorch"),  # optional extra: pip install -e ".[executorch]"
}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
# ONNX exporters: "legacy" is torch.onnx's TorchScript-based exporter (dynamo=False), "dynamo" the
# torch.export-based one. The legacy graph runs faster on onnxruntime CPU (benchmarks/bench_export.py).
EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
DEFAULT_EXPORTER = "legacy"
TRACE_BATCH = 2  # batch of the example inputs when the batch is dynamic
STEPWISE_GRAPHS = ("stepwise", "stepwise-drive")

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class ExportSpec:
    """Everything that fixes one exported graph (validated by :func:`export`)."""

    graph: str
    format: str
    steps: int
    spontaneous_steps: int
    alpha: float
    batch: int | None
    readout: str
    record: tuple[int, ...]
    dtype: str
    opset: int | None
    exporter: str

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def trace_batch(self) -> int:
        return self.batch if self.batch is not None else TRACE_BATCH

    def wrapper_kwargs(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "spontaneous_steps": self.spontaneous_steps, "dtype": self.torch_dtype}


def io_names(graph: str, depth: int, readout: str = "last", record: Sequence[int] = ()) -> tuple[list[str], list[str]]:
    """Input and output names of a graph kind (the contract applications rely on).

    Returns:
        (inputs, outputs); for "stepwise-drive" these are the step graph's (the encode graph has
        input "image" and outputs "skip", "ff0").
    """
    states = [f"state_{i}" for i in range(depth)]
    nexts = [f"next_state_{i}" for i in range(depth)]
    rates = [f"rates_{a}" for a in record]
    table = {
        "unrolled": (["image"], ["logits", *rates]),
        "loop": (["image", "steps"], ["logits", *rates]),
        "stepwise": (["image", *states], ["logits", *nexts]),
        "stepwise-drive": (["skip", "ff0", *states], ["logits", *nexts]),
    }
    return table[graph]


@dataclass
class ExportReport:
    """What an export wrote and how it verified."""

    path: Path
    format: str
    graph: str
    exporter: str
    files: list[Path]
    export_seconds: float  # building, checking and writing the graph(s)
    size_bytes: int
    spontaneous_seconds: float = 0.0  # computing the spontaneous end state baked into the graph
    verification: Any | None = None  # a VerificationReport, None with verify=False
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    backend_details: dict[str, Any] = field(default_factory=dict)  # what the backend's write returned (e.g. delegation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "graph": self.graph,
            "exporter": self.exporter,
            "files": [str(f) for f in self.files],
            "export_seconds": round(self.export_seconds, 3),
            "spontaneous_seconds": round(self.spontaneous_seconds, 3),
            "size_bytes": self.size_bytes,
            "verification": self.verification.to_dict() if self.verification is not None else None,
            **self.backend_details,
        }


# ------------------------------------------------------------------------------------- validation
def _choice(name: str, value: Any, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"{name}: expected one of {list(valid)}, got {value!r}")
    return value


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) >= 0.0:
        raise ValueError(f"{name}: expected a float >= 0, got {value!r}")
    return float(value)


def make_spec(model: CordsNet, *, format: str, graph: str, steps: int | None, spontaneous_steps: int | None,
              alpha: float | None, batch: int | None, readout: str, record: Sequence[int] | None,
              opset: int | None, dtype: str, exporter: str | None) -> ExportSpec:
    """Validate the export options against `model` (errors name the argument, value and expectation)."""
    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    _choice("format", format, list(FORMATS))
    _choice("graph", graph, list(GRAPHS))
    _choice("readout", readout, list(READOUTS))
    _choice("dtype", dtype, list(DTYPES))
    exporter = DEFAULT_EXPORTER if exporter is None else _choice("exporter", exporter, EXPORTERS)
    c = model.config
    steps = c.steps if steps is None else _int("steps", steps, 1)
    spont = c.spontaneous_steps if spontaneous_steps is None else _int("spontaneous_steps", spontaneous_steps, 0)
    alpha = model.resolve_protocol(alpha=alpha).alpha
    if batch is not None:
        _int("batch", batch, 1)
    areas = model.validate_areas(record) if record is not None else ()
    if graph in STEPWISE_GRAPHS and (readout != "last" or areas):
        raise ValueError(f"readout/record: the {graph} graph returns the whole state after every step "
                         "(next_state_i are the rates); use readout='last' and no record with it")
    if format == "exported-program" and graph == "loop" and (readout != "last" or areas):
        raise ValueError("readout/record: the exported-program loop graph supports readout='last' without "
                         "recorded areas; use graph 'unrolled' for per-step outputs")
    if opset is not None:
        from .onnx import MAX_OPSET, MIN_OPSET

        if format != "onnx":
            raise ValueError(f"opset: only applies to --format onnx, got format {format!r}")
        if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
            raise ValueError(f"opset: expected an int in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    return ExportSpec(graph=graph, format=format, steps=steps, spontaneous_steps=spont, alpha=alpha,
                      batch=batch, readout=readout, record=tuple(areas), dtype=dtype, opset=opset,
                      exporter=exporter)


def build_metadata(model: CordsNet, spec: ExportSpec, *, checkpoint_sha256: str | None,
                   inputs: Sequence[str], outputs: Sequence[str], exporter: str) -> dict[str, str]:
    """The ``cordsnet.*`` string map (see docs/export.md and :mod:`cordsnet.export.metadata`)."""
    from ..checkpoint import state_dict_sha256

    with torch.no_grad():
        spont = [r.detach().to("cpu", spec.torch_dtype).numpy() for r in
                 model.cached_spontaneous_state(spec.spontaneous_steps, spec.alpha)]
    preset = model.config.preset
    return {
        "cordsnet.format_version": FORMAT_VERSION,
        "cordsnet.graph": spec.graph,
        "cordsnet.config": model.config.to_json(),
        "cordsnet.steps": str(spec.steps),
        "cordsnet.spontaneous_steps": str(spec.spontaneous_steps),
        "cordsnet.alpha": repr(float(spec.alpha)),
        "cordsnet.readout": spec.readout,
        "cordsnet.record": json.dumps(list(spec.record)),
        "cordsnet.dtype": spec.dtype,
        "cordsnet.batch": "dynamic" if spec.batch is None else str(spec.batch),
        "cordsnet.preset": json.dumps(preset.to_dict()) if preset is not None else "null",
        "cordsnet.version": __version__,
        "cordsnet.checkpoint_sha256": checkpoint_sha256 or "",
        "cordsnet.state_dict_sha256": state_dict_sha256(model.state_dict()),
        "cordsnet.spontaneous_state": encode_spontaneous_state(spont),
        "cordsnet.inputs": json.dumps(list(inputs)),
        "cordsnet.outputs": json.dumps(list(outputs)),
        "cordsnet.exporter": exporter,
    }


# ----------------------------------------------------------------------------------------- export
def export(model: CordsNet, output: str | os.PathLike, *, format: str = "onnx", graph: str = "unrolled",
           steps: int | None = None, spontaneous_steps: int | None = None, alpha: float | None = None,
           batch: int | None = None, readout: str = "last", record: Sequence[int] | None = None,
           opset: int | None = None, dtype: str = "float32", verify: bool = True, atol: float = 1e-4,
           rtol: float = 1e-3, checkpoint_sha256: str | None = None, exporter: str | None = None,
           progress: ProgressFn | None = None) -> ExportReport:
    """Export `model` as a graph another application runs without the Python model.

    Args:
        model: the model (any device; exported from a CPU copy of its weights).
        output: destination file (.onnx / .pt / .pt2 by convention). A stepwise-drive export also
            writes its encode graph to ``<stem>.encode<suffix>`` beside it.
        format: "onnx", "torchscript" or "exported-program".
        graph: "unrolled", "loop", "stepwise" or "stepwise-drive" (see :data:`GRAPHS`).
        steps: stimulus steps (unrolled: fixed in the graph; loop: the default recorded in the
            metadata; stepwise: the steps verified); default ``config.steps``.
        spontaneous_steps: blank steps whose end state is baked in (0 = zero state); default from config.
        alpha: dt / tau baked into the graph; default ``config.alpha``.
        batch: fixed batch size; None (default) for a dynamic batch dimension.
        readout: "last" -> logits (B, K); "all" -> logits (steps, B, K). Not for stepwise graphs.
        record: areas whose rates (steps, B, c, H, W) become outputs ``rates_<area>``.
        opset: ONNX opset (default :data:`cordsnet.export.onnx.DEFAULT_OPSET`).
        dtype: "float32" or "float16" (weights and floating-point I/O).
        verify: run the written graph against the PyTorch model before keeping it (default True).
        atol, rtol: float32 tolerances of the verification.
        checkpoint_sha256: sha256 of the source checkpoint file ("" when not given); the hash of
            the state dict is always stored too, as ``cordsnet.state_dict_sha256``.
        exporter: ONNX exporter, "legacy" (TorchScript-based, default: the faster graph) or "dynamo".
        progress: called with a short phase description as the export proceeds.

    Returns:
        An :class:`ExportReport` (paths, timings, the verification report).

    Raises:
        ValueError: bad options, or the graph failed verification (:class:`VerificationError`);
            no file is written then, and an existing file is left untouched.
    """
    import importlib

    spec = make_spec(model, format=format, graph=graph, steps=steps, spontaneous_steps=spontaneous_steps,
                     alpha=alpha, batch=batch, readout=readout, record=record, opset=opset, dtype=dtype,
                     exporter=exporter)
    atol = _positive_float("atol", atol)
    rtol = _positive_float("rtol", rtol)
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"output: expected a file path, got the directory {str(output)!r}")
    say = progress or (lambda msg: logger.info(msg))
    backend = importlib.import_module(FORMATS[spec.format][1])
    exporter_name = spec.exporter if spec.format == "onnx" else backend.EXPORTER_NAME

    # Export from a CPU float32 copy in eval mode; the caller's model is not modified.
    source = _cpu_copy(model)
    t_spont = time.perf_counter()
    source.cached_spontaneous_state(spec.spontaneous_steps, spec.alpha)  # computed once, cached for every piece below
    spontaneous_seconds = time.perf_counter() - t_spont
    inputs, outputs = io_names(spec.graph, source.depth, spec.readout, spec.record)
    meta = build_metadata(source, spec, checkpoint_sha256=checkpoint_sha256, inputs=inputs, outputs=outputs,
                          exporter=exporter_name)
    targets = [output] + ([encode_path(output)] if spec.graph == "stepwise-drive" else [])

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack, torch.no_grad():
        temps = [stack.enter_context(backend.staged(t)) for t in targets]
        say(f"exporting {spec.graph} graph ({spec.format}, {spec.steps} steps)")
        details = backend.write(source, spec, meta, temps, progress=say) or {}
        export_seconds = time.perf_counter() - t0
        report = None
        if verify:
            say("verifying against the PyTorch model")
            from .verify import verify_artifact

            report = verify_artifact(temps[0], source, atol=atol, rtol=rtol, encode=temps[1:] or None,
                                     format=spec.format)
            logger.info("verification: %s", report.summary())
        size = sum(_size(t) for t in temps)
    return ExportReport(path=output, format=spec.format, graph=spec.graph, exporter=exporter_name,
                        files=targets, export_seconds=export_seconds, size_bytes=size,
                        spontaneous_seconds=spontaneous_seconds, verification=report, metadata=meta,
                        backend_details=details)


def _size(path: Path) -> int:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    return total + (data.stat().st_size if data.exists() else 0)


def _cpu_copy(model: CordsNet) -> CordsNet:
    """A float32 CPU copy in eval mode with the same weights and update slope."""
    copy = CordsNet(model.config)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
    copy.update_slope = float(model.update_slope)
    copy.eval()
    return copy


def spec_from_metadata(meta: dict[str, Any], format: str) -> ExportSpec:
    """An :class:`ExportSpec` from parsed metadata (:func:`cordsnet.export.metadata.parse_metadata`)."""
    return ExportSpec(graph=meta["graph"], format=format, steps=meta["steps"],
                      spontaneous_steps=meta["spontaneous_steps"], alpha=meta["alpha"],
                      batch=None if meta["batch"] == "dynamic" else meta["batch"], readout=meta["readout"],
                      record=tuple(meta["record"]), dtype=meta["dtype"], opset=None,
                      exporter=meta.get("exporter") or DEFAULT_EXPORTER)

