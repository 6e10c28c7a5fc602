"""Activity recording that scales: rates of chosen areas streamed step by step into ``.npy`` memory maps.

The time axis follows the published ``record``: with ``P`` spontaneous and ``N`` stimulus steps,
index ``t`` in ``0 .. P + N - 1`` is the state *after* step ``t + 1``; indices ``0 .. P - 1`` are
the spontaneous (blank) phase and ``P .. P + N - 1`` the stimulus phase. A window ``(start, stop)``
keeps indices ``start <= t < stop``. Relative to stimulus onset, index t is at
``(t + 1 - P) * dt_ms`` milliseconds.

Only the current state and one step's rates are in memory at a time (per batch chunk); the
recording itself lives in ``numpy.lib.format.open_memmap`` files, written to a temporary name and
renamed when complete, so an interrupted recording never leaves a truncated ``.npy`` behind.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .._io import atomic_path
from .protocols import TAU_MS

__all__ = ["Recording", "record_activity", "RECORD_DTYPES", "area_paths"]

RECORD_DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


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
    from ..model import CordsNet

    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    if isinstance(areas, int):
        areas = [areas]
    areas_t = model.validate_areas(list(areas), name="areas")
    if not areas_t:
        raise ValueError("areas: expected at least one area to record, got none")
    if dtype not in RECORD_DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(RECORD_DTYPES)}, got {dtype!r}")
    np_dtype = RECORD_DTYPES[dtype]
    if not isinstance(images, Tensor) or images.dim() not in (4, 5):
        raise ValueError(f"images: expected a (B, C, S, S) or (B, T, C, S, S) tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    video = images.dim() == 5
    n_steps, spont, alpha = model.resolve_protocol(steps, spontaneous_steps, alpha,
                                                   frames=images.shape[1] if video else None)
    total = spont + n_steps
    start, stop = (0, total) if window is None else _check_window(window, total)
    batch = images.shape[0]
    chunk = batch if batch_size is None else batch_size
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    paths = area_paths(out, areas_t)
    shapes = {}
    for a in areas_t:
        c, h, w = model.config.state_shapes[a]
        shapes[a] = (stop - start, batch, c) if spatial_mean else (stop - start, batch, c, h, w)

    overflow = False

    def to_numpy(r: Tensor) -> np.ndarray:
        nonlocal overflow
        if spatial_mean:
            r = r.mean(dim=(2, 3))
        arr = r.detach().to("cpu", torch.float32).numpy()
        if np_dtype == np.float16 and not overflow and float(np.abs(arr).max(initial=0.0)) > _FLOAT16_MAX:
            overflow = True
        return arr.astype(np_dtype, copy=False)

    work = (min(stop, spont) if start < spont else 0) + max(0, stop - spont) * -(-batch // chunk)
    with contextlib.ExitStack() as stack, _progress(progress, work) as advance:
        tmps = {a: stack.enter_context(atomic_path(p)) for a, p in paths.items()}
        maps = {a: np.lib.format.open_memmap(tmps[a], mode="w+", dtype=np_dtype, shape=shapes[a]) for a in areas_t}
        with torch.no_grad():
            if start < spont:  # the blank phase is the same for every trial: simulate one, broadcast
                weights = model.effective_weights()
                blank = model.unchecked_trajectory(weights, model.initial_state(1), None, min(spont, stop), alpha)
                for t, state in enumerate(blank):
                    if t >= start:
                        for a in areas_t:
                            maps[a][t - start] = to_numpy(state[a])  # broadcast over the batch
                    advance()
            if stop > spont:
                for b0 in range(0, batch, chunk):
                    xb = images[b0:b0 + chunk]
                    nb = xb.shape[0]
                    # Only the steps up to the window's end (a sequence: only their frames).
                    stimulus = xb[:, :stop - spont] if video else xb
                    trajectory = model.trajectory(stimulus, steps=None if video else stop - spont,
                                                  spontaneous_steps=spont, alpha=alpha)
                    for t, state in enumerate(trajectory, start=spont):
                        if t >= start:
                            for a in areas_t:
                                maps[a][t - start, b0:b0 + nb] = to_numpy(state[a])
                        advance()
        for a in areas_t:
            maps[a].flush()
        del maps
    if overflow:
        warnings.warn("record_activity: some rates exceed the float16 range (65504) and were stored as inf; "
                      "record with dtype='float32'", RuntimeWarning, stacklevel=2)
    return Recording(paths=paths, shapes=shapes, window=(start, stop), spontaneous_steps=spont, steps=n_steps,
                     dt_ms=alpha * float(tau_ms), dtype=dtype, spatial_mean=spatial_mean)


def _check_window(window: Any, total: int) -> tuple[int, int]:
    try:
        start, stop = window
    except (TypeError, ValueError):
        raise ValueError(f"window: expected (start, stop), got {window!r}") from None
    for v in (start, stop):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"window: expected integer step indices, got {window!r}")
    if not 0 <= start < stop <= total:
        raise ValueError(f"window: expected 0 <= start < stop <= {total} (spontaneous + stimulus steps), "
                         f"got {tuple(window)!r}")
    return int(start), int(stop)


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("recording", total=total)
        yield lambda: bar.advance(task)
