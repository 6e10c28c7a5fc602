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
path uses (inputs, outputs, metadata, ``run``); :class:`OpenVINOStepper` keeps a StepSession's state in
OpenVINO tensors bound once to two infer requests (double-buffered, like the onnxruntime IO-binding path).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..threads import num_threads
from ..artifact import read_metadata
from .providers import ProviderError

__all__ = ["DEFAULT_DEVICE", "PRECISIONS", "OpenVINOSession", "OpenVINOStepper", "available_precisions",
           "import_openvino", "resolve_device", "resolve_precision"]

DEFAULT_DEVICE = "CPU"  # what providers="auto"/"cpu" mean for this backend

# precision -> (OpenVINO INFERENCE_PRECISION_HINT value, the OPTIMIZATION_CAPABILITIES entry it needs)
PRECISIONS: dict[str, tuple[str, str]] = {
    "f32": ("f32", "FP32"),
    "bf16": ("bf16", "BF16"),
    "f16": ("f16", "FP16"),
}
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
        properties = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision][0], "PERFORMANCE_HINT": "LATENCY",
                      **({"INFERENCE_NUM_THREADS": threads} if threads is not None else {}), **(config or {})}
        self.compiled = core.compile_model(model, device, properties)
        self._meta = _Meta(read_metadata(self.path, "onnx"))  # the contract's one reader (cordsnet.* keys)
        self._inputs = _args(model.inputs)
        self._outputs = _args(model.outputs)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time

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
        with self._lock:
            self._request.infer({k: np.asarray(v, order="C") for k, v in feeds.items()})  # keeps 0-d scalars
            return [np.array(self._request.get_tensor(n).data, copy=True) for n in names]


class OpenVINOStepper:
    """A StepSession's buffers in OpenVINO tensors: two state sets bound to two infer requests.

    Request k reads state set k and writes set 1 - k (and the logits), so a step never overwrites a
    rate it is still reading and nothing is copied between steps. The drive inputs (the image, or the
    encode graph's ``skip`` / ``ff0``) are tensors shared by both requests; the encode graph writes
    straight into them.
    """

    def __init__(self, step: OpenVINOSession, encode: OpenVINOSession | None, state_in: Sequence[str],
                 state_out: Sequence[str], drive_inputs: Sequence[str], state_shapes: Sequence[tuple[int, ...]],
                 input_shape: tuple[int, ...], num_classes: int) -> None:
        self._ov = import_openvino()
        self.step_graph, self.encode_graph = step, encode
        self.state_in, self.state_out = list(state_in), list(state_out)
        self.drive_inputs = tuple(drive_inputs)
        self.state_shapes = [tuple(s) for s in state_shapes]
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self._drive_shapes = {a.name: a.shape[1:] for a in step.get_inputs() if a.name in self.drive_inputs}
        self.cur = 0

    def _tensor(self, shape: Sequence[int]) -> Any:
        return self._ov.Tensor(np.zeros(tuple(shape), np.float32))

    def allocate(self, batch: int) -> None:
        self.sets = [[self._tensor((batch, *s)) for s in self.state_shapes] for _ in range(2)]
        self.drives = {n: self._tensor((batch, *(self.input_shape if n == "image" else self._drive_shapes[n])))
                       for n in self.drive_inputs}
        self.logits_tensor = self._tensor((batch, self.num_classes))
        if not hasattr(self, "requests"):  # created once; a batch change only re-binds tensors
            self.requests = [self.step_graph.compiled.create_infer_request() for _ in range(2)]
            if self.encode_graph is not None:
                self.encode_request = self.encode_graph.compiled.create_infer_request()
        for k in range(2):
            req = self.requests[k]
            for name, t in self.drives.items():
                req.set_tensor(name, t)
            for name, t in zip(self.state_in, self.sets[k]):
                req.set_tensor(name, t)
            for name, t in zip(self.state_out, self.sets[1 - k]):
                req.set_tensor(name, t)
            req.set_tensor("logits", self.logits_tensor)
        if self.encode_graph is not None:
            self.encode_image = self._tensor((batch, *self.input_shape))
            self.encode_request.set_tensor("image", self.encode_image)
            for name in ("skip", "ff0"):
                self.encode_request.set_tensor(name, self.drives[name])
        self.cur = 0

    def zero_drives(self) -> None:
        for t in self.drives.values():
            t.data[...] = 0.0

    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        for t, a in zip(self.sets[self.cur], arrays):
            t.data[...] = a

    def read_state(self) -> list[np.ndarray]:
        return [np.array(t.data, dtype=np.float32, copy=True) for t in self.sets[self.cur]]

    def read_drives(self) -> dict[str, np.ndarray]:
        return {n: np.array(t.data, copy=True) for n, t in self.drives.items()}

    def write_drives(self, drives: dict[str, np.ndarray]) -> None:
        for n, a in drives.items():
            self.drives[n].data[...] = a

    def set_image(self, x: np.ndarray) -> None:
        if self.encode_graph is None:
            self.drives["image"].data[...] = x
        else:
            self.encode_image.data[...] = x
            self.encode_request.infer()

    def step(self) -> None:
        self.requests[self.cur].infer()
        self.cur = 1 - self.cur

    def logits(self) -> np.ndarray:
        return np.array(self.logits_tensor.data, dtype=np.float32, copy=True)
