"""onnxruntime sessions for exported CordsNet graphs: the shared base and the whole-protocol :class:`Session`.

* :class:`Session` runs the graph kinds whose ``session`` is "whole" in the artifact contract
  (``unrolled``, ``loop``): the whole protocol in one call.
* :class:`~cordsnet.runtime.step_session.StepSession` runs the "step" kinds (``stepwise``,
  ``stepwise-drive``) one step at a time.

Both parse the artifact's ``cordsnet.*`` metadata with :class:`cordsnet.artifact.ArtifactInfo` (config,
protocol, preset, spontaneous state) and check it against the graph's own inputs and outputs, so an
application needs nothing but the ``.onnx`` file, numpy, Pillow and onnxruntime. Outputs that are not
finite are an error, never a ranking.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnxruntime as ort

from .. import validate
from ..artifact import GRAPH_KINDS, MAX_STEPS, ArtifactInfo, check_artifact_file, read_info
from ..decision import DEFAULT_MARGIN, check_criterion, first_decisions
from ._batch import STEPS_WHY, AnytimeResult, Frontend, Prediction, check_finite, join_chunks
from .preprocess import Preprocessor
from .providers import (CUDA, CUDA_GRAPH_OPTIONS, ProvidersLike, create_session, is_gpu_provider,
                        resolve_providers)

__all__ = ["ArtifactInfo", "BACKENDS", "AnytimeResult", "GRAPH_KINDS", "Prediction", "Session"]

# ONNX element type strings (as onnxruntime reports them) -> numpy dtypes.
_ONNX_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}

# onnxruntime's own exceptions when a file is not a loadable model.
_ORT_LOAD_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "InvalidArgument", "NotImplemented",
                 "RuntimeException")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)

# Which session class runs each value of GraphKind.session (cordsnet.artifact.GRAPH_KINDS).
SESSION_CLASS_NAMES: dict[str | None, str] = {"whole": "Session", "step": "StepSession", None: "StepSession"}

# Engines that run the exported ONNX graphs: onnxruntime (providers) or OpenVINO (devices, precision hints).
from ..names import BACKENDS  # noqa: E402 (the one list: cordsnet.names)


def _load(path: Path, plan: Any, options: ort.SessionOptions | None, warn: Any) -> ort.InferenceSession:
    check_artifact_file(path)
    try:
        return create_session(path, plan, options, warn)
    except _ORT_LOAD_ERRORS as exc:
        first = " ".join(str(exc).split())[:300]
        raise ValueError(f"model: cannot load {str(path)!r} as an ONNX model (truncated, corrupt or not ONNX): "
                         f"{first}") from None


def _dtype_of(arg: Any) -> np.dtype:
    try:
        return _ONNX_DTYPES[arg.type]
    except KeyError:
        raise ValueError(f"model: input/output {arg.name!r} has unsupported element type {arg.type}") from None


def _graph_io(args: Any) -> list[dict[str, Any]]:
    """onnxruntime's NodeArgs as ``{"name", "shape", "dtype"}`` for :meth:`ArtifactInfo.check_graph_io`."""
    return [{"name": a.name, "shape": list(a.shape) if a.shape is not None else None,
             "dtype": _ONNX_DTYPES[a.type].name if a.type in _ONNX_DTYPES else a.type} for a in args]


# Artifact dtypes the OpenVINO backend runs: float32 graphs (with its precision hint), and int8 QDQ
# graphs, whose Q/DQ pairs OpenVINO turns into int8 convolutions (float32 I/O both).
OPENVINO_DTYPES: tuple[str, ...] = ("float32", "int8")


# ------------------------------------------------------------------------------------- base
class _Base(Frontend):
    """What both session kinds share: loading, metadata, providers, preprocessing, validation."""

    _SESSION: str = ""  # the GraphKind.session value this class runs

    def __init__(self, path: str | os.PathLike, providers: ProvidersLike = "auto", *,
                 session_options: ort.SessionOptions | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None,
                 backend: str = "onnxruntime", precision: str | None = None) -> None:
        self.path = Path(path)
        check_artifact_file(self.path)
        self.backend = validate.choice("backend", backend, BACKENDS)
        self._session_options = session_options
        if self.backend == "openvino":
            from .openvino_backend import OpenVINOSession, default_precision, resolve_device, resolve_precision

            for name, value in (("session_options", session_options), ("provider_options", provider_options)):
                if value:
                    raise ValueError(f"{name}: onnxruntime options do not apply to backend='openvino', got {value!r}")
            info = read_info(self.path, "onnx")  # from the file itself (no session), checked against its I/O
            if info.dtype not in OPENVINO_DTYPES:
                raise ValueError(f"backend: 'openvino' runs float32 graphs (reduced precision is its compile hint, "
                                 f"precision='bf16') and int8 (QDQ) graphs, got a {info.dtype} graph "
                                 f"{str(self.path)!r}")
            device = resolve_device(providers)
            self.precision: str | None = (default_precision(info.dtype, device) if precision is None
                                          else resolve_precision(precision, device))
            self._plan = None
            self._session: Any = OpenVINOSession(self.path, device, self.precision)
        else:
            if precision is not None:
                raise ValueError(f"precision: applies to backend='openvino' (a compile hint); onnxruntime runs the "
                                 f"graph's own dtype (export --dtype), got precision={precision!r}")
            self.precision = None
            self._plan = resolve_providers(providers, provider_options=provider_options)
            self._session = _load(self.path, self._plan, session_options,
                                  lambda m: warnings.warn(m, RuntimeWarning, stacklevel=7))
        source = repr(str(self.path))
        self.info = ArtifactInfo.from_metadata(self._session.get_modelmeta().custom_metadata_map, source)
        kind = self.info.kind
        if kind.session != self._SESSION:
            mine = [k for k, v in GRAPH_KINDS.items() if v.session == self._SESSION]
            hint = (f"use {SESSION_CLASS_NAMES[kind.session]}" if kind.session is not None
                    else "open the stepwise-drive graph it belongs to with StepSession")
            raise ValueError(f"model: {source} is a {self.info.graph!r} graph; {type(self).__name__} runs "
                             f"{mine} graphs ({hint})")
        self.info.check_graph_io(_graph_io(self._session.get_inputs()), _graph_io(self._session.get_outputs()),
                                 source)
        self._inputs = {a.name: a for a in self._session.get_inputs()}
        self._outputs = {a.name: a for a in self._session.get_outputs()}
        self.preprocessor: Preprocessor | None = (
            Preprocessor.from_preset(self.info.preset, self.config.image_size) if self.info.preset else None)

    # --------------------------------------------------------------------------- properties
    @property
    def providers(self) -> list[str]:
        """The execution providers the session really runs with (``session.get_providers()``)."""
        return list(self._session.get_providers())

    @property
    def on_gpu(self) -> bool:
        """True when the session runs on the CUDA or TensorRT provider."""
        return is_gpu_provider(self.providers[0])

    @property
    def onnx_session(self) -> ort.InferenceSession:
        """The underlying ``onnxruntime.InferenceSession`` (an :class:`OpenVINOSession` with backend="openvino")."""
        return self._session

    def _device(self) -> tuple[str, int]:
        """("cuda", device_id) when the session runs on a GPU provider, else ("cpu", 0)."""
        if not self.on_gpu:
            return "cpu", 0
        opts = self._session.get_provider_options()
        dev = opts.get(self.providers[0], opts.get(CUDA, {})).get("device_id", "0")
        return "cuda", int(dev)

    def _image_arg(self) -> Any:
        """onnxruntime's NodeArg of the graph input that takes the images."""
        return self._inputs["image"]

    def _image_dtype(self) -> np.dtype:
        return _dtype_of(self._image_arg())

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}({str(self.path)!r}, graph={self.info.graph!r}, R{c.depth}, "
                f"{c.image_size}px, {self.info.dtype}, providers={self.providers})")


# ---------------------------------------------------------------------------------- Session
class Session(_Base):
    """Run a whole-protocol graph (``unrolled`` or ``loop``).

    ``run``/``predict`` accept any number of images: a graph exported with a static batch B gets them
    in chunks of B, the last chunk padded by repeating its last image (the padding's outputs are
    dropped). Calls from several threads are safe.

    Args:
        path: the exported ``.onnx`` file.
        providers: "auto" (CUDA if usable, else the CPU with one warning), "cuda", "tensorrt", "cpu",
            or an explicit onnxruntime provider list. A GPU provider that cannot be used raises
            :class:`~cordsnet.runtime.ProviderError` saying why.
        cuda_graph: capture the run as a CUDA graph (CUDA provider, unrolled graphs; implies
            ``io_binding``; one capture per batch size).
        io_binding: run with inputs and outputs in fixed onnxruntime buffers on the session's device,
            one set per batch size, bound once (what CUDA graphs need; default False).
        session_options: onnxruntime ``SessionOptions`` (threads, optimisation level, ...).
        provider_options: extra options per onnxruntime provider name.
        backend: "onnxruntime" (default) or "openvino" (the same ONNX file compiled by OpenVINO;
            `providers` is then the OpenVINO device, "auto"/"cpu" meaning "CPU").
        precision: OpenVINO only: "f32", "bf16" or "f16" as a compile hint; an error where the device
            does not report it (never a silent fallback). None (default): f32 for float32 graphs; for int8
            graphs bf16 where the device reports it (what stays float in them), else f32
            (:data:`~cordsnet.runtime.openvino_backend.DEFAULT_PRECISIONS`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX file, not a cordsnet export, metadata that contradicts the graph, or
            a stepwise graph.

    Note:
        Opening a graph costs onnxruntime's graph construction, which grows with its node count: the
        100-step unrolled graph of the bundled model takes seconds to open, the loop graph a fraction
        of that for the same results (see docs/runtime.md). Prefer the loop graph for short-lived
        processes such as CLI calls.
    """

    _SESSION = "whole"

    def __init__(self, path: str | os.PathLike, providers: ProvidersLike = "auto", *, cuda_graph: bool = False,
                 io_binding: bool = False, session_options: ort.SessionOptions | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None,
                 backend: str = "onnxruntime", precision: str | None = None) -> None:
        if backend == "openvino" and (cuda_graph or io_binding):
            raise ValueError(f"{'cuda_graph' if cuda_graph else 'io_binding'}: onnxruntime options; not for "
                             "backend='openvino'")
        provider_options = None if backend == "openvino" else _cuda_graph_options(providers, cuda_graph,
                                                                                   provider_options)
        super().__init__(path, providers, session_options=session_options, provider_options=provider_options,
                         backend=backend, precision=precision)
        self._baseline: np.ndarray | None = None
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph:
            _require_gpu(self, "cuda_graph=True")
            if self.info.kind.steps_input:
                raise ValueError(f"cuda_graph: a {self.info.graph!r} graph has control flow, which CUDA graphs cannot "
                                 "capture; export an 'unrolled' graph")
        if io_binding and self.info.kind.steps_input:
            raise ValueError(f"io_binding: fixed buffers need fixed output shapes; a {self.info.graph!r} graph's "
                             "outputs depend on its steps input (use an 'unrolled' graph)")
        self.io_binding = bool(io_binding) or self.cuda_graph
        self._graph_buffers: dict[int, tuple[ort.IOBinding, ort.OrtValue, dict[str, ort.OrtValue], ort.RunOptions]] = {}
        self._bound_lock = threading.Lock()  # the fixed buffers are shared state

    def _steps_feed(self, steps: int | None) -> dict[str, np.ndarray]:
        if self.info.kind.steps_input:
            return {"steps": np.asarray(self._steps(steps), dtype=np.int64)}
        if steps is not None and steps != self.info.steps:
            raise ValueError(f"steps: this {self.info.graph!r} graph runs exactly {self.info.steps} steps, got "
                             f"steps={steps} (export a 'loop' or 'stepwise' graph for other step counts)")
        return {}

    def run_outputs(self, images: Any, *, steps: int | None = None) -> dict[str, np.ndarray]:
        """Every output of the graph by name (``logits``, ``rates_<area>``), as numpy arrays.

        Args:
            images: see :meth:`preprocess`; any number of images, also for a static-batch graph.
            steps: stimulus steps (``loop`` graphs only; default: the exported protocol's).

        Raises:
            ValueError: bad images or steps, or outputs that are not finite.
        """
        x = self.preprocess(images, check_batch=False)
        steps_feed = self._steps_feed(steps)
        parts, reals = [], []
        for chunk, n in self._chunks(x):
            if self.io_binding:
                out = self._run_bound(chunk)
            else:
                names = list(self._outputs)
                out = dict(zip(names, self._session.run(names, {"image": chunk, **steps_feed})))
            parts.append(out)
            reals.append(n)
        outs = join_chunks(parts, reals, self.info.batch_axis)
        for k, v in outs.items():
            check_finite(k, v)
        return outs

    def run(self, images: Any, *, steps: int | None = None) -> np.ndarray:
        """Logits of the protocol: (B, classes), or (steps, B, classes) for a readout="all" graph (float32)."""
        return self.run_outputs(images, steps=steps)["logits"].astype(np.float32, copy=False)

    def predict(self, images: Any, top_k: int = 5, *, steps: int | None = None) -> Prediction:
        """Top-k classes (indices, names, probabilities) from the logits after the last step."""
        logits = self.run(images, steps=steps)
        if logits.ndim == 3:
            logits = logits[-1]
        return self._predict_from_logits(logits, top_k)

    def baseline_logits(self, steps: int | None = None) -> np.ndarray:
        """The no-image baseline: logits after every step of a blank image, (T, K) float32 (cached).

        Needs a readout="all" graph. A blank image is a zero image, whose drive is exactly zero (the
        input convolution has no bias), i.e. the protocol with no stimulus.
        """
        self._need_all("baseline_logits")
        n = self._until_steps(steps)
        if self._baseline is None or self._baseline.shape[0] < n:
            blank = np.zeros((1, *self.config.input_shape), _dtype_of(self._image_arg()))
            self._baseline = self._all_logits(blank, n)[:, 0].astype(np.float32)
        return self._baseline[:n].copy()

    def run_until(self, images: Any, threshold: float, max_steps: int | None = None, tol: float | None = None,
                  *, margin: float = DEFAULT_MARGIN) -> AnytimeResult:
        """Each image's answer at the step it decided (:mod:`cordsnet.decision`), from a readout="all" graph.

        A whole-protocol graph runs all its steps in one call and has no state inputs, so it cannot
        stop early: this runs the full `max_steps` and then reads off, per image, the first step at
        which the criterion holds (the same steps, decisions and logits as
        :meth:`StepSession.run_until`, but no work saved). For early exit that saves work, export a
        ``stepwise`` graph and use :meth:`StepSession.run_until`.

        Args:
            images: see :meth:`preprocess`.
            threshold: probability in (1/K, 1].
            max_steps: the most stimulus steps (loop graphs: any; unrolled: at most the exported ones).
            tol: not available here (a whole graph does not output its states): must be None.
            margin: evidence in logits the image must add (see :mod:`cordsnet.decision`).

        Returns:
            :class:`AnytimeResult` (``converged`` all False).
        """
        self._need_all("run_until")
        if tol is not None:
            raise ValueError(f"tol: convergence needs the state after every step, which a whole-protocol graph does "
                             f"not output; use StepSession.run_until with a stepwise graph, got tol={tol!r}")
        n = self._until_steps(max_steps)
        threshold, margin = check_criterion(threshold, margin, self.config.num_classes)
        z = self._all_logits(self.preprocess(images, check_batch=False), n)  # (T, B, K)
        first = first_decisions(z, self.baseline_logits(n), threshold, margin)
        decided = first.steps > 0
        steps = np.where(decided, first.steps, n).astype(np.int64)
        logits = z[steps - 1, np.arange(z.shape[1])].astype(np.float32)
        return AnytimeResult(logits, steps, decided, np.zeros_like(decided))

    def _need_all(self, what: str) -> None:
        if self.info.readout != "all":
            raise ValueError(f"{what}: needs the logits after every step; {str(self.path)!r} is a {self.info.graph!r} "
                             "graph with readout 'last' (export with --readout all, or a stepwise graph for "
                             "StepSession.run_until, which also stops early)")

    def _until_steps(self, steps: int | None) -> int:
        if self.info.kind.steps_input:
            return validate.optional_integer("max_steps", steps, self.info.steps, min=1, max=MAX_STEPS, why=STEPS_WHY)
        return validate.optional_integer("max_steps", steps, self.info.steps, min=1, max=self.info.steps,
                                         why=f"this {self.info.graph!r} graph runs {self.info.steps} steps")

    def _all_logits(self, x: np.ndarray, n: int) -> np.ndarray:
        if self.info.kind.steps_input:
            return self.run(x, steps=n)
        return self.run(x)[:n]

    def _run_bound(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run with inputs and outputs in fixed OrtValues on the session's device (one set per batch)."""
        batch = x.shape[0]
        with self._bound_lock:
            if batch not in self._graph_buffers:
                device, device_id = self._device()
                binding = self._session.io_binding()
                image = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype, device, device_id)
                binding.bind_ortvalue_input("image", image)
                outs = {}
                for name, arg in self._outputs.items():
                    shape = [d if isinstance(d, int) else batch for d in arg.shape]
                    outs[name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, _dtype_of(arg), device, device_id)
                    binding.bind_ortvalue_output(name, outs[name])
                options = ort.RunOptions()
                if self.cuda_graph:  # one captured graph per batch size (their buffers differ)
                    options.add_run_config_entry("gpu_graph_id", str(len(self._graph_buffers) + 1))
                self._graph_buffers[batch] = (binding, image, outs, options)
            binding, image, outs, options = self._graph_buffers[batch]
            image.update_inplace(x)
            self._session.run_with_iobinding(binding, options)
            return {name: v.numpy().copy() for name, v in outs.items()}


def _cuda_graph_options(providers: ProvidersLike, cuda_graph: bool,
                        provider_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    opts = {k: dict(v) for k, v in (provider_options or {}).items()}
    if cuda_graph:
        for provider, key in CUDA_GRAPH_OPTIONS.items():
            opts.setdefault(provider, {})[key] = "1"
    return opts


def _require_gpu(session: _Base, what: str) -> None:
    if not session.on_gpu:
        raise ValueError(f"{what}: CUDA graphs need the CUDA or TensorRT provider; this session runs on "
                         f"{session.providers}")


