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
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .._io import atomic_path
from ..artifact import EXTRA_FILE, GRAPH_KINDS, ArtifactInfo
from ..model import CordsNet
from . import wrappers as W
from .spec import ExportSpec

__all__ = ["EXPORTER_NAME", "build", "load", "open_runner", "staged", "write"]

EXPORTER_NAME = "torch.jit"
staged = atomic_path  # one file per artifact: an ordinary atomic write


def _trace(module: torch.nn.Module, args: tuple) -> torch.jit.ScriptModule:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, args, check_trace=False, strict=False)


def _loop(model: CordsNet, spec: ExportSpec) -> torch.jit.ScriptModule:
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


def build(model: CordsNet, spec: ExportSpec, kinds: Sequence[str]) -> list[torch.jit.ScriptModule]:
    """The TorchScript module of each graph kind in `kinds` (the export's graph, then its companions)."""
    out = []
    for kind in kinds:
        if GRAPH_KINDS[kind].steps_input:  # the loop in the graph: a scripted loop
            out.append(_loop(model, spec))
        else:
            g = W.traced_graph(model, spec, kind)
            out.append(_trace(g.module, g.args))
    return out


def write(model: CordsNet, spec: ExportSpec, targets: Sequence[tuple[Path, ArtifactInfo]],
          progress: Callable[[str], None] | None = None) -> None:
    """Trace/script and save one module per target with its metadata as the extra file."""
    for mod, (path, info) in zip(build(model, spec, [i.graph for _, i in targets]), targets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(mod, str(path), _extra_files={EXTRA_FILE: json.dumps(info.to_metadata())})


def load(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")


def open_runner(path: Path, info: ArtifactInfo, providers: object = None
                ) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], str, list[str], list[str]]:
    """(run(feeds) -> outputs by name, runner description, input names, output names) with torch.jit."""
    return torch_runner(load(path), info, f"torch.jit {torch.__version__}")


def torch_runner(module: Callable[..., object], info: ArtifactInfo, name: str
                 ) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], str, list[str], list[str]]:
    """A runner around a torch module called with the inputs in contract order (no named inputs in torch)."""
    ins, outs = info.io_names()

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            res = module(*[torch.from_numpy(np.array(feeds[k], copy=True)) for k in ins])
        res = res if isinstance(res, (tuple, list)) else (res,)
        if len(res) != len(outs):
            raise ValueError(f"model: the module returned {len(res)} outputs, its metadata names {len(outs)} ({outs})")
        return {k: v.detach().cpu().numpy() for k, v in zip(outs, res)}

    return run, name, ins, outs
