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
* Batch: a ``.pte`` plans its memory for a bound. ``batch=N`` exports for exactly N images; without it
  the program takes 1..:data:`MAX_BATCH` images (memory planned for the maximum), recorded as
  ``cordsnet.max_batch``; :class:`cordsnet.runtime_executorch.PteStepSession` refuses more with a clear error.
* Metadata: the ``cordsnet.*`` map (plus ``cordsnet.max_batch``) as JSON returned by the constant
  method ``cordsnet_metadata`` of the program (read with :func:`read_pte_metadata`).
* The export report: :func:`write` returns ``{"delegation": [...]}``, per program the delegated and
  portable (non-delegated) node counts in total and by operator (:func:`delegation`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model import CordsNet, DriveTerms, Weights
from . import wrappers as W
from ._staging import staged

__all__ = ["EXPORTER_NAME", "MAX_BATCH", "METADATA_METHOD", "build", "delegation", "executorch_missing", "load",
           "read_pte_metadata", "staged", "verify_runner", "write"]

EXPORTER_NAME = "executorch/xnnpack"
MAX_BATCH = 8  # largest batch of a program exported without a fixed batch (its planned memory bound)
METADATA_METHOD = "cordsnet_metadata"  # constant method of the program returning the metadata JSON
GRAPHS = ("unrolled", "stepwise", "stepwise-drive")  # the kinds this backend exports
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
        x = F.conv2d(image, w.inp_conv, stride=2, padding=3)  # the model's input conv (unchecked_drive)
        u = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)  # == AvgPool2d(3, 2, padding=1, count_include_pad=True)
        return self._model.unchecked_drive_terms(w, u)

    def _readout(self, w: Weights, state: Sequence[Tensor]) -> Tensor:
        top, below = self._model.readout_areas
        pooled = (torch.relu(state[top]) + torch.relu(state[below])).mean(dim=(2, 3), keepdim=True)
        return F.linear(pooled.reshape(pooled.shape[0], -1), w.out_weight, w.out_bias)  # == mean(dim=(2, 3))


class XnnpackUnrolled(_XnnpackForms, W.Unrolled):
    """:class:`~cordsnet.export.wrappers.Unrolled` in XNNPACK's forms."""


class XnnpackStepwise(_XnnpackForms, W.Stepwise):
    """:class:`~cordsnet.export.wrappers.Stepwise` in XNNPACK's forms."""


class XnnpackStepwiseDrive(_XnnpackForms, W.StepwiseDrive):
    """:class:`~cordsnet.export.wrappers.StepwiseDrive` in XNNPACK's forms."""


class XnnpackEncode(_XnnpackForms, W.Encode):
    """:class:`~cordsnet.export.wrappers.Encode` in XNNPACK's forms."""


def graphs(model: CordsNet, spec: Any) -> list[tuple[torch.nn.Module, tuple[Tensor, ...]]]:
    """(wrapper, example inputs) of `spec.graph`: [graph] or, for stepwise-drive, [step graph, encode graph]."""
    if spec.graph not in GRAPHS:
        raise ValueError(f"graph: the executorch format exports one of {list(GRAPHS)}, got {spec.graph!r}")
    if spec.dtype != "float32":
        raise ValueError(f"dtype: the executorch format exports float32 programs, got {spec.dtype!r}")
    ex = W.example_inputs(model, spec)
    kw = spec.wrapper_kwargs()
    states = tuple(ex[f"state_{i}"] for i in range(model.depth))
    kinds: dict[str, Callable[[], list[tuple[torch.nn.Module, tuple[Tensor, ...]]]]] = {
        "unrolled": lambda: [(XnnpackUnrolled(model, steps=spec.steps, readout=spec.readout, record=spec.record,
                                              **kw), (ex["image"],))],
        "stepwise": lambda: [(XnnpackStepwise(model, **kw), (ex["image"], *states))],
        "stepwise-drive": lambda: [(XnnpackStepwiseDrive(model, **kw), (ex["skip"], ex["ff0"], *states)),
                                   (XnnpackEncode(model, **kw), (ex["image"],))],
    }
    return kinds[spec.graph]()


# ------------------------------------------------------------------------------------ export
def _lower(module: torch.nn.Module, args: tuple, spec: Any, meta: Mapping[str, str]) -> tuple[Any, dict[str, Any]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module.eval()
    dynamic = None
    if spec.batch is None:
        dynamic = W.batch_dynamic_shapes(module, args, torch.export.Dim("batch", min=1, max=MAX_BATCH))
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


def build(model: CordsNet, spec: Any, meta: Mapping[str, str] | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """The lowered program(s) of `spec` with their delegation reports: [(ExecutorchProgramManager, report)]."""
    from .metadata import encode_metadata

    meta = dict(meta or {})
    return [_lower(module, args, spec, meta if k == 0 else encode_metadata(meta))
            for k, (module, args) in enumerate(graphs(model, spec))]


def write(model: CordsNet, spec: Any, meta: dict[str, str], paths: Sequence[Path],
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Lower and save the program(s) of `spec` to `paths` (metadata as the constant method
    :data:`METADATA_METHOD`).

    Returns:
        {"delegation": [report per program]} (see :func:`delegation`) for the export report.

    Raises:
        ValueError: a conv, pool or linear layer was left to the portable kernels (never expected:
            the wrappers use forms XNNPACK takes), or an unsupported graph kind / dtype.
    """
    say = progress or (lambda msg: None)
    meta = dict(meta)
    meta["cordsnet.max_batch"] = str(spec.batch if spec.batch is not None else MAX_BATCH)
    say(f"lowering the {spec.graph} graph to XNNPACK")
    reports = []
    for (program, report), path in zip(build(model, spec, meta), paths):
        bad = {op: n for op, n in report["portable_ops"].items() if any(k in op for k in _MUST_DELEGATE)}
        if bad:
            raise ValueError(f"executorch: XNNPACK left {bad} to the portable kernels; expected every conv, "
                             "pool and linear layer delegated")
        with open(path, "wb") as f:
            program.write_to_file(f)
        reports.append(report)
        say(f"XNNPACK: {report['delegated_nodes']} delegated nodes, {report['portable_nodes']} portable "
            f"({report['portable_ops'] or 'none'})")
    return {"delegation": reports}


# ------------------------------------------------------------------------------ load and run
def load(path: str | Path) -> Any:
    """The ``forward`` method of a ``.pte`` program (``executorch.runtime``): ``method.execute([tensors])``."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    return program.load_method("forward")


def read_pte_metadata(path: str | Path) -> dict[str, str]:
    """The ``cordsnet.*`` map of a ``.pte`` program (its constant method :data:`METADATA_METHOD`).

    Raises:
        ValueError: not a loadable program, or it carries no cordsnet metadata.
    """
    from executorch.runtime import Runtime

    path = Path(path)
    try:
        program = Runtime.get().load_program(path)
    except Exception as exc:  # the runtime raises RuntimeError for a bad flatbuffer
        raise ValueError(f"artifact: {str(path)!r} is not a loadable ExecuTorch program ({exc})") from None
    if METADATA_METHOD not in program.method_names:
        raise ValueError(f"artifact: {str(path)!r} carries no cordsnet metadata (not exported by cordsnet?)")
    (text,) = program.load_method(METADATA_METHOD).execute([])
    return {str(k): str(v) for k, v in json.loads(text).items()}


def verify_runner(path: Path, meta: Mapping[str, str]) -> tuple[Callable[[Mapping[str, Any]], dict[str, Any]],
                                                                  str, list[str], list[str]]:
    """(run, runner name, input names, output names) for :func:`cordsnet.export.verify.verify_artifact`."""
    import executorch
    import numpy as np

    method = load(path)
    ins, outs = json.loads(meta["cordsnet.inputs"]), json.loads(meta["cordsnet.outputs"])

    def run(feeds: Mapping[str, Any]) -> dict[str, Any]:
        res = method.execute([torch.from_numpy(np.array(feeds[k], dtype=np.float32, copy=True)) for k in ins])
        return {k: v.detach().numpy() for k, v in zip(outs, res)}

    version = getattr(executorch, "__version__", "")
    return run, f"executorch.runtime {version} (XNNPACK)".replace("  ", " "), ins, outs
