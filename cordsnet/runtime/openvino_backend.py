"""The OpenVINO backend: the same float32 ONNX graphs, run by OpenVINO, with precision as a compile hint.

``Session(path, backend="openvino", precision="bf16")`` / ``StepSession(...)`` read the exported ONNX
file directly with ``openvino.Core.read_model`` (no conversion step, no separate artifact) and compile it
for an OpenVINO device with ``INFERENCE_PRECISION_HINT``: ``"f32"`` computes in float32, ``"bf16"`` lets
the CPU plugin run convolutions and matrix products in bfloat16 (AVX512_BF16 / AMX) while inputs,
outputs and the recurrent state stay float32 arrays.

Rules (the same as onnxruntime's provider rule in :mod:`cordsnet.runtime.providers`): nothing falls
back silently. A device OpenVINO does not list, or a precision the device does not report in its
``OPTIMIZATION_CAPABILITIES`` (``BF16``, ``FP16``), is a :class:`~cordsnet.runtime.ProviderError`
that says what the device does report.

``openvino`` is an optional dependency (``pip install 'cordsnet[openvino]'``); it is imported only when
this backend is asked for, and it never imports torch.

:class:`OpenVINOSession` mimics the small part of ``onnxruntime.InferenceSession`` the runtime's whole-graph
path uses (inputs, outputs, metadata, ``run``). A StepSession's state lives in one of two adapters of
the stepping core (:mod:`cordsnet.runtime._core`):

* :class:`StatefulOpenVINO` (the default, except for int8 graphs compiled at f32): the step graph made stateful with OpenVINO's ``MakeStateful``
  transformation, each ``state_i`` input / ``next_state_i`` output pair replaced by a ReadValue/Assign
  variable. The state stays inside the compiled model between calls, no state crosses the call boundary
  per step, and it is read only when the application asks (``state``, a convergence check, a batch compaction).
* :class:`OpenVINOEngine`: OpenVINO tensors bound once to two infer requests of the stateless graph,
  double-buffered by :class:`~cordsnet.runtime._adapters.DoubleBuffer` (``StepSession(..., stateful=False)``,
  the default for int8 graphs compiled at f32, where it measured faster).

Precision: ``precision=None`` is f32 for float32 graphs and, for int8 (QDQ) graphs, bf16 where the device
reports it (:data:`DEFAULT_PRECISIONS`): the convolutions run int8 either way, the hint sets what stays float.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..names import OPENVINO_PRECISIONS
from ..threads import num_threads
from ..artifact import read_metadata
from ._adapters import Layout, Store
from .providers import ProviderError

__all__ = ["DEFAULT_DEVICE", "DEFAULT_PRECISIONS", "PRECISIONS", "OpenVINOEngine", "OpenVINOSession", "StatefulOpenVINO",
           "available_precisions", "default_precision", "import_openvino", "resolve_device", "resolve_precision"]

DEFAULT_DEVICE = "CPU"  # what providers="auto"/"cpu" mean for this backend

# precision -> (OpenVINO INFERENCE_PRECISION_HINT value, the OPTIMIZATION_CAPABILITIES entry it needs)
# (keyed by the one list of names, cordsnet.names.OPENVINO_PRECISIONS)
PRECISIONS: dict[str, tuple[str, str]] = dict(zip(OPENVINO_PRECISIONS, (("f32", "FP32"), ("bf16", "BF16"), ("f16", "FP16")),
                                                  strict=True))
# What precision=None means, per graph dtype: the first of these the device reports.
# * float32 graphs: float32, the graph's own precision (bf16 is the user's choice: it moves logits by ~0.05).
# * int8 (QDQ) graphs: the user has already chosen reduced precision, and what stays float in them (the
#   Euler update, the bias adds, the state itself) runs in bfloat16 where the CPU has it: on an AVX-512
#   BF16 CPU (AMD EPYC Zen 4, R8 at 224 px, `benchmarks/bench_stepwise.py --threads 1`) a stateful int8 step
#   took 10.3 ms with the bf16 hint against 13.8 ms with f32 (where the f32 state's Assign copies every
#   step, OpenVINO's PERF_COUNT profile) and 15.1 ms for the float32 graph at bf16;
#   the bundled digits model kept 99.4 % top-1 agreement with float32 over the full protocol (the
#   quantisation-aware one 100 %), measured by tests/test_openvino.py::test_int8_default_precision_keeps_the_answer.
DEFAULT_PRECISIONS: dict[str, tuple[str, ...]] = {"float32": ("f32",), "int8": ("bf16", "f32")}
# Long spellings accepted for the same precisions (numpy / the export's --dtype names).
PRECISION_ALIASES: dict[str, str] = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}

# OpenVINO element type names -> onnxruntime's type strings (what the runtime's checks expect).
_TYPES: dict[str, str] = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)",
                          "i64": "tensor(int64)", "i32": "tensor(int32)"}

_CORE: Any = None
_CORE_LOCK = threading.Lock()


def import_openvino() -> Any:
    """The ``openvino`` module, or ProviderError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ProviderError(f"backend: 'openvino' needs the openvino package, which cannot be imported here ({exc}); "
                            "install it with pip install 'cordsnet[openvino]'") from None
    return openvino


def _core() -> Any:
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_openvino().Core()
        return _CORE


def resolve_device(providers: Any) -> str:
    """The OpenVINO device for a ``providers`` argument: "auto"/"cpu" -> "CPU", or an OpenVINO device name.

    Raises:
        ProviderError: the device is not among ``Core().available_devices``.
    """
    if not isinstance(providers, str):
        raise TypeError(f"providers: with backend='openvino' expected 'auto', 'cpu' or an OpenVINO device name "
                        f"(e.g. 'GPU'), got {providers!r}")
    device = DEFAULT_DEVICE if providers.strip().lower() in ("auto", "cpu") else providers.strip().upper()
    available = list(_core().available_devices)
    base = device.split(".")[0]
    if device not in available and base not in [d.split(".")[0] for d in available]:
        raise ProviderError(f"providers: OpenVINO device {device!r} cannot be used here; OpenVINO lists {available}")
    return device


def available_precisions(device: str = DEFAULT_DEVICE) -> list[str]:
    """The precisions of :data:`PRECISIONS` that `device` reports among its optimisation capabilities."""
    caps = set(_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    return [p for p, (_, cap) in PRECISIONS.items() if cap in caps]


def default_precision(dtype: str, device: str) -> str:
    """What ``precision=None`` means for a graph of `dtype` on `device`: the first of
    :data:`DEFAULT_PRECISIONS` [dtype] that the device reports (f32, which every device has, last)."""
    options = DEFAULT_PRECISIONS.get(dtype, ("f32",))
    available = available_precisions(device)
    return next((p for p in options if p in available), "f32")


def resolve_precision(precision: Any, device: str) -> str:
    """A key of :data:`PRECISIONS` the device really has, or an error (never a silent fallback).

    Raises:
        ValueError: an unknown precision name.
        ProviderError: the device lacks it (the message lists what it reports).
    """
    if not isinstance(precision, str) or PRECISION_ALIASES.get(precision.lower(), precision.lower()) not in PRECISIONS:
        raise ValueError(f"precision: expected one of {[*PRECISIONS, *PRECISION_ALIASES]}, got {precision!r}")
    key = PRECISION_ALIASES.get(precision.lower(), precision.lower())
    caps = list(_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    if PRECISIONS[key][1] not in caps:
        raise ProviderError(f"precision: {precision!r} needs {PRECISIONS[key][1]} support, which OpenVINO device "
                            f"{device!r} does not report (its optimisation capabilities: {caps}); use precision='f32'")
    return key


class _Arg(NamedTuple):
    """An input/output the way onnxruntime's NodeArg describes it (name, shape with str dims, type)."""

    name: str
    shape: list[Any]
    type: str


class _Meta(NamedTuple):
    custom_metadata_map: dict[str, str]


def _args(ports: Any) -> list[_Arg]:
    out = []
    for port in ports:
        shape = [d.get_length() if d.is_static else "batch" for d in port.get_partial_shape()]
        kind = port.get_element_type().get_type_name()
        out.append(_Arg(port.get_any_name(), shape, _TYPES.get(kind, f"tensor({kind})")))
    return out


class OpenVINOSession:
    """One exported ONNX graph compiled by OpenVINO (a stand-in for ``onnxruntime.InferenceSession``).

    Args:
        path: the ``.onnx`` file.
        device: an OpenVINO device (:func:`resolve_device`).
        precision: a key of :data:`PRECISIONS` (:func:`resolve_precision`).
        config: extra OpenVINO compile properties.

    Raises:
        ValueError: OpenVINO cannot read the file as a model.
    """

    def __init__(self, path: str | os.PathLike, device: str, precision: str,
                 config: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.device, self.precision = device, precision
        core = _core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise ValueError(f"model: OpenVINO cannot read {str(self.path)!r} as an ONNX model: {first}") from None
        threads = num_threads()  # the process's thread budget (cordsnet.threads), unless config sets one
        self._properties = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision][0], "PERFORMANCE_HINT": "LATENCY",
                            **({"INFERENCE_NUM_THREADS": threads} if threads is not None else {}), **(config or {})}
        self._model = model
        self._compiled: Any = None  # compiled on first use: a stateful StepSession never compiles the stateless graph
        self._meta = _Meta(read_metadata(self.path, "onnx"))  # the contract's one reader (cordsnet.* keys)
        self._inputs = _args(model.inputs)
        self._outputs = _args(model.outputs)
        self._request: Any = None
        self._lock = threading.Lock()  # one infer request: one call at a time

    @property
    def compiled(self) -> Any:
        """The graph compiled for the device (``openvino.CompiledModel``), compiled on first use."""
        with self._lock:
            if self._compiled is None:
                self._compiled = _core().compile_model(self._model, self.device, self._properties)
            return self._compiled

    def compile_stateful(self, pairs: Mapping[str, str]) -> Any:
        """The graph with each input -> output pair of `pairs` made a variable (ReadValue/Assign), compiled.

        Args:
            pairs: input name -> output name (``{"state_0": "next_state_0", ...}``).

        Returns:
            An ``openvino.CompiledModel`` whose inputs and outputs are the others.
        """
        from openvino.passes import MakeStateful, Manager

        model = self._model.clone()
        manager = Manager()
        manager.register_pass(MakeStateful(dict(pairs)))
        manager.run_passes(model)
        return _core().compile_model(model, self.device, self._properties)

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def get_modelmeta(self) -> _Meta:
        return self._meta

    def get_providers(self) -> list[str]:
        """``["OpenVINO:<device>:<precision>"]`` (in the place of onnxruntime's provider list)."""
        return [f"OpenVINO:{self.device}:{self.precision}"]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {}

    def run(self, names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs `names` for the input arrays `feeds` (copies)."""
        compiled = self.compiled
        with self._lock:
            if self._request is None:
                self._request = compiled.create_infer_request()
            self._request.infer({k: np.asarray(v, order="C") for k, v in feeds.items()})  # keeps 0-d scalars
            return [np.array(self._request.get_tensor(n).data, copy=True) for n in names]


class OpenVINOEngine:
    """The OpenVINO :class:`~cordsnet.runtime._core.Engine` of the stateless graphs: tensors bound to infer requests.

    One infer request per (graph, slot), created once; a batch change re-binds new tensors.

    Args:
        graphs: "step" (and "encode") -> the :class:`OpenVINOSession`.
    """

    def __init__(self, graphs: Mapping[str, OpenVINOSession]) -> None:
        self._ov = import_openvino()
        self.graphs = dict(graphs)
        self.requests: dict[tuple[str, int], Any] = {}

    def tensor(self, shape: Sequence[int], dtype: np.dtype) -> Any:
        return self._ov.Tensor(np.zeros(tuple(shape), dtype))

    def write(self, tensor: Any, array: np.ndarray) -> None:
        tensor.data[...] = array

    def read(self, tensor: Any) -> np.ndarray:
        return np.array(tensor.data, copy=True)

    def bind(self, graph: str, slot: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        if (graph, slot) not in self.requests:
            self.requests[graph, slot] = self.graphs[graph].compiled.create_infer_request()
        request = self.requests[graph, slot]
        for name, t in {**inputs, **outputs}.items():
            request.set_tensor(name, t)

    def run(self, graph: str, slot: int) -> None:
        self.requests[graph, slot].infer()


class StatefulOpenVINO(Store):
    """A StepSession's state inside OpenVINO: the step graph compiled stateful, one infer request.

    The drives (the image, or the encode graph's ``skip`` / ``ff0``, which the encode request writes
    straight into them) and the logits are tensors bound once; the state is the request's variables,
    set on a reset or assignment and copied out only by :meth:`read_state`.

    Args:
        step: the stateless step graph's session (its model is cloned and made stateful).
        encode: the encode graph's session, or None.
        layout: the step graph's inputs and outputs.

    Raises:
        ValueError: the compiled model's variables are not the state pairs (an OpenVINO that names
            them otherwise).
    """

    def __init__(self, step: OpenVINOSession, encode: OpenVINOSession | None, layout: Layout) -> None:
        self._ov = import_openvino()
        self.layout = layout
        self.compiled = step.compile_stateful(dict(zip(layout.state_in, layout.state_out)))
        self.request = self.compiled.create_infer_request()
        states = {v.name: v for v in self.request.query_state()}
        # OpenVINO names a variable after its pair's tensor names (Parameter's then Result's).
        names = [f"{i}{o}" for i, o in zip(layout.state_in, layout.state_out)]
        if sorted(states) != sorted(names):
            raise ValueError(f"model: OpenVINO's stateful graph has variables {sorted(states)}, expected {names}")
        self._names = names
        self.encode_request = encode.compiled.create_infer_request() if encode is not None else None

    def _variables(self) -> list[Any]:
        states = {v.name: v for v in self.request.query_state()}
        return [states[n] for n in self._names]

    def _tensor(self, shape: Sequence[int], dtype: np.dtype) -> Any:
        return self._ov.Tensor(np.zeros(tuple(shape), dtype))

    def allocate(self, batch: int) -> None:
        lay = self.layout
        self.drives = {n: self._tensor((batch, *shape), lay.dtypes[n]) for n, shape in lay.drives.items()}
        self.logits_tensor = self._tensor((batch, lay.num_classes), lay.dtypes["logits"])
        for name, t in self.drives.items():
            self.request.set_tensor(name, t)
        self.request.set_tensor("logits", self.logits_tensor)
        if self.encode_request is not None:
            self.image = self._tensor((batch, *lay.input_shape), lay.dtypes["image"])
            self.encode_request.set_tensor("image", self.image)
            for name in lay.encode:
                self.encode_request.set_tensor(name, self.drives[name])
        dtype = lay.dtypes[lay.state_in[0]]
        self.write_state([np.zeros((batch, *s), dtype) for s in lay.state_shapes])

    def zero_drives(self) -> None:
        for t in self.drives.values():
            t.data[...] = 0

    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        for v, a in zip(self._variables(), arrays):
            v.state = self._ov.Tensor(np.array(a, copy=True))  # the variable keeps its own copy

    def read_state(self) -> list[np.ndarray]:
        return [np.array(v.state.data, dtype=np.float32, copy=True) for v in self._variables()]

    def read_drives(self) -> dict[str, np.ndarray]:
        return {n: np.array(t.data, copy=True) for n, t in self.drives.items()}

    def write_drives(self, drives: Mapping[str, np.ndarray]) -> None:
        for n, a in drives.items():
            self.drives[n].data[...] = a

    def set_image(self, x: np.ndarray) -> None:
        if self.encode_request is None:
            self.drives["image"].data[...] = x
        else:
            self.image.data[...] = x
            self.encode_request.infer()

    def step(self) -> None:
        self.request.infer()

    def logits(self) -> np.ndarray:
        return np.array(self.logits_tensor.data, dtype=np.float32, copy=True)
