"""Reaction times: when the top-class probability of each trial first crosses a threshold."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .protocols import TAU_MS

__all__ = ["ReactionTimes", "reaction_times", "measure_reaction_times"]


@dataclass(frozen=True)
class ReactionTimes:
    """Per-trial decision times.

    Attributes:
        steps: (B,) int64, steps after onset at the crossing: 1 means the logits after the first
            step counted (``logits[onset]``). -1 for trials that never cross.
        ms: (B,) float64, ``steps * dt_ms``; NaN for trials that never cross.
        classes: (B,) int64, the top class at the crossing; -1 for trials that never cross.
        probabilities: (B,) float64, its softmax probability at the crossing; NaN if none.
        final_classes: (B,) int64, the top class at the last step (whether or not it crossed).
        threshold: the probability threshold.
        dt_ms: milliseconds per step (alpha * tau).
    """

    steps: np.ndarray
    ms: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    final_classes: np.ndarray
    threshold: float
    dt_ms: float

    @property
    def crossed(self) -> np.ndarray:
        """(B,) bool: trials whose probability crossed the threshold."""
        return self.steps >= 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""
        def clean(a: np.ndarray) -> list:
            return [None if isinstance(v, float) and np.isnan(v) else v for v in a.tolist()]

        return {"threshold": self.threshold, "dt_ms": self.dt_ms, "steps": self.steps.tolist(),
                "ms": clean(self.ms), "classes": self.classes.tolist(),
                "probabilities": clean(self.probabilities), "final_classes": self.final_classes.tolist()}


def reaction_times(logits: Tensor | np.ndarray, threshold: float = 0.9, *, alpha: float = 0.2,
                   tau_ms: float = TAU_MS, onset: int = 0) -> ReactionTimes:
    """First step at which each trial's top-class softmax probability reaches `threshold`.

    Args:
        logits: (steps, B, K), the logits after every step, e.g. ``model.run(x, readout="all")``.
        threshold: probability in (0, 1]; a trial crosses at the first step where
            ``max_k softmax(logits)_k >= threshold``.
        alpha: dt / tau of the model (``model.config.alpha``).
        tau_ms: the time constant in ms (10 by default): ``dt_ms = alpha * tau_ms``.
        onset: index of the first step that counts (e.g. the stimulus onset of a protocol with a
            leading blank); earlier steps are ignored and times are measured from it.

    Returns:
        :class:`ReactionTimes`. Trials that never cross get steps = -1, classes = -1, ms = NaN.
    """
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point (steps, B, K) array from run(..., readout='all'), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a probability in (0, 1], got {threshold!r}")
    if isinstance(onset, bool) or not isinstance(onset, int) or not 0 <= onset < logits.shape[0]:
        raise ValueError(f"onset: expected a step index in 0..{logits.shape[0] - 1}, got {onset!r}")
    if not 0 < float(alpha) <= 1 or not float(tau_ms) > 0:
        raise ValueError(f"alpha, tau_ms: expected alpha in (0, 1] and tau_ms > 0, got {alpha!r}, {tau_ms!r}")
    dt_ms = float(alpha) * float(tau_ms)
    probs = torch.softmax(logits[onset:].detach().double().cpu(), dim=-1)
    top_p, top_k = probs.max(dim=-1)  # (steps', B)
    hit = top_p >= threshold
    crossed = hit.any(dim=0)
    first = hit.to(torch.int8).argmax(dim=0)  # first True (0 when none: masked below)
    batch = torch.arange(logits.shape[1])
    steps = torch.where(crossed, first + 1, torch.full_like(first, -1)).numpy().astype(np.int64)
    classes = torch.where(crossed, top_k[first, batch], torch.full_like(first, -1)).numpy().astype(np.int64)
    p = torch.where(crossed, top_p[first, batch], torch.full_like(top_p[0], float("nan"))).numpy()
    ms = np.where(steps >= 0, steps * dt_ms, np.nan)
    return ReactionTimes(steps=steps, ms=ms, classes=classes, probabilities=p,
                         final_classes=top_k[-1].numpy().astype(np.int64), threshold=float(threshold), dt_ms=dt_ms)


def measure_reaction_times(model: Any, images: Tensor, threshold: float = 0.9, *, steps: int | None = None,
                           spontaneous_steps: int | None = None, alpha: float | None = None,
                           tau_ms: float = TAU_MS, onset: int = 0) -> ReactionTimes:
    """Run `model` with ``readout="all"`` and compute :func:`reaction_times` of its logits.

    Args:
        model: a CordsNet.
        images: (B, C, S, S), or a (B, T, C, S, S) sequence (e.g. from
            :func:`~cordsnet.analysis.build_stimulus`; pass its stimulus start as `onset`).
        threshold, tau_ms, onset: see :func:`reaction_times`.
        steps, spontaneous_steps, alpha: the protocol of :meth:`CordsNet.run`.
    """
    alpha = model.resolve_protocol(alpha=alpha).alpha
    with torch.no_grad():
        logits = model.run(images, steps=steps, spontaneous_steps=spontaneous_steps, alpha=alpha, readout="all")
    return reaction_times(logits, threshold, alpha=alpha, tau_ms=tau_ms, onset=onset)
