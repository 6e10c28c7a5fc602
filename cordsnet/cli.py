"""``cordsnet-cli``: the command line. Heavy imports (torch, onnxruntime) happen inside commands.

User errors (bad files, bad shapes, unknown names) end with exit code 1 and one line on stderr, never
a traceback; set ``CORDSNET_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.exceptions import TyperException
from typer.core import TyperCommand, TyperGroup

# Errors that are the user's (a bad file, a bad value) rather than the program's.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, KeyError)


class _OneLineErrors(TyperGroup):
    """Turn usage errors and user errors into one line on stderr and exit code 1."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Error: aborted", err=True)
            sys.exit(1)
        except TyperException as exc:  # usage errors: bad options, missing files (Path(exists=True))
            typer.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            sys.exit(1)
        except USER_ERRORS as exc:
            if os.environ.get("CORDSNET_DEBUG"):
                raise
            typer.echo(f"Error: {_one_line(str(exc)) or type(exc).__name__}", err=True)
            sys.exit(1)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    typer.echo(f"warning: {_one_line(str(message))}", err=True)


def _one_line(text: str) -> str:
    text = str(text).strip()
    if text.startswith(("'", '"')) and text.endswith(("'", '"')) and len(text) > 1:
        text = text[1:-1]  # KeyError quotes its message
    return " ".join(text.split())


app = typer.Typer(
    cls=_OneLineErrors,
    name="cordsnet-cli",
    help="Run, export, serve, analyse and train CordsNet recurrent vision models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CheckpointArg = Annotated[
    Optional[Path],
    typer.Argument(exists=True, dir_okay=False, help="Checkpoint (.pth published layout or .safetensors); "
                   "default: the bundled digits model."),
]


def _load_model(checkpoint: Optional[Path]) -> Any:
    from .checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


# ------------------------------------------------------------------------------ foundation
@app.command()
def info(
    path: Annotated[Optional[Path], typer.Argument(
        exists=True, dir_okay=False,
        help="A checkpoint (.pth, .safetensors) or an exported model (.onnx, .pt, .pt2); "
             "default: the bundled model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Describe a checkpoint (architecture, parameters, spontaneous state) or an exported model."""
    if path is not None and _is_artifact(path):
        from .export import describe_artifact

        data = describe_artifact(path)
    else:
        from .checkpoint import describe_state

        data = describe_state(_load_model(path))
        data["source"] = str(path) if path is not None else "bundled default model"
    if as_json:
        _echo_json(data)
        return
    _print_info(data)


ARTIFACT_SUFFIXES = (".onnx", ".pt", ".pt2", ".ts")


def _is_artifact(path: Path) -> bool:
    """An exported model rather than a checkpoint: .onnx/.pt2, or a .pt/.ts zip carrying cordsnet.json.

    (A checkpoint saved with ``torch.save`` may also be called ``.pt``.)
    """
    import zipfile

    suffix = path.suffix.lower()
    if suffix in (".onnx", ".pt2"):
        return True
    if suffix in ARTIFACT_SUFFIXES and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("extra/cordsnet.json") for name in archive.namelist())
    return False


def _print_info(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "areas" in data and "config" in data:
        c = data["config"]
        console.print(f"[bold]CordsNet-R{c['depth']}[/bold]  source: {data.get('source', '?')}")
        console.print(f"classes {c['num_classes']}, input ({c['in_channels']}, {c['image_size']}, "
                      f"{c['image_size']}), dataset {c['dataset']}, alpha {c['alpha']}, "
                      f"protocol {c['spontaneous_steps']} spontaneous + {c['steps']} stimulus steps")
        console.print(f"parameters: {data['parameters']:,}")
        table = Table("area", "rates shape", "spont. mean", "spont. max", "active fraction",
                      title="spontaneous state")
        for a in data["areas"]:
            table.add_row(str(a["area"]), "x".join(map(str, a["shape"])), f"{a['spontaneous_mean']:.4g}",
                          f"{a['spontaneous_max']:.4g}", f"{a['spontaneous_active_fraction']:.3f}")
        console.print(table)
        return
    table = Table("key", "value")
    for k, v in data.items():
        text = json.dumps(v) if not isinstance(v, str) else v
        table.add_row(str(k), text if len(text) < 300 else text[:297] + "...")
    console.print(table)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                           help="A published checkpoint (cordsnetr8.pth layout).")],
    output: Annotated[Path, typer.Argument(dir_okay=False, help="Destination .safetensors file.")],
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset preset to record (default: guessed from classes and channels).")] = None,
) -> None:
    """Convert a published checkpoint to the project's safetensors format (config included)."""
    from .checkpoint import load_checkpoint, save_checkpoint

    if dataset is not None:
        from .config import get_preset

        get_preset(dataset)
    model = load_checkpoint(source, dataset=dataset)
    save_checkpoint(model, output)
    c = model.config
    typer.echo(f"wrote {output}: CordsNet-R{c.depth}, {c.num_classes} classes, {c.in_channels} channel(s), "
               f"{c.image_size} px, dataset {c.dataset}")


# Commands of the other modules are registered below, one section each.
# ---------------------------------------------------------------------------------- export
class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    exported_program = "exported-program"


class ExportGraph(str, Enum):
    unrolled = "unrolled"
    loop = "loop"
    stepwise = "stepwise"
    stepwise_drive = "stepwise-drive"


class ExportReadout(str, Enum):
    last = "last"
    all = "all"


class ExportDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class ExportExporter(str, Enum):
    legacy = "legacy"
    dynamo = "dynamo"


_EXPORT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


def _parse_areas(text: Optional[str]) -> Optional[list[int]]:
    if text is None or not text.strip():
        return None
    try:
        return [int(a) for a in text.replace(" ", "").split(",") if a]
    except ValueError:
        raise ValueError(f"record: expected comma-separated area indices like '6,7', got {text!r}") from None


@app.command("export")
def export_command(
    checkpoint: CheckpointArg = None,
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="Artifact format.")] = ExportFormat.onnx,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Stimulus steps (unrolled: fixed in the graph; loop: the default; default: the config's).")] = None,
    graph: Annotated[ExportGraph, typer.Option(help="Graph kind.")] = ExportGraph.unrolled,
    spontaneous_steps: Annotated[Optional[int], typer.Option(
        "--spontaneous-steps", min=0, help="Blank steps whose end state is baked in (0: start from zero).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="dt / tau (default: the config's).")] = None,
    batch: Annotated[Optional[int], typer.Option(min=1, help="Fixed batch size (default: dynamic).")] = None,
    readout: Annotated[ExportReadout, typer.Option(
        help="last: logits (B, K); all: logits at every step (steps, B, K).")] = ExportReadout.last,
    record: Annotated[Optional[str], typer.Option(
        help="Areas whose rates become outputs rates_<area>, comma-separated, e.g. '6,7'.")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default 18).")] = None,
    dtype: Annotated[ExportDtype, typer.Option(help="Weights and I/O precision.")] = ExportDtype.float32,
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
    from rich.console import Console

    from ._io import file_sha256

    console = Console(stderr=True)
    areas = _parse_areas(record)
    with console.status("loading the checkpoint") as status:
        from .checkpoint import default_checkpoint_path
        from .export import export

        source = checkpoint if checkpoint is not None else default_checkpoint_path()
        model = _load_model(checkpoint)
        if output is None:
            stem = Path(source).name.split(".")[0]
            tag = "" if dtype is ExportDtype.float32 else f"-{dtype.value}"
            output = Path(f"{stem}-{graph.value}{tag}{_EXPORT_SUFFIX[format.value]}")
        report = export(model, output, format=format.value, graph=graph.value, steps=steps,
                        spontaneous_steps=spontaneous_steps, alpha=alpha, batch=batch, readout=readout.value,
                        record=areas, opset=opset, dtype=dtype.value, verify=verify, atol=atol, rtol=rtol,
                        checkpoint_sha256=file_sha256(source), exporter=exporter.value,
                        progress=lambda msg: status.update(msg))
    if as_json:
        _echo_json(report.to_dict())
        return
    files = ", ".join(str(f) for f in report.files)
    typer.echo(f"wrote {files} ({report.size_bytes / 1e6:.1f} MB, {report.graph} graph, {report.format}, "
               f"exporter {report.exporter}) in {report.export_seconds:.1f} s "
               f"(+ {report.spontaneous_seconds:.1f} s for the spontaneous state)")
    v = report.verification
    if v is None:
        typer.echo("verification: skipped (--no-verify)")
        return
    typer.echo(f"verification {v.summary()}")
    for check in v.checks:
        typer.echo(f"  {check['name']}: max abs diff {check['max_abs']:.3g}, max rel diff {check['max_rel']:.3g}")


# --------------------------------------------------------------------------------- runtime
ProviderOpt = Annotated[str, typer.Option(
    "--provider", help="Execution provider: auto (CUDA if usable, else CPU with a warning), cuda, tensorrt, cpu.")]


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="An exported .onnx graph (any kind).")],
    images: Annotated[list[Path], typer.Argument(help="Image files (any format Pillow reads).")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to list per image.")] = 5,
    provider: ProviderOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Classify images with an exported model (onnxruntime, preprocessing from the model's preset)."""
    from .runtime import open_session

    import numpy as np

    session = open_session(model, provider)
    fixed = session.info.batch
    if fixed is None:
        preds = session.predict(session.preprocess([str(p) for p in images]), top_k).to_list()
    else:  # a static-batch graph: full chunks, the last one padded by repeating its last image
        preds = []
        for i in range(0, len(images), fixed):
            chunk = session.preprocess([str(p) for p in images[i:i + fixed]], check_batch=False)
            pad = fixed - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            preds += session.predict(chunk, top_k).to_list()[:fixed - pad]
    if as_json:
        _echo_json({"model": str(model), "providers": session.providers,
                    "predictions": [{"image": str(p), "top": top} for p, top in zip(images, preds)]})
        return
    for path, top in zip(images, preds):
        typer.echo(f"{path}:")
        for rank, item in enumerate(top, 1):
            typer.echo(f"  {rank}. {item['name']:<24} {item['probability']:.4f}  (class {item['index']})")


@app.command()
def verify(
    model: Annotated[Path, typer.Argument(help="An exported model (.onnx, .pt, .pt2).")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", exists=True, dir_okay=False,
        help="Checkpoint the model was exported from (default: the bundled model).")] = None,
    provider: ProviderOpt = "auto",
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance (default: the exporter's).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance (default: the exporter's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Check an exported model against the PyTorch model it came from (parity report; exit 1 on failure)."""
    if not model.is_file():
        raise FileNotFoundError(f"model: no such file {str(model)!r}")
    from .export import verify_artifact

    kwargs: dict[str, Any] = {}
    if atol is not None:
        kwargs["atol"] = atol
    if rtol is not None:
        kwargs["rtol"] = rtol
    torch_model = _load_model(checkpoint)
    if model.suffix.lower() != ".onnx" and provider not in ("auto", "cpu"):
        raise ValueError(f"provider: {provider!r} applies to ONNX models only; {model.name} runs with PyTorch "
                         "on the CPU (use --provider auto or cpu)")
    from .checkpoint import state_dict_sha256
    from .export import read_metadata

    stored = read_metadata(model).get("cordsnet.state_dict_sha256", "")
    if stored and stored != state_dict_sha256(torch_model.state_dict()):
        source = checkpoint if checkpoint is not None else "the bundled model"
        raise ValueError(f"checkpoint: {model.name} was exported from other weights than {source} "
                         f"(state-dict sha256 {stored[:12]}... in its metadata); pass --checkpoint with its source")
    # verify_artifact applies the runtime's provider rules: a GPU provider that cannot run is an error,
    # "auto" falls back to the CPU with one warning, and the session's real providers are checked.
    report = verify_artifact(model, torch_model, providers=provider if model.suffix.lower() == ".onnx" else None,
                             **kwargs)
    data = report.to_dict() if hasattr(report, "to_dict") else report
    data = data if isinstance(data, dict) else {"report": str(data)}
    if as_json:
        _echo_json(data)
        return
    source = checkpoint if checkpoint is not None else "the bundled model"
    typer.echo(f"{model} vs {source}: " + (report.summary() if hasattr(report, "summary") else "passed"))
    for check in data.get("checks", []):
        rest = {k: v for k, v in check.items() if k != "name"}
        typer.echo(f"  {check.get('name', '?')}: " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in rest.items()))


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="An exported .onnx graph (any kind).")],
    batch: Annotated[int, typer.Option(min=1, help="Images per call.")] = 1,
    provider: ProviderOpt = "auto",
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="Capture CUDA graphs (CUDA provider).")] = False,
    steps: Annotated[Optional[int], typer.Option(
        min=1, help="Stimulus steps per image (loop/stepwise graphs; default: the exported protocol's).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed runs first.")] = 2,
    iterations: Annotated[int, typer.Option(min=1, help="Timed runs.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Latency percentiles (per image, per step) and throughput of an exported graph."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runtime.bench import benchmark

    if not model.is_file():
        raise FileNotFoundError(f"model: no such file {str(model)!r}")
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=as_json) as bar:
        task = bar.add_task("runs", total=warmup + iterations)
        result = benchmark(model, batch=batch, providers=provider, cuda_graph=cuda_graph, steps=steps,
                           warmup=warmup, iterations=iterations,
                           progress=lambda done, total: bar.update(task, completed=done))
    if as_json:
        _echo_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{model}[/bold]: {result['graph']} graph, R{result['depth']} at {result['image_size']} px, "
                  f"{result['dtype']}, providers {result['providers']}, cuda_graph={result['cuda_graph']}, "
                  f"batch {batch}, {result['steps']} steps (+{result['spontaneous_steps']} spontaneous, precomputed)")
    table = Table("latency (ms)", "mean", "min", "p50", "p90", "p99")
    for key in ("per_batch_ms", "per_image_ms", "per_step_ms"):
        r = result[key]
        table.add_row(key[:-3].replace("_", " "), *(f"{r[k]:.3f}" for k in ("mean", "min", "p50", "p90", "p99")))
    console.print(table)
    console.print(f"throughput: {result['images_per_s']:.1f} images/s, {result['steps_per_s']:.1f} steps/s")



# -------------------------------------------------------------------------------- training
def _stage_values(option: str, text: Optional[str], cast: Any) -> Any:
    """'30' -> 30 (every stage); 'compat=30,linear=2' -> {'compat': 30, 'linear': 2}."""
    if text is None:
        return None
    if "=" not in text:
        try:
            return cast(text)
        except ValueError:
            raise ValueError(f"{option}: expected a number or STAGE=VALUE pairs, got {text!r}") from None
    values = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            values[name.strip()] = cast(value)
        except ValueError:
            raise ValueError(f"{option}: expected STAGE=VALUE pairs like 'compat=30,linear=2', got {text!r}") from None
    return values


def _stage_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """'anneal.slope_decrement=0.25' -> {'anneal': {'slope_decrement': 0.25}} (JSON values)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        stage, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set: expected STAGE.FIELD=VALUE (e.g. anneal.slope_decrement=0.25), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(stage.strip(), {})[name.strip()] = parsed
    return out


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="digits, mnist, fashionmnist, cifar10, cifar100, imagenet, fake.")] = "digits",
    depth: Annotated[int, typer.Option(help="CordsNet-R{depth}: 2, 4, 6 or 8.")] = 4,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the dataset's).")] = None,
    stage: Annotated[str, typer.Option(help="'all' (compat,fold,inverse,linear,anneal,finetune), 'finetune' "
                                            "(from random initialisation), one stage, or a comma list.")] = "all",
    epochs: Annotated[Optional[str], typer.Option(help="Epochs: N for every stage or e.g. 'compat=30,linear=2' "
                                                       "(default: the published ones).")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split over torchrun processes).")] = 256,
    lr: Annotated[Optional[str], typer.Option(help="Learning rate: X for every stage or e.g. 'linear=1e-4'.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory (checkpoints, metrics.jsonl).")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.safetensors.")] = False,
    init: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False,
                                                 help="Start from this checkpoint.")] = None,
    steps: Annotated[int, typer.Option(help="Stimulus steps of the recurrent stages.")] = 100,
    spontaneous_steps: Annotated[int, typer.Option(help="Blank steps before the stimulus.")] = 100,
    recovery_steps: Annotated[int, typer.Option(help="Blank steps after the stimulus (stability penalty).")] = 100,
    alpha: Annotated[float, typer.Option(help="dt / tau.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: auto).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    download: Annotated[bool, typer.Option(help="Download missing torchvision datasets.")] = True,
    augment: Annotated[bool, typer.Option(help="Training augmentation (reference transforms).")] = True,
    dense: Annotated[bool, typer.Option(help="Keep the dataset's native resolution.")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    threads: Annotated[Optional[int], typer.Option(
        help="torch threads per process (default: torch's; 1 is fastest on a shared CPU).")] = None,
    settings: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Any stage field, STAGE.FIELD=VALUE (repeatable), e.g. anneal.slope_decrement=0.25.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a CordsNet with the staged method (CNN -> fold -> inverse -> linear -> anneal -> finetune).

    Runs as one process or under ``torchrun --nproc-per-node N`` (DDP). Prints one JSON line of metrics
    per epoch (rank 0) and writes checkpoints to OUT after every epoch and stage.
    """
    from .train import TrainOptions, Trainer

    options = TrainOptions(
        dataset=dataset, depth=depth, image_size=image_size, stages=stage, out=out, batch_size=batch_size,
        epochs=_stage_values("--epochs", epochs, int), lr=_stage_values("--lr", lr, float),
        stage_overrides=_stage_settings(settings or []), steps=steps, spontaneous_steps=spontaneous_steps,
        recovery_steps=recovery_steps, alpha=alpha, seed=seed, device=device,
        data_root=str(data_root) if data_root is not None else None, download=download, augment=augment,
        dense=dense, num_workers=workers, init=init, progress=progress and sys.stderr.isatty(), threads=threads,
    )
    summary = Trainer(options, on_epoch=lambda m: typer.echo(json.dumps(m), err=False)).run(resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps({"summary": summary}))



# -------------------------------------------------------------------------------- analysis
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")  # a first path with one of these is the model


class _VariadicOptions(TyperCommand):
    """Lets ``--areas 6 7`` (and ``--areas 6,7``) mean ``--areas 6 --areas 7``."""

    variadic = ("--areas",)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        import re

        number = re.compile(r"^\d+(,\d+)*,?$")
        expanded: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            name, eq, inline = arg.partition("=")
            if name in self.variadic:
                values = [inline] if eq else []
                i += 1
                while i < len(args) and number.match(args[i]) and (not eq or not values[0]):
                    values.append(args[i])
                    i += 1
                if not values:  # let click report the missing value
                    expanded.append(arg)
                    continue
                for v in values:
                    for item in v.split(","):
                        if item:
                            expanded += [name, item]
                continue
            expanded.append(arg)
            i += 1
        return super().parse_args(ctx, expanded)


def _split_model_and_images(paths: list[Path]) -> tuple[Optional[Path], list[Path]]:
    if paths and paths[0].suffix.lower() in CHECKPOINT_SUFFIXES:
        checkpoint, images = paths[0], list(paths[1:])
    else:
        checkpoint, images = None, list(paths)
    if not images:
        raise ValueError("IMAGES: expected at least one image file after the optional checkpoint "
                         f"(a checkpoint is recognised by its suffix: {', '.join(CHECKPOINT_SUFFIXES)})")
    return checkpoint, images


def _stimulus(model: Any, paths: list[Path], protocol: Optional[str], seed: int) -> tuple[Any, int]:
    """Images (or the protocol's frame sequence) for `model`, and the stimulus onset index."""
    from .analysis import build_stimulus, load_images, protocol_segments

    images = load_images(paths, model.config)
    if protocol is None:
        return images, 0
    segments = protocol_segments(protocol, alpha=model.config.alpha)
    onset = next((s.start for s in segments if s.kind == "stimulus"), 0)
    return build_stimulus(images, protocol, alpha=model.config.alpha, seed=seed), onset


AnalysisPathsArg = Annotated[list[Path], typer.Argument(
    exists=True, dir_okay=False, metavar="[CHECKPOINT] IMAGE",
    help="An optional checkpoint (.safetensors/.pth/.pt/.ckpt; default: the bundled model), then image files.")]
AnalysisProtocolOpt = Annotated[Optional[str], typer.Option(
    help="Stimulus protocol instead of a static image, e.g. 'blank:100ms, stimulus:200ms:contrast=0.5:noise=0.1'.")]

analyze_app = typer.Typer(help="Spectra of the recurrent convolutions and of the linearised dynamics.",
                          no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("spectrum")
def analyze_spectrum(
    checkpoint: CheckpointArg = None,
    area: Annotated[Optional[list[str]], typer.Option(
        "--area", "-a", help="Area index, 'dynamics' (the step's Jacobian at the spontaneous state) or 'all' "
        "(every recurrent convolution); repeatable. Default: all + dynamics.")] = None,
    k: Annotated[int, typer.Option(min=1, help="Eigenvalues of largest modulus per operator.")] = 20,
    krylov_dim: Annotated[Optional[int], typer.Option(min=1, help="Krylov vectors (default 300).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Arnoldi start vector.")] = 0,
    method: Annotated[str, typer.Option(
        help="arnoldi (one Krylov space, as published) or arpack (restarted until converged).")] = "arnoldi",
    plot: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Write the eigenvalues in the complex plane (with the unit circle) to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Leading eigenvalues and spectral radius of each recurrent convolution and of the dynamics."""
    from .analysis.spectra import EIGEN_METHODS, SPECTRUM_TARGETS, recurrent_spectrum

    if method not in EIGEN_METHODS:
        raise ValueError(f"--method: expected one of {sorted(EIGEN_METHODS)}, got {method!r}")

    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"--plot: expected a .png, .svg or .pdf path, got {str(plot)!r}")
    model = _load_model(checkpoint)
    targets: list[Any] = []
    for item in area or ["all", "dynamics"]:
        if item == "all":
            targets += list(range(model.depth))
        elif item in SPECTRUM_TARGETS:
            targets.append(item)
        elif item.isdigit() and int(item) < model.depth:
            targets.append(int(item))
        else:
            raise ValueError(f"--area: expected an area index in 0..{model.depth - 1}, 'all' or one of "
                             f"{sorted(SPECTRUM_TARGETS)}, got {item!r}")
    targets = list(dict.fromkeys(targets))
    spectra = []
    for target in targets:
        if isinstance(target, int):
            spectra.append(recurrent_spectrum(model, target, k, krylov_dim=krylov_dim, seed=seed, method=method))
        else:
            spectra.append(SPECTRUM_TARGETS[target](model, k, krylov_dim=krylov_dim, seed=seed, method=method))
    if plot is not None:
        _plot_spectra(spectra, plot)
    if as_json:
        _echo_json([s.to_dict() for s in spectra])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"spectra (top {k} by modulus)")
    for column in ("operator", "dimension", "krylov", "radius", "converged", "leading eigenvalues", "seconds"):
        table.add_column(column, no_wrap=column != "leading eigenvalues")
    for s in spectra:
        lead = ", ".join(f"{z.real:.4f}{z.imag:+.4f}j" for z in s.eigenvalues[:3])
        table.add_row(s.name, f"{s.dimension:,}", str(s.krylov_dim), f"{s.radius:.6f}",
                      f"{int(s.converged().sum())}/{len(s.eigenvalues)}", lead, f"{s.seconds:.2f}")
    console = Console()
    console.print(table)
    for s in spectra:
        if "stable" in s.info:
            verdict = "stable" if s.info["stable"] else "NOT stable"
            console.print(f"dynamics: radius {s.radius:.6f} -> spontaneous state {verdict} (radius < 1); "
                          f"fixed-point residual {s.info['fixed_point_residual']:.2e}")
    if plot is not None:
        console.print(f"wrote {plot}")


def _plot_spectra(spectra: list[Any], path: Path) -> None:
    import math as _math

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'cordsnet[plot]'") from None
    import numpy as np

    from ._io import atomic_path

    cols = min(4, len(spectra))
    rows = _math.ceil(len(spectra) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 256))
    for ax, s in zip(axes.flat, spectra):
        ax.plot(circle.real, circle.imag, color="0.6", lw=0.8)
        ax.scatter(s.eigenvalues.real, s.eigenvalues.imag, s=12, color="C0" if s.radius < 1 else "C3")
        ax.set_title(f"{s.name}  (radius {s.radius:.3f})", fontsize=9)
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.5)
        ax.axvline(0, color="0.85", lw=0.5)
        ax.set_xlabel("Re")
        ax.set_ylabel("Im")
    for ax in list(axes.flat)[len(spectra):]:
        ax.set_visible(False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lower()[1:], dpi=120)
    plt.close(fig)


from . import _cli_dataset as _ds  # noqa: E402 - dataset mode (record --dataset/--store, evaluate)


@app.command("record", cls=_VariadicOptions)
def record_command(
    areas: Annotated[list[int], typer.Option("--areas", help="Areas to record: --areas 6 7.")],
    paths: Annotated[Optional[list[Path]], typer.Argument(
        exists=True, dir_okay=False, metavar="[CHECKPOINT] [IMAGE]...",
        help="An optional checkpoint (.safetensors/.pth/.pt/.ckpt; default: the bundled model), then image files "
             "(none with --dataset).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Destination .npy (several areas: <stem>_area<i>.npy); image files only.")] = None,
    window: Annotated[Optional[tuple[int, int]], typer.Option(
        help="START STOP global step indices (0..P-1 spontaneous, then stimulus); default: all steps.")] = None,
    spatial_mean: Annotated[bool, typer.Option(help="Average each channel over space: (steps, B, c).")] = False,
    float16: Annotated[bool, typer.Option("--float16", help="Store float16 instead of float32.")] = False,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stimulus steps (default: the config's).")] = None,
    spontaneous_steps: Annotated[Optional[int], typer.Option(min=0, help="Blank steps first.")] = None,
    protocol: AnalysisProtocolOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the protocol's noise.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Trials simulated at a time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    dataset: _ds.DatasetOpt = None,
    split: _ds.SplitOpt = _ds.DatasetSplit.test,
    data_root: _ds.DataRootOpt = None,
    limit: _ds.LimitOpt = None,
    store: _ds.StoreOpt = None,
) -> None:
    """Record the rates of chosen areas at every step: image files into .npy memory maps, or a whole dataset
    split (--dataset) into a Zarr store (--store), sharded under torchrun and resumable."""
    from .analysis import record_activity

    if dataset is not None:
        checkpoint = paths[0] if paths and paths[0].suffix.lower() in CHECKPOINT_SUFFIXES else None
        if len(paths or []) > (checkpoint is not None) or protocol is not None or out is not None:
            raise ValueError("--dataset: takes no image files, --protocol or --out (an optional checkpoint, and "
                             "--store for the output)")
        _ds.record_dataset_command(checkpoint, areas, store, dataset, split, data_root, limit, window, spatial_mean,
                                   float16, steps, spontaneous_steps, batch_size, as_json=as_json)
        return
    if out is None:
        raise ValueError("--out: expected a destination .npy for image files (or --dataset NAME --store DIR)")
    checkpoint, image_paths = _split_model_and_images(paths or [])
    model = _load_model(checkpoint)
    stimulus, _ = _stimulus(model, image_paths, protocol, seed)
    rec = record_activity(model, stimulus, areas, out=out, window=window, spatial_mean=spatial_mean,
                          dtype="float16" if float16 else "float32", steps=steps, spontaneous_steps=spontaneous_steps,
                          batch_size=batch_size, progress=not as_json and sys.stderr.isatty())
    if as_json:
        _echo_json(rec.to_dict())
        return
    for a, p in rec.paths.items():
        typer.echo(f"area {a}: {p} {rec.shapes[a]} {rec.dtype}")
    typer.echo(f"window {rec.window[0]}..{rec.window[1]} of {rec.spontaneous_steps} spontaneous + {rec.steps} "
               f"stimulus steps; {rec.dt_ms:g} ms per step")


@app.command("reaction-time")
def reaction_time_command(
    paths: AnalysisPathsArg,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Top-class probability to reach.")] = 0.9,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stimulus steps (default: the config's).")] = None,
    spontaneous_steps: Annotated[Optional[int], typer.Option(min=0, help="Blank steps first.")] = None,
    tau_ms: Annotated[float, typer.Option(min=0.0, help="Time constant in ms (dt = alpha * tau).")] = 10.0,
    protocol: AnalysisProtocolOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the protocol's noise.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """When each image's top-class probability first reaches --threshold (steps and ms after onset)."""
    from .analysis import measure_reaction_times

    checkpoint, image_paths = _split_model_and_images(paths)
    model = _load_model(checkpoint)
    stimulus, onset = _stimulus(model, image_paths, protocol, seed)
    rt = measure_reaction_times(model, stimulus, threshold, steps=steps, spontaneous_steps=spontaneous_steps,
                                tau_ms=tau_ms, onset=onset)
    preset = model.config.preset
    names = preset.class_names if preset is not None else None

    def label(c: int) -> str:
        return "-" if c < 0 else (f"{c} ({names[c]})" if names is not None and c < len(names) else str(c))

    if as_json:
        data = rt.to_dict()
        data["images"] = [str(p) for p in image_paths]
        _echo_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("image", "class", "steps", "ms", "probability", "final class",
                  title=f"reaction times (threshold {threshold:g}, {rt.dt_ms:g} ms per step)")
    for i, p in enumerate(image_paths):
        crossed = rt.steps[i] >= 0
        table.add_row(str(p), label(int(rt.classes[i])), str(rt.steps[i]) if crossed else "never",
                      f"{rt.ms[i]:g}" if crossed else "-", f"{rt.probabilities[i]:.3f}" if crossed else "-",
                      label(int(rt.final_classes[i])))
    Console().print(table)




_ds.register(app)  # dataset mode: evaluate (record --dataset is a branch of record)


def main() -> None:  # console-script entry point
    app()


