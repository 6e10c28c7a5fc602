"""ExecuTorch backend (``.pte``): on-device programs lowered to the XNNPACK delegate.

``torch.export`` of the graph wrapper -> ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])``
-> ``to_executorch()``. Optional dependency: ``pip install -e ".[executorch]"`` (executorch 1.5.1).

* Graph kinds: unrolled, stepwise and stepwise-drive (+ its encode program ``<stem>.encode.pte``).
  The loop kind is not offered (ExecuTorch runs a step program in the application's own loop).
* Every convolution, pool and linear layer is delegated to XNNPACK. Two of the model's ops have forms
  XNNPACK refuses, so the export wrappers here express them in equal forms it takes:
  ``AvgPool2d(3, 2, padding=1, count_include_pad=True)`` becomes zero padding then ``avg_pool2d(3, 2)``
  (the divisor is 9 everywhere in both), and ``mean(dim=(2, 3))`` becomes ``mean(keepdim=True)`` then
  a reshape. ``tests/test_executorch.py`` checks both are equal to the model's forms.
  Other kinds and float16 are refused by ``make_spec`` (:func:`check_spec`) before any work.
* Batch: a ``.pte`` plans its memory for a bound. ``batch=N`` exports for exactly N images; without it
  the program takes 1..:data:`MAX_BATCH` images (memory planned for the maximum), recorded as
  ``cordsnet.max_batch``; :class:`cordsnet.runtime.executorch.PteStepSession` refuses more with a clear error.
* Metadata: the ``cordsnet.*`` map (plus ``cordsnet.max_batch``) as JSON returned by the constant
  method ``cordsnet_metadata`` of the program, read by :func:`cordsnet.artifact.read_metadata`
  (the ``pte`` reader); the client manifest beside the program carries the same facts.
* Verification: :func:`open_runner` runs the program with ``executorch.runtime``, like the other formats.
* The export report: :func:`write` returns ``{"delegation": [...]}``, per program the delegated and
  portable (non-delegated) node counts in total and by operator (:func:`delegation`); the export
  report carries it as ``details``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import validate
from .._io import file_sha256
from ..artifact import GRAPH_KINDS, PREFIX, PTE_METADATA_METHOD, ArtifactInfo, load_pte_program, remember_safe_pte
from ..model import CordsNet, DriveTerms, Weights
from . import wrappers as W
from ._staging import staged
from .spec import ExportSpec
from .. import functional as CF

__all__ = ["EXPORTER_NAME", "GRAPHS", "MAX_BATCH", "METADATA_METHOD", "check_spec", "delegation",
           "executorch_missing", "load", "open_runner", "staged", "write"]

EXPORTER_NAME = "executorch/xnnpack"
MAX_BATCH = 8  # largest batch of a program exported without a fixed batch (its planned memory bound)
METADATA_METHOD = PTE_METADATA_METHOD  # constant method of the program returning the metadata JSON
GRAPHS = tuple(k.name for k in GRAPH_KINDS.values() if k.exported and k.writes("executorch"))  # from the kinds' entries
_MUST_DELEGATE = ("convolution", "pool", "linear", "addmm", "mm")  # op names that must never run portable


def executorch_missing() -> str | None:
    """Why ExecuTorch cannot be used here (None when it can)."""
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as exc:
        return f"executorch is not installed ({exc}); pip install -e \".[executorch]\""
    return None


# ------------------------------------------------------------------ XNNPACK-friendly graph wrappers
class _XnnpackForms:
    """Mixin over a :mod:`cordsnet.export.wrappers` class: the drive pool and the readout mean in forms
    XNNPACK delegates (equal results; see the module docstring)."""

    _model: CordsNet

    def _drive_terms(self, w: Weights, image: Tensor) -> DriveTerms:
        x = F.conv2d(image, w.inp_conv, stride=2, padding=3)  # the model's input conv (cordsnet.functional.drive)
        u = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # == AvgPool2d(3, 2, padding=1, count_include_pad=True)
        return CF.drive_terms(self._model.dynamics, w, u)

    def _readout(self, w: Weights, state: Sequence[Tensor]) -> Tensor:
        top, below = self._model.readout_areas
        pooled = (torch.relu(state[top]) + torch.relu(state[below])).mean(dim=(2, 3), keepdim=True)
        return F.linear(pooled.reshape(pooled.shape[0], -1), w.out_weight, w.out_bias)  # == mean(dim=(2, 3))


# The wrapper of each graph kind this backend writes, in XNNPACK's forms: the kind's traced wrapper
# (cordsnet.export.wrappers.TRACED) with the forms mixed in (the encode kind: a stepwise-drive export's companion).
WRAPPERS: dict[str, type[torch.nn.Module]] = {
    name: type(f"Xnnpack{W.TRACED[name][0].__name__}", (_XnnpackForms, W.TRACED[name][0]),
               {"__doc__": f"{W.TRACED[name][0].__name__} in XNNPACK's forms."})
    for name in (*GRAPHS, *{c for g in GRAPHS for c in GRAPH_KINDS[g].companions})}


def check_spec(spec: ExportSpec) -> None:
    """Refuse what this backend cannot write, before any work (called by ``make_spec``).

    Raises:
        ValueError: a graph kind other than :data:`GRAPHS` (the loop: ExecuTorch runs a step program
            in the application's own loop), or a dtype other than float32.
    """
    if spec.graph not in GRAPHS:
        raise ValueError(f"graph: the executorch format exports one of {list(GRAPHS)}, got {spec.graph!r} "
                         "(run a stepwise program in your own loop instead of a loop graph)")
    if spec.dtype != "float32":
        raise ValueError(f"dtype: the executorch format exports float32 programs, got {spec.dtype!r}")


def _wrapper(model: CordsNet, spec: ExportSpec, kind: str) -> tuple[torch.nn.Module, tuple[Tensor, ...]]:
    """(XNNPACK-form wrapper, example inputs) of one graph kind: the shared traced graph, our classes."""
    graph = W.traced_graph(model, spec, validate.choice("graph", kind, list(WRAPPERS)), classes=WRAPPERS)
    return graph.module, graph.args


# ------------------------------------------------------------------------------------ export
def _lower(module: torch.nn.Module, args: tuple, spec: ExportSpec, meta: Mapping[str, str]) -> tuple[Any, dict[str, Any]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module.eval()
    dynamic = W.dynamic_shapes(module, args, spec, max_batch=MAX_BATCH)  # the planned memory bound
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                           constant_methods={METADATA_METHOD: json.dumps(dict(meta))})
        report = delegation(edge.exported_program().graph_module)
        return edge.to_executorch(), report


def delegation(graph_module: torch.fx.GraphModule) -> dict[str, Any]:
    """Delegated vs portable (non-delegated) nodes of a lowered edge graph, in total and by operator.

    ``getitem`` (unpacking the delegate's outputs) is structure, not computation: it is not counted
    as a portable operator.
    """
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op = {}
    for name, row in info.delegation_by_operator.items():
        by_op[name] = {"delegated": int(row.delegated), "portable": int(row.non_delegated)}
    portable = {k: v["portable"] for k, v in by_op.items() if v["portable"] and k != "getitem"}
    return {"delegated_subgraphs": int(info.num_delegated_subgraphs),
            "delegated_nodes": int(info.num_delegated_nodes),
            "portable_nodes": sum(portable.values()),
            "portable_ops": portable,
            "by_operator": by_op}


def program_metadata(spec: ExportSpec, info: ArtifactInfo) -> dict[str, str]:
    """The map a program returns from :data:`METADATA_METHOD`: the ``cordsnet.*`` metadata plus
    ``cordsnet.max_batch`` (the planned memory bound: the fixed batch, else :data:`MAX_BATCH`)."""
    meta = info.to_metadata()
    meta[PREFIX + "max_batch"] = str(spec.batch if spec.batch is not None else MAX_BATCH)
    return meta


def write(model: CordsNet, spec: ExportSpec, targets: Sequence[tuple[Path, ArtifactInfo]],
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Lower and save one program per target (the export's graph, then its companions), each with
    its metadata as the constant method :data:`METADATA_METHOD`.

    Returns:
        ``{"delegation": [report per program]}`` (see :func:`delegation`), which the export report
        carries as ``details``.

    Raises:
        ValueError: a conv, pool or linear layer was left to the portable kernels (never expected:
            the wrappers use forms XNNPACK takes).
    """
    say = progress or (lambda msg: None)
    reports = []
    for path, info in targets:
        say(f"lowering the {info.graph} graph to XNNPACK")
        program, report = _lower(*_wrapper(model, spec, info.graph), spec, program_metadata(spec, info))
        bad = {op: n for op, n in report["portable_ops"].items() if any(k in op for k in _MUST_DELEGATE)}
        if bad:
            raise ValueError(f"executorch: XNNPACK left {bad} to the portable kernels; expected every conv, "
                             "pool and linear layer delegated")
        with open(path, "wb") as f:
            program.write_to_file(f)
        remember_safe_pte(file_sha256(path))  # our own lowering's bytes: later loads skip the screening child
        reports.append({"graph": info.graph, **report})
        say(f"XNNPACK ({info.graph}): {report['delegated_nodes']} delegated nodes, {report['portable_nodes']} "
            f"portable ({report['portable_ops'] or 'none'})")
    return {"delegation": reports}


# ------------------------------------------------------------------------------ load and run
def load(path: str | Path) -> tuple[Any, Any]:
    """(program, its ``forward`` method) of a ``.pte`` file (``executorch.runtime``): ``method.execute([tensors])``.

    The program holds the bytes the method runs on: keep it referenced for as long as the method is used.
    """
    from .._quiet import native_stderr_captured

    program = load_pte_program(path)  # screened in a child first unless known to load safely
    with native_stderr_captured():  # the XNNPACK delegate's cpuinfo start-up lines (fd 2, not ours)
        return program, program.load_method("forward")


def runner_name() -> str:
    """How verification reports name this runner."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("executorch")
    except PackageNotFoundError:  # a source build without package metadata
        v = ""
    return " ".join(f"executorch.runtime {v} (XNNPACK)".split())


def open_runner(path: Path, info: ArtifactInfo, providers: object = None
                ) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], str, list[str], list[str]]:
    """(run(feeds) -> outputs by name, runner description, input names, output names) with executorch.runtime.

    `providers` is ignored (the program runs on the CPU with its XNNPACK delegate). The outputs are
    copied: the program reuses its planned memory on the next call.
    """
    loaded = load(path)  # (program, method): the closure holds the program, which owns the method's bytes
    ins, outs = info.io_names()

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = loaded[1].execute([torch.from_numpy(np.array(feeds[k], dtype=np.float32, copy=True)) for k in ins])
        return {k: np.array(v.detach().numpy(), copy=True) for k, v in zip(outs, res)}

    return run, runner_name(), ins, outs
