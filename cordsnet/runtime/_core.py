"""The stepping core: one StepSession API over backend adapters, written once.

Every way the toolkit steps an exported ``stepwise`` / ``stepwise-drive`` / ``multistep`` graph goes
through :class:`StepCore`: :class:`~cordsnet.runtime.StepSession` (onnxruntime, OpenVINO),
:class:`~cordsnet.runtime.executorch.PteStepSession` (ExecuTorch), the export's verification and its
int8 calibration. What differs between engines is only how a tensor is made, written, read, bound
and run; that is an adapter:

* :class:`Engine` (:mod:`._adapters`): the primitives of an engine that keeps tensors of its own
  (onnxruntime OrtValues, OpenVINO tensors, host numpy arrays for callables). :class:`DoubleBuffer`
  turns any Engine into a :class:`Store` (two state sets alternate, the drives shared, the encode
  graph writing straight into them): double buffering is written there and nowhere else.
* :class:`Store`: the nine operations the core needs (allocate, write/read the state, write/read the
  drives, zero the drives, show an image, step, read the logits). A backend that keeps the state
  inside itself (OpenVINO's stateful model, :mod:`cordsnet.runtime.openvino_backend`) is a Store
  directly.

Written once in :mod:`._batch` (re-exported here): splitting a batch for a static-batch graph with
the last chunk padded (:func:`pad_chunks` / :func:`join_chunks`), dropping stopped rows from a batch
(:func:`compact`), preprocessing and ranking (:class:`Frontend`), and the result types
(:class:`Prediction`, :class:`EarlyExit`). Torch-free and onnxruntime-free.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from .. import validate
from ..artifact import MAX_STEPS, READOUTS, ArtifactInfo
from ..decision import DEFAULT_MARGIN, check_until, decide
from ._adapters import DoubleBuffer, Engine, Graph, HostEngine, Layout, Store
from ._batch import (STEPS_WHY, EarlyExit, Frontend, Prediction, check_finite, compact, join_chunks,
                     pad_chunks)
from .preprocess import Preprocessor

__all__ = ["DoubleBuffer", "EarlyExit", "Engine", "Frontend", "FunctionStepSession", "HostEngine", "Layout",
           "Prediction", "StepCore", "Store", "check_finite", "compact", "join_chunks", "pad_chunks"]

F = TypeVar("F", bound=Callable[..., Any])


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
            inputs]}) with the chunk's real rows only; calls of one chunk in order. The session's lock is
            held while the generator runs (until it is exhausted or closed).
        """
        with self._lock:
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
