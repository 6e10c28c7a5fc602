"""TorchScript backend (``.pt``): traced graphs; the loop is TorchScript control flow.

TorchScript is deprecated in the torch we install (``torch.jit.load``/``save`` warn), yet C++
(libtorch) applications still load it, so it stays; :mod:`cordsnet.export.exported_program` is its
modern successor. Metadata: the ``cordsnet.*`` map as JSON in ``_extra_files["cordsnet.json"]``.

* unrolled / stepwise / stepwise-drive (+ encode): ``torch.jit.trace`` of the wrapper (the batch
  dimension stays dynamic: the spontaneous state is expanded with the traced ``image.size(0)``).
* loop: the three pieces (prologue, one step, readout) are traced with the state as a list of
  tensors, a :class:`~cordsnet.export.wrappers.ScriptLoop` around them is compiled with
  ``torch.jit.script`` (a real loop over ``int(steps)``), and a thin traced shell flattens its outputs.
  Call it as ``module(image, torch.tensor(steps))``.

Outputs: a single tensor when the graph has one output (logits), else a tuple in the order of the
ONNX outputs (``cordsnet.outputs`` in the metadata).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .._io import atomic_path
from ..model import CordsNet
from . import wrappers as W

__all__ = ["EXPORTER_NAME", "build", "staged", "write"]

EXPORTER_NAME = "torch.jit"
staged = atomic_path


def _trace(module: torch.nn.Module, args: tuple) -> torch.jit.ScriptModule:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, args, check_trace=False, strict=False)


def _loop(model: CordsNet, spec: Any) -> torch.jit.ScriptModule:
    kw = spec.wrapper_kwargs()
    ex = W.example_inputs(model, spec)
    state = [ex[f"state_{i}"] for i in range(model.depth)]
    prologue = _trace(W.ListPrologue(model, **kw), (ex["image"],))
    step = _trace(W.ListStep(model, **kw), (ex["skip"], ex["ff0"], state))
    readout = _trace(W.ListReadout(model, **kw), (state,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = torch.jit.script(W.ScriptLoop(prologue, step, readout, readout_all=spec.readout == "all",
                                             record=spec.record))
    shell = W.FlatLoop(core, len(spec.record))
    return _trace(shell, (ex["image"], torch.tensor(spec.steps, dtype=torch.int64)))


def build(model: CordsNet, spec: Any) -> list[torch.jit.ScriptModule]:
    """The TorchScript module(s): [graph] or, for stepwise-drive, [step graph, encode graph]."""
    if spec.graph == "loop":
        return [_loop(model, spec)]
    return [_trace(module, args) for module, args in W.traced_graphs(model, spec)]


def write(model: CordsNet, spec: Any, meta: dict[str, str], paths: Sequence[Path],
          progress: Callable[[str], None] | None = None) -> None:
    """Trace/script and save the module(s) of `spec` to `paths` with the metadata as an extra file."""
    from .metadata import EXTRA_FILE, encode_metadata

    for k, (mod, path) in enumerate(zip(build(model, spec), paths)):
        m = dict(meta) if k == 0 else encode_metadata(meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(mod, str(path), _extra_files={EXTRA_FILE: json.dumps(m)})


def load(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")
