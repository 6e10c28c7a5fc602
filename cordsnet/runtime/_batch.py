"""What every session shares, torch- and onnxruntime-free: result types, batch rules, preprocessing, ranking.

* :class:`EarlyExit`, :class:`Prediction`, :func:`check_finite`.
* :func:`pad_chunks` / :func:`join_chunks`: a batch split for a static-batch graph, the last chunk padded
  with its last image, the padding dropped again (the one rule of the runtime, verification and
  calibration); :func:`compact`: the rows of a batch still running after some stopped (anytime inference).
* :class:`Frontend`: preprocessing and ranking of :class:`~cordsnet.runtime.Session`, StepSession and
  PteStepSession.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from .. import validate
from ..artifact import MAX_STEPS, ArtifactInfo
from ..config import CordsNetConfig
from .preprocess import Preprocessor

__all__ = ["STEPS_WHY", "EarlyExit", "Frontend", "Prediction", "check_finite", "compact", "join_chunks",
           "pad_chunks"]

STEPS_WHY = ("longer runs: call StepSession.step in your own loop (memory stays flat)")


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


