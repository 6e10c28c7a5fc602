"""Verification: run an exported artifact against the PyTorch model on deterministic inputs.

The artifact's own metadata (:class:`cordsnet.artifact.ArtifactInfo`) says what to run (graph kind,
steps, spontaneous steps, alpha, readout, recorded areas, dtype), so verification also checks the
metadata. Each format's backend module opens the runner (``open_runner``): onnxruntime (CPU by
default) for ONNX, ``torch.jit.load`` for TorchScript, ``torch.export.load`` for ExportedProgram.

* Graph kinds run as a whole protocol (``session == "whole"``: unrolled, loop): logits (and recorded
  rates) against ``model.run``.
* Step kinds (``session == "step"``: stepwise, stepwise-drive): start from the metadata's spontaneous
  state (as a numpy-only application would), run the companions (the encode graph) on the images,
  feed the state back every step, and compare every area's state at every step and the final logits
  with ``model.run(..., record=all areas)``.
* float32 passes when every compared value satisfies ``|a - b| <= atol + rtol * |b|``; float16 when
  every value is finite and the top-1 class agrees on at least ``min_top1`` of the batch (float16
  keeps ~3 significant digits, so elementwise tolerances would fail where the answer agrees). The
  reported relative difference is ``|a - b| / max(|b|, atol)``: large where the reference is near
  zero, which is why it is reported but never a criterion.
* Before running anything: the weights must be those the artifact was exported from (its
  ``cordsnet.state_dict_sha256``), and a manifest beside the artifact must belong to it.
"""

from __future__ import annotations

import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import validate
from ..artifact import FORMATS, MAX_STEPS, artifact_format, check_manifest, companion_path, read_info
from ..model import CordsNet

__all__ = ["MIN_TOP1_FLOAT16", "VERIFY_BATCH", "VerificationError", "VerificationReport", "verify_artifact"]

VERIFY_BATCH = 3  # a batch other than the trace batch (2): exercises the dynamic batch dimension
MIN_TOP1_FLOAT16 = 0.99

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class VerificationError(ValueError):
    """The exported graph disagrees with the PyTorch model (carries the report as ``.report``)."""

    def __init__(self, message: str, report: "VerificationReport | None" = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class VerificationReport:
    """Differences between an artifact and the PyTorch model."""

    passed: bool
    graph: str
    format: str
    dtype: str
    batch: int
    steps: int
    max_abs: float
    max_rel: float
    top1_agreement: float
    atol: float
    rtol: float
    seconds: float
    runner: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    min_top1: float = MIN_TOP1_FLOAT16

    def criterion(self) -> str:
        """What passing means for this dtype, in words."""
        if self.dtype == "float32":
            return f"every value within atol {self.atol:g} + rtol {self.rtol:g} x |reference|"
        return (f"every value finite and top-1 agreement >= {self.min_top1:.0%} (float16 keeps ~3 significant "
                "digits; the relative difference is large where reference values are near zero and is not a "
                "criterion)")

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"{verdict} ({self.criterion()}): max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}, "
                f"top-1 agreement {self.top1_agreement:.1%} ({self.batch} images, {self.steps} steps, {self.dtype}, "
                f"{self.runner})")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["criterion"] = self.criterion()
        return out


# ---------------------------------------------------------------------------------- compare
class _Diffs:
    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol
        self.checks: dict[str, dict[str, Any]] = {}

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            raise VerificationError(f"verification: output {name!r} has shape {got.shape}, expected {want.shape}")
        diff = np.abs(got - want)
        finite = bool(np.isfinite(got).all())
        max_abs = float(diff.max()) if diff.size else 0.0
        # Relative to max(|reference|, atol): meaningful where the reference is near zero too.
        max_rel = float((diff / np.maximum(np.abs(want), max(self.atol, 1e-12))).max()) if diff.size else 0.0
        ok = finite and bool(np.all(diff <= self.atol + self.rtol * np.abs(want)))
        c = self.checks.setdefault(name, {"name": name, "max_abs": 0.0, "max_rel": 0.0, "within_tolerance": True,
                                          "finite": True})
        c["max_abs"] = max(c["max_abs"], max_abs if finite else float("inf"))
        c["max_rel"] = max(c["max_rel"], max_rel if finite else float("inf"))
        c["within_tolerance"] = c["within_tolerance"] and ok
        c["finite"] = c["finite"] and finite


def _top1(got: np.ndarray, want: np.ndarray) -> float:
    if got.ndim == 3:  # readout "all": the last step decides
        got, want = got[-1], want[-1]
    return float(np.mean(np.argmax(got, axis=-1) == np.argmax(want, axis=-1)))


# ------------------------------------------------------------------------------------ verify
def verify_artifact(path: str | os.PathLike, model: CordsNet, *, providers: str | Sequence[str] | None = None,
                    atol: float = 1e-4, rtol: float = 1e-3, batch: int | None = None, steps: int | None = None,
                    companions: Mapping[str, str | os.PathLike] | None = None,
                    encode: str | os.PathLike | Sequence[str | os.PathLike] | None = None, seed: int = 0,
                    min_top1: float = MIN_TOP1_FLOAT16, raise_on_failure: bool = True,
                    format: str | None = None, check_weights: bool = True) -> VerificationReport:
    """Run an exported artifact on deterministic images and compare it with ``model.run``.

    Args:
        path: the artifact (.onnx, .pt, .pt2).
        model: the PyTorch model it was exported from.
        providers: "cpu", "cuda", "tensorrt", "auto" or an onnxruntime provider list (default "cpu");
            a GPU provider that cannot run is an error, as in :mod:`cordsnet.runtime`.
        atol, rtol: float32 tolerances (>= 0).
        batch: images to verify on (a fixed-batch artifact uses its own); default :data:`VERIFY_BATCH`.
        steps: stimulus steps (only a graph with a steps input can change them); default the metadata's.
        companions: companion graphs by role (e.g. ``{"encode": path}``); default ``<stem>.<role><suffix>``.
        encode: the encode graph of a stepwise-drive artifact (same as ``companions={"encode": ...}``).
        seed: seed of the standard-normal verification images.
        min_top1: float16 pass criterion (fraction of top-1 agreement, in (0, 1]).
        raise_on_failure: raise :class:`VerificationError` when the check fails (default).
        format: a key of :data:`cordsnet.artifact.FORMATS`; default: from the suffix.
        check_weights: refuse a model whose state-dict sha256 differs from the artifact's
            ``cordsnet.state_dict_sha256`` (default True; the comparison would only fail later, less clearly).

    Returns:
        A :class:`VerificationReport` (max abs/rel differences, top-1 agreement, per-output checks).

    Raises:
        ValueError: bad arguments, metadata that contradicts the graph or the model, other weights,
            or a manifest that belongs to another artifact.
        VerificationError: the artifact disagrees with the model (with ``raise_on_failure``).
    """
    t0 = time.perf_counter()
    atol = validate.number("atol", atol, low=0.0)
    rtol = validate.number("rtol", rtol, low=0.0)
    min_top1 = validate.fraction("min_top1", min_top1)
    path = Path(path)
    fmt = artifact_format(path) if format is None else validate.choice("format", format, list(FORMATS))
    info = read_info(path, fmt)  # parsed and checked against the graph's declared I/O (ONNX)
    check_manifest(path)
    kind = info.kind
    if kind.session is None:
        raise ValueError(f"model: {str(path)!r} is a {info.graph!r} graph, verified with the graph it belongs to")
    if info.config != model.config:
        raise ValueError(f"model: the artifact's config {info.config.to_json()} differs from the model's "
                         f"{model.config.to_json()}")
    if check_weights and info.state_dict_sha256:
        from ..checkpoint import state_dict_sha256

        if info.state_dict_sha256 != state_dict_sha256(model.state_dict()):
            raise ValueError(f"model: {path.name} was exported from other weights than the model given (state-dict "
                             f"sha256 {info.state_dict_sha256[:12]}... in its metadata); pass the model it came from")
    batch = info.batch if info.batch is not None else validate.optional_integer("batch", batch, VERIFY_BATCH,
                                                                                min=1, max=4096)
    steps = validate.optional_integer("steps", steps, info.steps, min=1, max=MAX_STEPS)
    if not kind.steps_input:  # fixed in the graph (unrolled) or the verified protocol (stepwise): the metadata's
        steps = info.steps
    cfg = model.config
    np_dtype = np.dtype(info.dtype)

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *cfg.input_shape)).astype(np.float32)
    record = list(range(cfg.depth)) if kind.session == "step" else list(info.record)
    param = next(model.parameters())
    with torch.no_grad():
        ref = model.run(torch.from_numpy(images).to(param.device, param.dtype), steps=steps,
                        spontaneous_steps=info.spontaneous_steps, alpha=info.alpha, readout=info.readout,
                        record=record or None)
    ref_logits, ref_rates = (ref if record else (ref, {}))
    ref_logits = ref_logits.float().cpu().numpy()
    ref_rates = {a: r.float().cpu().numpy() for a, r in ref_rates.items()}

    backend = importlib.import_module(FORMATS[fmt].backend)
    run, runner_name, ins, outs = backend.open_runner(path, info, providers)
    want_ins, want_outs = info.io_names()
    if list(ins) != want_ins or list(outs) != want_outs:
        raise ValueError(f"model: {str(path)!r}: the graph's inputs {list(ins)} / outputs {list(outs)} differ from "
                         f"those of a {info.graph!r} graph ({want_ins} / {want_outs})")
    diffs = _Diffs(atol, rtol)
    feeds_image = images.astype(np_dtype)

    if kind.session == "whole":
        feeds = {"image": feeds_image}
        if kind.steps_input:
            feeds["steps"] = np.array(steps, dtype=np.int64)
        got = run(feeds)
        logits = got["logits"]
        diffs.add("logits", logits, ref_logits)
        for a in info.record:
            diffs.add(f"rates_{a}", got[f"rates_{a}"], ref_rates[a])
    else:
        state = [np.ascontiguousarray(np.broadcast_to(s, (batch, *s.shape[1:]))).astype(np_dtype)
                 for s in info.spontaneous]
        drive: dict[str, np.ndarray] = {"image": feeds_image}
        given = dict(companions or {})
        if encode is not None:
            given["encode"] = encode if isinstance(encode, (str, os.PathLike)) else list(encode)[0]
        for role in kind.companions:  # each companion maps the image to more inputs of the step graph
            cpath = Path(given.get(role, companion_path(path, role)))
            cinfo = read_info(cpath, fmt)
            if cinfo.graph != role or cinfo.config != info.config or cinfo.spontaneous_steps != info.spontaneous_steps \
                    or cinfo.alpha != info.alpha or cinfo.dtype != info.dtype:
                raise ValueError(f"model: {str(cpath)!r} is not the {role} graph of {str(path)!r} (its metadata differs)")
            crun, _, _, _ = backend.open_runner(cpath, cinfo, providers)
            drive.update(crun({"image": feeds_image}))
        logits = None
        for t in range(steps):
            feeds = {n: drive[n] for n in ins if not n.startswith("state_")}
            feeds.update({f"state_{i}": s for i, s in enumerate(state)})
            got = run(feeds)
            state = [got[f"next_state_{i}"] for i in range(cfg.depth)]
            for i in range(cfg.depth):
                diffs.add(f"next_state_{i} (every step)", state[i], ref_rates[i][t])
            logits = got["logits"]
        assert logits is not None
        diffs.add("logits", logits, ref_logits)

    top1 = _top1(np.asarray(logits, dtype=np.float32), ref_logits)
    checks = list(diffs.checks.values())
    failures = [f"{c['name']}: non-finite values" for c in checks if not c["finite"]]
    if info.dtype == "float32":
        failures += [f"{c['name']}: max abs diff {c['max_abs']:.3g}, max rel diff {c['max_rel']:.3g} beyond "
                     f"atol {atol:g} + rtol {rtol:g}" for c in checks if c["finite"] and not c["within_tolerance"]]
    elif top1 < min_top1:
        failures.append(f"top-1 agreement {top1:.1%} below {min_top1:.0%}")
    report = VerificationReport(
        passed=not failures, graph=info.graph, format=fmt, dtype=info.dtype, batch=batch, steps=steps,
        max_abs=max((c["max_abs"] for c in checks), default=0.0),
        max_rel=max((c["max_rel"] for c in checks), default=0.0), top1_agreement=top1, atol=atol, rtol=rtol,
        seconds=time.perf_counter() - t0, runner=runner_name, checks=checks, failures=failures, min_top1=min_top1)
    if failures and raise_on_failure:
        raise VerificationError(f"verification failed ({'; '.join(failures)}); {report.summary()}", report)
    return report
