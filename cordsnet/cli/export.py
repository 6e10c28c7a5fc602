"""The ``export`` command: a checkpoint to an ONNX, TorchScript or ExportedProgram graph, verified."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..artifact import DTYPES, FORMATS, GRAPHS, GRAPH_KINDS
from ._shared import CheckpointArg, Stopwatch, checkpoint_source, echo_json, load_model, phases, verification_lines


def _choices(name: str, keys: object) -> type[Enum]:
    """A str Enum of a registry's keys (Typer shows them as the option's choices)."""
    return Enum(name, {str(k).replace("-", "_"): str(k) for k in keys}, type=str)  # type: ignore[return-value]


# Choices come from the artifact contract's registries: a new format or graph kind needs no CLI edit.
ExportFormat = _choices("ExportFormat", FORMATS)
ExportGraph = _choices("ExportGraph", GRAPHS)
ExportDtype = _choices("ExportDtype", DTYPES)


class ExportReadout(str, Enum):
    last = "last"
    all = "all"


class ExportExporter(str, Enum):
    legacy = "legacy"
    dynamo = "dynamo"


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
    graph: Annotated[ExportGraph, typer.Option(help="Graph kind.")] = ExportGraph("unrolled"),
    spontaneous_steps: Annotated[Optional[int], typer.Option(
        "--spontaneous-steps", min=0, help="Blank steps whose end state is baked in (0: start from zero).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="dt / tau (default: the config's).")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Fixed batch size (default: dynamic).")] = None,
    readout: Annotated[ExportReadout, typer.Option(
        help="last: logits (B, K); all: logits at every step (steps, B, K).")] = ExportReadout.last,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Export a model as an ONNX, TorchScript or ExportedProgram graph, verified against PyTorch."""
    from .. import validate
    from .._io import check_output, file_sha256
    from ..artifact import companion_path, manifest_path

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
        report = export(model, output, format=format.value, graph=graph.value, steps=steps,
                        spontaneous_steps=spontaneous_steps, alpha=alpha, batch=batch, readout=readout.value,
                        record=list(areas), opset=opset, dtype=dtype.value, verify=verify, atol=atol, rtol=rtol,
                        checkpoint_sha256=sha, exporter=exporter.value, progress=say)
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
