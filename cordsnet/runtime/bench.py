"""Latency and throughput of an exported graph under onnxruntime or OpenVINO (used by ``cordsnet-cli bench``).

Whole-protocol graphs (Session) are timed per call; stepwise graphs (StepSession) per step, with the
protocol's latency the sum of its steps. Warm-up runs come first and are not counted.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable

import numpy as np

from .providers import ProvidersLike
from .. import validate
from ..artifact import MAX_STEPS
from .session import Session
from .step_session import StepSession

__all__ = ["MAX_INPUT_BYTES", "benchmark", "percentiles"]

MAX_INPUT_BYTES = 8 << 30  # the random input batch bench draws: beyond this it is a typo, not a benchmark

PERCENTILES: tuple[int, ...] = (50, 90, 99)


def percentiles(samples_s: list[float] | np.ndarray) -> dict[str, float]:
    """Mean, min and the :data:`PERCENTILES` of a list of durations, in milliseconds."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    out = {"mean": float(ms.mean()), "min": float(ms.min())}
    out.update({f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES})
    return out


def benchmark(path: str | os.PathLike, *, batch: int = 1, providers: ProvidersLike = "auto",
              cuda_graph: bool = False, steps: int | None = None, warmup: int = 2, iterations: int = 10,
              seed: int = 0, progress: Callable[[int, int], None] | None = None, backend: str = "onnxruntime",
              precision: str | None = None) -> dict[str, Any]:
    """Time the graph at `path` on random normalised images.

    Args:
        path: an exported ``.onnx`` graph (any kind).
        batch: images per call.
        providers: as for :class:`~cordsnet.runtime.Session`.
        cuda_graph: capture CUDA graphs (CUDA provider only).
        steps: stimulus steps per image (loop and stepwise graphs; default: the exported protocol's).
        warmup: untimed protocol runs first.
        iterations: timed protocol runs.
        seed: seed of the random input.
        progress: called as ``progress(done, total)`` after every run (warm-up included).
        backend, precision: as for :class:`~cordsnet.runtime.Session` ("openvino" with "f32"/"bf16"/"f16").

    Returns:
        A JSON-ready dict: graph, providers, batch, steps, per_image_ms / per_step_ms / per_batch_ms
        percentile dicts, images_per_s, steps_per_s.
    """
    validate.positive_int("batch", batch)
    validate.integer("warmup", warmup, min=0)
    validate.positive_int("iterations", iterations)
    from . import open_session  # the package's dispatch on the graph kind (imports this module)

    session = open_session(path, providers, cuda_graph=cuda_graph, backend=backend, precision=precision)
    info = session.info
    cfg = info.config
    need = batch * math.prod(cfg.input_shape) * 8  # the float64 draw, then its float32 copy
    if need > MAX_INPUT_BYTES:
        raise ValueError(f"batch: expected at most {MAX_INPUT_BYTES // (math.prod(cfg.input_shape) * 8)} images of "
                         f"{tuple(cfg.input_shape)} ({MAX_INPUT_BYTES >> 30} GiB of input), got {batch}")
    x = np.random.default_rng(seed).standard_normal((batch, *cfg.input_shape)).astype(np.float32)
    total = warmup + iterations
    stepwise = isinstance(session, StepSession)
    fixed_steps = not stepwise and not info.kind.steps_input
    n_steps = validate.optional_integer("steps", steps, info.steps, min=1, max=MAX_STEPS)
    if fixed_steps and n_steps != info.steps:
        raise ValueError(f"steps: this {info.graph!r} graph runs exactly {info.steps} steps, got {steps}")
    x = session.preprocess(x)

    per_call: list[float] = []
    per_step: list[float] = []
    for i in range(total):
        if stepwise:
            assert isinstance(session, StepSession)
            session.reset(batch)
            t0 = time.perf_counter()
            session.set_image(x)
            times = []
            for k in range(n_steps):
                s0 = time.perf_counter()
                session.step(fetch=k == n_steps - 1)
                times.append(time.perf_counter() - s0)
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                per_step.extend(times)
        else:
            assert isinstance(session, Session)
            t0 = time.perf_counter()
            session.run(x, steps=None if fixed_steps else n_steps)
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            per_call.append(elapsed)
        if progress is not None:
            progress(i + 1, total)

    calls = np.asarray(per_call)
    step_samples = np.asarray(per_step) if stepwise else calls / n_steps
    return {
        "model": str(path),
        "graph": info.graph,
        "dtype": info.dtype,
        "depth": cfg.depth,
        "image_size": cfg.image_size,
        "providers": session.providers,
        "cuda_graph": bool(cuda_graph),
        "stateful": stepwise and bool(session.stateful),  # OpenVINO StepSession: the state inside the runtime
        "batch": batch,
        "steps": n_steps,
        "spontaneous_steps": info.spontaneous_steps,
        "warmup": warmup,
        "iterations": iterations,
        "per_batch_ms": percentiles(calls),
        "per_image_ms": percentiles(calls / batch),
        "per_step_ms": percentiles(step_samples),
        "images_per_s": float(batch / calls.mean()),
        "steps_per_s": float(1.0 / step_samples.mean()),
    }
