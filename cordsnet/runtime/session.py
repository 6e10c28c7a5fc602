"""onnxruntime sessions for exported CordsNet graphs: whole-protocol and step-by-step.

* :class:`Session` runs ``unrolled`` and ``loop`` graphs (the whole protocol in one call).
* :class:`StepSession` runs ``stepwise`` graphs (and ``stepwise-drive`` graphs with their encode
  graph) one step at a time, keeping the recurrent state in onnxruntime-owned buffers: on CUDA the
  state never leaves the GPU between steps.

Both read the artifact's ``cordsnet.*`` metadata (config, protocol, preset, spontaneous state), so an
application needs nothing but the ``.onnx`` file, numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from ..config import CordsNetConfig
from ..export.metadata import decode_spontaneous_state
from ..export.metadata import encode_path as export_encode_path
from .preprocess import Preprocessor
from .providers import (
    CUDA,
    TENSORRT,
    ProvidersLike,
    create_session,
    is_gpu_provider,
    resolve_providers,
)

__all__ = ["ArtifactInfo", "GRAPH_KINDS", "Prediction", "Session", "StepSession", "read_artifact_info"]

GRAPH_KINDS: tuple[str, ...] = ("unrolled", "loop", "stepwise", "stepwise-drive")
SUPPORTED_FORMAT_VERSIONS: tuple[str, ...] = ("1",)
_PREFIX = "cordsnet."

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


# ------------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class ArtifactInfo:
    """The ``cordsnet.*`` metadata of an exported graph, parsed.

    Attributes:
        graph: one of :data:`GRAPH_KINDS`.
        config: the model's :class:`CordsNetConfig`.
        steps, spontaneous_steps, alpha: the protocol baked into (or defaulted by) the graph.
        readout: "last" or "all".
        record: areas whose rates the graph outputs as ``rates_<area>``.
        dtype: "float32" or "float16".
        batch: the static batch size, or None for a dynamic batch.
        preset: ``DatasetPreset.to_dict()`` or None.
        metadata: the raw string map.
    """

    graph: str
    config: CordsNetConfig
    steps: int
    spontaneous_steps: int
    alpha: float
    readout: str
    record: tuple[int, ...]
    dtype: str
    batch: int | None
    preset: dict[str, Any] | None
    version: str
    checkpoint_sha256: str
    metadata: dict[str, str] = field(repr=False)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: str = "model") -> "ArtifactInfo":
        """Parse the metadata map; raises ValueError naming the missing or malformed key."""
        if f"{_PREFIX}format_version" not in meta:
            raise ValueError(f"model: {source} is an ONNX model but not a cordsnet export (no "
                             f"'{_PREFIX}format_version' metadata)")
        version = meta[f"{_PREFIX}format_version"]
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(f"model: {source} has cordsnet.format_version {version!r}; this runtime reads "
                             f"{list(SUPPORTED_FORMAT_VERSIONS)}")

        def get(key: str) -> str:
            try:
                return meta[_PREFIX + key]
            except KeyError:
                raise ValueError(f"model: {source} lacks the metadata key '{_PREFIX}{key}'") from None

        def parse(key: str, conv: Any) -> Any:
            text = get(key)
            try:
                return conv(text)
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                raise ValueError(f"model: {source} has a malformed '{_PREFIX}{key}' = {text[:80]!r} ({exc})") from None

        graph = get("graph")
        if graph not in GRAPH_KINDS:
            raise ValueError(f"model: {source} has cordsnet.graph {graph!r}; expected one of {list(GRAPH_KINDS)}")
        batch_text = get("batch")
        preset = parse("preset", json.loads)
        return cls(
            graph=graph,
            config=parse("config", CordsNetConfig.from_json),
            steps=parse("steps", int),
            spontaneous_steps=parse("spontaneous_steps", int),
            alpha=parse("alpha", float),
            readout=meta.get(_PREFIX + "readout", "last"),
            record=tuple(int(a) for a in parse("record", json.loads) or ()) if _PREFIX + "record" in meta else (),
            dtype=meta.get(_PREFIX + "dtype", "float32"),
            batch=None if batch_text == "dynamic" else parse("batch", int),
            preset=preset if isinstance(preset, dict) else None,
            version=meta.get(_PREFIX + "version", "?"),
            checkpoint_sha256=meta.get(_PREFIX + "checkpoint_sha256", ""),
            metadata=dict(meta),
        )

    def spontaneous_state(self) -> list[np.ndarray]:
        """The state after the spontaneous phase, one (1, c_i, H_i, W_i) array per area.

        Decoded from ``cordsnet.spontaneous_state``; zeros when the metadata lacks it and the
        protocol has no spontaneous phase.
        """
        shapes = [(1, *s) for s in self.config.state_shapes]
        text = self.metadata.get(_PREFIX + "spontaneous_state")
        if text is None:
            if self.spontaneous_steps == 0:
                return [np.zeros(s, np.float32) for s in shapes]
            raise ValueError("model: the metadata lacks 'cordsnet.spontaneous_state' (needed to start "
                             f"from the state after {self.spontaneous_steps} spontaneous steps)")
        states = decode_spontaneous_state(text)
        if len(states) != len(shapes):
            raise ValueError(f"model: 'cordsnet.spontaneous_state' must list {len(shapes)} areas, got {len(states)}")
        for i, (arr, shape) in enumerate(zip(states, shapes)):
            if arr.shape != shape:
                raise ValueError(f"model: 'cordsnet.spontaneous_state' area {i} has shape {arr.shape}, "
                                 f"expected {shape}")
        return [arr.astype(np.float32) for arr in states]


def read_artifact_info(path: str | os.PathLike) -> ArtifactInfo:
    """Read and parse the metadata of an exported ONNX graph (CPU, graph optimisations off, nothing run)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = _load(Path(path), None, options, None)
    return ArtifactInfo.from_metadata(session.get_modelmeta().custom_metadata_map, str(path))


def _check_model_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"model: no such file {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"model: expected an .onnx file, got the directory {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"model: {str(path)!r} is empty, not an ONNX model")


def _load(path: Path, plan: Any, options: ort.SessionOptions | None, warn: Any) -> ort.InferenceSession:
    _check_model_path(path)
    try:
        if plan is None:
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
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


class Prediction(NamedTuple):
    """Top-k classes of a batch.

    Attributes:
        indices: (B, k) int64 class indices, most probable first.
        names: B lists of k class names (the index as text when the model has no names).
        probabilities: (B, k) float32 softmax probabilities.
    """

    indices: np.ndarray
    names: list[list[str]]
    probabilities: np.ndarray

    def to_list(self) -> list[list[dict[str, Any]]]:
        """JSON-ready: per image, a list of {"index", "name", "probability"}."""
        return [[{"index": int(i), "name": n, "probability": float(p)} for i, n, p in zip(ii, nn, pp)]
                for ii, nn, pp in zip(self.indices, self.names, self.probabilities)]


# ------------------------------------------------------------------------------------- base
class _Base:
    """What both session kinds share: loading, metadata, providers, preprocessing, validation."""

    _KINDS: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike, providers: ProvidersLike = "auto", *,
                 session_options: ort.SessionOptions | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.path = Path(path)
        _check_model_path(self.path)
        self._plan = resolve_providers(providers, provider_options=provider_options)
        self._session_options = session_options
        self._session = _load(self.path, self._plan, session_options,
                              lambda m: warnings.warn(m, RuntimeWarning, stacklevel=7))
        self.info = ArtifactInfo.from_metadata(self._session.get_modelmeta().custom_metadata_map, str(self.path))
        if self.info.graph not in self._KINDS:
            other = "StepSession" if self.info.graph.startswith("stepwise") else "Session"
            raise ValueError(f"model: {str(self.path)!r} is a {self.info.graph!r} graph; {type(self).__name__} runs "
                             f"{list(self._KINDS)} graphs (use {other})")
        self._inputs = {a.name: a for a in self._session.get_inputs()}
        self._outputs = {a.name: a for a in self._session.get_outputs()}
        self.preprocessor: Preprocessor | None = (
            Preprocessor.from_preset(self.info.preset, self.config.image_size) if self.info.preset else None)

    # --------------------------------------------------------------------------- properties
    @property
    def config(self) -> CordsNetConfig:
        return self.info.config

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really runs with (``session.get_providers()``)."""
        return list(self._session.get_providers())

    @property
    def on_gpu(self) -> bool:
        """True when the session runs on the CUDA or TensorRT provider."""
        return is_gpu_provider(self.providers[0])

    @property
    def class_names(self) -> list[str] | None:
        names = (self.info.preset or {}).get("class_names")
        return list(names) if names else None

    @property
    def onnx_session(self) -> ort.InferenceSession:
        """The underlying ``onnxruntime.InferenceSession``."""
        return self._session

    def _device(self) -> tuple[str, int]:
        """("cuda", device_id) when the session runs on a GPU provider, else ("cpu", 0)."""
        if not self.on_gpu:
            return "cpu", 0
        opts = self._session.get_provider_options()
        dev = opts.get(self.providers[0], opts.get(CUDA, {})).get("device_id", "0")
        return "cuda", int(dev)

    # --------------------------------------------------------------------------- inputs
    def preprocess(self, images: Any, *, check_batch: bool = True) -> np.ndarray:
        """Images in any accepted form -> (B, C, S, S) in the graph's input dtype, validated.

        Accepted: a float (B, C, S, S) or (C, S, S) array of normalised pixels (used as is); a uint8
        (H, W), (H, W, C) image or (N, H, W, C) batch; a PIL image; an image file path; or a list of
        these (one image each). Raw images are preprocessed with the model's preset.

        Args:
            images: see above.
            check_batch: refuse a batch other than a static-batch graph's (default True).
        """
        c, s = self.config.in_channels, self.config.image_size
        dtype = _dtype_of(self._inputs[self._image_input])
        if hasattr(images, "__array__") and not isinstance(images, (np.ndarray, Image.Image)):
            images = np.asarray(images)
        if isinstance(images, np.ndarray):
            if images.dtype == np.uint8:
                if images.ndim in (2, 3):
                    arr = self._raw([images])
                elif images.ndim == 4:
                    arr = self._raw(list(images))
                else:
                    raise ValueError(f"images: expected a uint8 image (H, W[, C]) or batch (N, H, W, C), got shape "
                                     f"{images.shape}")
            elif np.issubdtype(images.dtype, np.floating):
                arr = images[None] if images.ndim == 3 else images
            else:
                raise TypeError(f"images: expected float (B, {c}, {s}, {s}) arrays of normalised pixels or uint8 "
                                f"images, got dtype {images.dtype}")
        elif isinstance(images, (str, os.PathLike, Image.Image)):
            arr = self._raw([images])
        elif isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images: expected at least one image, got an empty list")
            if all(isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) for x in images):
                arr = np.stack([x for x in images])
            else:
                arr = self._raw(list(images))
        else:
            raise TypeError(f"images: expected an array, a PIL image, a path or a list of them, got "
                            f"{type(images).__name__}")
        if arr.ndim != 4:
            raise ValueError(f"images: expected shape (B, {c}, {s}, {s}), got {tuple(arr.shape)} (rank {arr.ndim})")
        if arr.shape[1] != c:
            raise ValueError(f"images: expected {c} channel(s) at dim 1, got {arr.shape[1]} (shape {tuple(arr.shape)})")
        if arr.shape[2:] != (s, s):
            raise ValueError(f"images: expected {s}x{s} images, got {arr.shape[2]}x{arr.shape[3]} "
                             f"(shape {tuple(arr.shape)}); pass raw images to have them resized")
        if arr.shape[0] == 0:
            raise ValueError(f"images: expected a non-empty batch, got shape {tuple(arr.shape)}")
        if not np.isfinite(arr).all():
            raise ValueError("images: expected finite pixel values, got NaN or infinity")
        if check_batch:
            self._check_batch(arr.shape[0], "images")
        return np.ascontiguousarray(arr, dtype=dtype)

    def _raw(self, images: list[Any]) -> np.ndarray:
        if self.preprocessor is None:
            raise ValueError(f"images: {str(self.path)!r} has no dataset preset (cordsnet.preset is null), so raw "
                             f"images cannot be preprocessed; pass normalised float (B, {self.config.in_channels}, "
                             f"{self.config.image_size}, {self.config.image_size}) arrays")
        return self.preprocessor.batch(images)

    def _check_batch(self, batch: int, name: str) -> None:
        if self.info.batch is not None and batch != self.info.batch:
            raise ValueError(f"{name}: this graph was exported for a fixed batch of {self.info.batch}, "
                             f"got batch {batch}")

    @property
    def _image_input(self) -> str:
        return "image"

    def _predict_from_logits(self, logits: np.ndarray, top_k: int) -> Prediction:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
        k = min(int(top_k), logits.shape[-1])
        z = logits.astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        probs = np.take_along_axis(p, idx, axis=-1).astype(np.float32)
        names = self.class_names
        return Prediction(idx.astype(np.int64), [[names[i] if names and i < len(names) else str(i) for i in row]
                                                for row in idx], probs)

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}({str(self.path)!r}, graph={self.info.graph!r}, R{c.depth}, "
                f"{c.image_size}px, {self.info.dtype}, providers={self.providers})")


# ---------------------------------------------------------------------------------- Session
class Session(_Base):
    """Run a whole-protocol graph (``unrolled`` or ``loop``).

    Args:
        path: the exported ``.onnx`` file.
        providers: "auto" (CUDA if usable, else the CPU with one warning), "cuda", "tensorrt", "cpu",
            or an explicit onnxruntime provider list. A GPU provider that cannot be used raises
            :class:`~cordsnet.runtime.ProviderError` saying why.
        cuda_graph: capture the run as a CUDA graph (CUDA provider, unrolled graphs; inputs and
            outputs stay in fixed device buffers, one capture per batch size).
        session_options: onnxruntime ``SessionOptions`` (threads, optimisation level, ...).
        provider_options: extra options per onnxruntime provider name.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ONNX file, not a cordsnet export, or a stepwise graph.
    """

    _KINDS = ("unrolled", "loop")

    def __init__(self, path: str | os.PathLike, providers: ProvidersLike = "auto", *, cuda_graph: bool = False,
                 session_options: ort.SessionOptions | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        provider_options = _cuda_graph_options(providers, cuda_graph, provider_options)
        super().__init__(path, providers, session_options=session_options, provider_options=provider_options)
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph:
            _require_gpu(self, "cuda_graph=True")
            if self.info.graph == "loop":
                raise ValueError("cuda_graph: a 'loop' graph has control flow, which CUDA graphs cannot capture; "
                                 "export an 'unrolled' graph")
        # Fixed input/output buffers per batch size, bound once (IO binding); required by CUDA graphs.
        self._io_binding = self.cuda_graph
        self._graph_buffers: dict[int, tuple[ort.IOBinding, ort.OrtValue, dict[str, ort.OrtValue], ort.RunOptions]] = {}

    def _steps_feed(self, steps: int | None) -> dict[str, np.ndarray]:
        if self.info.graph == "loop":
            n = self.info.steps if steps is None else steps
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"steps: expected a positive int, got {n!r}")
            return {"steps": np.asarray(n, dtype=np.int64)}
        if steps is not None and steps != self.info.steps:
            raise ValueError(f"steps: this 'unrolled' graph runs exactly {self.info.steps} steps, got steps={steps} "
                             "(export a 'loop' or 'stepwise' graph for other step counts)")
        return {}

    def run_outputs(self, images: Any, *, steps: int | None = None) -> dict[str, np.ndarray]:
        """Every output of the graph by name (``logits``, ``rates_<area>``), as numpy arrays.

        Args:
            images: see :meth:`preprocess`.
            steps: stimulus steps (``loop`` graphs only; default: the exported protocol's).
        """
        x = self.preprocess(images)
        feeds = {"image": x, **self._steps_feed(steps)}
        if self._io_binding and self.info.graph == "unrolled":
            return self._run_bound(x)
        names = list(self._outputs)
        values = self._session.run(names, feeds)
        return dict(zip(names, values))

    def run(self, images: Any, *, steps: int | None = None) -> np.ndarray:
        """Logits of the protocol: (B, classes), or (steps, B, classes) for a readout="all" graph (float32)."""
        return self.run_outputs(images, steps=steps)["logits"].astype(np.float32, copy=False)

    def predict(self, images: Any, top_k: int = 5, *, steps: int | None = None) -> Prediction:
        """Top-k classes (indices, names, probabilities) from the logits after the last step."""
        logits = self.run(images, steps=steps)
        if logits.ndim == 3:
            logits = logits[-1]
        return self._predict_from_logits(logits, top_k)

    def _run_bound(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run with inputs and outputs in fixed OrtValues on the session's device (one set per batch)."""
        batch = x.shape[0]
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
        opts.setdefault(CUDA, {})["enable_cuda_graph"] = "1"
        opts.setdefault(TENSORRT, {})["trt_cuda_graph_enable"] = "1"
    return opts


def _require_gpu(session: _Base, what: str) -> None:
    if not session.on_gpu:
        raise ValueError(f"{what}: CUDA graphs need the CUDA or TensorRT provider; this session runs on "
                         f"{session.providers}")


# ------------------------------------------------------------------------------ StepSession
class StepSession(_Base):
    """Run a ``stepwise`` (or ``stepwise-drive``) graph one step at a time.

    The recurrent state lives in onnxruntime-owned buffers (OrtValues on the session's device) bound
    with IO binding. Two buffer sets alternate: step k reads set k mod 2 and writes set (k+1) mod 2
    (binding a state's input and output to one buffer would overwrite rates still being read). On
    CUDA nothing but the logits crosses to the host between steps; on the CPU the same code path runs
    with CPU buffers.

    For a ``stepwise-drive`` graph the encode graph ``<stem>.encode.onnx`` beside it maps each new image
    to its drive terms (``skip``, ``ff0``) once, straight into the step graph's input buffers; later
    steps without a new image reuse them.

    Args:
        path: the exported ``.onnx`` file.
        providers: as for :class:`Session`.
        cuda_graph: capture each step as a CUDA graph (fixed shapes; one capture per buffer set, and
            again after a batch change). CUDA/TensorRT provider only.
        session_options: onnxruntime ``SessionOptions``; default: onnxruntime's, except that idle
            intra-op threads sleep between calls (``session.intra_op.allow_spinning = 0``).
        provider_options: extra options per onnxruntime provider name.

    Example:
        >>> s = StepSession("r4.stepwise.onnx", providers="cpu")   # doctest: +SKIP
        >>> s.reset(batch=1)                                        # spontaneous state
        >>> for frame in frames:                                    # a video, one frame per step
        ...     logits = s.step(frame)
    """

    _KINDS = ("stepwise", "stepwise-drive")

    def __init__(self, path: str | os.PathLike, providers: ProvidersLike = "auto", *, cuda_graph: bool = False,
                 session_options: ort.SessionOptions | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        provider_options = _cuda_graph_options(providers, cuda_graph, provider_options)
        if session_options is None:
            # Steps are separate short calls with the application's own work in between: idle intra-op
            # threads should sleep, not busy-wait (spinning cost 1.41x vs 1.15x the unrolled graph's
            # per-step time for R8 at 224 px on a shared 2-core CPU; see benchmarks/bench_runtime.py).
            session_options = ort.SessionOptions()
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        super().__init__(path, providers, session_options=session_options, provider_options=provider_options)
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph:
            _require_gpu(self, "cuda_graph=True")
        depth = self.config.depth
        self._state_in = [f"state_{i}" for i in range(depth)]
        self._state_out = [f"next_state_{i}" for i in range(depth)]
        drive = self.info.graph == "stepwise-drive"
        self._drive_inputs = ("skip", "ff0") if drive else ("image",)
        self._check_io(self._session, [*self._drive_inputs, *self._state_in], ["logits", *self._state_out], "step")
        self._state_dtype = _dtype_of(self._inputs["state_0"])
        self._encode: ort.InferenceSession | None = None
        if drive:
            encode_path = export_encode_path(self.path)  # the exporter's naming rule
            if not encode_path.exists():
                raise FileNotFoundError(f"model: a 'stepwise-drive' graph needs its encode graph beside it, "
                                        f"{str(encode_path)!r} does not exist")
            # Same providers as the step graph, without CUDA-graph capture (it runs once per image) and
            # without a second fallback warning.
            encode_plan = resolve_providers(providers, provider_options={
                k: {o: v for o, v in d.items() if o not in ("enable_cuda_graph", "trt_cuda_graph_enable")}
                for k, d in provider_options.items()})
            self._encode = _load(encode_path, encode_plan, session_options, lambda m: None)
            self._check_io(self._encode, ["image"], ["skip", "ff0"], "encode")
            self._encode_inputs = {a.name: a for a in self._encode.get_inputs()}
        self._spontaneous = self.info.spontaneous_state()
        self._batch = 0
        self._generation = 0
        self._cur = 0
        self._steps_taken = 0
        self.reset(1 if self.info.batch is None else self.info.batch)

    @staticmethod
    def _check_io(session: ort.InferenceSession, inputs: Sequence[str], outputs: Sequence[str], what: str) -> None:
        have_in = {a.name for a in session.get_inputs()}
        have_out = {a.name for a in session.get_outputs()}
        if set(inputs) - have_in or set(outputs) - have_out:
            raise ValueError(f"model: the {what} graph does not follow the cordsnet contract: expected inputs "
                             f"{list(inputs)} and outputs {list(outputs)}, got inputs {sorted(have_in)} and outputs "
                             f"{sorted(have_out)}")

    @property
    def _image_input(self) -> str:
        return "image"

    def preprocess(self, images: Any, *, check_batch: bool = True) -> np.ndarray:  # noqa: D102 - see _Base
        if self._encode is None:
            return super().preprocess(images, check_batch=check_batch)
        # stepwise-drive: the image goes to the encode graph; validate against its input type.
        saved = self._inputs
        self._inputs = {**saved, "image": self._encode_inputs["image"]}
        try:
            return super().preprocess(images, check_batch=check_batch)
        finally:
            self._inputs = saved

    # ------------------------------------------------------------------------------ buffers
    @property
    def batch(self) -> int:
        """Batch size of the current state."""
        return self._batch

    @property
    def steps_taken(self) -> int:
        """Steps run since the last :meth:`reset` (or state assignment)."""
        return self._steps_taken

    def _allocate(self, batch: int) -> None:
        device, device_id = self._device()
        c_shapes = self.config.state_shapes

        def new(shape: Sequence[int], dtype: np.dtype) -> ort.OrtValue:
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, device_id)
            value.update_inplace(np.zeros(shape, dtype))
            return value

        self._sets = [[new((batch, *s), self._state_dtype) for s in c_shapes] for _ in range(2)]
        self._drive_bufs = {}
        for name in self._drive_inputs:
            arg = self._inputs[name]
            shape = [batch, *arg.shape[1:]] if name != "image" else [batch, *self.config.input_shape]
            shape = [d if isinstance(d, int) else batch for d in shape]
            self._drive_bufs[name] = new(shape, _dtype_of(arg))
        out = self._outputs["logits"]
        self._logits = new([batch, self.config.num_classes], _dtype_of(out))
        self._bindings = []
        for k in range(2):
            binding = self._session.io_binding()
            for name, value in self._drive_bufs.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self._state_in, self._sets[k]):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(self._state_out, self._sets[1 - k]):
                binding.bind_ortvalue_output(name, value)
            binding.bind_ortvalue_output("logits", self._logits)
            self._bindings.append(binding)
        if self._encode is not None:
            enc = self._encode.io_binding()
            arg = self._encode_inputs["image"]
            self._encode_image = new([batch, *self.config.input_shape], _dtype_of(arg))
            enc.bind_ortvalue_input("image", self._encode_image)
            for name in ("skip", "ff0"):
                enc.bind_ortvalue_output(name, self._drive_bufs[name])
            self._encode_binding = enc
        self._run_options = []
        for k in range(2):
            options = ort.RunOptions()
            if self.cuda_graph:
                # One captured graph per buffer set (their addresses differ), fresh ids per allocation.
                options.add_run_config_entry("gpu_graph_id", str(2 * self._generation + k + 1))
            self._run_options.append(options)
        self._generation += 1
        self._batch = batch

    def reset(self, batch: int = 1) -> None:
        """Start over from the spontaneous state (the exported protocol's) with a blank image.

        Args:
            batch: batch size of the new state (fixed when the graph was exported with a static batch).
        """
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch: expected a positive int, got {batch!r}")
        batch = int(batch)
        self._check_batch(batch, "batch")
        if batch != self._batch:
            self._allocate(batch)
        else:
            for value in self._drive_bufs.values():
                value.update_inplace(np.zeros(value.shape(), _ONNX_DTYPES[value.data_type()]))
        self._cur = 0
        for value, spont in zip(self._sets[0], self._spontaneous):
            value.update_inplace(np.ascontiguousarray(np.broadcast_to(spont, (batch, *spont.shape[1:])),
                                                      dtype=self._state_dtype))
        self._steps_taken = 0

    @property
    def state(self) -> list[np.ndarray]:
        """The current rates, one (B, c_i, H_i, W_i) float32 array per area (a copy, on the host)."""
        return [np.array(v.numpy(), dtype=np.float32, copy=True) for v in self._sets[self._cur]]

    @state.setter
    def state(self, value: Sequence[Any]) -> None:
        shapes = self.config.state_shapes
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"state: expected a list of {len(shapes)} arrays (one per area), "
                            f"got {type(value).__name__}")
        if len(value) != len(shapes):
            raise ValueError(f"state: expected {len(shapes)} arrays (one per area), got {len(value)}")
        arrays = [np.asarray(v) for v in value]
        batch = arrays[0].shape[0] if arrays[0].ndim == 4 else None
        for i, (arr, shape) in enumerate(zip(arrays, shapes)):
            if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or arr.shape[0] != batch or arr.shape[0] < 1:
                raise ValueError(f"state[{i}]: expected shape ({batch if batch else 'B'}, "
                                 f"{', '.join(map(str, shape))}), got {tuple(arr.shape)}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"state[{i}]: expected a float array, got dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ValueError(f"state[{i}]: expected finite rates, got NaN or infinity")
        assert batch is not None
        self._check_batch(batch, "state")
        if batch != self._batch:
            self._allocate(batch)
        for buf, arr in zip(self._sets[self._cur], arrays):
            buf.update_inplace(np.ascontiguousarray(arr, dtype=self._state_dtype))
        self._steps_taken = 0

    # -------------------------------------------------------------------------------- steps
    def set_image(self, images: Any) -> None:
        """Show `images` from the next step on (encoded once for a stepwise-drive graph).

        Args:
            images: a batch matching the state's batch size, in any form :meth:`preprocess` takes.
        """
        x = self.preprocess(images)
        if x.shape[0] != self._batch:
            raise ValueError(f"images: expected a batch of {self._batch} (the state's batch; call reset(batch=...) "
                             f"to change it), got {x.shape[0]}")
        if self._encode is None:
            self._drive_bufs["image"].update_inplace(x)
        else:
            self._encode_image.update_inplace(x)
            self._encode.run_with_iobinding(self._encode_binding)

    def step(self, images: Any = None, *, fetch: bool = True) -> np.ndarray | None:
        """One synchronous step of every area.

        Args:
            images: a new image batch to show from this step on (e.g. the next video frame), or None
                to keep showing the current one (blank after :meth:`reset`).
            fetch: copy the logits to the host and return them; False skips the copy (the state
                still advances on the device).

        Returns:
            The logits after the step, (B, classes) float32, or None when ``fetch`` is False.
        """
        if images is not None:
            self.set_image(images)
        k = self._cur
        self._session.run_with_iobinding(self._bindings[k], self._run_options[k])
        self._cur = 1 - k
        self._steps_taken += 1
        if not fetch:
            return None
        return np.array(self._logits.numpy(), dtype=np.float32, copy=True)

    def run(self, images: Any, steps: int | None = None, *, reset: bool = True) -> np.ndarray:
        """The protocol: spontaneous state, then `images` for `steps` steps; logits (B, classes).

        Args:
            images: one batch shown at every step.
            steps: stimulus steps (default: the exported protocol's ``cordsnet.steps``).
            reset: start from the spontaneous state (True) or continue from the current state.
        """
        n = self.info.steps if steps is None else steps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"steps: expected a positive int, got {n!r}")
        x = self.preprocess(images)
        if reset:
            self.reset(x.shape[0])
        self.set_image(x)
        for _ in range(int(n) - 1):
            self.step(fetch=False)
        return self.step()

    def run_video(self, frames: Any, *, readout: str = "last", reset: bool = True) -> np.ndarray:
        """One step per frame, frame t driving step t (like ``CordsNet.run`` on a (B, T, C, S, S) input).

        Args:
            frames: a float (B, T, C, S, S) array, or a list of T image batches.
            readout: "last" for the logits after the last frame (B, classes); "all" for every step's
                (T, B, classes).
            reset: start from the spontaneous state first.
        """
        if readout not in ("last", "all"):
            raise ValueError(f"readout: expected one of ['last', 'all'], got {readout!r}")
        if isinstance(frames, np.ndarray):
            if frames.ndim != 5:
                raise ValueError(f"frames: expected a (B, T, C, S, S) array, got shape {frames.shape}")
            seq = [frames[:, t] for t in range(frames.shape[1])]
        elif isinstance(frames, (list, tuple)):
            seq = list(frames)
        else:
            raise TypeError(f"frames: expected a (B, T, C, S, S) array or a list of frames, "
                            f"got {type(frames).__name__}")
        if not seq:
            raise ValueError("frames: expected at least one frame")
        first = self.preprocess(seq[0])
        if reset:
            self.reset(first.shape[0])
        logits = [self.step(first)]
        for frame in seq[1:]:
            logits.append(self.step(frame))
        return logits[-1] if readout == "last" else np.stack(logits)

    def predict(self, images: Any, top_k: int = 5, *, steps: int | None = None) -> Prediction:
        """:meth:`run` then the top-k classes."""
        return self._predict_from_logits(self.run(images, steps), top_k)
