"""Verification: run an exported artifact against the PyTorch model on deterministic inputs.

The artifact's own metadata says what to run (graph kind, steps, spontaneous steps, alpha, readout,
recorded areas, dtype), so verification also checks the metadata. Runners: onnxruntime (CPU by
default) for ONNX, ``torch.jit.load`` for TorchScript, ``torch.export.load`` for ExportedProgram.

* unrolled / loop: logits (and recorded rates) against ``model.run``.
* stepwise / stepwise-drive: start from the metadata's ``cordsnet.spontaneous_state`` (as a
  numpy-only application would), feed the state back every step, and compare every area's state at
  every step and the final logits with ``model.run(..., record=all areas)``.
* float32 passes when every compared value satisfies ``|a - b| <= atol + rtol * |b|``; float16 when
  the top-1 class agrees on at least ``min_top1`` of the batch (differences are reported either way).
  The reported relative difference is ``|a - b| / max(|b|, atol)`` (finite where the reference is 0).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..model import CordsNet
from .metadata import artifact_format, decode_spontaneous_state, parse_metadata, read_metadata

__all__ = ["VERIFY_BATCH", "VerificationError", "VerificationReport", "verify_artifact"]

VERIFY_BATCH = 3  # a batch other than the trace batch (2): exercises the dynamic batch dimension
MIN_TOP1_FLOAT16 = 0.99

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class VerificationError(ValueError):
    """The exported graph disagrees with the PyTorch model (carries the report as ``.report``)."""

    def __init__(self, message: str, report: "VerificationReport") -> None:
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

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        crit = (f"atol {self.atol:g}, rtol {self.rtol:g}" if self.dtype == "float32"
                else f"top-1 >= {MIN_TOP1_FLOAT16:.0%}")
        return (f"{verdict}: max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}, "
                f"top-1 agreement {self.top1_agreement:.1%} ({self.batch} images, {self.steps} steps, "
                f"{self.dtype}, {crit}, {self.runner})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- runners
def _onnx_runner(path: Path, providers: str | Sequence[str] | None) -> tuple[Runner, str, list[str], list[str]]:
    import onnxruntime as ort

    from ..runtime.providers import create_session, resolve_providers

    # Same provider rules as the runtime: a name ("cpu", "cuda", ...) or a list; no silent fallback.
    sess = create_session(path, resolve_providers(providers if providers else "cpu"))
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outs, sess.run(outs, {k: feeds[k] for k in ins})))

    return run, f"onnxruntime {ort.__version__} {sess.get_providers()[0]}", ins, outs


def _torch_runner(module: Any, ins: list[str], outs: list[str], name: str) -> tuple[Runner, str, list[str], list[str]]:
    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            res = module(*[torch.from_numpy(np.array(feeds[k], copy=True)) for k in ins])
        res = res if isinstance(res, (tuple, list)) else (res,)
        if len(res) != len(outs):
            raise VerificationError(f"verification: the module returned {len(res)} outputs, the metadata "
                                    f"names {len(outs)} ({outs})", _empty_report())
        return {k: v.detach().cpu().numpy() for k, v in zip(outs, res)}

    return run, name, ins, outs


def _runner(path: Path, meta: Mapping[str, str], providers: str | Sequence[str] | None, fmt: str
            ) -> tuple[Runner, str, list[str], list[str]]:
    if fmt == "onnx":
        return _onnx_runner(path, providers)
    if fmt == "executorch":
        from .executorch import verify_runner

        return verify_runner(path, meta)
    ins, outs = json.loads(meta["cordsnet.inputs"]), json.loads(meta["cordsnet.outputs"])
    if fmt == "torchscript":
        from .torchscript import load

        return _torch_runner(load(path), ins, outs, f"torch.jit {torch.__version__}")
    from .exported_program import load as load_ep

    return _torch_runner(load_ep(path), ins, outs, f"torch.export {torch.__version__}")


def _empty_report() -> VerificationReport:
    return VerificationReport(False, "", "", "", 0, 0, float("nan"), float("nan"), 0.0, 0.0, 0.0, 0.0, "")


# ---------------------------------------------------------------------------------- compare
class _Diffs:
    def __init__(self, atol: float, rtol: float) -> None:
        self.atol, self.rtol = atol, rtol
        self.checks: dict[str, dict[str, Any]] = {}

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            raise VerificationError(f"verification: output {name!r} has shape {got.shape}, expected {want.shape}",
                                    _empty_report())
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
                    encode: str | os.PathLike | Sequence[str | os.PathLike] | None = None, seed: int = 0,
                    min_top1: float = MIN_TOP1_FLOAT16, raise_on_failure: bool = True,
                    format: str | None = None) -> VerificationReport:
    """Run an exported artifact on deterministic images and compare it with ``model.run``.

    Args:
        path: the artifact (.onnx, .pt, .pt2).
        model: the PyTorch model it was exported from.
        providers: "cpu", "cuda", "tensorrt", "auto" or an onnxruntime provider list (default "cpu");
            a GPU provider that cannot run is an error, as in :mod:`cordsnet.runtime`.
        atol, rtol: float32 tolerances.
        batch: images to verify on (a fixed-batch artifact uses its own); default :data:`VERIFY_BATCH`.
        steps: stimulus steps (only a loop graph can change them); default the metadata's.
        encode: the encode graph of a stepwise-drive artifact; default ``<stem>.encode<suffix>``.
        seed: seed of the standard-normal verification images.
        min_top1: float16 pass criterion (fraction of top-1 agreement).
        raise_on_failure: raise :class:`VerificationError` when the check fails (default).
        format: "onnx", "torchscript" or "exported-program"; default: from the suffix.

    Returns:
        A :class:`VerificationReport` (max abs/rel differences, top-1 agreement, per-output checks).
    """
    from .metadata import encode_path

    t0 = time.perf_counter()
    path = Path(path)
    fmt = artifact_format(path) if format is None else format
    meta = read_metadata(path, fmt)
    info = parse_metadata(meta)
    graph, dtype = info["graph"], info["dtype"]
    np_dtype = np.float16 if dtype == "float16" else np.float32
    if info["batch"] != "dynamic":
        batch = info["batch"]
    batch = VERIFY_BATCH if batch is None else int(batch)
    if steps is None or graph != "loop":
        steps = info["steps"]
    cfg = model.config
    if json.loads(meta["cordsnet.config"]) != cfg.to_dict():
        raise ValueError(f"verification: the artifact's config {meta['cordsnet.config']} differs from the "
                         f"model's {cfg.to_json()}")

    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *cfg.input_shape)).astype(np.float32)
    record = list(range(cfg.depth)) if graph in ("stepwise", "stepwise-drive") else list(info["record"])
    param = next(model.parameters())
    with torch.no_grad():
        ref = model.run(torch.from_numpy(images).to(param.device, param.dtype), steps=steps,
                        spontaneous_steps=info["spontaneous_steps"], alpha=info["alpha"], readout=info["readout"],
                        record=record or None)
    ref_logits, ref_rates = (ref if record else (ref, {}))
    ref_logits = ref_logits.float().cpu().numpy()
    ref_rates = {a: r.float().cpu().numpy() for a, r in ref_rates.items()}

    run, runner_name, ins, outs = _runner(path, meta, providers, fmt)
    expected_ins = json.loads(meta.get("cordsnet.inputs", "null") or "null")
    if expected_ins is not None and list(ins) != list(expected_ins):
        raise ValueError(f"verification: the graph's inputs {ins} differ from the metadata's {expected_ins}")
    diffs = _Diffs(atol, rtol)
    feeds_image = images.astype(np_dtype)

    if graph in ("unrolled", "loop"):
        feeds = {"image": feeds_image}
        if graph == "loop":
            feeds["steps"] = np.array(steps, dtype=np.int64)
        got = run(feeds)
        logits = got["logits"]
        diffs.add("logits", logits, ref_logits)
        for a in info["record"]:
            diffs.add(f"rates_{a}", got[f"rates_{a}"], ref_rates[a])
    elif graph in ("stepwise", "stepwise-drive"):
        state = [np.ascontiguousarray(np.broadcast_to(s, (batch, *s.shape[1:]))).astype(np_dtype)
                 for s in decode_spontaneous_state(meta)]
        drive: dict[str, np.ndarray] = {"image": feeds_image}
        if graph == "stepwise-drive":
            enc_paths = ([encode] if isinstance(encode, (str, os.PathLike)) else list(encode)) if encode else \
                [encode_path(path)]
            enc_run, _, _, _ = _runner(Path(enc_paths[0]), read_metadata(enc_paths[0], fmt), providers, fmt)
            drive = enc_run({"image": feeds_image})
        logits = None
        for t in range(steps):
            feeds = dict(drive)
            feeds.update({f"state_{i}": s for i, s in enumerate(state)})
            got = run(feeds)
            state = [got[f"next_state_{i}"] for i in range(cfg.depth)]
            for i in range(cfg.depth):
                diffs.add(f"next_state_{i} (every step)", state[i], ref_rates[i][t])
            logits = got["logits"]
        assert logits is not None
        diffs.add("logits", logits, ref_logits)
    else:
        raise ValueError(f"verification: cannot verify graph {graph!r} (an encode graph is verified with its "
                         "stepwise-drive graph)")

    top1 = _top1(np.asarray(logits, dtype=np.float32), ref_logits)
    checks = list(diffs.checks.values())
    failures = []
    if dtype == "float32":
        failures = [f"{c['name']}: max abs diff {c['max_abs']:.3g}, max rel diff {c['max_rel']:.3g} beyond "
                    f"atol {atol:g} + rtol {rtol:g}" for c in checks if not c["within_tolerance"]]
    else:
        failures = [f"{c['name']}: non-finite values" for c in checks if not c["finite"]]
        if top1 < min_top1:
            failures.append(f"top-1 agreement {top1:.1%} below {min_top1:.0%}")
    report = VerificationReport(
        passed=not failures, graph=graph, format=fmt, dtype=dtype, batch=batch, steps=steps,
        max_abs=max((c["max_abs"] for c in checks), default=0.0),
        max_rel=max((c["max_rel"] for c in checks), default=0.0), top1_agreement=top1, atol=atol, rtol=rtol,
        seconds=time.perf_counter() - t0, runner=runner_name, checks=checks, failures=failures)
    if failures and raise_on_failure:
        raise VerificationError(f"verification failed ({'; '.join(failures)}); {report.summary()}", report)
    return report
