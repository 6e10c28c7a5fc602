"""Verification: run an exported artifact against the PyTorch model on deterministic inputs.

The artifact's own metadata (:class:`cordsnet.artifact.ArtifactInfo`) says what to run (graph kind,
steps, spontaneous steps, alpha, readout, recorded areas, dtype), so verification also checks the
metadata. Each format's backend module opens the runner (``open_runner``): onnxruntime (CPU by
default) for ONNX, ``torch.jit.load`` for TorchScript, ``torch.export.load`` for ExportedProgram.

* Graph kinds run as a whole protocol (``session == "whole"``: unrolled, loop): logits (and recorded
  rates) against ``model.run``.
* Step kinds (``session == "step"``: stepwise, stepwise-drive, multistep): stepped by the session an
  application would use (ONNX: :class:`cordsnet.runtime.StepSession` on onnxruntime; ExecuTorch:
  :class:`cordsnet.runtime.executorch.PteStepSession`; TorchScript / ExportedProgram: their runner under
  the same stepping core), from the metadata's spontaneous state, its companions (the encode graph)
  run on the images; every area's state after every step and the final logits are compared with
  ``model.run(..., record=all areas)`` (:meth:`cordsnet.runtime._core.StepCore.trace`).
* float32 passes when every compared value satisfies ``|a - b| <= atol + rtol * |b|``; a reduced
  precision (float16, bfloat16, int8) when every value is finite and the top-1 class after the full
  protocol agrees with the float32 model on at least ``min_top1`` (99%) of the images. Reduced
  precisions are verified on images of the model's own preset (the held-out digits, or the caller's
  ``images``; see :func:`cordsnet.export.precision.reduced_images`), never on random ones, and step
  graphs report the logit and state error after every step (``report.per_step``). The reported
  relative difference is ``|a - b| / max(|b|, atol)``: large where the reference is near zero, which
  is why it is reported but never a criterion.
* Before running anything: the weights must be those the artifact was exported from (its
  ``cordsnet.state_dict_sha256``), and a manifest beside the artifact must belong to it.
"""

from __future__ import annotations

import contextlib
import logging

import importlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import validate
from ..artifact import DTYPES, FORMATS, MAX_STEPS, artifact_format, check_manifest, companion_path, read_info
from ..model import CordsNet
from ..runtime.reference import ATOL, MIN_AGREEMENT, RTOL, check_decision, compare, top1_agreement

logger = logging.getLogger("cordsnet.export")

__all__ = ["MIN_TOP1_FLOAT16", "VERIFY_BATCH", "VerificationError", "VerificationReport", "verify_artifact"]

VERIFY_BATCH = 3  # a batch other than the trace batch (2): exercises the dynamic batch dimension
MIN_TOP1_FLOAT16 = MIN_AGREEMENT  # the criterion's one definition: cordsnet.runtime.reference

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
    images: str = "standard-normal random images"  # what the graph was verified on
    per_step: list[dict[str, Any]] = field(default_factory=list)  # step kinds: errors after every (call's) step
    predictions: list[int] = field(default_factory=list, repr=False)  # the artifact's top-1 class per image
    reference: list[int] = field(default_factory=list, repr=False)  # the reference model's top-1 class per image
    reference_model: str = "the float32 model"  # or the quantisation-aware model (learned activation ranges)
    float32_agreement: float | None = None  # with a quantisation-aware reference: agreement with its float32 weights

    def criterion(self) -> str:
        """What passing means for this dtype, in words."""
        if self.dtype == "float32":
            return f"every value within atol {self.atol:g} + rtol {self.rtol:g} x |reference|"
        return (f"every value finite and top-1 agreement with {self.reference_model} >= {self.min_top1:.0%} after the "
                f"full protocol ({self.dtype} rounds every value, so elementwise tolerances would fail where the "
                "answer agrees; the errors are reported per step, not a criterion)")

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        extra = (f", {self.float32_agreement:.1%} with its float32 weights" if self.float32_agreement is not None
                 else "")
        return (f"{verdict} ({self.criterion()}): max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}, "
                f"top-1 agreement {self.top1_agreement:.1%}{extra} ({self.batch} images: {self.images}; {self.steps} "
                f"steps, {self.dtype}, {self.runner})")

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
        if np.shape(got) != np.shape(want):
            raise VerificationError(f"verification: output {name!r} has shape {np.shape(got)}, expected "
                                    f"{np.shape(want)}")
        d = compare(got, want, self.atol, self.rtol)
        c = self.checks.setdefault(name, {"name": name, "max_abs": 0.0, "max_rel": 0.0, "within_tolerance": True,
                                          "finite": True})
        c["max_abs"] = max(c["max_abs"], d["max_abs"])
        c["max_rel"] = max(c["max_rel"], d["max_rel"])
        c["within_tolerance"] = c["within_tolerance"] and d["within_tolerance"]
        c["finite"] = c["finite"] and d["finite"]



# ------------------------------------------------------------------------------------ verify
def verify_artifact(path: str | os.PathLike, model: CordsNet, *, providers: str | Sequence[str] | None = None,
                    atol: float = ATOL, rtol: float = RTOL, batch: int | None = None, steps: int | None = None,
                    companions: Mapping[str, str | os.PathLike] | None = None,
                    encode: str | os.PathLike | Sequence[str | os.PathLike] | None = None, seed: int = 0,
                    min_top1: float = MIN_TOP1_FLOAT16, raise_on_failure: bool = True,
                    format: str | None = None, check_weights: bool = True, images: Any | None = None,
                    images_source: str | None = None, activation_ranges: Any | None = None) -> VerificationReport:
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
        images: (N, C, S, S) float32 normalised images to verify on instead of random ones. A reduced
            precision (float16, bfloat16, int8) needs images of the model's preset: by default the
            preset's local held-out images (digits), otherwise these (N >= 100), else an error.
        images_source: a description of `images` for the report.
        activation_ranges: an int8 artifact exported from the ranges of quantisation-aware training
            (``calibration="checkpoint"``) is compared with the model as that training ran it
            (:class:`cordsnet.quantization.FakeQuant` with these ranges, float spontaneous state), the
            model it reproduces, instead of with its float32 version.

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
    manifest = check_manifest(path)
    if manifest is not None:  # the decision block's baseline is the graph's (recomputed)
        check_decision(path, manifest)
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
    from .precision import reduced_images

    chunk = info.batch
    given = reduced_images(model, info.dtype, images, "images", "test")
    if given is not None:
        images, source = given
        source = images_source or source
        batch = len(images)
    else:
        batch = info.batch if info.batch is not None else validate.optional_integer("batch", batch, VERIFY_BATCH,
                                                                                    min=1, max=4096)
        images = np.random.default_rng(seed).standard_normal((batch, *model.config.input_shape)).astype(np.float32)
        source = f"standard-normal random images (seed {seed})"
    chunk = chunk or batch
    steps = validate.optional_integer("steps", steps, info.steps, min=1, max=MAX_STEPS)
    if not kind.steps_input:  # fixed in the graph (unrolled) or the verified protocol (stepwise): the metadata's
        steps = info.steps
    cfg = model.config
    np_dtype = DTYPES[info.dtype]
    step_kind = kind.session == "step"
    record = list(range(cfg.depth)) if step_kind else list(info.record)
    readout = "all" if step_kind else info.readout
    if activation_ranges is not None and info.dtype != "int8":
        raise ValueError(f"activation_ranges: only for an int8 artifact, got a {info.dtype} one")
    param = next(model.parameters())
    with torch.no_grad(), _reference(model, info, activation_ranges):
        ref = model.run(torch.from_numpy(images).to(param.device, param.dtype), steps=steps,
                        spontaneous_steps=info.spontaneous_steps, alpha=info.alpha, readout=readout,
                        record=record or None)
    ref_logits, ref_rates = (ref if record else (ref, {}))
    ref_logits = ref_logits.float().cpu().numpy()
    ref_rates = {a: r.float().cpu().numpy() for a, r in ref_rates.items()}
    ref_steps = ref_logits if step_kind else None
    if step_kind:
        ref_logits = ref_logits[-1]

    backend = importlib.import_module(FORMATS[fmt].backend)
    diffs = _Diffs(atol, rtol)
    per_step: list[dict[str, Any]] = []

    if kind.session == "whole":
        run, runner_name, ins, outs = backend.open_runner(path, info, providers)
        want_ins, want_outs = info.io_names()
        if list(ins) != want_ins or list(outs) != want_outs:
            raise ValueError(f"model: {str(path)!r}: the graph's inputs {list(ins)} / outputs {list(outs)} differ "
                             f"from those of a {info.graph!r} graph ({want_ins} / {want_outs})")
        got = _in_chunks(images, chunk, lambda x: _run_whole(run, kind, x.astype(np_dtype), steps), info.batch_axis)
        logits = got["logits"]
        diffs.add("logits", logits, ref_logits)
        for a in info.record:
            diffs.add(f"rates_{a}", got[f"rates_{a}"], ref_rates[a])
        if fmt == "onnx" and info.dtype != "float32" and info.kind.fixed_steps:
            per_step = _unrolled_per_step(path, model, info, images, steps, chunk, np_dtype, providers,
                                          activation_ranges)
    else:
        given_c = dict(companions or {})
        if encode is not None:
            given_c["encode"] = encode if isinstance(encode, (str, os.PathLike)) else list(encode)[0]
        cpaths = {}
        for role in kind.companions:  # each companion maps the image to more inputs of the step graph
            cpath = Path(given_c.get(role, companion_path(path, role)))
            cinfo = read_info(cpath, fmt)
            if cinfo.graph != role or cinfo.config != info.config or cinfo.spontaneous_steps != info.spontaneous_steps \
                    or cinfo.alpha != info.alpha or cinfo.dtype != info.dtype:
                raise ValueError(f"model: {str(cpath)!r} is not the {role} graph of {str(path)!r} (its metadata differs)")
            cpaths[role] = cpath
        # The session applications step the graph with (the runtime's stepping core), not a loop of our own.
        session, runner_name = STEP_SESSIONS.get(fmt, _function_session)(path, fmt, info, providers, cpaths,
                                                                               np_dtype)
        got = _trace(session, images.astype(np_dtype), steps)  # stacked per call: (calls, B, ...)
        every = info.steps_per_call  # ArtifactInfo guarantees steps is a multiple of it
        for k, t in enumerate(range(every, steps + 1, every)):
            step_logits = got["logits"][k]
            row = {"step": t, "logits_max_abs": float(np.max(np.abs(step_logits.astype(np.float64)
                                                                     - ref_steps[t - 1]))),
                   "top1_agreement": top1_agreement(step_logits.astype(np.float32), ref_steps[t - 1])}
            for i in range(cfg.depth):
                diffs.add(f"next_state_{i} (every step)", got[f"next_state_{i}"][k], ref_rates[i][t - 1])
                row[f"state_{i}_max_abs"] = float(np.max(np.abs(got[f"next_state_{i}"][k].astype(np.float64)
                                                                - ref_rates[i][t - 1])))
            per_step.append(row)
        logits = got["logits"][-1]
        diffs.add("logits", logits, ref_logits)

    final = np.asarray(logits, dtype=np.float32)
    final = final[-1] if final.ndim == 3 else final  # readout "all": the last step's
    top1 = top1_agreement(np.asarray(logits, dtype=np.float32), ref_logits)
    checks = list(diffs.checks.values())
    failures = [f"{c['name']}: non-finite values" for c in checks if not c["finite"]]
    if info.dtype == "float32":
        failures += [f"{c['name']}: max abs diff {c['max_abs']:.3g}, max rel diff {c['max_rel']:.3g} beyond "
                     f"atol {atol:g} + rtol {rtol:g}" for c in checks if c["finite"] and not c["within_tolerance"]]
    elif top1 < min_top1:
        failures.append(f"top-1 agreement {top1:.1%} below {min_top1:.0%}")
    float32_top1 = None
    if activation_ranges is not None:  # the trained model is the reference; how far is it from its float weights?
        with torch.no_grad():
            plain = model.run(torch.from_numpy(images).to(param.device, param.dtype), steps=steps,
                              spontaneous_steps=info.spontaneous_steps, alpha=info.alpha)
        float32_top1 = top1_agreement(final, plain.float().cpu().numpy())
        if float32_top1 < min_top1:
            logger.warning("the int8 graph agrees with its float32 weights on %.1f%% of the images (it matches the "
                           "quantisation-aware model it was trained as: %.1f%%); the float32 export of these "
                           "weights answers differently", 100 * float32_top1, 100 * top1)
    report = VerificationReport(
        passed=not failures, graph=info.graph, format=fmt, dtype=info.dtype, batch=batch, steps=steps,
        max_abs=max((c["max_abs"] for c in checks), default=0.0),
        max_rel=max((c["max_rel"] for c in checks), default=0.0), top1_agreement=top1, atol=atol, rtol=rtol,
        seconds=time.perf_counter() - t0, runner=runner_name, checks=checks, failures=failures, min_top1=min_top1,
        images=source, per_step=per_step,
        predictions=np.argmax(final, -1).tolist(),
        reference=np.argmax(ref_logits[-1] if ref_logits.ndim == 3 else ref_logits, -1).tolist(),
        reference_model="the float32 model" if activation_ranges is None else
        "the quantisation-aware model (its learned activation ranges)", float32_agreement=float32_top1)
    if failures and raise_on_failure:
        raise VerificationError(f"verification failed ({'; '.join(failures)}); {report.summary()}", report)
    return report


def _in_chunks(images: np.ndarray, chunk: int, fn: Callable[[np.ndarray], dict[str, np.ndarray]],
               batch_axis: Callable[[str], int]) -> dict[str, np.ndarray]:
    """``fn`` on batches of `chunk` images (the runtime's rule: the last padded with its last image), outputs
    concatenated along each output's batch axis (``batch_axis(name)``: 1 for time-major (T, B, ...) outputs)."""
    from ..runtime._batch import join_chunks, pad_chunks

    pieces = pad_chunks(images, chunk)
    return join_chunks([fn(x) for x, _ in pieces], [n for _, n in pieces], batch_axis)


def _run_whole(run: Runner, kind: Any, images: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    feeds = {"image": images}
    if kind.steps_input:
        feeds["steps"] = np.array(steps, dtype=np.int64)
    return run(feeds)


def _trace(session: Any, images: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    """Every call's outputs of a step session on `images` (:meth:`StepCore.trace`), stacked (calls, B, ...)."""
    calls: dict[str, dict[int, list[np.ndarray]]] = {}
    for _, k, out in session.trace(images, steps):
        for name, value in out.items():
            calls.setdefault(name, {}).setdefault(k, []).append(value)
    return {name: np.stack([np.concatenate(parts[k]) for k in sorted(parts)]) for name, parts in calls.items()}


def _onnx_session(path: Path, fmt: str, info: Any, providers: Any, companions: Mapping[str, Path], dtype: np.dtype
                  ) -> tuple[Any, str]:
    import onnxruntime as ort

    from ..runtime import StepSession

    session = StepSession(path, providers if providers else "cpu", companions=companions)
    return session, f"onnxruntime {ort.__version__} {session.providers[0]} (StepSession)"


def _executorch_session(path: Path, fmt: str, info: Any, providers: Any, companions: Mapping[str, Path], dtype: np.dtype
                        ) -> tuple[Any, str]:
    from ..runtime.executorch import PteStepSession
    from .executorch import runner_name

    return PteStepSession(path, encode=companions.get("encode")), f"{runner_name()} (PteStepSession)"


def _function_session(path: Path, fmt: str, info: Any, providers: Any, companions: Mapping[str, Path], dtype: np.dtype
                      ) -> tuple[Any, str]:
    """A format without a runtime session (TorchScript, ExportedProgram): its runner under the stepping core."""
    from ..runtime._core import FunctionStepSession

    backend = importlib.import_module(FORMATS[fmt].backend)
    run, name, ins, outs = backend.open_runner(path, info, providers)
    want_ins, want_outs = info.io_names()
    if list(ins) != want_ins or list(outs) != want_outs:
        raise ValueError(f"model: {str(path)!r}: the graph's inputs {list(ins)} / outputs {list(outs)} differ from "
                         f"those of a {info.graph!r} graph ({want_ins} / {want_outs})")
    encode = None
    if "encode" in companions:
        encode = backend.open_runner(companions["encode"], read_info(companions["encode"], fmt),
                                     providers)[0]
    return FunctionStepSession(path, info, run, encode, dtype=dtype), name


# The runtime session that steps each format's step graphs (others: FunctionStepSession on the format's runner).
STEP_SESSIONS: dict[str, Callable[..., tuple[Any, str]]] = {"onnx": _onnx_session, "executorch": _executorch_session}


def _reference(model: CordsNet, info: Any, ranges: Any | None) -> Any:
    """While active (under no_grad), ``model.run`` computes the reference: float32, or fake-quantised."""
    if ranges is None:
        return contextlib.nullcontext()
    from ..quantization import int8_dynamics

    return int8_dynamics(model, ranges, spontaneous_steps=info.spontaneous_steps, alpha=info.alpha)


def _unrolled_per_step(path: Path, model: CordsNet, info: Any, images: np.ndarray, steps: int, chunk: int,
                       np_dtype: np.dtype, providers: Any, ranges: Any | None = None) -> list[dict[str, Any]]:
    """The state error after every step of an unrolled ONNX graph (reduced precisions).

    A copy of the graph with each step's state tensors (``t<t>/next_state_<i>``, those the exporter
    kept) as extra outputs is run on the same images and compared with the model's trajectory.
    """
    import tempfile

    import onnx

    from .onnx import open_runner

    proto = onnx.load(str(path))
    produced = {o for n in proto.graph.node for o in n.output}
    wanted = [(t, i) for t in range(steps) for i in range(model.depth) if f"t{t}/next_state_{i}" in produced]
    for t, i in wanted:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(f"t{t}/next_state_{i}"))
    with tempfile.TemporaryDirectory(prefix="cordsnet-probe-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(proto, str(probe))
        run, _, _, _ = open_runner(probe, info, providers)
        got = _in_chunks(images, chunk, lambda x: run({"image": x.astype(np_dtype)}), info.batch_axis)
    param = next(model.parameters())
    with torch.no_grad(), _reference(model, info, ranges):
        _, rates = model.run(torch.from_numpy(images).to(param.device, param.dtype), steps=steps,
                             spontaneous_steps=info.spontaneous_steps, alpha=info.alpha,
                             record=sorted({i for _, i in wanted}) or None)
    rows = []
    have = set(wanted)
    for t in range(steps):
        row: dict[str, Any] = {"step": t + 1}
        for i in range(model.depth):
            if (t, i) in have:
                want = rates[i][t].float().cpu().numpy().astype(np.float64)
                row[f"state_{i}_max_abs"] = float(np.max(np.abs(got[f"t{t}/next_state_{i}"].astype(np.float64) - want)))
        rows.append(row)
    return rows
