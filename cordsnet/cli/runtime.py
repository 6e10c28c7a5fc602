"""The runtime commands: ``predict``, ``verify`` and ``bench`` an exported model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..names import BACKENDS, OPENVINO_PRECISIONS, choices
from ..progress import Progress, is_terminal
from ._shared import JsonOpt, checkpoint_path, console, echo_json, load_model, log, phases, verification_lines

ProviderOpt = Annotated[str, typer.Option(
    "--provider", help="Execution provider: auto (CUDA if usable, else the CPU; a warning only when a GPU build of onnxruntime cannot use CUDA), cuda, tensorrt, cpu.")]


Backend = choices("Backend", BACKENDS)  # engines of cordsnet.runtime
Precision = choices("Precision", OPENVINO_PRECISIONS)  # OpenVINO compile precisions


BackendOpt = Annotated[Backend, typer.Option(
    "--backend", help="onnxruntime (providers) or openvino (pip install 'cordsnet[openvino]'; --provider auto/cpu "
                      "or an OpenVINO device).")]
PrecisionOpt = Annotated[Optional[Precision], typer.Option(
    "--precision", help="OpenVINO only: compute precision hint (bf16 needs a CPU that has it; never a fallback).")]
ModelArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An exported .onnx graph (any kind).")]


def predict(
    model: ModelArg,
    images: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False,
                                                 help="Image files (any format Pillow reads).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to list per image.")] = 5,
    provider: ProviderOpt = "auto",
    until: Annotated[Optional[float], typer.Option(
        "--until", help="Anytime inference: stop each image once it has decided at this probability (in (1/K, 1]) "
                        "with evidence over the no-image baseline; prints the steps used. Stepwise graphs stop "
                        "early; readout-all graphs run every step and report where each image decided.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(
        "--max-steps", min=1, help="With --until: the most stimulus steps (default: the exported protocol's).")] = None,
    margin: Annotated[Optional[float], typer.Option(
        "--margin", help="With --until: evidence in logits the image must add (default: cordsnet.decision's).")] = None,
    backend: BackendOpt = Backend.onnxruntime,
    precision: PrecisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify images with an exported model (preprocessing from the model's preset)."""
    from ..runtime import open_session

    if until is None and (max_steps is not None or margin is not None):
        raise ValueError(f"{'--max-steps' if max_steps is not None else '--margin'}: applies with --until only")
    files = [str(p) for p in images]
    steps: list[int] | None = None
    decided: list[bool] | None = None
    with phases(f"opening {model.name}", quiet=as_json) as say:
        session = open_session(model, provider, backend=backend.value,
                               precision=None if precision is None else precision.value)
        say(f"classifying {len(files)} image(s)")
        if until is None:
            # Any number of images: a static-batch graph is fed in padded chunks by the runtime itself.
            preds = session.predict(files, top_k).to_list()
        else:
            from ..decision import DEFAULT_MARGIN

            # StepSession: stops each image early (batch compaction); Session: needs a readout="all" graph
            # (one call runs every step, so nothing is saved) and says so otherwise.
            result = session.run_until(files, until, max_steps, margin=DEFAULT_MARGIN if margin is None else margin)
            preds = session.rank(result.logits, top_k).to_list()
            steps, decided = result.steps.tolist(), result.decided.tolist()
    if as_json:
        out: dict[str, Any] = {"model": str(model), "providers": session.providers, "predictions": [
            {"image": str(p), "top": top} for p, top in zip(images, preds)]}
        if steps is not None and decided is not None:
            for item, n, d in zip(out["predictions"], steps, decided):
                item.update(steps=n, decided=d)
        echo_json(out)
        return
    for i, (path, top) in enumerate(zip(images, preds)):
        if steps is not None and decided is not None:
            state = "decided" if decided[i] else "undecided (ran to the last step)"
            typer.echo(f"{path}: {steps[i]} steps, {state}")
        else:
            typer.echo(f"{path}:")
        for rank, item in enumerate(top, 1):
            typer.echo(f"  {rank}. {item['name']:<24} {item['probability']:.4f}  (class {item['index']})")


def verify(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                          help="An exported model (.onnx, .pt, .pt2, .pte).")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", callback=checkpoint_path,
        help="Checkpoint the model was exported from, or a bundled model's name (default: the bundled "
             "model).")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", exists=True, dir_okay=False,
        help="Check against a stored reference (.npz from --save-reference) instead of PyTorch: no torch needed "
             "(ONNX graphs, with this runtime).")] = None,
    save_reference: Annotated[Optional[Path], typer.Option(
        "--save-reference", dir_okay=False,
        help="After verifying against PyTorch, store a reference (.npz: images and PyTorch's logits) for "
             "checking the graph where torch is not installed (--reference).")] = None,
    provider: ProviderOpt = "auto",
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="Absolute tolerance (default: the exporter's).")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="Relative tolerance (default: the exporter's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check an exported model against the PyTorch model it came from, or against a stored reference
    (parity report; exit 1 on failure)."""
    if reference is not None:
        if checkpoint is not None or save_reference is not None:
            raise ValueError("--reference: checks against the stored reference; it takes no --checkpoint or "
                             "--save-reference")
        _verify_against_reference(model, reference, provider, as_json)
        return
    from ..export import verify_artifact

    tolerances = {k: v for k, v in (("atol", atol), ("rtol", rtol)) if v is not None}
    onnx = model.suffix.lower() == ".onnx"
    if not onnx and provider not in ("auto", "cpu"):
        raise ValueError(f"provider: {provider!r} applies to ONNX models only; {model.name} runs with PyTorch "
                         "on the CPU (use --provider auto or cpu)")
    if save_reference is not None:
        from .._io import check_output
        from ..artifact import encode_path, manifest_path

        # The model's manifest and companions are read too: refused here, before the reference is computed.
        beside = [manifest_path(model), encode_path(model), model.with_name(model.name + ".data")]
        check_output(save_reference, inputs=[model, *beside, checkpoint], suffixes=(".npz",), name="--save-reference")
    source = str(checkpoint) if checkpoint is not None else "the bundled model"
    with phases("loading the checkpoint", quiet=as_json) as say:
        torch_model = load_model(checkpoint)
        say(f"verifying {model.name} against {source}")
        # verify_artifact refuses an artifact exported from other weights (state-dict sha256) and applies
        # the runtime's provider rules: a GPU provider that cannot run is an error,
        # "auto" falls back to the CPU with one warning, and the session's real providers are checked.
        report = verify_artifact(model, torch_model, providers=provider if onnx else None, **tolerances)
        if save_reference is not None:
            from ..export.reference import make_reference
            from ..runtime.reference import save_reference as write

            say(f"computing the reference of {model.name}")
            write(save_reference, make_reference(torch_model, model, **tolerances))
    if as_json:
        echo_json({**report.to_dict(), **({"reference": str(save_reference)} if save_reference else {})})
        return
    typer.echo(f"{model} vs {source}: {report.summary()}")
    for line in verification_lines(report):
        typer.echo(line)
    if save_reference is not None:
        typer.echo(f"wrote the reference {save_reference} (check it anywhere: cordsnet-cli verify {model.name} "
                   f"--reference {save_reference.name})")


def _verify_against_reference(model: Path, reference: Path, provider: str, as_json: bool) -> None:
    from ..runtime.reference import check_reference

    with phases(f"checking {model.name} against {reference.name}", quiet=as_json):
        result = check_reference(model, reference, providers=provider)
    if as_json:
        echo_json({"model": str(model), "reference": str(reference), **result.to_dict()})
    else:
        typer.echo(f"{model} vs {reference}: {result.summary()}")
    if not result.passed:
        raise typer.Exit(1)


def bench(
    model: ModelArg,
    batch: Annotated[int, typer.Option(min=1, help="Images per call.")] = 1,
    provider: ProviderOpt = "auto",
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Capture CUDA graphs (CUDA provider).")] = False,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Stimulus steps per image (loop/stepwise graphs; default: the exported protocol's).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 2,
    iterations: Annotated[int, typer.Option(min=1, help="Timed runs.")] = 10,
    backend: BackendOpt = Backend.onnxruntime,
    precision: PrecisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency percentiles (per image, per step) and throughput of an exported graph."""
    from ..runtime.bench import benchmark

    # A bar on a terminal (none with --json there), else log lines at least every 10 s (cordsnet.progress).
    style = "none" if as_json and is_terminal(sys.stderr) else None
    with Progress("bench", warmup + iterations, style=style, logger=log) as bar:
        result = benchmark(model, batch=batch, providers=provider, cuda_graph=cuda_graph, steps=steps,
                           warmup=warmup, iterations=iterations, backend=backend.value,
                           precision=None if precision is None else precision.value,
                           progress=lambda done, total: bar.update(done))
    if as_json:
        echo_json(result)
        return
    from rich.table import Table

    out = console()
    out.print(f"[bold]{model}[/bold]: {result['graph']} graph, R{result['depth']} at {result['image_size']} px, "
              f"{result['dtype']}, providers {result['providers']}, cuda_graph={result['cuda_graph']}, "
              f"batch {batch}, {result['steps']} steps (+{result['spontaneous_steps']} spontaneous, precomputed)")
    table = Table("latency (ms)", "mean", "min", "p50", "p90", "p99")
    for key in ("per_batch_ms", "per_image_ms", "per_step_ms"):
        r = result[key]
        table.add_row(key[:-3].replace("_", " "), *(f"{r[k]:.3f}" for k in ("mean", "min", "p50", "p90", "p99")))
    out.print(table)
    out.print(f"throughput: {result['images_per_s']:.1f} images/s, {result['steps_per_s']:.1f} steps/s")
