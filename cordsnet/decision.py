"""When has the network decided? One criterion, torch-free, for reaction times and early exit.

A CordsNet's answer forms over time, but its readout is never silent: at rest (no image, after the
spontaneous phase) a trained model already outputs a confident class. The bundled digits model
outputs class 8 at p = 0.998 with no image at all, so "the first step at which the top-class
probability reaches a threshold" is step 1 for every image and measures nothing. The criterion here
asks for two things at step t, given the logits ``z_t`` and the logits ``b_t`` of the no-image
baseline (the same protocol with a blank image, i.e. zero drive) at the same step:

1. **Confidence**: the top class ``c = argmax z_t`` has softmax probability ``p_t >= threshold``.
2. **Evidence from the image** for that class: the image has widened c's lead over its strongest
   rival by at least ``margin`` compared with where the resting network has it::

       lead(x)[c]     = x[c] - max_{k != c} x[k]          (log-odds of c against its best rival)
       evidence_t(c)  = lead(z_t)[c] - lead(b_t)[c]  >=  margin

   i.e. the image multiplied the odds of c against its best rival by at least ``exp(margin)``
   compared with no image. Adding a constant to every logit changes neither term.

The decision is made at the first step where both hold (an online rule: it needs only the past, so
the runtime's early exit and :meth:`cordsnet.model.CordsNet.run_until` use it as it is). A blank
image never decides: its logits *are* the baseline, so its evidence is exactly 0 < margin. The cost:
a class the resting network already reports (8 for the bundled model) is decided only when the image
makes the network surer of it than it is at rest; an image the model reads exactly as its resting
answer does not "react".

Arrays are numpy; ``logits`` are (T, B, K) over steps (or (B, K) for one step), the baseline (K,)
(a constant baseline) or (T, K) (its own trajectory, e.g. when the spontaneous phase has not fully
settled). See docs/analysis.md ("Reaction times") for the measured distribution on the bundled model.

Clients in other languages apply the same rule from an exported model's client manifest, whose
``"decision"`` block (:class:`DecisionRule`, rule name :data:`RULE`) carries the threshold, the margin
and the baseline (T, K) computed at export by the runtime on the exported graph itself
(docs/export.md, "Client manifest"); ``web/cordsnet.mjs`` implements it for the browser and Node.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from . import validate
from .config import MAX_STEPS

__all__ = ["BASELINE_ENCODING", "DEFAULT_MARGIN", "DEFAULT_THRESHOLD", "DecisionRule", "Decisions", "RULE",
           "StepDecision", "baseline_confidence", "check_criterion", "check_threshold", "check_until", "decide",
           "evidence", "first_decisions"]

DEFAULT_MARGIN = 1.0  # logits: the image raised the odds of its class against its best rival by e (2.7x)
DEFAULT_THRESHOLD = 0.9  # probability: the CLI's default (reaction-time) and the exported manifest's
RULE = "cordsnet.decision/1"  # the manifest's name for this criterion (bump it if the criterion changes)
BASELINE_ENCODING = "base64-float32-le"  # the manifest baseline: little-endian float32, C order, base64
MAX_CLASSES = 1 << 16  # the most classes a manifest's baseline may claim (bounds what a reader decodes)


class StepDecision(NamedTuple):
    """The criterion at one step, per image (all (B,)).

    Attributes:
        decided: both conditions hold.
        classes: the top class.
        probabilities: its softmax probability.
        evidence: the image's evidence for it (logits, relative to the baseline).
    """

    decided: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    evidence: np.ndarray


class Decisions(NamedTuple):
    """The first decision of each trial over a trajectory (all (B,)).

    Attributes:
        steps: 1-based step of the decision (1: the logits after the first step); -1 if never.
        classes: the class decided; -1 if never.
        probabilities: its softmax probability at that step; NaN if never.
        evidence: its evidence at that step; NaN if never.
    """

    steps: np.ndarray
    classes: np.ndarray
    probabilities: np.ndarray
    evidence: np.ndarray


def check_threshold(threshold: Any, num_classes: int) -> float:
    """A probability threshold that means something for K classes: in (1/K, 1].

    (The top class of K always has p >= 1/K, so a lower threshold would be no condition.)
    """
    value = validate.number("threshold", threshold, low=1.0 / num_classes, high=1.0, low_open=True)
    return value


def check_criterion(threshold: Any, margin: Any, num_classes: int) -> tuple[float, float]:
    """The criterion's arguments checked: (threshold in (1/K, 1], margin > 0)."""
    return check_threshold(threshold, num_classes), validate.number("margin", margin, low=0.0, low_open=True)


def check_until(threshold: Any, margin: Any, tol: Any, num_classes: int) -> tuple[float, float, float | None]:
    """The arguments every ``run_until`` takes, checked: threshold, margin, and a convergence `tol` > 0 or None."""
    threshold, margin = check_criterion(threshold, margin, num_classes)
    if tol is not None:
        tol = validate.number("tol", tol, low=0.0, low_open=True)
    return threshold, margin, tol


def _as_logits(name: str, a: Any, ranks: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim not in ranks or not np.issubdtype(arr.dtype, np.floating) or arr.shape[-1] < 2:
        expected = " or ".join({1: "(K,)", 2: "(B, K) / (T, K)", 3: "(T, B, K)"}[r] for r in ranks)
        raise ValueError(f"{name}: expected floating-point logits {expected} with K >= 2 classes, got "
                         f"{arr.dtype} of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite logits, got NaN or infinity")
    return arr.astype(np.float64, copy=False)


def _softmax_max(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, max probability) over the last axis, computed stably."""
    top = z.argmax(axis=-1)
    zmax = np.take_along_axis(z, top[..., None], axis=-1)
    p = 1.0 / np.exp(z - zmax).sum(axis=-1)
    return top, p


def lead(logits: Any) -> np.ndarray:
    """Every class's log-odds against its strongest rival: ``x[c] - max_{k != c} x[k]`` (same shape)."""
    x = np.asarray(logits, dtype=np.float64)
    order = np.argsort(x, axis=-1)
    first = np.take_along_axis(x, order[..., -1:], axis=-1)
    second = np.take_along_axis(x, order[..., -2:-1], axis=-1)
    is_top = np.arange(x.shape[-1]) == order[..., -1:]
    return x - np.where(is_top, second, first)


def evidence(logits: Any, baseline: Any) -> np.ndarray:
    """The image's evidence for every class: ``lead(z)[k] - lead(b)[k]`` (the shape of `logits`).

    Args:
        logits: (..., K).
        baseline: broadcastable to `logits` ((K,), or (T, 1, K) against (T, B, K)).
    """
    return lead(logits) - lead(baseline)


def decide(logits: Any, baseline: Any, threshold: float, margin: float = DEFAULT_MARGIN) -> StepDecision:
    """The criterion at one step (online use: early exit).

    Args:
        logits: (B, K) at this step.
        baseline: (K,) the no-image logits at this step.
        threshold: probability in (1/K, 1].
        margin: evidence in logits (> 0).
    """
    z = _as_logits("logits", logits, (2,))
    b = _as_logits("baseline", baseline, (1,))
    if b.shape[-1] != z.shape[-1]:
        raise ValueError(f"baseline: expected {z.shape[-1]} classes like the logits, got {b.shape[-1]}")
    threshold, margin = check_criterion(threshold, margin, z.shape[-1])
    top, p = _softmax_max(z)
    ev = np.take_along_axis(evidence(z, b), top[..., None], axis=-1)[..., 0]
    return StepDecision((p >= threshold) & (ev >= margin), top.astype(np.int64), p, ev)


def first_decisions(logits: Any, baseline: Any, threshold: float, margin: float = DEFAULT_MARGIN) -> Decisions:
    """The first step at which each trial decides (the criterion of :func:`decide` at every step).

    Args:
        logits: (T, B, K), the logits after every step.
        baseline: (K,) or (T, K): the no-image logits (after every step, or one constant vector).
        threshold: probability in (1/K, 1].
        margin: evidence in logits (> 0).
    """
    z = _as_logits("logits", logits, (3,))
    b = _as_logits("baseline", baseline, (1, 2))
    steps_, batch, k = z.shape
    if b.shape[-1] != k or (b.ndim == 2 and b.shape[0] != steps_):
        raise ValueError(f"baseline: expected ({k},) or ({steps_}, {k}) like the logits (T, B, K) = "
                         f"{z.shape}, got {b.shape}")
    threshold, margin = check_criterion(threshold, margin, k)
    top, p = _softmax_max(z)  # (T, B)
    ev = np.take_along_axis(evidence(z, b[:, None, :] if b.ndim == 2 else b), top[..., None], axis=-1)[..., 0]
    hit = (p >= threshold) & (ev >= margin)
    crossed = hit.any(axis=0)
    first = hit.argmax(axis=0)  # first True (0 when none: masked below)
    cols = np.arange(batch)
    return Decisions(
        steps=np.where(crossed, first + 1, -1).astype(np.int64),
        classes=np.where(crossed, top[first, cols], -1).astype(np.int64),
        probabilities=np.where(crossed, p[first, cols], np.nan),
        evidence=np.where(crossed, ev[first, cols], np.nan),
    )


def baseline_confidence(baseline: Any) -> tuple[int, float]:
    """(class, probability) of the no-image baseline's most confident step: what a plain
    "top-class probability >= threshold" rule would already see with no image."""
    b = _as_logits("baseline", baseline, (1, 2))
    top, p = _softmax_max(b.reshape(-1, b.shape[-1]))
    i = int(p.argmax())
    return int(top[i]), float(p[i])


# ------------------------------------------------------------------------------ the manifest block
@dataclass(frozen=True, eq=False)
class DecisionRule:
    """Everything a client needs to apply this criterion: the client manifest's ``"decision"`` block.

    Attributes:
        threshold: probability in (1/K, 1].
        margin: evidence in logits (> 0).
        baseline: (T, K) float32, the no-image logits after each of the protocol's T steps.
    """

    threshold: float
    margin: float
    baseline: np.ndarray

    def __post_init__(self) -> None:
        b = _as_logits("baseline", self.baseline, (2,)).astype(np.float32)
        if not np.isfinite(b).all():  # finite in float64 but not in float32
            raise ValueError("baseline: expected logits that fit float32, got values beyond its range")
        b.setflags(write=False)
        threshold, margin = check_criterion(self.threshold, self.margin, b.shape[-1])
        object.__setattr__(self, "baseline", b)
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "margin", margin)

    def first_decisions(self, logits: Any) -> Decisions:
        """:func:`first_decisions` of `logits` (T, B, K) with this rule's baseline, threshold and margin."""
        return first_decisions(logits, self.baseline, self.threshold, self.margin)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest block: ``{"rule", "threshold", "margin", "baseline": {"encoding", "shape", "data"}}``."""
        data = np.ascontiguousarray(self.baseline, dtype="<f4").tobytes()
        return {"rule": RULE, "threshold": self.threshold, "margin": self.margin,
                "baseline": {"encoding": BASELINE_ENCODING, "shape": list(self.baseline.shape),
                             "data": base64.b64encode(data).decode("ascii")}}

    @classmethod
    def from_manifest(cls, block: Any, *, steps: int, num_classes: int) -> "DecisionRule":
        """Parse and validate a manifest's ``"decision"`` block.

        Args:
            block: the parsed JSON object.
            steps: the protocol's stimulus steps T (the baseline must be (T, K)).
            num_classes: K.

        Raises:
            ValueError: one line naming the field, what it holds and what was expected.
        """
        def need(obj: Any, key: str, where: str = "") -> Any:
            if not isinstance(obj, Mapping) or key not in obj:
                raise ValueError(f"decision: expected a {where}{key!r} field, got "
                                 f"{sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__}")
            return obj[key]

        rule = need(block, "rule")
        if rule != RULE:
            raise ValueError(f"decision.rule: expected {RULE!r}, got {rule!r} (a newer cordsnet's rule?)")
        threshold = check_threshold(need(block, "threshold"), num_classes)
        margin = validate.number("decision.margin", need(block, "margin"), low=0.0, low_open=True)
        base = need(block, "baseline")
        encoding = need(base, "encoding", "baseline.")
        if encoding != BASELINE_ENCODING:
            raise ValueError(f"decision.baseline.encoding: expected {BASELINE_ENCODING!r}, got {encoding!r}")
        shape = need(base, "shape", "baseline.")
        if not isinstance(shape, list) or len(shape) != 2:
            raise ValueError(f"decision.baseline.shape: expected [T, K], got {shape!r}")
        t = validate.integer("decision.baseline.shape[0]", shape[0], min=1, max=MAX_STEPS)
        k = validate.integer("decision.baseline.shape[1]", shape[1], min=2, max=MAX_CLASSES)
        if (t, k) != (steps, num_classes):
            raise ValueError(f"decision.baseline.shape: expected [{steps}, {num_classes}] (the protocol's steps, "
                             f"the model's classes), got {shape}")
        text = need(base, "data", "baseline.")
        size = 4 * t * k
        if not isinstance(text, str) or len(text) != 4 * ((size + 2) // 3):
            raise ValueError(f"decision.baseline.data: expected {size} bytes of base64 ({4 * ((size + 2) // 3)} "
                             f"characters), got {len(text) if isinstance(text, str) else type(text).__name__}")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"decision.baseline.data: not valid base64 ({exc})") from None
        values = np.frombuffer(raw, dtype="<f4").reshape(t, k)
        if not np.isfinite(values).all():
            raise ValueError("decision.baseline.data: expected finite logits, got NaN or infinity")
        return cls(threshold, margin, values.astype(np.float32))
