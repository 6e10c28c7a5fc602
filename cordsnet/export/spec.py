"""The validated options of one export (:class:`ExportSpec`), shared by the API and every backend."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .. import validate
from ..artifact import DTYPES, FORMATS, GRAPH_KINDS, GRAPHS, MAX_OPSET, MAX_STEPS, MIN_OPSET, READOUTS
from ..model import CordsNet

__all__ = ["DEFAULT_EXPORTER", "EXPORTERS", "ExportSpec", "TORCH_DTYPES", "TRACE_BATCH", "make_spec"]

# ONNX exporters: "legacy" is torch.onnx's TorchScript-based exporter (dynamo=False), "dynamo" the
# torch.export-based one. The legacy graph runs faster on onnxruntime CPU (benchmarks/bench_export.py).
from ..names import EXPORTERS  # noqa: E402 (the one list: cordsnet.names)
DEFAULT_EXPORTER = "legacy"
TRACE_BATCH = 2  # batch of the example inputs when the batch is dynamic
# Precision -> dtype the wrappers are traced in. bfloat16 and int8 graphs are traced in float32 and
# converted afterwards (cordsnet.export.precision): weights to bfloat16, or static QDQ quantisation.
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                        "bfloat16": torch.float32, "int8": torch.float32}
# Precisions only some formats write (converted after tracing: ONNX only); float32 and float16 are
# traced directly, and a format backend that cannot write one refuses it itself.
DTYPE_FORMATS: dict[str, tuple[str, ...]] = {"bfloat16": ("onnx",), "int8": ("onnx",)}
# Graph kinds an int8 export quantises (each kind's entry says: cordsnet.artifact.GraphKind.int8).
INT8_GRAPHS: tuple[str, ...] = tuple(k.name for k in GRAPH_KINDS.values() if k.exported and k.int8)
assert set(TORCH_DTYPES) == set(DTYPES), "every contract dtype needs its torch dtype"


@dataclass(frozen=True)
class ExportSpec:
    """Everything that fixes one exported graph (validated by :func:`make_spec`)."""

    graph: str  # a key of cordsnet.artifact.GRAPHS
    format: str  # a key of cordsnet.artifact.FORMATS
    steps: int  # stimulus steps (unrolled: fixed in the graph; else the default recorded)
    spontaneous_steps: int  # blank steps whose end state is baked in
    alpha: float  # dt / tau baked into the graph
    batch: int | None  # static batch, None for a dynamic batch dimension
    readout: str  # "last" or "all"
    record: tuple[int, ...]  # areas whose rates are outputs
    dtype: str  # a key of cordsnet.artifact.DTYPES
    steps_per_call: int = 1  # Euler steps per call of a multistep graph (1 for every other kind)
    opset: int | None = None  # ONNX opset (None: the default)
    exporter: str = "legacy"  # ONNX exporter, "legacy" or "dynamo"

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]

    @property
    def trace_batch(self) -> int:
        """Batch of the example inputs the graph is traced with."""
        return self.batch if self.batch is not None else TRACE_BATCH

    def wrapper_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every wrapper in :mod:`cordsnet.export.wrappers`."""
        return {"alpha": self.alpha, "spontaneous_steps": self.spontaneous_steps, "dtype": self.torch_dtype}


def make_spec(model: CordsNet, *, format: str, graph: str, steps: int | None, spontaneous_steps: int | None,
              alpha: float | None, batch: int | None, readout: str, record: Sequence[int] | None,
              opset: int | None, dtype: str, exporter: str | None, steps_per_call: int | None = None) -> ExportSpec:
    """Validate the export options against `model` (errors name the argument, value and expectation)."""
    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    validate.choice("format", format, list(FORMATS))
    validate.choice("graph", graph, list(GRAPHS))
    validate.choice("readout", readout, READOUTS)
    validate.choice("dtype", dtype, list(DTYPES))
    if format not in DTYPE_FORMATS.get(dtype, (format,)):
        raise ValueError(f"dtype: a {dtype} graph is written in format {list(DTYPE_FORMATS[dtype])}, got format "
                         f"{format!r} (it writes float32 and float16)")
    if dtype == "int8" and graph not in INT8_GRAPHS:
        raise ValueError(f"graph: an int8 export quantises graph {list(INT8_GRAPHS)}, got {graph!r} (onnxruntime's "
                         "quantiser does not reach into the Loop body)")
    exporter = DEFAULT_EXPORTER if exporter is None else validate.choice("exporter", exporter, EXPORTERS)
    c = model.config
    why = "longer protocols are not exported; use a loop or stepwise graph and pass steps when running it"
    steps = validate.optional_integer("steps", steps, c.steps, min=1, max=MAX_STEPS, why=why)
    validate.integer("steps", steps, min=1, max=MAX_STEPS, why=why)  # the config's own default too
    spont = validate.optional_integer("spontaneous_steps", spontaneous_steps, c.spontaneous_steps, min=0,
                                      max=MAX_STEPS, why="the spontaneous phase converges long before")
    alpha = model.resolve_protocol(alpha=alpha).alpha
    if batch is not None:
        validate.positive_int("batch", batch, max=1 << 20)
    areas = model.validate_areas(record) if record is not None else ()
    if not GRAPH_KINDS[graph].per_step_outputs and (readout != "last" or areas):
        raise ValueError(f"readout/record: the {graph} graph returns the whole state after every step "
                         "(next_state_i are the rates); use readout='last' and no record with it")
    if format == "exported-program" and GRAPH_KINDS[graph].steps_input and (readout != "last" or areas):
        # torch.export (2.14) cannot carry per-step buffers of data-dependent size through while_loop.
        raise ValueError("readout/record: the exported-program loop graph supports readout='last' without "
                         "recorded areas; use graph 'unrolled' for per-step outputs")
    if opset is not None:
        if format != "onnx":
            raise ValueError(f"opset: only applies to --format onnx, got format {format!r}")
        validate.integer("opset", opset, min=MIN_OPSET, max=MAX_OPSET)
    if GRAPH_KINDS[graph].multi_step:
        if steps_per_call is None:
            raise ValueError(f"steps_per_call: the {graph} graph needs the number of steps one call advances "
                             f"(a divisor of steps {steps}), got None")
        per_call = validate.integer("steps_per_call", steps_per_call, min=1, max=steps)
        if steps % per_call:
            raise ValueError(f"steps_per_call: expected a divisor of steps {steps} (the verified protocol is whole "
                             f"calls), got {per_call}")
    elif steps_per_call is not None and steps_per_call != 1:
        raise ValueError(f"steps_per_call: only the multistep graph advances several steps per call; graph {graph!r} "
                         f"advances 1, got {steps_per_call!r}")
    else:
        per_call = 1
    spec = ExportSpec(graph=graph, format=format, steps=steps, spontaneous_steps=spont, alpha=alpha,
                      batch=batch, readout=readout, record=tuple(areas), dtype=dtype, opset=opset,
                      exporter=exporter, steps_per_call=per_call)
    check = getattr(importlib.import_module(FORMATS[format].backend), "check_spec", None)
    if check is not None:  # a backend refuses what it cannot write (e.g. executorch: no loop, float32 only)
        check(spec)
    return spec
