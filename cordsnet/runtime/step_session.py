"""Step-by-step inference: :class:`StepSession` runs ``stepwise``, ``stepwise-drive`` and ``multistep`` graphs.

The API (``reset``, ``step``, ``run``, ``run_video``, ``run_until``, ``predict``, ``state``) is the
stepping core's (:class:`cordsnet.runtime._core.StepCore`), written once for every backend; this
module opens the ONNX graphs and picks the backend adapter:

* onnxruntime: the recurrent state in onnxruntime-owned buffers (OrtValues) bound with IO binding,
  double-buffered (:class:`OrtEngine` under :class:`~cordsnet.runtime._adapters.DoubleBuffer`); on CUDA
  it never leaves the GPU.
* OpenVINO: for float32 graphs a *stateful* model (the step graph's ``state_i`` / ``next_state_i`` pairs made
  ReadValue/Assign variables, :class:`~cordsnet.runtime.openvino_backend.StatefulOpenVINO`): the state
  stays inside the runtime and is read only when asked (``state``, convergence checks, a batch
  compaction); ``stateful=False`` (the default for int8 graphs compiled at f32, faster there) runs the stateless graph
  double-buffered in OpenVINO tensors.

One StepSession holds ONE recurrent state: every public method takes the session's lock, so calls
from several threads are serialised (each ``run``/``predict``/``run_video`` is atomic and gives the same
result as if the calls had been made one after the other); for independent streams stepped by hand,
use one StepSession per stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import onnxruntime as ort

from .. import validate
from ..artifact import ArtifactInfo, companion_path
from ._adapters import DoubleBuffer, Layout, Store
from ._core import StepCore
from .providers import CUDA_GRAPH_OPTIONS, ProvidersLike, resolve_providers
from .session import _Base, _cuda_graph_options, _dtype_of, _graph_io, _load, _require_gpu

__all__ = ["STORES", "OrtEngine", "StepSession"]


class StepSession(StepCore, _Base):
    """Run a ``stepwise`` (or ``stepwise-drive``, ``multistep``) graph one step at a time.

    onnxruntime (default): the state lives in OrtValues on the session's device, bound with IO
    binding; two buffer sets alternate (step k reads set k mod 2 and writes set (k+1) mod 2). On CUDA
    nothing but the logits crosses to the host between steps. OpenVINO: the state stays inside a
    stateful compiled model (see the module docstring).

    For a ``stepwise-drive`` graph the encode graph ``<stem>.encode.onnx`` beside it maps each new image
    to its drive terms (``skip``, ``ff0``) once, straight into the step graph's input buffers; later
    steps without a new image reuse them.

    Thread safety: every public method holds the session's lock, so ``run``/``predict``/``run_video``
    from several threads each see their own protocol from start to end. Hand-driven ``step`` calls
    from several threads would still interleave on the one state: use one StepSession per stream.

    Args:
        path: the exported ``.onnx`` file.
        providers: as for :class:`Session`.
        cuda_graph: capture each step as a CUDA graph (fixed shapes; one capture per buffer set, and
            again after a batch change). CUDA/TensorRT provider only.
        session_options: onnxruntime ``SessionOptions``; default: onnxruntime's, except that idle
            intra-op threads sleep between calls (``session.intra_op.allow_spinning = 0``).
        provider_options: extra options per onnxruntime provider name.
        backend: "onnxruntime" (default) or "openvino" (:mod:`cordsnet.runtime.openvino_backend`;
            `providers` is then the OpenVINO device, "auto"/"cpu" meaning "CPU").
        precision: OpenVINO only: "f32", "bf16" or "f16" as a compile hint; an error where the device
            does not report it. None (default): f32 for float32 graphs, bf16 for int8 graphs where the
            device reports it (as :class:`Session`).
        companions: companion graphs by role (``{"encode": path}``); default ``<stem>.<role>.onnx``
            beside `path` (the exporter's naming rule).
        stateful: keep the state inside the runtime (OpenVINO's stateful model). None (default): the
            backend's faster path for the graph (OpenVINO: stateful, except int8 graphs compiled at f32,
            where the stateless path measured faster; onnxruntime: stateless, it has no stateful models);
            True where the backend cannot is an error.

    Anytime inference: :meth:`run_until` stops each image when it has decided (see docs/anytime.md).

    Example:
        >>> s = StepSession("r4.stepwise.onnx", providers="cpu")   # doctest: +SKIP
        >>> s.reset(batch=1)                                        # spontaneous state
        >>> for frame in frames:                                    # a video, one frame per step
        ...     logits = s.step(frame)
    """

    _SESSION = "step"

    def __init__(self, path: str | os.PathLike, providers: ProvidersLike = "auto", *, cuda_graph: bool = False,
                 session_options: ort.SessionOptions | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None,
                 backend: str = "onnxruntime", precision: str | None = None,
                 companions: Mapping[str, str | os.PathLike] | None = None, stateful: bool | None = None) -> None:
        openvino = backend == "openvino"
        if openvino and cuda_graph:
            raise ValueError("cuda_graph: an onnxruntime option; not for backend='openvino'")
        provider_options = {} if openvino else _cuda_graph_options(providers, cuda_graph, provider_options)
        if session_options is None and not openvino:
            # Steps are separate short calls with the application's own work in between: idle intra-op
            # threads should sleep, not busy-wait (spinning cost 1.41x vs 1.15x the unrolled graph's
            # per-step time for R8 at 224 px on a shared 2-core CPU; see benchmarks/bench_runtime.py).
            session_options = ort.SessionOptions()
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        super().__init__(path, providers, session_options=session_options, provider_options=provider_options,
                         backend=backend, precision=precision)
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph:
            _require_gpu(self, "cuda_graph=True")
        stateful = validate.choice("stateful", stateful, (None, True, False))
        self._encode: Any = None  # ort.InferenceSession, or an OpenVINOSession
        given = dict(companions or {})
        unknown = set(given) - set(self.info.kind.companions)
        if unknown:
            raise ValueError(f"companions: a {self.info.graph!r} graph has companions {list(self.info.kind.companions)}, "
                             f"got {sorted(unknown)}")
        for role in self.info.kind.companions:  # the encode graph: image -> the step graph's drive inputs
            encode_path = Path(given[role]) if role in given else companion_path(self.path, role)
            if not encode_path.exists():
                raise FileNotFoundError(f"model: a {self.info.graph!r} graph needs its {role} graph beside it, "
                                        f"{str(encode_path)!r} does not exist")
            # Same providers as the step graph, without CUDA-graph capture (it runs once per image) and
            # without a second fallback warning.
            if openvino:
                from .openvino_backend import OpenVINOSession

                assert self.precision is not None
                self._encode = OpenVINOSession(encode_path, self._session.device, self.precision)
            else:
                encode_plan = resolve_providers(providers, provider_options={
                    k: {o: v for o, v in d.items() if o not in CUDA_GRAPH_OPTIONS.values()}
                    for k, d in provider_options.items()})
                self._encode = _load(encode_path, encode_plan, session_options, lambda m: None)
            source = repr(str(encode_path))
            enc = ArtifactInfo.from_metadata(self._encode.get_modelmeta().custom_metadata_map, source)
            if enc.graph != role or enc.config != self.info.config or enc.dtype != self.info.dtype:
                raise ValueError(f"model: {source} is not the {role} graph of {str(self.path)!r} (its metadata "
                                 f"says graph {enc.graph!r}, dtype {enc.dtype!r})")
            enc.check_graph_io(_graph_io(self._encode.get_inputs()), _graph_io(self._encode.get_outputs()), source)
            self._encode_inputs = {a.name: a for a in self._encode.get_inputs()}
        ports = {**self._outputs, **self._inputs}
        dtypes = {n: _dtype_of(a) for n, a in ports.items()}
        dtypes["image"] = _dtype_of(self._image_arg())
        encode_outputs = tuple(a.name for a in self._encode.get_outputs()) if self._encode is not None else ()
        layout = Layout.of(self.info, {n: a.shape for n, a in self._inputs.items()}, dtypes, encode_outputs)
        adapter = STORES[self.backend]
        if stateful is None:
            stateful = adapter.stateful_by_default(self.info, self.precision)
        if stateful and not adapter.can_keep_state:
            raise ValueError(f"stateful: backend {self.backend!r} cannot keep the state inside the runtime "
                             f"(backends that can: {[b for b, a in STORES.items() if a.can_keep_state]}), "
                             "got stateful=True")
        self.stateful = bool(stateful)
        self._start(adapter.make(self, layout, self.stateful), dtypes[layout.state_in[0]])

    def _image_arg(self) -> Any:
        # stepwise-drive: the images go to the encode graph.
        return self._encode_inputs["image"] if self._encode is not None else self._inputs["image"]


class OrtEngine:
    """The onnxruntime :class:`~cordsnet.runtime._core.Engine`: OrtValues on the session's device, IO binding.

    With CUDA graphs every binding of the step graph gets its own ``gpu_graph_id`` (the two state
    sets' addresses differ), fresh ids after every allocation.

    Args:
        graphs: "step" (and "encode") -> the onnxruntime session.
        device, device_id: where the buffers live ("cpu" or "cuda").
        cuda_graph: capture each step as a CUDA graph.
    """

    def __init__(self, graphs: Mapping[str, ort.InferenceSession], device: str, device_id: int,
                 cuda_graph: bool) -> None:
        self.graphs = dict(graphs)
        self.device, self.device_id, self.cuda_graph = device, device_id, cuda_graph
        self.bound: dict[tuple[str, int], tuple[ort.IOBinding, ort.RunOptions | None]] = {}
        self._ids = 0

    def tensor(self, shape: Sequence[int], dtype: np.dtype) -> ort.OrtValue:
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device, self.device_id)
        value.update_inplace(np.zeros(tuple(shape), dtype))
        return value

    def write(self, tensor: ort.OrtValue, array: np.ndarray) -> None:
        tensor.update_inplace(np.ascontiguousarray(array))

    def read(self, tensor: ort.OrtValue) -> np.ndarray:
        return np.array(tensor.numpy(), copy=True)

    def bind(self, graph: str, slot: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        binding = self.graphs[graph].io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        options = None
        if graph == "step":
            options = ort.RunOptions()
            if self.cuda_graph:
                self._ids += 1
                options.add_run_config_entry("gpu_graph_id", str(self._ids))
        self.bound[graph, slot] = (binding, options)

    def run(self, graph: str, slot: int) -> None:
        binding, options = self.bound[graph, slot]
        self.graphs[graph].run_with_iobinding(binding, options)


class _Backend(NamedTuple):
    """How StepSession builds a backend's :class:`~cordsnet.runtime._adapters.Store`."""

    can_keep_state: bool  # has a stateful path
    stateful_by_default: Callable[[ArtifactInfo, str | None], bool]  # stateful=None for (graph, precision)
    make: Callable[[StepSession, Layout, bool], Store]


def _onnxruntime_store(s: StepSession, layout: Layout, stateful: bool) -> Store:
    device, device_id = s._device()
    graphs = {"step": s._session, **({"encode": s._encode} if s._encode is not None else {})}
    return DoubleBuffer(OrtEngine(graphs, device, device_id, s.cuda_graph), layout)


def _openvino_store(s: StepSession, layout: Layout, stateful: bool) -> Store:
    from .openvino_backend import OpenVINOEngine, StatefulOpenVINO

    if stateful:
        return StatefulOpenVINO(s._session, s._encode, layout)
    graphs = {"step": s._session, **({"encode": s._encode} if s._encode is not None else {})}
    return DoubleBuffer(OpenVINOEngine(graphs), layout)


# StepSession.backend -> its adapter (keys: cordsnet.runtime.session.BACKENDS).
# OpenVINO: stateful, except int8 (QDQ) graphs compiled at f32, as measured (R8 at 224 px, batch 1, x the
# unrolled twin per step, two runs: bfloat16 stateful 1.15 / 1.03 vs stateless 1.45 / 1.28; int8 at f32
# stateful 1.32 / 1.29 vs stateless 1.27 / 1.10, where the f32 state's Assign copies; int8 at bf16, the
# default where the CPU has it, stateful 10.3 vs stateless 12.2 ms/step at one thread, 8.4 vs 10.2 at two;
# benchmarks/bench_stepwise.py, docs/precision.md).
STORES: dict[str, _Backend] = {
    "onnxruntime": _Backend(False, lambda info, precision: False, _onnxruntime_store),
    "openvino": _Backend(True, lambda info, precision: not (info.dtype == "int8" and precision == "f32"),
                         _openvino_store),
}
