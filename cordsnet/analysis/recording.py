"""Activity recording: one recording core, two writers (``.npy`` memory maps here, Zarr stores in
:mod:`cordsnet.analysis.store`).

The time axis follows the published ``record``: with ``P`` spontaneous and ``N`` stimulus steps,
index ``t`` in ``0 .. P + N - 1`` is the state *after* step ``t + 1``; indices ``0 .. P - 1`` are
the spontaneous (blank) phase and ``P .. P + N - 1`` the stimulus phase. A window ``(start, stop)``
keeps indices ``start <= t < stop``. Relative to stimulus onset, index t is at
``(t + 1 - P) * dt_ms`` milliseconds.

The core is :func:`simulate_batch`: for one batch of images and a :class:`RecordPlan` it yields, for
each recorded index, the requested variables (``area_<a>`` rates, optionally spatially averaged, and
``logits``) with the batch first. It is built on the model's one time loop
(:func:`cordsnet.functional.trajectory` for the blank phase, :meth:`CordsNet.trajectory` for the
stimulus), so a recording equals :meth:`CordsNet.run` with ``record=``/``readout="all"``.

:func:`record_activity` streams it into ``.npy`` memory maps of (steps, B, ...) for small,
single-process recordings; only the current state and one step's rates are in memory at a time (per
batch chunk), and the files are written to a temporary name and renamed when complete, so an
interrupted recording never leaves a truncated ``.npy`` behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import validate
from .._io import atomic_path
from .protocols import TAU_MS
from .. import functional as CF

__all__ = ["RECORD_DTYPES", "NumpyConverter", "RecordPlan", "Recording", "area_paths", "blank_phase", "make_plan",
           "record_activity", "simulate_batch"]

RECORD_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class RecordPlan:
    """What to record, resolved against a model: the protocol, the window and the variables.

    Build it with :func:`make_plan`. Variables are named ``area_<a>`` (rates of area a) and
    ``logits`` (the readout at each recorded index).

    Attributes:
        steps: N, stimulus steps.
        spontaneous_steps: P, blank steps before the stimulus.
        alpha: dt / tau.
        window: (start, stop) global step indices recorded.
        areas: recorded areas.
        spatial_mean: rates averaged over space, (c,) instead of (c, H, W) per image and step.
        dtype: "float32" or "float16" on disk.
        logits: record the logits (K,) at each recorded index.
        frames: T of a (B, T, C, S, S) stimulus sequence, None for static images.
        tau_ms: time constant in ms (for the time axis).
        shapes: variable -> per-image, per-step shape, e.g. {"area_1": (64, 8, 8), "logits": (10,)}.
    """

    steps: int
    spontaneous_steps: int
    alpha: float
    window: tuple[int, int]
    areas: tuple[int, ...]
    spatial_mean: bool
    dtype: str
    logits: bool
    frames: int | None
    tau_ms: float
    shapes: dict[str, tuple[int, ...]]

    @property
    def total(self) -> int:
        """P + N, the number of global step indices."""
        return self.spontaneous_steps + self.steps

    @property
    def length(self) -> int:
        """Steps in the window."""
        return self.window[1] - self.window[0]

    @property
    def dt_ms(self) -> float:
        """Milliseconds per step (alpha * tau)."""
        return self.alpha * self.tau_ms

    @property
    def times_ms(self) -> np.ndarray:
        """(steps_in_window,) time of each recorded index relative to stimulus onset, in ms."""
        start, stop = self.window
        return (np.arange(start, stop) + 1 - self.spontaneous_steps) * self.dt_ms

    @property
    def np_dtype(self) -> np.dtype:
        return RECORD_DTYPES[self.dtype]

    def protocol_dict(self) -> dict[str, Any]:
        """The protocol as plain data (stored with every recording)."""
        return {"steps": self.steps, "spontaneous_steps": self.spontaneous_steps, "alpha": self.alpha,
                "dt_ms": self.dt_ms, "tau_ms": self.tau_ms, "frames": self.frames}

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol_dict(), "window": list(self.window), "areas": list(self.areas),
                "spatial_mean": self.spatial_mean, "dtype": self.dtype, "logits": self.logits,
                "shapes": {k: list(v) for k, v in self.shapes.items()}}


def make_plan(model: Any, areas: Iterable[int] | int = (), *, window: tuple[int, int] | None = None,
              spatial_mean: bool = False, dtype: str = "float32", logits: bool = False, steps: int | None = None,
              spontaneous_steps: int | None = None, alpha: float | None = None, frames: int | None = None,
              tau_ms: float = TAU_MS) -> RecordPlan:
    """Validate what to record against `model` and fill in the config's protocol.

    Args:
        model: a CordsNet.
        areas: area indices whose rates to record (may be empty when `logits` is set).
        window: (start, stop) global step indices (module docstring); default: every step,
            spontaneous phase included, like the published ``record``.
        spatial_mean: average each channel over space.
        dtype: "float32" or "float16" (half the disk; rates above 65504 overflow: warned).
        logits: also record the readout at every recorded index.
        steps, spontaneous_steps, alpha: the protocol (defaults: the config's).
        frames: T of a (B, T, C, S, S) sequence (it then drives exactly T steps).
        tau_ms: time constant in ms.

    Raises:
        ValueError: naming the argument, what was expected and what was received.
    """
    from ..model import CordsNet

    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    if validate.is_int(areas):
        areas = [areas]
    areas_t = model.validate_areas(list(areas), name="areas")
    if not areas_t and not logits:
        raise ValueError("areas: expected at least one area to record, got none")
    validate.choice("dtype", dtype, RECORD_DTYPES)
    tau = validate.number("tau_ms", tau_ms, low=0.0, low_open=True)
    protocol = model.resolve_protocol(steps, spontaneous_steps, alpha, frames=frames)
    total = protocol.spontaneous_steps + protocol.steps
    window_t = (0, total) if window is None else _check_window(window, total)
    shapes: dict[str, tuple[int, ...]] = {}
    for a in areas_t:
        c, h, w = model.config.state_shapes[a]
        shapes[f"area_{a}"] = (c,) if spatial_mean else (c, h, w)
    if logits:
        shapes["logits"] = (model.config.num_classes,)
    return RecordPlan(protocol.steps, protocol.spontaneous_steps, protocol.alpha, window_t, areas_t,
                      bool(spatial_mean), dtype, bool(logits), frames, tau, shapes)


BLANK_CACHE_BYTES = 512 << 20  # the blank phase's variables are kept for reuse up to this size


def _variables(model: Any, plan: RecordPlan, state: Sequence[Tensor], weights: Any, batch: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for a in plan.areas:
        r = state[a].mean(dim=(2, 3)) if plan.spatial_mean else state[a]
        out[f"area_{a}"] = r.expand(batch, *r.shape[1:])
    if plan.logits:
        z = CF.readout(model.dynamics, weights, state)
        out["logits"] = z.expand(batch, *z.shape[1:])
    return out


def blank_phase(model: Any, plan: RecordPlan, *, max_bytes: int = BLANK_CACHE_BYTES) -> list[dict[str, Tensor]] | None:
    """The plan's variables in the recorded part of the blank phase, at batch 1, to reuse for every batch.

    The blank phase is the same for every trial; a writer that simulates many batches computes it once
    with this and passes it to :func:`simulate_batch`. Returns None when the window has no blank step or
    the variables would take more than `max_bytes` (then each batch simulates it again, at batch 1).
    """
    start, stop = plan.window
    spont = plan.spontaneous_steps
    if start >= spont:
        return None
    per_step = sum(math.prod(shape) for shape in plan.shapes.values()) * torch.finfo(model.dtype).bits // 8
    if per_step * (min(spont, stop) - start) > max_bytes:
        return None
    with torch.no_grad():
        weights = model.effective_weights()
        return [{k: v.clone() for k, v in _variables(model, plan, state, weights, 1).items()}
                for _, state in _blank_states(model, plan, weights)]


def _blank_states(model: Any, plan: RecordPlan, weights: Any) -> Iterator[tuple[int, tuple[Tensor, ...]]]:
    """(t, batch-1 state) at the recorded indices of the blank phase, from the zero state (the one time loop)."""
    start, stop = plan.window
    blank = CF.trajectory(model.dynamics, weights, model.initial_state(1), None, min(plan.spontaneous_steps, stop),
                                       plan.alpha)
    for t, state in enumerate(blank):
        if t >= start:
            yield t, state


def simulate_batch(model: Any, images: Tensor, plan: RecordPlan,
                   blank: Sequence[Mapping[str, Tensor]] | None = None) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """THE recording core: the plan's variables at each recorded index, for one batch.

    The blank phase is the same for every trial, so it is simulated at batch 1 (from the zero state,
    exactly as :meth:`CordsNet.trajectory` starts; or taken from `blank`) and its variables are expanded
    to the batch; the stimulus phase runs :meth:`CordsNet.trajectory` only up to the window's end.

    Args:
        model: a CordsNet (called without gradients).
        images: (B, C, S, S), or (B, T, C, S, S) with T == ``plan.frames``.
        plan: from :func:`make_plan`.
        blank: the blank phase's variables from :func:`blank_phase` (same model and plan), or None.

    Yields:
        (t, {variable: (B, ...) tensor}) for t in ``range(*plan.window)``, in order; tensors are on
        the model's device, in its dtype (views: convert before the next step).
    """
    start, stop = plan.window
    spont = plan.spontaneous_steps
    batch = images.shape[0]
    video = plan.frames is not None
    if video and (images.dim() != 5 or images.shape[1] != plan.frames):
        raise ValueError(f"images: expected a (B, {plan.frames}, C, S, S) sequence for this plan, "
                         f"got {tuple(images.shape)}")
    with torch.no_grad():
        weights = model.effective_weights()
        if start < spont and blank is not None:
            for t, values in enumerate(blank, start=start):
                yield t, {k: v.expand(batch, *v.shape[1:]) for k, v in values.items()}
        elif start < spont:
            for t, state in _blank_states(model, plan, weights):
                yield t, _variables(model, plan, state, weights, batch)
        if stop > spont:
            # Only the steps up to the window's end (a sequence: only their frames).
            stimulus = images[:, :stop - spont] if video else images
            trajectory = model.trajectory(stimulus, steps=None if video else stop - spont,
                                          spontaneous_steps=spont, alpha=plan.alpha)
            for t, state in enumerate(trajectory, start=spont):
                if t >= start:
                    yield t, _variables(model, plan, state, weights, batch)


class NumpyConverter:
    """Tensors to host arrays of the plan's dtype, remembering float16 overflow (warned once at the end)."""

    def __init__(self, dtype: str) -> None:
        self.dtype = RECORD_DTYPES[dtype]
        self.overflow = False

    def __call__(self, r: Tensor) -> np.ndarray:
        arr = r.detach().to("cpu", torch.float32).numpy()
        if self.dtype == np.float16 and not self.overflow and float(np.abs(arr).max(initial=0.0)) > _FLOAT16_MAX:
            self.overflow = True
        return arr.astype(self.dtype, copy=False)

    def warn(self, where: str) -> None:
        if self.overflow:
            warnings.warn(f"{where}: some rates exceed the float16 range (65504) and were stored as inf; "
                          "record with dtype='float32'", RuntimeWarning, stacklevel=3)


@dataclass(frozen=True)
class Recording:
    """What :func:`record_activity` wrote.

    Attributes:
        paths: area -> ``.npy`` file; open with ``np.load(path, mmap_mode="r")``.
        shapes: area -> array shape, (steps_in_window, B, c, H, W) or (steps_in_window, B, c).
        window: (start, stop) global step indices recorded.
        spontaneous_steps: P, blank steps before the stimulus.
        steps: N, stimulus steps.
        dt_ms: milliseconds per step (alpha * tau).
        dtype: "float32" or "float16".
        spatial_mean: whether rates were averaged over space.
    """

    paths: dict[int, Path]
    shapes: dict[int, tuple[int, ...]]
    window: tuple[int, int]
    spontaneous_steps: int
    steps: int
    dt_ms: float
    dtype: str
    spatial_mean: bool

    @property
    def times_ms(self) -> np.ndarray:
        """(steps_in_window,) time of each recorded index relative to stimulus onset, in ms."""
        start, stop = self.window
        return (np.arange(start, stop) + 1 - self.spontaneous_steps) * self.dt_ms

    def load(self, area: int, mmap: bool = True) -> np.ndarray:
        """The recorded rates of `area` (memory-mapped read-only by default)."""
        if area not in self.paths:
            raise ValueError(f"area: expected one of the recorded areas {sorted(self.paths)}, got {area!r}")
        return np.load(self.paths[area], mmap_mode="r" if mmap else None)

    def to_dict(self) -> dict[str, Any]:
        return {"paths": {str(a): str(p) for a, p in self.paths.items()},
                "shapes": {str(a): list(s) for a, s in self.shapes.items()},
                "window": list(self.window), "spontaneous_steps": self.spontaneous_steps, "steps": self.steps,
                "dt_ms": self.dt_ms, "dtype": self.dtype, "spatial_mean": self.spatial_mean}


def area_paths(out: str | os.PathLike, areas: Sequence[int]) -> dict[int, Path]:
    """The file of each area: `out` itself for one area; ``<stem>_area<i>.npy`` beside it for several;
    a literal ``{area}`` in `out` is replaced by the area index instead."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"out: expected a path ending in .npy, got {str(out)!r}")
    if "{area}" in out.name:
        return {a: out.with_name(out.name.replace("{area}", str(a))) for a in areas}
    if len(areas) == 1:
        return {areas[0]: out}
    return {a: out.with_name(f"{out.stem}_area{a}{out.suffix}") for a in areas}


def record_activity(model: Any, images: Tensor, areas: Iterable[int] | int, *, out: str | os.PathLike,
                    window: tuple[int, int] | None = None, spatial_mean: bool = False, dtype: str = "float32",
                    steps: int | None = None, spontaneous_steps: int | None = None, alpha: float | None = None,
                    batch_size: int | None = None, tau_ms: float = TAU_MS, progress: bool = False) -> Recording:
    """Run the published protocol and stream the rates of `areas` to ``.npy`` files on disk.

    For small single-process recordings; datasets go to a Zarr store with
    :func:`cordsnet.analysis.store.record_dataset` (same core, same numbers).

    Args:
        model: a CordsNet.
        images: (B, C, S, S) shown for every stimulus step, or a (B, T, C, S, S) sequence whose frame t
            drives stimulus step t (e.g. from :func:`~cordsnet.analysis.build_stimulus`).
        areas: area indices to record.
        out: destination ``.npy`` (see :func:`area_paths` for several areas).
        window: (start, stop) global step indices to keep (module docstring); default: every step,
            spontaneous phase included, like the published ``record``.
        spatial_mean: average each channel over space: (steps, B, c) instead of (steps, B, c, H, W).
        dtype: "float32" or "float16" (half the disk; rates above 65504 would overflow: warned).
        steps: stimulus steps N (default: the config's, or T for a sequence).
        spontaneous_steps: blank steps P first (default: the config's).
        alpha: dt / tau (default: the config's).
        batch_size: trials simulated at a time (default: all); bounds memory for large batches.
        tau_ms: time constant in ms (for the time axis).
        progress: show a rich progress bar.

    Returns:
        A :class:`Recording` describing the files.
    """
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        raise ValueError(f"images: expected a (B, C, S, S) or (B, T, C, S, S) tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    video = images.dim() == 5
    plan = make_plan(model, areas, window=window, spatial_mean=spatial_mean, dtype=dtype, steps=steps,
                     spontaneous_steps=spontaneous_steps, alpha=alpha, frames=images.shape[1] if video else None,
                     tau_ms=tau_ms)
    batch = images.shape[0]
    chunk = batch if batch_size is None else validate.positive_int("batch_size", batch_size)
    paths = area_paths(out, plan.areas)
    shapes = {a: (plan.length, batch, *plan.shapes[f"area_{a}"]) for a in plan.areas}
    convert = NumpyConverter(dtype)
    starts = range(0, batch, chunk)
    with contextlib.ExitStack() as stack, _progress(progress, plan.length * len(starts)) as advance:
        tmps = {a: stack.enter_context(atomic_path(p)) for a, p in paths.items()}
        maps = {a: np.lib.format.open_memmap(tmps[a], mode="w+", dtype=plan.np_dtype, shape=shapes[a])
                for a in plan.areas}
        blank = blank_phase(model, plan) if len(starts) > 1 else None
        for b0 in starts:
            xb = images[b0:b0 + chunk]
            for t, values in simulate_batch(model, xb, plan, blank):
                for a in plan.areas:
                    maps[a][t - plan.window[0], b0:b0 + xb.shape[0]] = convert(values[f"area_{a}"])
                advance()
        for a in plan.areas:
            maps[a].flush()
        del maps
    convert.warn("record_activity")
    return Recording(paths=paths, shapes=shapes, window=plan.window, spontaneous_steps=plan.spontaneous_steps,
                     steps=plan.steps, dt_ms=plan.dt_ms, dtype=dtype, spatial_mean=plan.spatial_mean)


def _check_window(window: Any, total: int) -> tuple[int, int]:
    try:
        start, stop = window
    except (TypeError, ValueError):
        raise ValueError(f"window: expected (start, stop), got {window!r}") from None
    for v in (start, stop):
        if not validate.is_int(v):
            raise ValueError(f"window: expected integer step indices, got {window!r}")
    if not 0 <= start < stop <= total:
        raise ValueError(f"window: expected 0 <= start < stop <= {total} (spontaneous + stimulus steps), "
                         f"got {tuple(window)!r}")
    return int(start), int(stop)


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """``advance()`` per recorded step: a bar when `enabled` (the one progress mechanism, cordsnet.progress)."""
    from ..progress import Progress

    with Progress("recording", total, style="bar" if enabled else "none") as bar:
        yield bar.advance
