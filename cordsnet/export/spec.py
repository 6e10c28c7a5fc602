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
EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
DEFAULT_EXPORTER = "legacy"
TRACE_BATCH = 2  # batch of the example inputs when the batch is dynamic
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
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
    dtype: str  # "float32" or "float16"
    opset: int | None  # ONNX opset (None: the default)
    exporter: str  # ONNX exporter, "legacy" or "dynamo"

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
              opset: int | None, dtype: str, exporter: str | None) -> ExportSpec:
    """Validate the export options against `model` (errors name the argument, value and expectation)."""
    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    validate.choice("format", format, list(FORMATS))
    validate.choice("graph", graph, list(GRAPHS))
    validate.choice("readout", readout, READOUTS)
    validate.choice("dtype", dtype, list(DTYPES))
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
    if format == "exported-program" and graph == "loop" and (readout != "last" or areas):
        # torch.export (2.14) cannot carry per-step buffers of data-dependent size through while_loop.
        raise ValueError("readout/record: the exported-program loop graph supports readout='last' without "
                         "recorded areas; use graph 'unrolled' for per-step outputs")
    if opset is not None:
        if format != "onnx":
            raise ValueError(f"opset: only applies to --format onnx, got format {format!r}")
        validate.integer("opset", opset, min=MIN_OPSET, max=MAX_OPSET)
    spec = ExportSpec(graph=graph, format=format, steps=steps, spontaneous_steps=spont, alpha=alpha,
                      batch=batch, readout=readout, record=tuple(areas), dtype=dtype, opset=opset,
                      exporter=exporter)
    check = getattr(importlib.import_module(FORMATS[format].backend), "check_spec", None)
    if check is not None:  # a backend refuses what it cannot write (e.g. executorch: no loop, float32 only)
        check(spec)
    return spec
