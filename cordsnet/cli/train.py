"""The ``train`` command: the staged method (CNN -> fold -> inverse -> linear -> anneal -> finetune)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..progress import is_terminal
from ._shared import checkpoint_path, log


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


def train(
    dataset: Annotated[str, typer.Option(help="digits, mnist, fashionmnist, cifar10, cifar100, imagenet, fake.")] = "digits",
    depth: Annotated[int, typer.Option(help="CordsNet-R{depth}: 2, 4, 6 or 8.")] = 4,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (default: the dataset's).")] = None,
    stage: Annotated[str, typer.Option(help="'all' (compat,fold,inverse,linear,anneal,finetune), 'finetune' "
                                            "(from random initialisation), 'qat' (quantisation-aware fine-tuning of --init for "
                                            "int8), one stage, or a comma list.")] = "all",
    epochs: Annotated[Optional[str], typer.Option(help="Epochs: N for every stage or e.g. 'compat=30,linear=2' "
                                                       "(default: the published ones).")] = None,
    batch_size: Annotated[int, typer.Option(help="Global batch size (split over torchrun processes).")] = 256,
    lr: Annotated[Optional[str], typer.Option(help="Learning rate: X for every stage or e.g. 'linear=1e-4'.")] = None,
    out: Annotated[Path, typer.Option(help="Output directory (checkpoints, metrics.jsonl).")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.safetensors.")] = False,
    allow_changes: Annotated[bool, typer.Option(
        "--allow-changes", help="With --resume: continue although result-shaping options (lr, batch size, seed, "
                                "protocol, stages, epochs) differ from the run's; the changes are recorded.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the run already in OUT (its checkpoints and metrics.jsonl); without it "
                            "a directory holding a run is refused unless --resume.")] = False,
    init: Annotated[Optional[Path], typer.Option(callback=checkpoint_path,
                                                 help="Start from this checkpoint, or a bundled model's name "
                                                      "(digits, digits-qat).")] = None,
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
    from ..train import TrainOptions, Trainer

    options = TrainOptions(
        dataset=dataset, depth=depth, image_size=image_size, stages=stage, out=out, batch_size=batch_size,
        epochs=_stage_values("--epochs", epochs, int), lr=_stage_values("--lr", lr, float),
        stage_overrides=_stage_settings(settings or []), steps=steps, spontaneous_steps=spontaneous_steps,
        recovery_steps=recovery_steps, alpha=alpha, seed=seed, device=device,
        data_root=str(data_root) if data_root is not None else None, download=download, augment=augment,
        dense=dense, num_workers=workers, init=init, progress=progress and is_terminal(sys.stderr), threads=threads,
        overwrite=overwrite, allow_changes=allow_changes,
    )
    def on_epoch(metrics: dict[str, Any]) -> None:
        typer.echo(json.dumps(metrics))
        log.info("stage %s epoch %s done", metrics.get("stage"), metrics.get("epoch"))

    trainer = Trainer(options, on_epoch=on_epoch)
    log.info("training %s (R%d), stages %s, into %s", dataset, depth, stage, out)
    summary = trainer.run(resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps({"summary": summary}))
