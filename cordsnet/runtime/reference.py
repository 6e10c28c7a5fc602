"""Verification against a stored reference: check an exported graph where PyTorch is not installed.

A reference file (``.npz``, no pickles) holds deterministic input images, the PyTorch model's logits for
them after the artifact's protocol (computed in float64), the protocol and the weights' sha256. It is
written where torch is (``cordsnet-cli verify MODEL --save-reference REF.npz``, or
:func:`cordsnet.export.reference.make_reference`) and checked anywhere the runtime runs
(``cordsnet-cli verify MODEL --reference REF.npz``, :func:`check_reference`): the deployment box checks
the graph it will serve with the very runtime it serves it with.

The criterion is the exporter's: float32 graphs pass when every logit is within ``atol + rtol |ref|``;
reduced precisions (float16, bfloat16, int8) pass on top-1 agreement (>= ``min_agreement``), their
elementwise differences reported for information.

Torch-free: numpy and the runtime only.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import validate
from .._io import atomic_path, read_arrays
from ..artifact import artifact_format, read_info

__all__ = ["ATOL", "BASELINES", "FORMAT", "MIN_AGREEMENT", "RTOL", "Reference", "ReferenceCheck", "baseline_logits",
           "check_decision", "check_reference", "compare", "load_reference", "save_reference", "top1_agreement"]

# The verification criterion, one definition for the exporter (cordsnet.export.verify) and stored references:
# float32 passes when every value is within ATOL + RTOL |reference|; a reduced precision when the top-1 class
# agrees on at least MIN_AGREEMENT of the images.
ATOL, RTOL, MIN_AGREEMENT = 1e-4, 1e-3, 0.99


def _onnx_baseline(path: Path) -> np.ndarray:
    from . import open_session

    return open_session(path, "cpu").baseline_logits()


def _pte_baseline(path: Path) -> np.ndarray:
    from .executorch import PteStepSession

    return PteStepSession(path).baseline_logits()


# format -> the no-image baseline (T, K) of a graph, computed by this runtime on the CPU: what the exporter
# writes into the manifest's decision block and what check_decision recomputes.
BASELINES: dict[str, Callable[[Path], np.ndarray]] = {"onnx": _onnx_baseline, "executorch": _pte_baseline}

# A reduced-precision baseline recomputed on another CPU may differ by its kernels (VNNI or not, AMX or
# not); a tenth of the decision margin cannot move a decision but at its boundary, and an edit that
# matters is larger. float32 graphs are held to the verification criterion (ATOL, RTOL).
BASELINE_MARGIN_SHARE = 0.1

FORMAT = "cordsnet-reference/1"
MAX_REFERENCE_BYTES = 512 * 1024 * 1024  # a reference holds a few hundred images: larger is not one
_FIELDS = ("format", "images", "logits", "state_dict_sha256", "dtype", "steps", "spontaneous_steps", "alpha",
           "atol", "rtol", "min_agreement", "source")


@dataclass(frozen=True)
class Reference:
    """What a graph must reproduce.

    Attributes:
        images: (N, C, S, S) float32 normalised inputs.
        logits: (N, K) float64, the PyTorch model's logits after the protocol.
        state_dict_sha256: the weights the reference was computed with (an artifact of other weights is refused).
        dtype: the artifact's precision (it selects the criterion).
        steps, spontaneous_steps, alpha: the protocol the logits were computed with.
        atol, rtol: the float32 criterion; min_agreement: the reduced-precision one.
        source: how the images were made (for reports).
    """

    images: np.ndarray
    logits: np.ndarray
    state_dict_sha256: str
    dtype: str
    steps: int
    spontaneous_steps: int
    alpha: float
    atol: float = ATOL
    rtol: float = RTOL
    min_agreement: float = MIN_AGREEMENT
    source: str = ""


@dataclass(frozen=True)
class ReferenceCheck:
    """The outcome of :func:`check_reference` (``passed`` decides; the rest is for reading)."""

    passed: bool
    criterion: str
    images: int
    max_abs: float
    max_rel: float
    agreement: float

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"{verdict} ({self.criterion}) on {self.images} stored images: max abs diff {self.max_abs:.3g}, "
                f"max rel diff {self.max_rel:.3g}, top-1 agreement {100 * self.agreement:.1f}%")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare(got: Any, want: Any, atol: float, rtol: float) -> dict[str, Any]:
    """Elementwise comparison of an output with its reference (any shape, compared in float64).

    Returns:
        ``{"max_abs", "max_rel", "within_tolerance", "finite"}``: ``max_rel`` is relative to
        ``max(|reference|, atol)`` (meaningful where the reference is near zero too); within tolerance when
        every value is finite and ``|got - want| <= atol + rtol |want|``.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    diff = np.abs(got - want)
    finite = bool(np.isfinite(got).all())
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(want), max(atol, 1e-12))).max()) if diff.size else 0.0
    ok = finite and bool(np.all(diff <= atol + rtol * np.abs(want)))
    return {"max_abs": max_abs if finite else float("inf"), "max_rel": max_rel if finite else float("inf"),
            "within_tolerance": ok, "finite": finite}


def top1_agreement(got: Any, want: Any) -> float:
    """Share of images whose top class agrees: logits (B, K), or (T, B, K) judged at the last step."""
    got, want = np.asarray(got), np.asarray(want)
    if got.ndim == 3:  # readout "all": the last step decides
        got, want = got[-1], want[-1]
    return float(np.mean(np.argmax(got, axis=-1) == np.argmax(want, axis=-1)))


def baseline_logits(path: str | os.PathLike, format: str | None = None) -> np.ndarray:
    """The no-image baseline (T, K) of the graph at `path`, by this runtime on the CPU (:data:`BASELINES`).

    Raises:
        ValueError: a format whose baseline no runtime here computes (listing those that do).
    """
    fmt = artifact_format(path) if format is None else format
    if fmt not in BASELINES:
        raise ValueError(f"format: the no-image baseline is computed for {sorted(BASELINES)} graphs, got {fmt!r}")
    return np.asarray(BASELINES[fmt](Path(path)), dtype=np.float32)


def check_decision(path: str | os.PathLike, manifest: Any = None) -> dict[str, Any] | None:
    """Recompute the no-image baseline of the graph at `path` and refuse a manifest whose decision block
    says otherwise (:func:`cordsnet.artifact.check_manifest` checks the block's presence, threshold and
    margin; this checks its values, which only running the graph can).

    Tolerance: float32 graphs the verification criterion (:data:`ATOL` + :data:`RTOL` |baseline|);
    reduced precisions :data:`BASELINE_MARGIN_SHARE` of the decision margin.

    Args:
        path: the artifact.
        manifest: its :class:`~cordsnet.artifact.Manifest` as :func:`~cordsnet.artifact.check_manifest`
            returned it, when the caller has checked it already; default: checked here.

    Returns:
        The comparison (:func:`compare`), or None when the artifact has no manifest or no decision block.

    Raises:
        ValueError: the manifest's baseline is not the graph's (naming the manifest and the difference).
    """
    if manifest is None:
        from ..artifact import check_manifest

        manifest = check_manifest(path)
    if manifest is None or manifest.decision is None:
        return None
    rule = manifest.decision
    got = baseline_logits(path, manifest.format)
    want = rule.baseline
    if got.shape != want.shape:
        raise ValueError(f"manifest: {str(manifest.path)!r}: its no-image baseline is {want.shape}, the graph gives "
                         f"{got.shape}; the manifest was edited: export again")
    atol, rtol = (ATOL, RTOL) if manifest.info.dtype == "float32" else (BASELINE_MARGIN_SHARE * rule.margin, 0.0)
    diffs = compare(got, want, atol, rtol)
    if not diffs["within_tolerance"]:
        raise ValueError(f"manifest: {str(manifest.path)!r}: its no-image baseline is not the graph's (max |diff| "
                         f"{diffs['max_abs']:.3g} logits, allowed {atol:g} + {rtol:g} |baseline|); the manifest was "
                         "edited: export again")
    return diffs


def save_reference(path: str | os.PathLike, reference: Reference) -> Path:
    """Write `reference` to `path` (``.npz``, atomically). Returns the path."""
    path = validate.suffix("reference", path, (".npz",))
    fields = dataclasses.asdict(reference)
    arrays = {k: np.asarray(v) for k, v in fields.items()}
    arrays["images"] = np.ascontiguousarray(reference.images, dtype=np.float32)
    arrays["logits"] = np.ascontiguousarray(reference.logits, dtype=np.float64)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.asarray(FORMAT), **arrays)
    return path


def load_reference(path: str | os.PathLike) -> Reference:
    """Read and check a reference file.

    Raises:
        ValueError: not a regular file, too large, not a reference of this format, or inconsistent arrays.
    """
    path = Path(path)
    try:  # a regular file; no header or member may claim more than the archive holds (a zip bomb is refused)
        data = read_arrays(path, "reference", MAX_REFERENCE_BYTES)
    except FileNotFoundError:
        raise ValueError(f"reference: expected a .npz file written by --save-reference, got {str(path)!r} "
                         "(no such file)") from None
    if not isinstance(data, dict):  # a bare .npy array
        raise ValueError(f"reference: {str(path)!r} is a single array, not a .npz reference archive")
    raw = {k: data[k] for k in _FIELDS if k in data}
    missing = [k for k in _FIELDS if k not in raw]
    if missing:
        raise ValueError(f"reference: {str(path)!r} lacks {missing}: not a cordsnet reference file")
    if str(raw["format"]) != FORMAT:
        raise ValueError(f"reference: expected format {FORMAT!r}, got {str(raw['format'])!r}")
    images, logits = raw["images"], raw["logits"]
    if images.ndim != 4 or images.dtype != np.float32 or logits.ndim != 2 or logits.shape[0] != images.shape[0] \
            or images.shape[0] == 0:
        raise ValueError(f"reference: expected images (N, C, S, S) float32 and logits (N, K), got {images.shape} "
                         f"{images.dtype} and {logits.shape}")
    if not (np.isfinite(images).all() and np.isfinite(logits).all()):
        raise ValueError("reference: images and logits must be finite")
    try:
        return Reference(images=images, logits=logits.astype(np.float64), state_dict_sha256=str(raw["state_dict_sha256"]),
                         dtype=str(raw["dtype"]), steps=int(raw["steps"]), spontaneous_steps=int(raw["spontaneous_steps"]),
                         alpha=float(raw["alpha"]), atol=float(raw["atol"]), rtol=float(raw["rtol"]),
                         min_agreement=float(raw["min_agreement"]), source=str(raw["source"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"reference: malformed scalar fields in {str(path)!r} ({exc})") from None


def check_reference(model: str | os.PathLike, reference: Reference | str | os.PathLike, *,
                    providers: Any = "cpu", **session_kwargs: Any) -> ReferenceCheck:
    """Run the graph `model` on the reference's images and judge its logits by the exporter's criterion.

    Args:
        model: an exported ``.onnx`` graph (any kind the runtime opens).
        reference: a :class:`Reference` or the path of one.
        providers, session_kwargs: passed to :func:`cordsnet.runtime.open_session` (``backend=``, ...).

    Raises:
        ValueError: the graph holds other weights, another protocol or precision than the reference.
    """
    from . import open_session

    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    info = read_info(model)
    mismatch = [f"{name} {have!r} (reference: {want!r})" for name, have, want in (
        ("weights (state-dict sha256)", info.state_dict_sha256, ref.state_dict_sha256),
        ("dtype", info.dtype, ref.dtype), ("steps", info.steps, ref.steps),
        ("spontaneous steps", info.spontaneous_steps, ref.spontaneous_steps)) if have != want]
    if abs(info.alpha - ref.alpha) > 1e-12:
        mismatch.append(f"alpha {info.alpha!r} (reference: {ref.alpha!r})")
    if mismatch:
        raise ValueError(f"reference: {Path(model).name} does not match the reference: {'; '.join(mismatch)}")
    check_decision(model)  # the manifest's decision block, which clients are handed, is the graph's
    session = open_session(model, providers, **session_kwargs)
    got = np.asarray(session.run(ref.images), dtype=np.float64)
    if got.ndim == 3:  # readout "all": the logits after the last step
        got = got[-1]
    want = ref.logits
    if got.shape != want.shape:
        raise ValueError(f"reference: the graph gives logits {got.shape}, the reference {want.shape}")
    diffs = compare(got, want, ref.atol, ref.rtol)
    agreement = top1_agreement(got, want)
    if ref.dtype == "float32":
        passed = diffs["within_tolerance"]
        criterion = f"every logit within atol {ref.atol:g} + rtol {ref.rtol:g} x |reference|"
    else:
        passed = diffs["finite"] and agreement >= ref.min_agreement
        criterion = f"{ref.dtype}: top-1 agreement >= {100 * ref.min_agreement:g}%"
    return ReferenceCheck(passed=passed, criterion=criterion, images=len(want), max_abs=diffs["max_abs"],
                          max_rel=diffs["max_rel"], agreement=agreement)
