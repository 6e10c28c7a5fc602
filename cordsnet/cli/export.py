"""The ``export`` command: a checkpoint to an ONNX, TorchScript or ExportedProgram graph, verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._io import read_arrays
from ..artifact import DEFAULT_GRAPH, DTYPES, FORMATS, GRAPHS, GRAPH_KINDS, READOUTS
from ..names import CALIBRATIONS, EXPORTERS, choices
from ._shared import CheckpointArg, Stopwatch, checkpoint_source, echo_json, load_model, phases, verification_lines


# Choices come from the registries (the artifact contract's, and cordsnet.names for those whose registry
# needs torch): a new format, graph kind, exporter or calibration needs no CLI edit.
ExportFormat = choices("ExportFormat", FORMATS)
ExportGraph = choices("ExportGraph", GRAPHS)
ExportDtype = choices("ExportDtype", DTYPES)
ExportReadout = choices("ExportReadout", READOUTS)
ExportExporter = choices("ExportExporter", EXPORTERS)
Calibration = choices("Calibration", CALIBRATIONS)


# The suffixes each format may be written to; the first is the default output's.
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {name: f.read_suffixes for name, f in FORMATS.items()}


def default_output(source: Path, graph: str, dtype: str, format: str) -> Path:
    """``<checkpoint stem>-<graph>[-<dtype>]<suffix>`` in the current directory (the whole stem:
    ``run.1.safetensors`` -> ``run.1-loop.onnx``)."""
    tag = "" if dtype == "float32" else f"-{dtype}"
    return Path(f"{Path(source).stem}-{graph}{tag}{FORMAT_SUFFIXES[format][0]}")


def export_command(
    checkpoint: CheckpointArg = None,
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="Artifact format.")] = ExportFormat("onnx"),
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Stimulus steps (unrolled: fixed in the graph; loop: the default; default: the config's).")] = None,
    graph: Annotated[ExportGraph, typer.Option(help="Graph kind.")] = ExportGraph(DEFAULT_GRAPH),
    spontaneous_steps: Annotated[Optional[int], typer.Option(
        "--spontaneous-steps", min=0, help="Blank steps whose end state is baked in (0: start from zero).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="dt / tau (default: the config's).")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Fixed batch size (default: dynamic).")] = None,
    readout: Annotated[ExportReadout, typer.Option(
        help="last: logits (B, K); all: logits at every step (steps, B, K).")] = ExportReadout("last"),
    record: Annotated[Optional[list[str]], typer.Option(
        help="Areas whose rates become outputs rates_<area>: comma-separated and/or repeated, "
             "e.g. --record 2,3 (R4) or --record 6 --record 7 (R8).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default 18).")] = None,
    dtype: Annotated[ExportDtype, typer.Option(help="Weights and I/O precision.")] = ExportDtype("float32"),
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", dir_okay=False,
        help="Destination (default: <checkpoint stem>-<graph>[-<dtype>].<onnx|pt|pt2> here).")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify/--no-verify", help="Run the graph against the PyTorch model before keeping it.")] = True,
    atol: Annotated[float, typer.Option(min=0.0, help="Absolute tolerance of the verification.")] = 1e-4,
    rtol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance of the verification.")] = 1e-3,
    exporter: Annotated[ExportExporter, typer.Option(
        help="ONNX exporter: legacy (TorchScript-based, faster graph) or dynamo.")] = ExportExporter.legacy,
    steps_per_call: Annotated[Optional[int], typer.Option(
        "--steps-per-call", min=1, help="Euler steps one call advances (graph multistep; a divisor of --steps).")] = None,
    verify_images: Annotated[Optional[Path], typer.Option(
        "--verify-images", exists=True, dir_okay=False,
        help="A .npy of (N, C, S, S) normalised images (N >= 100) verifying a float16/bfloat16/int8 export by "
             "top-1 agreement (default: the preset's held-out images where the package has them, e.g. digits).")] = None,
    calibration_images: Annotated[Optional[Path], typer.Option(
        "--calibration-images", exists=True, dir_okay=False,
        help="A .npy of (N, C, S, S) normalised images whose trajectories calibrate an int8 export.")] = None,
    calibration: Annotated[Calibration, typer.Option(
        help="int8 calibration: minmax / percentile / entropy on the calibration images' trajectories, or "
             "checkpoint: the activation ranges the 'qat' training stage stored in the checkpoint.")
    ] = Calibration.minmax,
    quantize_recurrent: Annotated[bool, typer.Option(
        "--quantize-recurrent/--float-recurrent",
        help="int8: quantise the recurrent convolutions too (default: every convolution in int8); "
             "--float-recurrent keeps them float32 (slower; for a model whose int8 verification fails).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export a model as an ONNX, TorchScript, ExportedProgram or ExecuTorch graph, verified against PyTorch."""
    from .. import validate
    from .._io import check_output, file_sha256
    from ..artifact import companion_path, manifest_path
    from ..extras import EXTRAS, require

    if format.value in EXTRAS:  # a format written by an optional backend (executorch)
        require(format.value, f"`cordsnet-cli export --format {format.value}`")
    source = checkpoint_source(checkpoint)
    if output is None:
        output = default_output(source, graph.value, dtype.value, format.value)
    companions = [companion_path(output, role) for role in GRAPH_KINDS[graph.value].companions]
    outputs = [output, *companions]
    for path in outputs:
        check_output(path, inputs=[source], suffixes=FORMAT_SUFFIXES[format.value], name="--output")
    check_output(manifest_path(output), inputs=[source], name="--output (its manifest)")
    watch = Stopwatch()
    with phases("loading the checkpoint", quiet=as_json) as say:
        from ..export import export

        with watch("loading"):
            model = load_model(checkpoint)
            areas = validate.areas("--record", record, model.depth)
            sha = file_sha256(source)
            ranges = _learned_ranges(source) if calibration is Calibration.checkpoint else None
        report = export(model, output, format=format.value, graph=graph.value, steps=steps,
                        spontaneous_steps=spontaneous_steps, alpha=alpha, batch=batch, readout=readout.value,
                        record=list(areas), opset=opset, dtype=dtype.value, verify=verify, atol=atol, rtol=rtol,
                        checkpoint_sha256=sha, exporter=exporter.value, progress=say, steps_per_call=steps_per_call,
                        verify_images=_npy("--verify-images", verify_images),
                        calibration_images=_npy("--calibration-images", calibration_images),
                        calibration=calibration.value, quantize_recurrent=quantize_recurrent,
                        activation_ranges=ranges)
    total = watch.total
    v = report.verification
    parts = {"loading": watch.parts["loading"], "spontaneous state": report.spontaneous_seconds,
             "graph": report.export_seconds, "verification": v.seconds if v is not None else 0.0}
    if as_json:
        echo_json({**report.to_dict(), "total_seconds": round(total, 3),
                   "seconds": {k: round(s, 3) for k, s in parts.items()}})
        return
    files = ", ".join(str(f) for f in report.files)
    typer.echo(f"wrote {files} ({report.size_bytes / 1e6:.1f} MB, {report.graph} graph, {report.format}, "
               f"exporter {report.exporter}) in {total:.1f} s ("
               + ", ".join(f"{k} {s:.1f} s" for k, s in parts.items() if k != "verification" or v is not None)
               + ")")
    if v is None:
        typer.echo("verification: skipped (--no-verify)")
        return
    typer.echo(f"verification {v.summary()}")
    for line in verification_lines(v):
        typer.echo(line)


MAX_IMAGES_BYTES = 4 << 30  # a .npy of verification or calibration images: thousands of images at most


def _npy(name: str, path: Optional[Path]) -> Any:
    """The array in a .npy file (no pickles), or None."""
    if path is None:
        return None
    import numpy as np

    if path.suffix.lower() != ".npy":
        raise ValueError(f"{name}: expected a .npy file of (N, C, S, S) images, got {str(path)!r}")
    array = read_arrays(path, name, MAX_IMAGES_BYTES)  # a regular file; the header may not claim more than it holds
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a .npy file of (N, C, S, S) images, got a .npz archive {str(path)!r}")
    return array


def _learned_ranges(source: Path) -> object:
    """The int8 activation ranges stored in checkpoint `source` (for ``--calibration checkpoint``)."""
    from ..quantization import read_activation_ranges

    try:
        ranges = read_activation_ranges(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--calibration checkpoint: cannot read activation ranges from {str(source)!r}: {exc}") \
            from None
    if ranges is None:
        raise ValueError(f"--calibration checkpoint: {str(source)!r} stores no int8 activation ranges (the 'qat' "
                         "training stage writes them: cordsnet-cli train --stage qat --init CHECKPOINT); use "
                         "--calibration minmax")
    return ranges
