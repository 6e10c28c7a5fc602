"""Reaction times: the first step at which each trial has decided, relative to the no-image baseline.

The criterion is :mod:`cordsnet.decision` (shared with early exit): at step t the top class must
have softmax probability >= threshold *and* the image must have raised that class's logit, relative
to the other classes, by >= margin above the no-image baseline. A blank image never reacts. Why not
"first step above threshold": a trained model is confident with no image at all (the bundled digits
model says 8 at p = 0.998), so that rule reacts at step 1 to everything. The definition and the
measured distribution on the bundled model: docs/analysis.md ("Reaction times").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import validate
from ..decision import DEFAULT_MARGIN, DEFAULT_THRESHOLD, baseline_confidence, check_threshold, first_decisions
from .protocols import TAU_MS

__all__ = ["ReactionTimes", "baseline_logits", "measure_reaction_times", "reaction_times"]


@dataclass(frozen=True)
class ReactionTimes:
    """Per-trial decision times.

    Attributes:
        steps: (B,) int64, steps after onset at the decision: 1 means the logits after the first
            step counted (``logits[onset]``). -1 for trials that never decide.
        ms: (B,) float64, ``steps * dt_ms``; NaN for trials that never decide.
        classes: (B,) int64, the class decided; -1 for trials that never decide.
        probabilities: (B,) float64, its softmax probability at the decision; NaN if none.
        evidence: (B,) float64, the image's evidence for it at the decision (logits relative to the
            baseline, see :func:`cordsnet.decision.evidence`); NaN if none.
        final_classes: (B,) int64, the top class at the last step (whether or not it decided).
        threshold: the probability threshold.
        margin: the evidence margin (logits).
        dt_ms: milliseconds per step (alpha * tau).
        baseline_class: the no-image baseline's top class.
        baseline_probability: its softmax probability (at the baseline's most confident step).
        baseline_crosses: the baseline alone reaches the threshold, i.e. a plain "top-class
            probability >= threshold" rule would react to no image at all (the evidence condition is
            what keeps these reaction times meaningful).
    """

    steps: np.ndarray
    ms: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    evidence: np.ndarray
    final_classes: np.ndarray
    threshold: float
    margin: float
    dt_ms: float
    baseline_class: int
    baseline_probability: float
    baseline_crosses: bool

    @property
    def crossed(self) -> np.ndarray:
        """(B,) bool: trials that decided."""
        return self.steps >= 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None)."""
        def clean(a: np.ndarray) -> list:
            return [None if isinstance(v, float) and np.isnan(v) else v for v in a.tolist()]

        return {"threshold": self.threshold, "margin": self.margin, "dt_ms": self.dt_ms,
                "steps": self.steps.tolist(), "ms": clean(self.ms), "classes": self.classes.tolist(),
                "probabilities": clean(self.probabilities), "evidence": clean(self.evidence),
                "final_classes": self.final_classes.tolist(), "baseline_class": self.baseline_class,
                "baseline_probability": self.baseline_probability, "baseline_crosses": self.baseline_crosses}


def _numpy(name: str, a: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    if isinstance(a, np.ndarray):
        return a
    raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


def reaction_times(logits: Tensor | np.ndarray, threshold: float = DEFAULT_THRESHOLD, *, baseline: Tensor | np.ndarray,
                   margin: float = DEFAULT_MARGIN, alpha: float = 0.2, tau_ms: float = TAU_MS,
                   onset: int = 0) -> ReactionTimes:
    """First step at which each trial decides (see :mod:`cordsnet.decision`).

    Args:
        logits: (steps, B, K), the logits after every step, e.g. ``model.run(x, readout="all")``.
        threshold: probability in (1/K, 1] the top class must reach.
        baseline: the no-image logits of the same protocol: (steps, K) after every step (e.g.
            :func:`baseline_logits`), or (K,). Steps before `onset` are dropped like the logits'.
        margin: evidence (logits, > 0) the image must add to the decided class.
        alpha: dt / tau of the model (``model.config.alpha``).
        tau_ms: the time constant in ms (10 by default): ``dt_ms = alpha * tau_ms``.
        onset: index of the first step that counts (e.g. the stimulus onset of a protocol with a
            leading blank); earlier steps are ignored and times are measured from it.

    Returns:
        :class:`ReactionTimes`. Trials that never decide get steps = -1, classes = -1, ms = NaN.

    Warns:
        UserWarning: the baseline alone reaches `threshold` (``baseline_crosses``).
    """
    z = _numpy("logits", logits)
    if z.ndim != 3 or not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"logits: expected a floating-point (steps, B, K) array from run(..., readout='all'), "
                         f"got shape {z.shape}")
    b = _numpy("baseline", baseline)
    onset = validate.integer("onset", onset, min=0, max=z.shape[0] - 1)
    dt_ms = validate.fraction("alpha", alpha) * validate.number("tau_ms", tau_ms, low=0.0, low_open=True)
    threshold = check_threshold(threshold, z.shape[-1])
    if b.ndim == 2 and b.shape[0] == z.shape[0]:
        b = b[onset:]
    z = z[onset:]
    found = first_decisions(z, b, threshold, margin)
    base_class, base_p = baseline_confidence(b)
    crosses = base_p >= threshold
    if crosses:
        warnings.warn(f"reaction_times: with no image the model already predicts class {base_class} at p = "
                      f"{base_p:.3f} >= threshold {threshold:g}; a plain probability threshold would react at "
                      "step 1 to everything. These times also require evidence from the image (margin "
                      f"{margin:g}); see docs/analysis.md", UserWarning, stacklevel=2)
    return ReactionTimes(steps=found.steps, ms=np.where(found.steps >= 0, found.steps * dt_ms, np.nan),
                         classes=found.classes, probabilities=found.probabilities, evidence=found.evidence,
                         final_classes=z[-1].argmax(-1).astype(np.int64), threshold=float(threshold),
                         margin=float(margin), dt_ms=dt_ms, baseline_class=base_class,
                         baseline_probability=base_p, baseline_crosses=bool(crosses))


@torch.no_grad()
def baseline_logits(model: Any, images: Tensor, *, steps: int | None = None, spontaneous_steps: int | None = None,
                    alpha: float | None = None) -> Tensor:
    """The no-image logits after every step of the protocol `images` would get: (steps, K).

    A blank (all-zero, i.e. the dataset-mean image: zero drive) batch of one, of the same shape as one
    trial of `images` ((C, S, S) or a (T, C, S, S) sequence).
    """
    blank = torch.zeros((1, *images.shape[1:]), dtype=images.dtype, device=images.device)
    return model.run(blank, steps=steps, spontaneous_steps=spontaneous_steps, alpha=alpha, readout="all")[:, 0]


def measure_reaction_times(model: Any, images: Tensor, threshold: float = DEFAULT_THRESHOLD, *, margin: float = DEFAULT_MARGIN,
                           steps: int | None = None, spontaneous_steps: int | None = None,
                           alpha: float | None = None, tau_ms: float = TAU_MS, onset: int = 0) -> ReactionTimes:
    """Run `model` on `images` and on no image with ``readout="all"`` and compute :func:`reaction_times`.

    Args:
        model: a CordsNet.
        images: (B, C, S, S), or a (B, T, C, S, S) sequence (e.g. from
            :func:`~cordsnet.analysis.build_stimulus`; pass its stimulus start as `onset`).
        threshold, margin, tau_ms, onset: see :func:`reaction_times`.
        steps, spontaneous_steps, alpha: the protocol of :meth:`CordsNet.run`.
    """
    alpha = model.resolve_protocol(alpha=alpha).alpha
    with torch.no_grad():
        logits = model.run(images, steps=steps, spontaneous_steps=spontaneous_steps, alpha=alpha, readout="all")
        base = baseline_logits(model, model.validate_images(images), steps=steps,
                               spontaneous_steps=spontaneous_steps, alpha=alpha)
    return reaction_times(logits, threshold, baseline=base, margin=margin, alpha=alpha, tau_ms=tau_ms, onset=onset)
