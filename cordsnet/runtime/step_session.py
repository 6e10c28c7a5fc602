"""Step-by-step inference: :class:`StepSession` runs ``stepwise`` and ``stepwise-drive`` graphs.

The recurrent state stays in onnxruntime-owned buffers between steps (IO binding; on CUDA it never
leaves the GPU). One StepSession holds ONE recurrent state: every public method takes the session's
lock, so calls from several threads are serialised (each ``run``/``predict``/``run_video`` is atomic
and gives the same result as if the calls had been made one after the other); for independent
streams stepped by hand, use one StepSession per stream.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import onnxruntime as ort

from .. import validate
from ..artifact import MAX_STEPS, READOUTS, ArtifactInfo, companion_path
from ..decision import DEFAULT_MARGIN, check_until, decide
from .providers import ProvidersLike, resolve_providers
from .session import (
    _ONNX_DTYPES,
    STEPS_WHY,
    EarlyExit,
    Prediction,
    _Base,
    _cuda_graph_options,
    _dtype_of,
    _graph_io,
    _load,
    _require_gpu,
    check_finite,
)

__all__ = ["StepSession"]

F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run `method` holding the session's (re-entrant) lock: one caller at a time per StepSession."""
    @functools.wraps(method)
    def wrapper(self: "StepSession", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
        backend: "onnxruntime" (default) or "openvino" (:mod:`cordsnet.runtime.openvino_backend`: the
            state in OpenVINO tensors bound to two infer requests; `providers` is then the OpenVINO
            device, "auto"/"cpu" meaning "CPU").
        precision: OpenVINO only: "f32" (default), "bf16" or "f16" as a compile hint; an error where
            the device does not report it.

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
                 backend: str = "onnxruntime", precision: str | None = None) -> None:
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
        self._lock = threading.RLock()
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph:
            _require_gpu(self, "cuda_graph=True")
        ins, _ = self.info.io_names()
        self._state_in = [n for n in ins if n.startswith("state_")]
        self._state_out = [f"next_{n}" for n in self._state_in]
        self._drive_inputs = tuple(n for n in ins if not n.startswith("state_"))
        self._state_dtype = _dtype_of(self._inputs["state_0"])
        self._encode: Any = None  # ort.InferenceSession, or an OpenVINOSession
        for role in self.info.kind.companions:  # the encode graph: image -> the step graph's drive inputs
            encode_path = companion_path(self.path, role)  # the exporter's naming rule
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
                    k: {o: v for o, v in d.items() if o not in ("enable_cuda_graph", "trt_cuda_graph_enable")}
                    for k, d in provider_options.items()})
                self._encode = _load(encode_path, encode_plan, session_options, lambda m: None)
            source = repr(str(encode_path))
            enc = ArtifactInfo.from_metadata(self._encode.get_modelmeta().custom_metadata_map, source)
            if enc.graph != role or enc.config != self.info.config or enc.dtype != self.info.dtype:
                raise ValueError(f"model: {source} is not the {role} graph of {str(self.path)!r} (its metadata "
                                 f"says graph {enc.graph!r}, dtype {enc.dtype!r})")
            enc.check_graph_io(_graph_io(self._encode.get_inputs()), _graph_io(self._encode.get_outputs()), source)
            self._encode_inputs = {a.name: a for a in self._encode.get_inputs()}
        self._spontaneous = self.info.spontaneous_state()
        self._baseline: np.ndarray | None = None
        self._batch = 0
        self._steps_taken = 0
        self._per_call = int(self.info.steps_per_call)  # Euler steps one call advances (a multistep graph: K)
        if openvino:
            from .openvino_backend import OpenVINOStepper

            self._buffers: Any = OpenVINOStepper(self._session, self._encode, self._state_in, self._state_out,
                                                 self._drive_inputs, self.config.state_shapes,
                                                 self.config.input_shape, self.config.num_classes)
        else:
            self._buffers = _OrtBuffers(self)
        self.reset(1 if self.info.batch is None else self.info.batch)

    def _image_arg(self) -> Any:
        # stepwise-drive: the images go to the encode graph.
        return self._encode_inputs["image"] if self._encode is not None else self._inputs["image"]

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
        self._buffers.allocate(batch)
        self._batch = batch

    @_locked
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
            self._buffers.zero_drives()
        self._buffers.write_state([np.ascontiguousarray(np.broadcast_to(spont, (batch, *spont.shape[1:])),
                                                        dtype=self._state_dtype) for spont in self._spontaneous])
        self._steps_taken = 0

    @property
    @_locked
    def state(self) -> list[np.ndarray]:
        """The current rates, one (B, c_i, H_i, W_i) float32 array per area (a copy, on the host)."""
        return [np.asarray(v, dtype=np.float32) for v in self._buffers.read_state()]

    @state.setter
    @_locked
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
        self._buffers.write_state([np.ascontiguousarray(arr, dtype=self._state_dtype) for arr in arrays])
        self._steps_taken = 0

    # -------------------------------------------------------------------------------- steps
    @_locked
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
        self._buffers.set_image(x)

    @_locked
    def step(self, images: Any = None, *, fetch: bool = True) -> np.ndarray | None:
        """One synchronous step of every area (a multistep graph: ``info.steps_per_call`` steps per call).

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
        self._buffers.step()
        self._steps_taken += self._per_call
        if not fetch:
            return None
        return check_finite("logits", self._buffers.logits())

    @_locked
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
        parts = []
        for chunk, real in (self._chunks(x) if reset else [(x, x.shape[0])]):
            if reset:
                self.reset(chunk.shape[0])
            self._show(chunk)
            for _ in range(n - 1):
                self.step(fetch=False)
            parts.append(self.step()[:real])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @_locked
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
        logits = [self.step()]
        for frame in seq[1:]:
            logits.append(self.step(frame))
        return logits[-1] if readout == "last" else np.stack(logits)

    # ----------------------------------------------------------------------------- anytime
    @_locked
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

    @_locked
    def run_until(self, images: Any, threshold: float, max_steps: int | None = None, tol: float | None = None,
                  *, margin: float = DEFAULT_MARGIN) -> EarlyExit:
        """Anytime inference: run each image only until it has decided (or converged, or `max_steps`).

        The criterion is :func:`cordsnet.decision.decide`, the same code as
        :meth:`cordsnet.model.CordsNet.run_until` and reaction times: at step t the top class has
        softmax probability >= `threshold` *and* the image has widened that class's lead over its best
        rival by >= `margin` compared with the no-image baseline at step t (:meth:`baseline_logits`),
        so a blank image never stops on the model's confident resting answer. After every step the
        rows that stopped leave the batch: the state and drive buffers are rebuilt with the remaining
        rows only (a static-batch graph keeps its batch and simply ignores the stopped rows).

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
        compact = self.info.batch is None  # a static batch cannot shrink: stopped rows run on, ignored
        self.reset(x.shape[0])
        self._show(x)
        rows = np.arange(real)  # chunk rows still running
        previous = self._buffers.read_state() if tol is not None else None
        for t in range(n):
            z = self.step()
            if not compact:
                z = z[rows]
            verdict = decide(z, base[t], threshold, margin)
            calm = np.zeros(len(rows), bool)
            current = None
            if tol is not None:
                current = self._buffers.read_state()
                if not compact:
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
            keep = ~stop
            if not keep.any():
                return
            if stop.any() and compact:
                state, drives = self._buffers.read_state(), self._buffers.read_drives()
                self._allocate(int(keep.sum()))
                self._buffers.write_state([np.ascontiguousarray(a[keep]) for a in state])
                self._buffers.write_drives({name: a[keep] for name, a in drives.items()})
            if current is not None:
                previous = [c[keep] for c in current]
            rows = rows[keep]

    def _calls(self, steps: int, name: str) -> int:
        """Graph calls for `steps` Euler steps: the steps, or steps / K for a multistep graph (whole calls)."""
        if steps % self._per_call:
            raise ValueError(f"{name}: this {self.info.graph!r} graph advances {self._per_call} steps per call; "
                             f"expected a multiple of {self._per_call}, got {steps}")
        return steps // self._per_call

    @_locked
    def predict(self, images: Any, top_k: int = 5, *, steps: int | None = None) -> Prediction:
        """:meth:`run` (from the spontaneous state) then the top-k classes; any number of images."""
        return self._predict_from_logits(self.run(images, steps), top_k)


class _OrtBuffers:
    """A StepSession's buffers in onnxruntime OrtValues on the session's device, bound with IO binding.

    Two state sets alternate: step k reads set ``cur`` and writes set ``1 - cur``; the drive inputs
    and the logits are shared by both bindings; the encode graph (stepwise-drive) writes its outputs
    straight into the drive buffers. (:class:`~cordsnet.runtime.openvino_backend.OpenVINOStepper` is
    the same interface on OpenVINO tensors.)
    """

    def __init__(self, session: "StepSession") -> None:
        self.s = session
        self.cur = 0
        self._generation = 0

    def allocate(self, batch: int) -> None:
        s = self.s
        device, device_id = s._device()

        def new(shape: Sequence[int], dtype: np.dtype) -> ort.OrtValue:
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, device_id)
            value.update_inplace(np.zeros(shape, dtype))
            return value

        self.sets = [[new((batch, *shape), s._state_dtype) for shape in s.config.state_shapes] for _ in range(2)]
        self.drives: dict[str, ort.OrtValue] = {}
        for name in s._drive_inputs:
            arg = s._inputs[name]
            shape = [batch, *arg.shape[1:]] if name != "image" else [batch, *s.config.input_shape]
            shape = [d if isinstance(d, int) else batch for d in shape]
            self.drives[name] = new(shape, _dtype_of(arg))
        self.logits_value = new([batch, s.config.num_classes], _dtype_of(s._outputs["logits"]))
        self.bindings = []
        for k in range(2):
            binding = s._session.io_binding()
            for name, value in self.drives.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(s._state_in, self.sets[k]):
                binding.bind_ortvalue_input(name, value)
            for name, value in zip(s._state_out, self.sets[1 - k]):
                binding.bind_ortvalue_output(name, value)
            binding.bind_ortvalue_output("logits", self.logits_value)
            self.bindings.append(binding)
        if s._encode is not None:
            enc = s._encode.io_binding()
            self.encode_image = new([batch, *s.config.input_shape], _dtype_of(s._encode_inputs["image"]))
            enc.bind_ortvalue_input("image", self.encode_image)
            for name in ("skip", "ff0"):
                enc.bind_ortvalue_output(name, self.drives[name])
            self.encode_binding = enc
        self.run_options = []
        for k in range(2):
            options = ort.RunOptions()
            if s.cuda_graph:
                # One captured graph per buffer set (their addresses differ), fresh ids per allocation.
                options.add_run_config_entry("gpu_graph_id", str(2 * self._generation + k + 1))
            self.run_options.append(options)
        self._generation += 1
        self.cur = 0

    def zero_drives(self) -> None:
        for value in self.drives.values():
            value.update_inplace(np.zeros(value.shape(), _ONNX_DTYPES[value.data_type()]))

    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        for buf, arr in zip(self.sets[self.cur], arrays):
            buf.update_inplace(arr)

    def read_state(self) -> list[np.ndarray]:
        return [np.array(v.numpy(), copy=True) for v in self.sets[self.cur]]

    def read_drives(self) -> dict[str, np.ndarray]:
        return {n: np.array(v.numpy(), copy=True) for n, v in self.drives.items()}

    def write_drives(self, drives: Mapping[str, np.ndarray]) -> None:
        for n, arr in drives.items():
            self.drives[n].update_inplace(np.ascontiguousarray(arr))

    def set_image(self, x: np.ndarray) -> None:
        if self.s._encode is None:
            self.drives["image"].update_inplace(x)
        else:
            self.encode_image.update_inplace(x)
            self.s._encode.run_with_iobinding(self.encode_binding)

    def step(self) -> None:
        k = self.cur
        self.s._session.run_with_iobinding(self.bindings[k], self.run_options[k])
        self.cur = 1 - k

    def logits(self) -> np.ndarray:
        return np.array(self.logits_value.numpy(), dtype=np.float32, copy=True)
