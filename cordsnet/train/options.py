"""The options of a training run (:class:`TrainOptions`): what it trains, for how long, with which protocol.

Torch only for :data:`TRAIN_DTYPES`; the run's resume check (:mod:`cordsnet.train.run_state`) compares these fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .. import validate
from .forwards import TrainProtocol
from .stages import StageSpec, resolve_stage, resolve_stages

__all__ = ["TRAIN_DTYPES", "TrainOptions"]

TRAIN_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainOptions:
    """Everything a training run needs. Defaults are the published recipe (docs/specification.md §4) for R8
    on ImageNet except dataset/depth; per-stage settings go in `epochs`, `lr` and `stage_overrides`.

    Attributes:
        dataset: a key of :data:`cordsnet.data.DATASETS`.
        depth: 2, 4, 6 or 8.
        image_size: model input side (default: the dataset preset's).
        stages: a pipeline name ("all", "finetune"), a stage name, or a sequence of stage names.
        out: output directory (checkpoints, metrics.jsonl).
        overwrite: replace a run already in `out` (its last/final/stage checkpoints and metrics.jsonl are
            removed first). Without it, a directory holding a run is refused unless the run resumes it.
        batch_size: global batch size (split evenly across ranks).
        epochs: per-stage epochs, e.g. {"compat": 30}; an int sets every trained stage.
        lr: per-stage learning rates, e.g. {"linear": 1e-4}; a float sets every trained stage.
        stage_overrides: any other :class:`StageSpec` field per stage, e.g. {"anneal": {"slope_decrement": 0.25}}.
        steps / spontaneous_steps / alpha: the protocol of the recurrent stages (100 / 100 / 0.2).
        recovery_steps / penalty_window: blank steps after the stimulus and how many of the last ones
            the spontaneous-stability penalty averages (100 / 10).
        ce_window: how many final stimulus steps the time-weighted cross-entropy covers (30).
        seed: seeds the initial weights, data order and augmentation.
        device: "cpu", "cuda", "cuda:1", ... (default: the local GPU under torchrun, else cuda if
            available, else cpu).
        dtype: "float32" (default) or "float64" (the model, BatchNorms, batches and optimiser state;
            float64 makes runs comparable across machines and process counts to rounding error).
        data_root / download / augment / dense / val_fraction / num_workers: data options.
        dataset_kwargs: builder-specific options (``fake``: num_classes, in_channels, fake_size).
        limit_train / limit_val: use only the first N samples of a split (tests, benchmarks).
        max_batches: stop every epoch after N batches (benchmarks).
        init: start from this checkpoint (its extra tensors restore BatchNorm / folded biases).
        progress: show a rich progress bar (rank 0); when off, one log line per epoch instead.
        threads: torch intra-op threads for this process (None: leave torch's default). On a shared
            or oversubscribed CPU, 1 is often several times faster than the default.
        allow_changes: let a resume change options that shape the result (learning rate, batch size,
            seed, protocol, stages, epochs, ...); the changes are recorded in every later checkpoint
            (``train.changes``). Without it such a resume is refused, listing what differs.
    """

    dataset: str = "digits"  # the dataset registry key
    depth: int = 4  # CordsNet-R4
    image_size: int | None = None  # None: the dataset preset's default side
    stages: str | Sequence[str] = "all"  # the whole staged pipeline
    out: str | os.PathLike = "runs/train"  # where checkpoints and metrics go
    overwrite: bool = False  # never replace an existing run unless asked
    batch_size: int = 256  # the published global batch
    epochs: Mapping[str, int] | int | None = None  # None: each stage's published epochs
    lr: Mapping[str, float] | float | None = None  # None: each stage's published lr
    stage_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # none
    steps: int = 100  # published stimulus steps
    spontaneous_steps: int = 100  # published blank steps before the stimulus
    alpha: float = 0.2  # published dt / tau (2 ms steps)
    recovery_steps: int = 100  # published blank steps after the stimulus (penalty)
    penalty_window: int = 10  # published: the penalty averages the last 10 recovery steps
    ce_window: int = 30  # published: the CE covers the last 30 stimulus steps
    seed: int = 0  # reproducible by default
    device: str | None = None  # None: pick the local GPU, else CPU
    dtype: str = "float32"  # the published models' precision
    data_root: str | None = None  # None: the dataset's default cache directory
    download: bool = True  # fetch missing datasets
    augment: bool = True  # the published training augmentation
    dense: bool = False  # False: resize to image_size like the published models
    val_fraction: float = 0.1  # share of the training split held out for validation
    num_workers: int = 0  # load data in the main process
    dataset_kwargs: Mapping[str, Any] = field(default_factory=dict)  # none
    limit_train: int | None = None  # None: the whole training split
    limit_val: int | None = None  # None: the whole validation split
    max_batches: int | None = None  # None: whole epochs
    init: str | os.PathLike | None = None  # None: random initial weights
    progress: bool = False  # library default: log lines, no bars
    threads: int | None = None  # None: torch's default thread count
    allow_changes: bool = False  # a resume refuses changed result-shaping options unless this is set

    def stage_specs(self) -> list[StageSpec]:
        """The resolved stages, overrides applied."""
        names = resolve_stages(self.stages)
        unknown = sorted(set(self.stage_overrides) - set(names))
        if unknown:
            raise ValueError(f"stage_overrides: stages {unknown} are not in this run's stages {list(names)}")
        specs = []
        for name in names:
            over: dict[str, Any] = dict(self.stage_overrides.get(name, {}))
            for key, value in (("epochs", self.epochs), ("lr", self.lr)):
                if value is None:
                    continue
                if isinstance(value, Mapping):
                    unknown = sorted(set(value) - set(names))
                    if unknown:
                        raise ValueError(f"{key}: stages {unknown} are not in this run's stages {list(names)}")
                    if name in value:
                        over[key] = value[name]
                elif name != "fold":
                    over[key] = value
            specs.append(resolve_stage(name, over))
        return specs

    def validate(self) -> None:
        """Check the scalar options (the stages are checked by :meth:`stage_specs`).

        Raises:
            ValueError: "name: expected X, got Y" for the first option out of range.
        """
        validate.positive_int("batch_size", self.batch_size)
        validate.positive_int("steps", self.steps)
        validate.positive_int("ce_window", self.ce_window)
        for name in ("spontaneous_steps", "recovery_steps", "penalty_window"):
            validate.integer(name, getattr(self, name), min=0)
        validate.fraction("alpha", self.alpha)
        validate.integer("seed", self.seed)
        validate.choice("dtype", self.dtype, TRAIN_DTYPES)
        for name in ("threads", "limit_train", "limit_val", "max_batches", "image_size"):
            validate.optional_integer(name, getattr(self, name), 1, min=1)
        validate.integer("num_workers", self.num_workers, min=0)
        validate.number("val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)

    def protocol(self) -> TrainProtocol:
        """The recurrent stages' protocol."""
        return TrainProtocol(steps=self.steps, spontaneous_steps=self.spontaneous_steps, alpha=float(self.alpha),
                        recovery_steps=self.recovery_steps, penalty_window=self.penalty_window,
                        ce_window=self.ce_window)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["out"] = str(self.out)
        data["init"] = None if self.init is None else str(self.init)
        data["stages"] = list(resolve_stages(self.stages))
        return json.dumps(data, sort_keys=True, default=str)
