"""The stepping core: one StepSession API over backend adapters, written once.

Every way the toolkit steps an exported ``stepwise`` / ``stepwise-drive`` / ``multistep`` graph goes
through :class:`StepCore`: :class:`~cordsnet.runtime.StepSession` (onnxruntime, OpenVINO),
:class:`~cordsnet.runtime.executorch.PteStepSession` (ExecuTorch), the export's verification and its
int8 calibration. What differs between engines is only how a tensor is made, written, read, bound
and run; that is an adapter:

* :class:`Engine`: the primitives of an engine that keeps tensors of its own (onnxruntime OrtValues,
  OpenVINO tensors, host numpy arrays for callables). :class:`DoubleBuffer` turns any Engine into a
  :class:`Store` (two state sets alternate, the drives shared, the encode graph writing straight
  into them): double buffering is written here and nowhere else.
* :class:`Store`: the nine operations the core needs (allocate, write/read the state, write/read the
  drives, zero the drives, show an image, step, read the logits). A backend that keeps the state
  inside itself (OpenVINO's stateful model, :mod:`cordsnet.runtime.openvino_backend`) is a Store
  directly.

Also here, once: splitting a batch for a static-batch graph with the last chunk padded
(:func:`pad_chunks` / :func:`join_chunks`), dropping stopped rows from a batch (:func:`compact`),
preprocessing and ranking (:class:`Frontend`), and the result types (:class:`Prediction`,
:class:`EarlyExit`). Torch-free and onnxruntime-free.
"""

from __future__ import annotations

import abc
import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, Sequence, TypeVar

import numpy as np
from PIL import Image

from .. import validate
from ..artifact import MAX_STEPS, READOUTS, ArtifactInfo
from ..config import CordsNetConfig
from ..decision import DEFAULT_MARGIN, check_until, decide
from .preprocess import Preprocessor

__all__ = ["DoubleBuffer", "EarlyExit", "Engine", "Frontend", "FunctionStepSession", "HostEngine", "Layout",
           "Prediction", "StepCore", "Store", "check_finite", "compact", "join_chunks", "pad_chunks"]

STEPS_WHY = ("longer runs: call StepSession.step in your own loop (memory stays flat)")

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------- results
class EarlyExit(NamedTuple):
    """What ``run_until`` returns, per image (numpy; the runtime's twin of ``cordsnet.model.EarlyExit``).

    Attributes:
        logits: (B, K) float32 at the image's stopping step.
        steps: (B,) int64, stimulus steps it ran.
        decided: (B,) bool: it stopped because it decided (:mod:`cordsnet.decision`); False: it ran to
            ``max_steps`` (or converged) without deciding.
        converged: (B,) bool: it stopped because its largest state change fell below ``tol``.
    """

    logits: np.ndarray
    steps: np.ndarray
    decided: np.ndarray
    converged: np.ndarray


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


def check_finite(name: str, value: np.ndarray) -> np.ndarray:
    """`value` if every element is finite, else ValueError: a NaN is never ranked as a class."""
    if not np.isfinite(value).all():
        raise ValueError(f"{name}: the graph produced NaN or infinite values (inputs of extreme magnitude overflow "
                         "the graph's precision, or the artifact is corrupt); no prediction is made")
    return value


# ------------------------------------------------------------------------------ batches
def pad_chunks(x: np.ndarray, fixed: int | None) -> list[tuple[np.ndarray, int]]:
    """A batch split for a graph of static batch `fixed`: (chunk of exactly `fixed` rows, real rows in it).

    The last chunk is padded by repeating its last row; ``fixed`` None (a dynamic batch) or equal to
    the batch gives `x` whole.

    Args:
        x: (N, ...) batch.
        fixed: the graph's static batch, or None.
    """
    if fixed is None or x.shape[0] == fixed:
        return [(x, x.shape[0])]
    out = []
    for i in range(0, x.shape[0], fixed):
        chunk = x[i:i + fixed]
        n = chunk.shape[0]
        if n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        out.append((chunk, n))
    return out


def join_chunks(parts: Sequence[Mapping[str, np.ndarray]], reals: Sequence[int],
                batch_axis: Callable[[str], int]) -> dict[str, np.ndarray]:
    """The outputs of :func:`pad_chunks`' chunks, padding dropped, concatenated along each output's batch axis.

    Args:
        parts: per chunk, outputs by name.
        reals: per chunk, its real rows.
        batch_axis: the batch axis of an output by name (1 for time-major (T, B, ...) outputs).
    """
    out = {}
    for name in parts[0]:
        axis = batch_axis(name)
        pieces = [p[name] if n == p[name].shape[axis] else np.take(p[name], np.arange(n), axis=axis)
                  for p, n in zip(parts, reals)]
        out[name] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis)
    return out


def compact(rows: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows still running after some stopped: (the running rows' ids, the mask of rows kept).

    The one rule of anytime inference's batch compaction (the model's ``run_until`` and every
    StepSession): rows whose `stop` is True leave, the others keep their order.

    Args:
        rows: (R,) ids of the rows running so far.
        stop: (R,) bool, the rows that stop now.
    """
    keep = ~np.asarray(stop, bool)
    return rows[keep], keep


# --------------------------------------------------------------------------- adapters
class Engine(Protocol):
    """An engine's tensor primitives (an adapter for :class:`DoubleBuffer`).

    ``graph`` is "step" or "encode"; ``slot`` tells bindings of one graph apart (the step graph has
    two, one per state set).
    """

    def tensor(self, shape: Sequence[int], dtype: np.dtype) -> Any:
        """A new zero tensor of the engine."""

    def write(self, tensor: Any, array: np.ndarray) -> None:
        """Copy `array` into `tensor` (same shape)."""

    def read(self, tensor: Any) -> np.ndarray:
        """A host copy of `tensor`."""

    def bind(self, graph: str, slot: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """Bind tensors to a graph's inputs and outputs by name for later :meth:`run` calls."""

    def run(self, graph: str, slot: int) -> None:
        """Run a bound graph (its outputs land in the bound tensors)."""


class Layout(NamedTuple):
    """What a step graph reads and writes, from its metadata and declared inputs.

    Attributes:
        state_in, state_out: ``state_i`` / ``next_state_i`` names, area order.
        state_shapes: (c_i, H_i, W_i) per area.
        drives: the non-state inputs by name -> per-row shape (``image``, or ``skip``/``ff0``).
        dtypes: the numpy dtype of every input and output by name (``image`` included).
        encode: the encode graph's outputs (drive names it writes), or () without one.
        input_shape: (C, S, S) of an image.
        num_classes: K.
    """

    state_in: tuple[str, ...]
    state_out: tuple[str, ...]
    state_shapes: tuple[tuple[int, ...], ...]
    drives: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    encode: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def of(cls, info: ArtifactInfo, shapes: Mapping[str, Sequence[Any]], dtypes: Mapping[str, np.dtype],
           encode: Sequence[str] = ()) -> "Layout":
        """From the metadata, the inputs' shapes (batch first, any form) and every port's dtype."""
        ins, _ = info.io_names()
        state_in = tuple(n for n in ins if n.startswith("state_"))
        cfg = info.config
        drives = {n: tuple(cfg.input_shape) if n == "image" else tuple(int(d) for d in shapes[n][1:])
                  for n in ins if not n.startswith("state_")}
        return cls(state_in, tuple(f"next_{n}" for n in state_in), tuple(tuple(s) for s in cfg.state_shapes), drives,
                   dict(dtypes), tuple(encode), tuple(cfg.input_shape), cfg.num_classes)


class Store(abc.ABC):
    """Where a StepCore's state, drives and logits live: what a backend adapter provides."""

    @abc.abstractmethod
    def allocate(self, batch: int) -> None:
        """(Re)create every buffer for `batch` rows (zeros)."""

    @abc.abstractmethod
    def zero_drives(self) -> None:
        """A blank image: every drive input zero."""

    @abc.abstractmethod
    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        """Set the state (one (B, c_i, H_i, W_i) array per area, in the state dtype)."""

    @abc.abstractmethod
    def read_state(self) -> list[np.ndarray]:
        """Host copies of the current state."""

    @abc.abstractmethod
    def read_drives(self) -> dict[str, np.ndarray]:
        """Host copies of the drive inputs by name."""

    @abc.abstractmethod
    def write_drives(self, drives: Mapping[str, np.ndarray]) -> None:
        """Set drive inputs by name."""

    @abc.abstractmethod
    def set_image(self, x: np.ndarray) -> None:
        """Show a preprocessed (B, C, S, S) batch (through the encode graph, if any)."""

    @abc.abstractmethod
    def step(self) -> None:
        """One graph call: the state advances, the logits are updated."""

    @abc.abstractmethod
    def logits(self) -> np.ndarray:
        """A host copy of the logits after the last step, (B, K) float32."""


class DoubleBuffer(Store):
    """A :class:`Store` on any :class:`Engine`: two state sets alternate, nothing is copied between steps.

    Step k reads set ``cur`` and writes set ``1 - cur`` (binding a state's input and output to one
    buffer would overwrite rates still being read). The drive inputs and the logits are shared by
    both bindings; the encode graph (stepwise-drive) writes its outputs straight into the drives.
    """

    def __init__(self, engine: Engine, layout: Layout) -> None:
        self.engine, self.layout = engine, layout
        self.cur = 0

    def allocate(self, batch: int) -> None:
        e, lay = self.engine, self.layout
        state_dtype = lay.dtypes[lay.state_in[0]]
        self.sets = [[e.tensor((batch, *s), state_dtype) for s in lay.state_shapes] for _ in range(2)]
        self.drives = {n: e.tensor((batch, *shape), lay.dtypes[n]) for n, shape in lay.drives.items()}
        self.logits_tensor = e.tensor((batch, lay.num_classes), lay.dtypes["logits"])
        for k in range(2):
            e.bind("step", k, {**self.drives, **dict(zip(lay.state_in, self.sets[k]))},
                   {"logits": self.logits_tensor, **dict(zip(lay.state_out, self.sets[1 - k]))})
        if lay.encode:
            self.image = e.tensor((batch, *lay.input_shape), lay.dtypes["image"])
            e.bind("encode", 0, {"image": self.image}, {n: self.drives[n] for n in lay.encode})
        self.cur = 0

    def zero_drives(self) -> None:
        for t in self.drives.values():
            self.engine.write(t, np.zeros_like(self.engine.read(t)))

    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        for t, a in zip(self.sets[self.cur], arrays):
            self.engine.write(t, a)

    def read_state(self) -> list[np.ndarray]:
        return [self.engine.read(t) for t in self.sets[self.cur]]

    def read_drives(self) -> dict[str, np.ndarray]:
        return {n: self.engine.read(t) for n, t in self.drives.items()}

    def write_drives(self, drives: Mapping[str, np.ndarray]) -> None:
        for n, a in drives.items():
            self.engine.write(self.drives[n], np.ascontiguousarray(a))

    def set_image(self, x: np.ndarray) -> None:
        if self.layout.encode:
            self.engine.write(self.image, x)
            self.engine.run("encode", 0)
        else:
            self.engine.write(self.drives["image"], x)

    def step(self) -> None:
        self.engine.run("step", self.cur)
        self.cur = 1 - self.cur

    def logits(self) -> np.ndarray:
        return np.asarray(self.engine.read(self.logits_tensor), dtype=np.float32)


Graph = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class HostEngine:
    """An :class:`Engine` of host numpy arrays around plain functions ``run(feeds) -> outputs by name``.

    For engines without buffers of their own: a TorchScript / ExportedProgram runner in verification,
    ExecuTorch's ``Method.execute``. Each call's outputs are copied into the bound arrays.

    Args:
        graphs: "step" (and "encode") -> the function running that graph.
    """

    def __init__(self, graphs: Mapping[str, Graph]) -> None:
        self.graphs = dict(graphs)
        self.bound: dict[tuple[str, int], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def tensor(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return np.zeros(tuple(shape), dtype)

    def write(self, tensor: np.ndarray, array: np.ndarray) -> None:
        tensor[...] = array

    def read(self, tensor: np.ndarray) -> np.ndarray:
        return tensor.copy()

    def bind(self, graph: str, slot: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        self.bound[graph, slot] = (dict(inputs), dict(outputs))

    def run(self, graph: str, slot: int) -> None:
        inputs, outputs = self.bound[graph, slot]
        got = self.graphs[graph](inputs)
        for name, t in outputs.items():
            t[...] = got[name]


# ------------------------------------------------------------------------------ frontend
class Frontend:
    """Input handling every session shares: preprocessing, batch rules, ranking.

    Needs ``self.path``, ``self.info`` (:class:`ArtifactInfo`), ``self.preprocessor`` and
    :meth:`_image_dtype`.
    """

    path: Path
    info: ArtifactInfo
    preprocessor: Preprocessor | None

    @property
    def config(self) -> CordsNetConfig:
        return self.info.config

    @property
    def class_names(self) -> list[str] | None:
        names = (self.info.preset or {}).get("class_names")
        return list(names) if names else None

    def _image_dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def preprocess(self, images: Any, *, check_batch: bool = True) -> np.ndarray:
        """Images in any accepted form -> (B, C, S, S) in the graph's input dtype, validated.

        Accepted: a float (B, C, S, S) or (C, S, S) array of normalised pixels (used as is); a uint8
        (H, W), (H, W, C) image or (N, H, W, C) batch; a PIL image; an image file path; or a list of
        these (one image each). Raw images are preprocessed with the model's preset.

        Args:
            images: see above.
            check_batch: refuse a batch other than a static-batch graph's (default True; ``run`` and
                ``predict`` pass False and split/pad the batch themselves).
        """
        c, s = self.config.in_channels, self.config.image_size
        dtype = self._image_dtype()
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
        with np.errstate(over="ignore", invalid="ignore"):  # checked right below
            out = np.ascontiguousarray(arr, dtype=dtype)
        if not np.isfinite(out).all():  # one scan; the input itself tells which of the two it was
            if not np.isfinite(arr).all():
                raise ValueError("images: expected finite pixel values, got NaN or infinity")
            raise ValueError(f"images: pixel values up to {float(np.abs(arr).max()):.3g} overflow the graph's "
                             f"{dtype.name} input; expected normalised pixels (a few units at most)")
        if check_batch:
            self._check_batch(arr.shape[0], "images")
        return out

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

    def _chunks(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """`x` split for this graph's static batch (:func:`pad_chunks`)."""
        return pad_chunks(x, self.info.batch)

    def _steps(self, steps: int | None) -> int:
        return validate.optional_integer("steps", steps, self.info.steps, min=1, max=MAX_STEPS, why=STEPS_WHY)

    def rank(self, logits: Any, top_k: int = 5) -> Prediction:
        """The top-k classes of (B, K) logits (e.g. ``run_until(...).logits``), with names and probabilities."""
        z = np.asarray(logits)
        if z.ndim != 2 or z.shape[1] != self.config.num_classes or not np.issubdtype(z.dtype, np.floating):
            raise ValueError(f"logits: expected float (B, {self.config.num_classes}), got {z.dtype} {z.shape}")
        return self._predict_from_logits(z, top_k)

    def _predict_from_logits(self, logits: np.ndarray, top_k: int) -> Prediction:
        top_k = validate.positive_int("top_k", top_k)
        check_finite("logits", logits)
        k = min(top_k, logits.shape[-1])
        z = logits.astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=-1, keepdims=True)
        idx = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        probs = np.take_along_axis(p, idx, axis=-1).astype(np.float32)
        names = self.class_names
        return Prediction(idx.astype(np.int64), [[names[i] if names and i < len(names) else str(i) for i in row]
                                                for row in idx], probs)


# ------------------------------------------------------------------------------ the core
def locked(method: F) -> F:
    """Run `method` holding the session's (re-entrant) lock: one caller at a time per session."""
    @functools.wraps(method)
    def wrapper(self: "StepCore", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class StepCore(Frontend):
    """The StepSession API on a :class:`Store`: ``reset``, ``step``, ``run``, ``run_video``, ``run_until``,
    ``predict``, ``state``, ``trace``.

    One instance holds ONE recurrent state; every public method takes the session's lock, so each
    ``run``/``predict``/``run_video``/``run_until`` is atomic. A subclass sets up ``path``, ``info``,
    ``preprocessor`` and calls :meth:`_start` with its store.
    """

    _store: Store

    def _start(self, store: Store, state_dtype: np.dtype) -> None:
        self._lock = threading.RLock()
        self._store = store
        self._state_dtype = np.dtype(state_dtype)
        self._spontaneous = self.info.spontaneous_state()
        self._baseline: np.ndarray | None = None
        self._batch = 0
        self._steps_taken = 0
        self._per_call = int(self.info.steps_per_call)  # Euler steps one call advances (a multistep graph: K)
        self.reset(1 if self.info.batch is None else self.info.batch)

    # ---------------------------------------------------------------------------- state
    @property
    def batch(self) -> int:
        """Batch size of the current state."""
        return self._batch

    @property
    def steps_taken(self) -> int:
        """Steps run since the last :meth:`reset` (or state assignment)."""
        return self._steps_taken

    def _allocate(self, batch: int) -> None:
        self._store.allocate(batch)
        self._batch = batch

    @locked
    def reset(self, batch: int = 1) -> None:
        """Start over from the spontaneous state (the exported protocol's) with a blank image.

        Args:
            batch: batch size of the new state (fixed when the graph was exported with a static batch).
        """
        batch = validate.positive_int("batch", batch, max=1 << 20)
        self._check_batch(batch, "batch")
        if batch != self._batch:
            self._allocate(batch)
        else:
            self._store.zero_drives()
        self._store.write_state([np.ascontiguousarray(np.broadcast_to(spont, (batch, *spont.shape[1:])),
                                                      dtype=self._state_dtype) for spont in self._spontaneous])
        self._steps_taken = 0

    @property
    def state(self) -> list[np.ndarray]:
        """The current rates, one (B, c_i, H_i, W_i) float32 array per area (a copy, on the host)."""
        with self._lock:
            return [np.asarray(v, dtype=np.float32) for v in self._store.read_state()]

    @state.setter
    def state(self, value: Sequence[Any]) -> None:
        with self._lock:
            self._set_state(value)

    def _set_state(self, value: Sequence[Any]) -> None:
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
        self._store.write_state([np.ascontiguousarray(arr, dtype=self._state_dtype) for arr in arrays])
        self._steps_taken = 0

    # ---------------------------------------------------------------------------- steps
    @locked
    def set_image(self, images: Any) -> None:
        """Show `images` from the next step on (encoded once for a stepwise-drive graph).

        Args:
            images: a batch matching the state's batch size, in any form :meth:`preprocess` takes.
        """
        self._show(self.preprocess(images))

    def _show(self, x: np.ndarray) -> None:
        """Show an already preprocessed (B, C, S, S) batch (the protocol methods preprocess once)."""
        if x.shape[0] != self._batch:
            raise ValueError(f"images: expected a batch of {self._batch} (the state's batch; call reset(batch=...) "
                             f"to change it), got {x.shape[0]}")
        self._store.set_image(x)

    @locked
    def step(self, images: Any = None, *, fetch: bool = True) -> np.ndarray | None:
        """One synchronous step of every area (a multistep graph: ``info.steps_per_call`` steps per call).

        Args:
            images: a new image batch to show from this step on (e.g. the next video frame), or None
                to keep showing the current one (blank after :meth:`reset`).
            fetch: copy the logits to the host and return them; False skips the copy (the state
                still advances in the backend).

        Returns:
            The logits after the step, (B, classes) float32, or None when ``fetch`` is False.
        """
        if images is not None:
            self.set_image(images)
        self._store.step()
        self._steps_taken += self._per_call
        if not fetch:
            return None
        return check_finite("logits", self._store.logits())

    def _calls(self, steps: int, name: str) -> int:
        """Graph calls for `steps` Euler steps: the steps, or steps / K for a multistep graph (whole calls)."""
        if steps % self._per_call:
            raise ValueError(f"{name}: this {self.info.graph!r} graph advances {self._per_call} steps per call; "
                             f"expected a multiple of {self._per_call}, got {steps}")
        return steps // self._per_call

    @locked
    def run(self, images: Any, steps: int | None = None, *, reset: bool = True) -> np.ndarray:
        """The protocol: spontaneous state, then `images` for `steps` steps; logits (B, classes).

        Args:
            images: one batch shown at every step; with ``reset`` any number of images, also for a
                static-batch graph (run in chunks of its batch, the last one padded and trimmed).
            steps: stimulus steps (default: the exported protocol's ``cordsnet.steps``; at most
                :data:`cordsnet.artifact.MAX_STEPS`).
            reset: start from the spontaneous state (True) or continue from the current state.
        """
        n = self._calls(self._steps(steps), "steps")
        x = self.preprocess(images, check_batch=not reset)
        parts, reals = [], []
        for chunk, real in (self._chunks(x) if reset else [(x, x.shape[0])]):
            if reset:
                self.reset(chunk.shape[0])
            self._show(chunk)
            for _ in range(n - 1):
                self.step(fetch=False)
            parts.append({"logits": self.step()})
            reals.append(real)
        return join_chunks(parts, reals, lambda _: 0)["logits"]

    @locked
    def run_video(self, frames: Any, *, readout: str = "last", reset: bool = True) -> np.ndarray:
        """One step per frame, frame t driving step t (like ``CordsNet.run`` on a (B, T, C, S, S) input).

        Args:
            frames: a float (B, T, C, S, S) array, or a list of T image batches.
            readout: "last" for the logits after the last frame (B, classes); "all" for every step's
                (T, B, classes).
            reset: start from the spontaneous state first.
        """
        validate.choice("readout", readout, READOUTS)
        if self._per_call != 1:
            raise ValueError(f"frames: a {self.info.graph!r} graph shows one image for {self._per_call} steps per "
                             "call; one frame per step needs a 'stepwise' or 'stepwise-drive' graph")
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
        self._show(first)
        last = readout == "last"
        logits = [self.step(fetch=not last or len(seq) == 1)]
        for t, frame in enumerate(seq[1:], start=2):
            logits.append(self.step(frame, fetch=not last or t == len(seq)))
        return logits[-1] if last else np.stack(logits)

    @locked
    def trace(self, images: Any, steps: int | None = None, *, inputs: bool = False
              ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Every call's outputs (and optionally inputs) on the protocol, for verification and calibration.

        From the spontaneous state, `images` shown at every step, chunked for a static-batch graph.
        Nothing is checked for finiteness (verification reports it).

        Args:
            images: any number of images (see :meth:`preprocess`).
            steps: stimulus steps (a multiple of ``steps_per_call``; default the exported protocol's).
            inputs: also yield what each call read: ``state_i`` (the state before it) and the drive
                inputs by name.

        Yields:
            (first image index of the chunk, call index, {"logits": (b, K), "next_state_i": (b, ...)[,
            inputs]}) with the chunk's real rows only; calls of one chunk in order.
        """
        n = self._calls(self._steps(steps), "steps")
        x = self.preprocess(images, check_batch=False)
        start = 0
        for chunk, real in self._chunks(x):
            self.reset(chunk.shape[0])
            self._show(chunk)
            drives = self._store.read_drives() if inputs else {}
            before = self._store.read_state() if inputs else []
            for k in range(n):
                self._store.step()
                self._steps_taken += self._per_call
                state = self._store.read_state()
                out = {"logits": self._store.logits()[:real]}
                out.update({f"next_state_{i}": s[:real] for i, s in enumerate(state)})
                if inputs:
                    out.update({f"state_{i}": s[:real] for i, s in enumerate(before)})
                    out.update({name: a[:real] for name, a in drives.items()})
                    before = state
                yield start, k, out
            start += real

    # ----------------------------------------------------------------------------- anytime
    @locked
    def baseline_logits(self, steps: int | None = None) -> np.ndarray:
        """The no-image baseline: the logits after each step of a blank image from the spontaneous state.

        Computed once with this session (same backend, same arithmetic as the images it is compared
        with) and cached; a longer request recomputes it. Leaves the session reset (blank, step 0).
        A blank image is a zero image: its drive is exactly zero (the input convolution has no bias).

        Args:
            steps: how many steps (default: the exported protocol's; a multiple of ``steps_per_call``).

        Returns:
            (steps, K) float32; for a multistep graph (steps / steps_per_call, K), the logits after each call.
        """
        n = self._calls(validate.optional_integer("steps", steps, self.info.steps, min=1, max=MAX_STEPS), "steps")
        if self._baseline is None or self._baseline.shape[0] < n:
            self.reset(1 if self.info.batch is None else self.info.batch)
            self._baseline = np.stack([self.step()[0] for _ in range(n)])
            self.reset(self._batch)
        return self._baseline[:n].copy()

    @locked
    def run_until(self, images: Any, threshold: float, max_steps: int | None = None, tol: float | None = None,
                  *, margin: float = DEFAULT_MARGIN) -> EarlyExit:
        """Anytime inference: run each image only until it has decided (or converged, or `max_steps`).

        The criterion is :func:`cordsnet.decision.decide`, the same code as
        :meth:`cordsnet.model.CordsNet.run_until` and reaction times: at step t the top class has
        softmax probability >= `threshold` *and* the image has widened that class's lead over its best
        rival by >= `margin` compared with the no-image baseline at step t (:meth:`baseline_logits`),
        so a blank image never stops on the model's confident resting answer. After every step the
        rows that stopped leave the batch (:func:`compact`): the state and drive buffers are rebuilt
        with the remaining rows only (a static-batch graph keeps its batch and ignores the stopped
        rows). Only the logits are read each step (the state too with `tol`, and at a compaction).

        Args:
            images: one batch shown at every step, any number of images, in any form
                :meth:`preprocess` takes.
            threshold: probability in (1/K, 1].
            max_steps: the most stimulus steps (default: the exported protocol's).
            tol: also stop an image when the largest change of any rate in one step is below `tol`
                (converged; None: never). Costs a copy of the state to the host every step.
            margin: evidence in logits the image must add (see :mod:`cordsnet.decision`).

        Returns:
            :class:`EarlyExit`: logits (B, K) at each image's stopping step, steps (B,), decided (B,),
            converged (B,). Leaves the session's state at the last running rows' (call :meth:`reset`).
        """
        n = validate.optional_integer("max_steps", max_steps, self.info.steps, min=1, max=MAX_STEPS, why=STEPS_WHY)
        self._calls(n, "max_steps")  # a multistep graph decides at call boundaries: whole calls only
        k = self.config.num_classes
        threshold, margin, tol = check_until(threshold, margin, tol, k)
        x = self.preprocess(images, check_batch=False)
        base = self.baseline_logits(n).astype(np.float64)
        total = x.shape[0]
        out = EarlyExit(np.zeros((total, k), np.float32), np.full(total, n, np.int64), np.zeros(total, bool),
                        np.zeros(total, bool))
        n = base.shape[0]  # calls: the steps, or steps / steps_per_call for a multistep graph
        start = 0
        for chunk, real in self._chunks(x):
            self._until_chunk(chunk, base, threshold, margin, tol, n, out, start, real)
            start += real
        return out

    def _until_chunk(self, x: np.ndarray, base: np.ndarray, threshold: float, margin: float, tol: float | None,
                     n: int, out: EarlyExit, start: int, real: int) -> None:
        shrink = self.info.batch is None  # a static batch cannot shrink: stopped rows run on, ignored
        self.reset(x.shape[0])
        self._show(x)
        rows = np.arange(real)  # chunk rows still running
        previous = self._store.read_state() if tol is not None else None
        for t in range(n):
            z = self.step()
            if not shrink:
                z = z[rows]
            verdict = decide(z, base[t], threshold, margin)
            calm = np.zeros(len(rows), bool)
            current = None
            if tol is not None:
                current = self._store.read_state()
                if not shrink:
                    current = [c[rows] for c in current]
                assert previous is not None
                change = np.max([np.abs(c.astype(np.float64) - p).reshape(len(rows), -1).max(1)
                                 for c, p in zip(current, previous)], axis=0)
                calm = change < tol
            stop = verdict.decided | calm if t + 1 < n else np.ones(len(rows), bool)
            if stop.any():
                ids = start + rows[stop]
                out.logits[ids] = z[stop]
                out.steps[ids] = (t + 1) * self._per_call
                out.decided[ids] = verdict.decided[stop]
                out.converged[ids] = calm[stop]
            rows, keep = compact(rows, stop)
            if not keep.any():
                return
            if stop.any() and shrink:
                state, drives = self._store.read_state(), self._store.read_drives()
                self._allocate(int(keep.sum()))
                self._store.write_state([np.ascontiguousarray(a[keep]) for a in state])
                self._store.write_drives({name: a[keep] for name, a in drives.items()})
            if current is not None:
                previous = [c[keep] for c in current]

    @locked
    def predict(self, images: Any, top_k: int = 5, *, steps: int | None = None) -> Prediction:
        """:meth:`run` (from the spontaneous state) then the top-k classes; any number of images."""
        return self._predict_from_logits(self.run(images, steps), top_k)


class FunctionStepSession(StepCore):
    """A StepCore over plain functions ``run(feeds) -> outputs by name`` (a :class:`HostEngine`).

    What verification runs for formats without a runtime session of their own (TorchScript,
    ExportedProgram), and the base of :class:`~cordsnet.runtime.executorch.PteStepSession`.

    Args:
        path: the artifact (for messages).
        info: its metadata.
        step: the step graph's function.
        encode: the encode graph's function (stepwise-drive), or None.
        dtype: the graph's I/O dtype (float16 graphs: float16).
    """

    def __init__(self, path: str | os.PathLike, info: ArtifactInfo, step: Graph, encode: Graph | None = None,
                 dtype: Any = np.float32) -> None:
        self.path, self.info = Path(path), info
        if info.kind.session != "step":
            raise ValueError(f"model: {str(self.path)!r} is a {info.graph!r} graph; a step session runs graphs whose "
                             "state passes in and out")
        self._dtype = np.dtype(dtype)
        self.preprocessor = (Preprocessor.from_preset(info.preset, info.config.image_size) if info.preset else None)
        ins, outs = info.io_names()
        shapes = {d["name"]: d["shape"] for d in info.io_table()[0]}  # the contract's shapes
        graphs: dict[str, Graph] = {"step": step}
        encode_names: tuple[str, ...] = ()
        if encode is not None:
            graphs["encode"] = encode
            encode_names = tuple(n for n in ins if not n.startswith("state_"))
        dtypes = {n: self._dtype for n in [*ins, *outs, "image"]}
        layout = Layout.of(info, shapes, dtypes, encode_names)
        self._start(DoubleBuffer(HostEngine(graphs), layout), self._dtype)

    def _image_dtype(self) -> np.dtype:
        return self._dtype

    @property
    def providers(self) -> list[str]:
        return ["host"]
