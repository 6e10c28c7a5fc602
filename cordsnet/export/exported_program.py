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
from typing import Any, Callable, Sequence

import torch

from ._staging import staged
from ..model import CordsNet
from . import wrappers as W

__all__ = ["EXPORTER_NAME", "build", "staged", "write", "load"]

EXPORTER_NAME = "torch.export"


def _export(module: torch.nn.Module, args: tuple, spec: Any) -> torch.export.ExportedProgram:
    module.eval()
    dynamic = None
    if spec.batch is None:
        batch = torch.export.Dim("batch", min=1, max=65536)
        dynamic = W.batch_dynamic_shapes(module, args, batch)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)


def _loop(model: CordsNet, spec: Any) -> torch.export.ExportedProgram:
    if spec.readout != "last" or spec.record:
        raise ValueError("readout/record: the exported-program loop graph supports readout='last' without "
                         "recorded areas; use graph 'unrolled' for per-step outputs")
    w = W.WhileLoop(model, **spec.wrapper_kwargs())
    args = (W.example_inputs(model, spec)["image"], torch.tensor(spec.steps, dtype=torch.int64))
    module_dynamic = None
    if spec.batch is None:
        module_dynamic = ({0: torch.export.Dim("batch", min=1, max=65536)}, None)
    w.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(w, args, dynamic_shapes=module_dynamic, strict=False)


def build(model: CordsNet, spec: Any) -> list[torch.export.ExportedProgram]:
    """The ExportedProgram(s): [graph] or, for stepwise-drive, [step graph, encode graph]."""
    if spec.graph == "loop":
        return [_loop(model, spec)]
    return [_export(module, args, spec) for module, args in W.traced_graphs(model, spec)]


def write(model: CordsNet, spec: Any, meta: dict[str, str], paths: Sequence[Path],
          progress: Callable[[str], None] | None = None) -> None:
    """Export and save the program(s) of `spec` to `paths` with the metadata as an extra file."""
    from .metadata import EXTRA_FILE, encode_metadata

    for k, (prog, path) in enumerate(zip(build(model, spec), paths)):
        m = dict(meta) if k == 0 else encode_metadata(meta)
        torch.export.save(prog, str(path), extra_files={EXTRA_FILE: json.dumps(m)})


def load(path: str | Path) -> torch.nn.Module:
    """The callable module of a saved ExportedProgram."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(str(path)).module()
