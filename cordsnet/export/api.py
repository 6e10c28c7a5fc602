"""``export``: turn a CordsNet into a verified ONNX / TorchScript / ExportedProgram artifact with its manifest.

Flow: validate the options (:func:`cordsnet.export.spec.make_spec`) -> build the metadata
(:class:`cordsnet.artifact.ArtifactInfo`) -> write every file (the graph, its companions) to a
temporary path -> verify the temporary files against the PyTorch model -> compute the decision
rule's no-image baseline by running the written graph through the runtime (the session users run),
for the manifest's ``"decision"`` block -> write the client manifest
with the sha256 of those exact bytes -> rename everything into place, the manifest last. A failure at
any point (exporter error, checker error, verification failure, interrupt) leaves no new file and
never touches a file already at the destination.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__, validate
from .._io import atomic_path, file_sha256, output_lock, temporary_name
from ..artifact import (
    DEFAULT_GRAPH,
    DTYPES,
    FORMATS,
    GRAPH_KINDS,
    GRAPHS,
    MANIFEST_SUFFIX,
    ArtifactInfo,
    companion_path,
    encode_path,
    io_names,
    manifest_path,
)
from ..decision import DEFAULT_MARGIN, DEFAULT_THRESHOLD, DecisionRule
from ..model import CordsNet
from ..runtime.reference import ATOL, RTOL
from .spec import DEFAULT_EXPORTER, EXPORTERS, ExportSpec, make_spec

__all__ = [
    "DEFAULT_EXPORTER",
    "DTYPES",
    "EXPORTERS",
    "ExportReport",
    "ExportSpec",
    "FORMATS",
    "GRAPHS",
    "build_metadata",
    "encode_path",
    "export",
    "io_names",
]

logger = logging.getLogger("cordsnet.export")

ProgressFn = Callable[[str], None]

# Suffixes an export never writes to: they name the inputs of other commands (checkpoints, configs).
REFUSED_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".ckpt", ".json", ".npy", ".npz")


@dataclass
class ExportReport:
    """What an export wrote and how it verified."""

    path: Path
    format: str
    graph: str
    exporter: str
    files: list[Path]  # the artifact, its companions and its manifest
    export_seconds: float  # building, checking and writing the graph(s)
    size_bytes: int  # the artifact and its companions (not the manifest)
    spontaneous_seconds: float = 0.0  # computing the spontaneous end state baked into the graph
    verify_seconds: float = 0.0  # running the written graph against the PyTorch model
    verification: Any | None = None  # a VerificationReport, None with verify=False
    manifest: Path | None = None  # the client manifest written beside the artifact
    details: dict[str, Any] = field(default_factory=dict)  # the backend's own report (executorch: delegation)
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def total_seconds(self) -> float:
        """Spontaneous state + export + verification."""
        return self.spontaneous_seconds + self.export_seconds + self.verify_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "graph": self.graph,
            "exporter": self.exporter,
            "files": [str(f) for f in self.files],
            "manifest": str(self.manifest) if self.manifest is not None else None,
            "export_seconds": round(self.export_seconds, 3),
            "spontaneous_seconds": round(self.spontaneous_seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
            "size_bytes": self.size_bytes,
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "details": self.details,
        }


def build_metadata(model: CordsNet, spec: ExportSpec, *, checkpoint_sha256: str | None,
                   exporter: str) -> dict[str, str]:
    """The ``cordsnet.*`` string map of the export's graph (see docs/export.md and :mod:`cordsnet.artifact`)."""
    from ..checkpoint import state_dict_sha256

    with torch.no_grad():
        spont = tuple(r.detach().to("cpu", spec.torch_dtype).numpy() for r in
                      model.cached_spontaneous_state(spec.spontaneous_steps, spec.alpha))
    preset = model.config.preset
    info = ArtifactInfo(graph=spec.graph, config=model.config, steps=spec.steps,
                        spontaneous_steps=spec.spontaneous_steps, alpha=float(spec.alpha), readout=spec.readout,
                        record=spec.record, dtype=spec.dtype, batch=spec.batch, steps_per_call=spec.steps_per_call,
                        preset=preset.to_dict() if preset is not None else None, spontaneous=spont,
                        version=__version__, exporter=exporter, checkpoint_sha256=checkpoint_sha256 or "",
                        state_dict_sha256=state_dict_sha256(model.state_dict()))
    return info.to_metadata()


# ----------------------------------------------------------------------------------------- export
def export(model: CordsNet, output: str | os.PathLike, *, format: str = "onnx", graph: str = DEFAULT_GRAPH,
           steps: int | None = None, spontaneous_steps: int | None = None, alpha: float | None = None,
           batch: int | None = None, readout: str = "last", record: Sequence[int] | None = None,
           opset: int | None = None, dtype: str = "float32", verify: bool = True, atol: float = ATOL,
           rtol: float = RTOL, checkpoint_sha256: str | None = None, exporter: str | None = None,
           progress: ProgressFn | None = None, steps_per_call: int | None = None,
           verify_images: Any | None = None, calibration_images: Any | None = None,
           calibration: str = "minmax", quantize_recurrent: bool = True,
           activation_ranges: Any | None = None) -> ExportReport:
    """Export `model` as a graph another application runs without the Python model.

    Beside the artifact ``<file>`` it writes the client manifest ``<file>.cordsnet.json`` (schema in
    docs/export.md) and, for a stepwise-drive graph, the encode graph ``<stem>.encode<suffix>``.

    Args:
        model: the model (any device; exported from a CPU float32 copy of its weights).
        output: destination file (.onnx / .pt / .pt2 by convention; never a checkpoint's suffix).
        format: a key of :data:`cordsnet.artifact.FORMATS`: "onnx", "torchscript" or "exported-program".
        graph: a key of :data:`cordsnet.artifact.GRAPHS`: "unrolled", "loop", "stepwise" or "stepwise-drive".
        steps: stimulus steps (unrolled: fixed in the graph; loop: the default recorded in the
            metadata; stepwise: the steps verified); default ``config.steps``; at most
            :data:`cordsnet.artifact.MAX_STEPS`.
        spontaneous_steps: blank steps whose end state is baked in (0 = zero state); default from config.
        alpha: dt / tau baked into the graph; default ``config.alpha``.
        batch: fixed batch size; None (default) for a dynamic batch dimension.
        readout: "last" -> logits (B, K); "all" -> logits (steps, B, K). Not for stepwise graphs.
        record: areas whose rates (steps, B, c, H, W) become outputs ``rates_<area>``.
        opset: ONNX opset (default :data:`cordsnet.artifact.DEFAULT_OPSET`).
        dtype: a key of :data:`cordsnet.artifact.DTYPES`: "float32", "float16" (weights, activations
            and I/O), "bfloat16" (ONNX: bfloat16 weights, float32 I/O) or "int8" (ONNX: static QDQ
            quantisation, float32 I/O). A reduced precision is verified by top-1 agreement with the
            float32 model (>= 99%) over the full protocol on images of the model's preset (see
            `verify_images`); docs/precision.md.
        verify: run the written graph against the PyTorch model before keeping it (default True).
        atol, rtol: float32 tolerances of the verification (>= 0).
        checkpoint_sha256: sha256 of the source checkpoint file ("" when not given); the hash of
            the state dict is always stored too, as ``cordsnet.state_dict_sha256``.
        exporter: ONNX exporter, "legacy" (TorchScript-based, default: the faster graph) or "dynamo".
        progress: called with a short phase description as the export proceeds.
        steps_per_call: steps one call of a "multistep" graph advances (a divisor of `steps`); only
            for that graph.
        verify_images: (N, C, S, S) float32 normalised images (N >= 100) a reduced-precision export
            is verified on. Default: the held-out images of the model's preset where they are local
            (digits: the 360 held-out digits); other presets must pass them (or verify=False).
        calibration_images: (N, C, S, S) float32 normalised images whose trajectories calibrate an
            int8 export. Default: 64 training digits for the digits preset; other presets must pass them.
        calibration: int8 calibration method: "minmax" (default), "percentile" or "entropy" (onnxruntime's
            calibrators on the trajectories of `calibration_images`), or "checkpoint": the activation
            ranges learned by the quantisation-aware training stage (`activation_ranges`), no calibration.
        quantize_recurrent: int8: quantise the recurrent convolutions (state -> state) too (default:
            every convolution runs in int8). False keeps them float32: slower, for a model whose
            verification fails with them quantised (docs/precision.md).
        activation_ranges: for ``calibration="checkpoint"``: a
            :class:`cordsnet.quantization.ActivationRanges` (``read_activation_ranges(checkpoint)``) or a
            mapping name -> (low, high).

    Returns:
        An :class:`ExportReport` (paths, timings, the verification report).

    Raises:
        ValueError: bad options, or the graph failed verification (:class:`VerificationError`);
            no file is written then, and an existing file is left untouched.
    """
    spec = make_spec(model, format=format, graph=graph, steps=steps, spontaneous_steps=spontaneous_steps,
                     alpha=alpha, batch=batch, readout=readout, record=record, opset=opset, dtype=dtype,
                     exporter=exporter, steps_per_call=steps_per_call)
    from .precision import CALIBRATIONS, reduced_images

    validate.choice("calibration", calibration, CALIBRATIONS)
    validate.boolean("quantize_recurrent", quantize_recurrent)
    if not quantize_recurrent and spec.dtype != "int8":
        raise ValueError(f"quantize_recurrent: only applies to dtype 'int8', got dtype {spec.dtype!r}")
    ranges = _activation_ranges(model, spec.dtype, calibration, activation_ranges,
                                quantize_recurrent=quantize_recurrent, calibration_images=calibration_images)
    verify_set = reduced_images(model, spec.dtype, verify_images, "verify_images", "test") if verify else None
    calib_set = reduced_images(model, spec.dtype, calibration_images, "calibration_images", "train") \
        if spec.dtype == "int8" and ranges is None else None
    atol = validate.number("atol", atol, low=0.0)
    rtol = validate.number("rtol", rtol, low=0.0)
    output = _check_output(Path(output), spec.format)
    with output_lock(output, "output"):  # a concurrent export to the same path refuses instead of mixing files
        return _export_locked(model, output, spec, verify=verify, atol=atol, rtol=rtol, progress=progress,
                              checkpoint_sha256=checkpoint_sha256, verify_set=verify_set, calib_set=calib_set,
                              calibration=calibration, quantize_recurrent=quantize_recurrent, ranges=ranges)


def _export_locked(model: CordsNet, output: Path, spec: ExportSpec, *, verify: bool, atol: float, rtol: float,
                   progress: Callable[[str], None] | None, checkpoint_sha256: str | None, verify_set: Any,
                   calib_set: Any, calibration: Any, quantize_recurrent: bool, ranges: Any) -> ExportReport:
    """:func:`export` once the output's lock is held."""
    say = progress or (lambda msg: logger.info(msg))
    fmt = FORMATS[spec.format]
    backend = importlib.import_module(fmt.backend)
    exporter_name = spec.exporter if backend.EXPORTER_NAME is None else backend.EXPORTER_NAME

    # Export from a CPU float32 copy in eval mode; the caller's model is not modified.
    source = _cpu_copy(model)
    t_spont = time.perf_counter()
    say(f"computing the spontaneous state ({spec.spontaneous_steps} blank steps)")
    source.cached_spontaneous_state(spec.spontaneous_steps, spec.alpha)  # computed once, cached for every piece
    spontaneous_seconds = time.perf_counter() - t_spont
    meta = build_metadata(source, spec, checkpoint_sha256=checkpoint_sha256, exporter=exporter_name)
    info = ArtifactInfo.from_metadata(meta, repr(str(output)))  # the contract's own parser checks what we write
    roles = GRAPH_KINDS[spec.graph].companions
    targets = [output] + [companion_path(output, r) for r in roles]
    infos = [info] + [info.companion(r) for r in roles]

    try:
        result = _write_all(source, spec, backend, output, targets, infos, roles, verify=verify, atol=atol,
                            rtol=rtol, say=say, verify_set=verify_set, calib_set=calib_set,
                            calibration=calibration, quantize_recurrent=quantize_recurrent, ranges=ranges)
    except OSError as exc:  # name the destination, not the temporary file the error happened on
        if exc.filename is None or str(exc.filename) in {str(t) for t in [*targets, manifest_path(output)]}:
            raise
        raise type(exc)(exc.errno, f"output: cannot write {str(output)!r}: {exc.strerror or exc}") from None
    export_seconds, verify_seconds, report, size, data, details = result
    files = targets + ([output.with_name(output.name + ".data")] if data is not None else []) + \
        [manifest_path(output)]
    return ExportReport(path=output, format=spec.format, graph=spec.graph, exporter=exporter_name, files=files,
                        export_seconds=export_seconds, size_bytes=size, spontaneous_seconds=spontaneous_seconds,
                        verify_seconds=verify_seconds, verification=report, manifest=manifest_path(output),
                        metadata=meta, details=details or {})


def _activation_ranges(model: CordsNet, dtype: str, calibration: str, given: Any | None, *,
                       quantize_recurrent: bool = True, calibration_images: Any | None = None) -> Any | None:
    """The learned activation ranges of a ``calibration="checkpoint"`` int8 export (else None; checked)."""
    from ..quantization import ActivationRanges

    if calibration != "checkpoint":
        if given is not None:
            raise ValueError(f"activation_ranges: only used with calibration 'checkpoint', got calibration "
                             f"{calibration!r}")
        return None
    if dtype != "int8":
        raise ValueError(f"calibration: 'checkpoint' applies to dtype 'int8', got dtype {dtype!r}")
    if not quantize_recurrent:
        raise ValueError("quantize_recurrent: calibration 'checkpoint' exports what quantisation-aware training "
                         "computed, every per-step convolution in int8; got quantize_recurrent=False")
    if calibration_images is not None:
        raise ValueError("calibration_images: not used with calibration 'checkpoint' (the ranges come from "
                         "training); leave them out")
    if given is None:
        raise ValueError("activation_ranges: calibration 'checkpoint' needs the ranges a quantisation-aware "
                         "training stage stored (cordsnet.quantization.read_activation_ranges(checkpoint))")
    ranges = given if isinstance(given, ActivationRanges) else ActivationRanges(validate.mapping(
        "activation_ranges", given))
    ranges.check(model)
    return ranges


def _write_all(source: CordsNet, spec: ExportSpec, backend: Any, output: Path, targets: list[Path],
               infos: list[ArtifactInfo], roles: Sequence[str], *, verify: bool, atol: float, rtol: float,
               say: ProgressFn, verify_set: tuple[Any, str] | None = None, calib_set: tuple[Any, str] | None = None,
               calibration: str = "minmax", quantize_recurrent: bool = True, ranges: Any | None = None
               ) -> tuple[float, float, Any, int, Path | None, dict[str, Any] | None]:
    """Write, verify and hash every file in temporaries, then rename them into place (the manifest last)."""
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack, torch.no_grad():
        # Entered first, so renamed last: a reader never sees a manifest without its artifact.
        manifest_tmp = stack.enter_context(atomic_path(manifest_path(output)))
        temps = [stack.enter_context(backend.staged(t)) for t in targets]
        say(f"exporting the {spec.graph} graph ({spec.format}, {spec.steps} steps)")
        details = backend.write(source, spec, list(zip(temps, infos)), progress=say)
        if spec.dtype == "int8":
            from .precision import quantize_int8

            for tmp, inf in zip(temps, infos):
                say(f"quantising the {inf.graph} graph to int8 (" + (
                    f"{calibration} calibration on the trajectories of {calib_set[1]})" if calib_set is not None
                    else "the activation ranges learned by quantisation-aware training)"))
                quantize_int8(tmp, source, inf, calib_set[0] if calib_set is not None else None,
                              calibration=calibration, float_recurrent=not quantize_recurrent, ranges=ranges,
                              companions=dict(zip(roles, temps[1:])))  # still float32: the step graph is first
        export_seconds = time.perf_counter() - t0
        report = None
        t_verify = time.perf_counter()
        if verify:
            say("verifying against the PyTorch model")
            from .verify import verify_artifact

            images, source_name = verify_set if verify_set is not None else (None, None)
            report = verify_artifact(temps[0], source, atol=atol, rtol=rtol, format=spec.format,
                                     companions=dict(zip(roles, temps[1:])), images=images,
                                     images_source=source_name, activation_ranges=ranges)
            logger.debug("verification: %s", report.summary())  # the caller shows the report (the CLI prints it)
        verify_seconds = time.perf_counter() - t_verify
        companions = [{"role": r, "file": t.name, "sha256": file_sha256(tmp)}
                      for r, t, tmp in zip(roles, targets[1:], temps[1:])]
        data = _external_data(temps[0])
        if data is not None:
            companions.append({"role": "external-data", "file": output.name + ".data", "sha256": file_sha256(data)})
        say("computing the no-image baseline of the decision rule with the runtime")
        rule = _decision_rule(spec.format, infos[0], targets, temps)
        manifest = dataclasses.replace(infos[0], decision=rule).to_manifest(
            file=output.name, format=spec.format, sha256=file_sha256(temps[0]), size_bytes=temps[0].stat().st_size,
            companions=companions)
        manifest_tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        size = sum(_size(t) for t in temps)
    return export_seconds, verify_seconds, report, size, data, details


def _decision_rule(format: str, info: ArtifactInfo, targets: Sequence[Path],
                   temps: Sequence[Path]) -> DecisionRule | None:
    """The manifest's decision rule: :data:`~cordsnet.decision.DEFAULT_THRESHOLD`,
    :data:`~cordsnet.decision.DEFAULT_MARGIN` and the no-image baseline (T, K) computed by the runtime
    (``baseline_logits`` of the session :func:`cordsnet.runtime.open_session` opens, on the CPU; for an
    ExecuTorch step program, :class:`cordsnet.runtime.executorch.PteStepSession`) on the written graph
    itself, so that Python and every client compare with the same numbers.

    None where the runtime cannot compute per-step logits of the graph: formats without a runtime here
    (TorchScript, ExportedProgram) and ExecuTorch programs other than step programs, graphs that run the
    whole protocol with readout "last", and multistep graphs (logits per call).

    Args:
        format: the export's format.
        info: the graph's metadata.
        targets, temps: the final paths and the staged temporaries (artifact first, then companions).
    """
    from ..artifact import decision_expected
    from ..runtime.reference import baseline_logits

    if not decision_expected(info, format):
        return None

    # The staged files live in private directories; the runtime finds companions and external data by
    # their final names beside the artifact: link them under those names in one directory.
    folder = temporary_name(targets[0])  # recognisable as a temporary (stale_temporaries) if we are killed
    folder.mkdir()
    try:
        pairs = list(zip(targets, temps))
        data = _external_data(temps[0])
        if data is not None:
            pairs.append((targets[0].with_name(targets[0].name + ".data"), data))
        for target, staged_file in pairs:
            try:
                os.link(staged_file, folder / target.name)
            except OSError:
                shutil.copyfile(staged_file, folder / target.name)
        baseline = baseline_logits(folder / targets[0].name, format)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return DecisionRule(DEFAULT_THRESHOLD, DEFAULT_MARGIN, baseline)


def _check_output(output: Path, format: str) -> Path:
    """Refuse a directory, a checkpoint's or data file's suffix, and another format's suffix."""
    if output.is_dir():
        raise ValueError(f"output: expected a file path, got the directory {str(output)!r}")
    name, suffix = output.name.lower(), output.suffix.lower()
    if name.endswith(MANIFEST_SUFFIX) or suffix in REFUSED_SUFFIXES:
        raise ValueError(f"output: {str(output)!r} has the suffix of a checkpoint or data file; an exported model "
                         f"is written to a file ending in one of {sorted({f.suffix for f in FORMATS.values()})}")
    for other in FORMATS.values():
        if other.name != format and suffix in other.read_suffixes:
            raise ValueError(f"output: {str(output)!r} has the suffix of the {other.name} format; a {format} "
                             f"export is written to a {FORMATS[format].suffix} file")
    return output


def _external_data(path: Path) -> Path | None:
    data = path.with_name(path.name + ".data")
    return data if data.exists() else None


def _size(path: Path) -> int:
    data = _external_data(path)
    return path.stat().st_size + (data.stat().st_size if data is not None else 0)


def _cpu_copy(model: CordsNet) -> CordsNet:
    """A float32 CPU copy in eval mode with the same weights and update slope."""
    copy = CordsNet(model.config)
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
    copy.update_slope = float(model.update_slope)
    copy.eval()
    return copy
