"""ExportedProgram backend (``.pt2``, ``torch.export``): TorchScript's modern successor.

* unrolled / stepwise / stepwise-drive (+ encode): ``torch.export.export`` of the wrapper, with a
  dynamic batch dimension (``torch.export.Dim``) unless a batch is fixed.
* loop: the time loop as ``torch._higher_order_ops.while_loop`` (saved and loaded by torch.export),
  ``steps`` an int64 scalar tensor input; readout "last" without recorded areas only (per-step
  buffers of data-dependent size do not trace); "unrolled" has every option.
* Metadata: ``torch.export.save(..., extra_files={"cordsnet.json": ...})``, the same JSON map as
  TorchScript's extra file (``<archive>/extra/cordsnet.json`` in the zip).

Load with ``torch.export.load(path).module()`` and call it with the inputs in the order of
``cordsnet.inputs``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..artifact import EXTRA_FILE, GRAPH_KINDS, ArtifactInfo
from ..model import CordsNet
from . import wrappers as W
from ._staging import staged
from .spec import ExportSpec
from .torchscript import torch_runner

__all__ = ["EXPORTER_NAME", "build", "load", "open_runner", "staged", "write"]

EXPORTER_NAME = "torch.export"


def _export(module: torch.nn.Module, args: tuple, spec: ExportSpec) -> torch.export.ExportedProgram:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(module, args, dynamic_shapes=W.dynamic_shapes(module, args, spec), strict=False)


def build(model: CordsNet, spec: ExportSpec, kinds: Sequence[str]) -> list[torch.export.ExportedProgram]:
    """The ExportedProgram of each graph kind in `kinds` (the export's graph, then its companions).

    The loop is ``WhileLoop`` (readout "last", no recorded areas: checked by ``make_spec``).
    """
    out = []
    for kind in kinds:
        if GRAPH_KINDS[kind].steps_input:  # the loop in the graph: torch.export's while_loop
            args = (W.example_inputs(model, spec)["image"], torch.tensor(spec.steps, dtype=torch.int64))
            out.append(_export(W.WhileLoop(model, **spec.wrapper_kwargs()), args, spec))
        else:
            g = W.traced_graph(model, spec, kind)
            out.append(_export(g.module, g.args, spec))
    return out


def write(model: CordsNet, spec: ExportSpec, targets: Sequence[tuple[Path, ArtifactInfo]],
          progress: Callable[[str], None] | None = None) -> None:
    """Export and save one program per target with its metadata as the extra file."""
    for prog, (path, info) in zip(build(model, spec, [i.graph for _, i in targets]), targets):
        torch.export.save(prog, str(path), extra_files={EXTRA_FILE: json.dumps(info.to_metadata())})


def load(path: str | Path) -> torch.nn.Module:
    """The callable module of a saved ExportedProgram."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(str(path)).module()


def open_runner(path: Path, info: ArtifactInfo, providers: object = None
                ) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], str, list[str], list[str]]:
    """(run(feeds) -> outputs by name, runner description, input names, output names) with torch.export."""
    return torch_runner(load(path), info, f"torch.export {torch.__version__}")
