"""Dataset mode of ``cordsnet-cli``: ``record --dataset ... --store`` and ``evaluate``, sharded under torchrun.

Both commands run unchanged as one process or under ``torchrun --nproc-per-node N [--nnodes ...]``:
each rank simulates its shard of the images on its device (CUDA ``LOCAL_RANK`` where present, else the
CPU) and writes its own chunks of one Zarr store (:mod:`cordsnet.analysis.store`); rank 0 prints the
summary. ``evaluate`` is :func:`evaluate_command`; ``record``'s dataset branch calls
:func:`record_dataset_command`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..names import SPLITS, choices
from ._shared import CheckpointArg

__all__ = ["DatasetSplit", "evaluate_command", "record_dataset_command"]


DatasetSplit = choices("DatasetSplit", SPLITS)  # cordsnet.data's splits
Readout = choices("Readout", ("all", "last"))  # what evaluate stores: the logits after every step, or the last


DatasetOpt = Annotated[Optional[str], typer.Option(
    "--dataset", help="A registered dataset (cordsnet.data.DATASETS), e.g. digits; records/evaluates its split.")]
SplitOpt = Annotated[DatasetSplit, typer.Option("--split", help="Split of --dataset.")]
DataRootOpt = Annotated[Optional[Path], typer.Option(
    "--data-root", help="Dataset directory (default: $CORDSNET_DATA or ~/.cache/cordsnet/data).")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N images of the split.")]
StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="Destination Zarr v3 store (a directory); rerun the same command to resume it.")]


class _StderrHandler(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is at the time (a test runner may swap it between commands)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _logging() -> None:
    """Progress log lines (one per --log-every images) on stderr, once per process."""
    if any(type(h) is logging.StreamHandler and h.stream is sys.stderr for h in logging.getLogger().handlers):
        return  # main() already sends cordsnet's log lines to stderr: adding a handler would print each twice
    log = logging.getLogger("cordsnet.record")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _device(device: Optional[str]) -> Any:
    """This rank's device: --device if given, else CUDA device LOCAL_RANK where present, else the CPU."""
    from ..train.distributed import pick_device

    return pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))


def _model_and_sha(checkpoint: Optional[Path], device: Any) -> tuple[Any, str]:
    from .._io import file_sha256
    from ._shared import checkpoint_source, load_model

    source = checkpoint_source(checkpoint)
    model = load_model(checkpoint).to(device)
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)
    return model.eval(), file_sha256(source)


def _check_store(store: Path, checkpoint: Optional[Path], data_root: Optional[Path]) -> None:
    """The store (a directory the command writes into) may not be, or lie inside, one of its inputs."""
    from .._io import refuse_inputs
    from ._shared import checkpoint_source

    if "://" in str(store):
        return
    source = checkpoint_source(checkpoint)
    if Path(store).exists() and Path(source).exists() and os.path.samefile(store, source):
        raise ValueError(f"--store: {str(store)!r} is the checkpoint this command reads; choose another path")
    refuse_inputs(Path(store) / "zarr.json", [source, data_root], "--store")


def _finish(ctx: Any, report: Any, wall: float) -> dict[str, Any]:
    total = ctx.total(report.written)
    return {"store": report.store, "world": report.world, "images": report.images, "written": total,
            "seconds": round(wall, 3), "images_per_second": round(total / wall, 3) if wall > 0 else 0.0,
            "rank0": report.to_dict()}


def record_dataset_command(
    checkpoint: Optional[Path], areas: list[str], store: Optional[Path], dataset: str, split: DatasetSplit,
    data_root: Optional[Path] = None, limit: Optional[int] = None, window: Optional[tuple[int, int]] = None,
    spatial_mean: bool = False, float16: bool = False, steps: Optional[int] = None,
    spontaneous_steps: Optional[int] = None, batch_size: Optional[int] = None, workers: int = 0,
    device: Optional[str] = None, log_every: int = 100, progress: Optional[bool] = None, as_json: bool = False,
) -> dict[str, Any]:
    """``cordsnet-cli record --dataset NAME --split S --store OUT.zarr``: areas of every image into a store.

    Returns the summary (rank 0 also prints it).
    """
    from .. import validate
    from ..analysis.recording import make_plan
    from ..analysis.evaluation import evaluation_dataset
    from ..analysis.store import dist_context, record_dataset

    if store is None:
        raise ValueError("--store: expected a Zarr store directory for a dataset recording, got none")
    _check_store(store, checkpoint, data_root)
    _logging()
    with dist_context() as ctx:
        model, sha = _model_and_sha(checkpoint, _device(device))
        ds, source = evaluation_dataset(model, dataset, split.value, data_root)
        chosen = list(validate.areas("--area", areas, model.depth, allow_empty=False))
        plan = make_plan(model, chosen, window=window, spatial_mean=spatial_mean,
                         dtype="float16" if float16 else "float32", steps=steps, spontaneous_steps=spontaneous_steps)
        start = time.perf_counter()
        report = record_dataset(model, ds, store, plan, source=source, limit=limit, chunk_images=batch_size or 8,
                                checkpoint_sha256=sha, context=ctx, workers=workers, progress=progress,
                                log_every=log_every)
        summary = _finish(ctx, report, time.perf_counter() - start)
        summary["variables"] = {k: list(v) for k, v in plan.shapes.items()}
        summary["window"] = list(plan.window)
    if ctx.rank == 0:
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            typer.echo(f"wrote {summary['store']}: {summary['images']} images of {dataset}/{split.value}, "
                       f"{', '.join(summary['variables'])}, window {plan.window[0]}..{plan.window[1]}; "
                       f"{summary['written']} simulated now by {summary['world']} process(es) in "
                       f"{summary['seconds']:.1f} s ({summary['images_per_second']:.2f} images/s)")
    return summary


def evaluate_command(
    checkpoint: CheckpointArg = None,
    dataset: Annotated[str, typer.Option("--dataset", help="A registered dataset, e.g. digits.")] = "digits",
    split: SplitOpt = DatasetSplit.test,
    store: Annotated[Path, typer.Option("--store", help="Zarr v3 store of the logits (created or resumed).")] = Path(
        "evaluate.zarr"),
    data_root: DataRootOpt = None,
    limit: LimitOpt = None,
    readout: Annotated[Readout, typer.Option(
        help="all: logits after every stimulus step (the time-resolved curve); last: after the last step.")
    ] = Readout.all,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stimulus steps (default: the config's).")] = None,
    spontaneous_steps: Annotated[Optional[int], typer.Option(
        "--spontaneous-steps", min=0, help="Blank steps first (default: the config's).")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Images per chunk of the store and per simulated batch.")] = 8,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes per rank.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: CUDA LOCAL_RANK if present).")
                      ] = None,
    report: Annotated[Optional[Path], typer.Option(dir_okay=False, help="Write the accuracy report as JSON here.")
                      ] = None,
    plot: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Write the time-resolved accuracy curve to this PNG.")] = None,
    log_every: Annotated[int, typer.Option("--log-every", min=1, help="Images between log lines (no TTY).")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Top-1 accuracy per stimulus step and per class over a dataset split, via a resumable Zarr store of logits.

    Runs as one process or under ``torchrun --nproc-per-node N`` (each rank writes its own chunks).
    """
    from .._io import atomic_path, check_output
    from ..analysis.recording import make_plan
    from ..analysis.evaluation import accuracy_report, evaluation_dataset, plot_accuracy
    from ..analysis.store import dist_context, record_dataset
    from ._shared import checkpoint_source

    _check_store(store, checkpoint, data_root)
    inputs = [checkpoint_source(checkpoint), store, data_root]
    if report is not None:
        check_output(report, inputs=inputs, name="--report")
    if plot is not None:
        check_output(plot, inputs=inputs, suffixes=(".png",), name="--plot")
    if report is not None and plot is not None and Path(report).resolve() == Path(plot).resolve():
        raise ValueError(f"--plot: {str(plot)!r} is also the --report path; choose two files")
    _logging()
    with dist_context() as ctx:
        model, sha = _model_and_sha(checkpoint, _device(device))
        ds, source = evaluation_dataset(model, dataset, split.value, data_root)
        protocol = model.resolve_protocol(steps, spontaneous_steps)
        total = protocol.spontaneous_steps + protocol.steps
        window = (protocol.spontaneous_steps, total) if readout is Readout.all else (total - 1, total)
        plan = make_plan(model, (), window=window, logits=True, steps=protocol.steps,
                         spontaneous_steps=protocol.spontaneous_steps)
        start = time.perf_counter()
        rec = record_dataset(model, ds, store, plan, source=source, readout=readout.value, limit=limit,
                             chunk_images=batch_size, checkpoint_sha256=sha, context=ctx, workers=workers,
                             log_every=log_every)
        summary = _finish(ctx, rec, time.perf_counter() - start)
    if ctx.rank != 0:
        return
    data = accuracy_report(store)
    data["run"] = summary
    if report is not None:
        with atomic_path(report) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=2))
    if plot is not None:
        plot_accuracy(data, plot)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    curve = data["top1"]
    typer.echo(f"{dataset}/{split.value}: {data['images']} images, top-1 {data['top1_last']:.2%} after the last step "
               f"(first step >= 90 %: {data['first_step_above_90']}); {summary['written']} images simulated now "
               f"({summary['images_per_second']:.2f} images/s)")
    if len(curve) > 1:
        marks = sorted({max(0, min(len(curve) - 1, round(f * len(curve)) - 1)) for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
        typer.echo("per step: " + ", ".join(f"{i + 1}: {curve[i]:.1%}" for i in marks))
    typer.echo("per class: " + ", ".join(f"{c['name']}: {c['top1']:.1%}" for c in data["per_class"]))
    for path in (report, plot):
        if path is not None:
            typer.echo(f"wrote {path}")


