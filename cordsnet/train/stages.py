"""The training stages as data (docs/specification.md §4): one :class:`StageSpec` per stage, one registry.

A stage says which forward wiring it uses (``kind``), which parameters train, which loss terms are
on, the optimiser and its schedule, the update nonlinearity's slope, how it is evaluated and for how
many epochs it runs. The defaults are the published hyperparameters; every field can be overridden
(:func:`resolve_stage`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .. import validate
from .losses import anneal_slope

__all__ = [
    "KINDS",
    "ORDER",
    "PIPELINES",
    "STAGES",
    "StageSpec",
    "lr_at",
    "resolve_stage",
    "resolve_stages",
    "slope_at",
]

KINDS: tuple[str, ...] = ("compat", "fold", "inverse", "rnn")
TRAINABLE: tuple[str, ...] = ("cnn", "recurrent", "all", "none")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "rounds")
SLOPES: tuple[str, ...] = ("linear", "anneal", "relu")
EVALS: tuple[str, ...] = ("compat", "folded", "linear", "rnn", "qat")


@dataclass(frozen=True)
class StageSpec:
    """One training stage.

    Attributes:
        name: registry key.
        kind: forward wiring: "compat" (BatchNorm CNN), "fold" (fold BatchNorm, no training),
            "inverse" (fit the recurrent weights to the folded CNN), "rnn" (the recurrent dynamics).
        trainable: "cnn" (every convolution, out_fc and the BatchNorms; not conv_bias), "recurrent"
            (area_conv and conv_bias only), "all" (every model parameter), "none".
        optimizer: "sgd" or "adamw".
        lr: peak learning rate.
        weight_decay: decoupled for AdamW, L2 for SGD.
        momentum: SGD momentum.
        epochs: epochs of this stage.
        clip: gradient-norm clip (None: no clipping).
        schedule: "constant", or "rounds": `rounds` equal rounds, the lr divided by 10 each round,
            each with a linear warm-up over its first `warmup_iters` iterations.
        slope: update nonlinearity: "linear" (slope 1), "anneal" (PReLU slope
            ``max(0, slope_start - slope_decrement * epoch)``), "relu" (slope 0).
        spontaneous: run the blank (spontaneous) phase before the stimulus.
        penalty: weight of the spontaneous-stability penalty (0: off).
        contraction: weight of the inverse stage's contraction regulariser.
        iterations: fixed-point iterations of the inverse stage.
        mix: use CutMix / MixUp on datasets whose reference recipe does.
        select_best: at the end of the stage keep the epoch with the best validation accuracy (among
            the evaluated epochs).
        eval: how validation accuracy is measured: "compat", "folded", "linear" (linear RNN, no
            spontaneous phase), "rnn" (spontaneous phase then the stimulus, current slope).
        batches: at most this many batches per epoch (None: the whole training set). A shortened
            epoch still draws a fresh random subset, and the slope / lr schedules count these epochs.
        eval_every: validate every N epochs (0: only at the end of the stage, which always validates).
        quantize: quantisation-aware: the convolutions and the read-out compute as the int8 export
            does (:class:`cordsnet.quantization.FakeQuant`: int8 weights per channel, uint8
            activations at their inputs and outputs) during the stimulus and recovery steps (the
            spontaneous state stays float32, as the artifact stores it); the activation ranges
            are calibrated on float trajectories when the stage starts, then follow each batch (moving
            average, `range_momentum`) and are stored in the checkpoint.
        range_momentum: weight of one batch in the activation ranges' moving average.
        calibration_batches: training batches whose float trajectories give the first activation ranges.
    """

    name: str
    kind: str
    trainable: str = "all"
    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 1e-2
    momentum: float = 0.9
    epochs: int = 20
    clip: float | None = 1e-4
    schedule: str = "constant"
    rounds: int = 3
    round_decay: float = 0.1
    warmup_iters: int = 100
    slope: str = "relu"
    slope_start: float = 0.95
    slope_decrement: float = 0.05
    spontaneous: bool = True
    penalty: float = 0.0
    contraction: float = 10.0
    iterations: int = 3
    mix: bool = False
    select_best: bool = False
    eval: str = "rnn"
    batches: int | None = None
    eval_every: int = 1
    quantize: bool = False
    range_momentum: float = 0.05
    calibration_batches: int = 4

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}: "
        for name, value, valid in (("kind", self.kind, KINDS), ("trainable", self.trainable, TRAINABLE),
                                   ("optimizer", self.optimizer, OPTIMIZERS),
                                   ("schedule", self.schedule, SCHEDULES), ("slope", self.slope, SLOPES),
                                   ("eval", self.eval, EVALS)):
            validate.choice(where + name, value, valid)
        validate.integer(where + "epochs", self.epochs, min=0)
        validate.number(where + "lr", self.lr, low=0, low_open=True)
        validate.optional_integer(where + "batches", self.batches, 1, min=1)
        validate.integer(where + "eval_every", self.eval_every, min=0)
        validate.fraction(where + "range_momentum", self.range_momentum)
        validate.integer(where + "calibration_batches", self.calibration_batches, min=1)
        if (self.eval == "qat") != self.quantize:
            raise ValueError(f"{where}eval: 'qat' goes with quantize=True and only with it, got eval "
                             f"{self.eval!r} with quantize={self.quantize}")
        if self.quantize and self.select_best:
            raise ValueError(f"{where}select_best: not with quantize=True (the activation ranges follow the last "
                             "epoch's weights, not the best epoch's)")
        if self.quantize and self.kind != "rnn":
            raise ValueError(f"{where}quantize: only a recurrent ('rnn') stage can be quantisation-aware, "
                             f"got kind {self.kind!r}")
        if self.clip is not None:
            validate.number(where + "clip", self.clip, low=0, low_open=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_ADAMW = dict(optimizer="adamw", weight_decay=1e-2)  # AdamW with torch's default weight decay

STAGES: dict[str, StageSpec] = {
    "compat": StageSpec("compat", "compat", trainable="cnn", optimizer="sgd", lr=0.1, weight_decay=1e-4,
                        momentum=0.9, epochs=300, clip=None, schedule="rounds", rounds=3, warmup_iters=100,
                        slope="relu", spontaneous=False, mix=True, eval="compat"),
    "fold": StageSpec("fold", "fold", trainable="none", epochs=0, clip=None, eval="folded"),
    "inverse": StageSpec("inverse", "inverse", trainable="recurrent", lr=1e-4, clip=1e-3, epochs=100,
                         slope="linear", spontaneous=False, eval="linear", **_ADAMW),
    "linear": StageSpec("linear", "rnn", trainable="all", lr=1e-5, clip=1e-4, epochs=100, slope="linear",
                        spontaneous=False, penalty=0.0, eval="linear", **_ADAMW),
    "anneal": StageSpec("anneal", "rnn", trainable="all", lr=1e-5, clip=1e-4, epochs=20, slope="anneal",
                        spontaneous=True, penalty=1e-3, eval="rnn", **_ADAMW),
    "finetune": StageSpec("finetune", "rnn", trainable="all", lr=1e-5, clip=1e-4, epochs=20, slope="relu",
                          spontaneous=True, penalty=1e-3, select_best=True, eval="rnn", **_ADAMW),
    # Quantisation-aware fine-tuning of a trained float model (start it with --init): the int8 export's
    # rounding inside the recurrent loop; export afterwards with calibration="checkpoint".
    "qat": StageSpec("qat", "rnn", trainable="all", lr=1e-5, clip=1e-4, epochs=5, slope="relu",
                     spontaneous=True, penalty=1e-3, quantize=True, eval="qat", **_ADAMW),
}

# Named sequences of stages. "finetune" alone trains the relu RNN from random initialisation; "qat"
# fine-tunes a trained model for int8.
PIPELINES: dict[str, tuple[str, ...]] = {
    "all": ("compat", "fold", "inverse", "linear", "anneal", "finetune"),
    "finetune": ("finetune",),
    "qat": ("qat",),
}
ORDER: tuple[str, ...] = PIPELINES["all"] + ("qat",)  # the order stages run in (a run may skip some)


def resolve_stage(name: str, overrides: Mapping[str, Any] | None = None) -> StageSpec:
    """The registered stage `name` with some fields replaced.

    Raises:
        ValueError: unknown stage name or unknown field (the message lists the valid ones).
    """
    if name not in STAGES:
        raise ValueError(f"stage: expected one of {sorted(STAGES)} (or a pipeline {sorted(PIPELINES)}), "
                         f"got {name!r}")
    spec = STAGES[name]
    if not overrides:
        return spec
    fields = {f.name for f in dataclasses.fields(StageSpec)} - {"name", "kind"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"stage {name!r}: unknown settings {unknown}; valid ones are {sorted(fields)}")
    return dataclasses.replace(spec, **dict(overrides))


def resolve_stages(stages: str | Sequence[str]) -> tuple[str, ...]:
    """Stage names from a pipeline name ("all", "finetune"), a stage name, or a list / comma list."""
    if isinstance(stages, str):
        if stages in PIPELINES:
            return PIPELINES[stages]
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    names = tuple(stages)
    if not names:
        raise ValueError("stage: expected at least one stage")
    for n in names:
        resolve_stage(n)
    order = ORDER
    positions = [order.index(n) for n in names]
    if positions != sorted(positions) or len(set(names)) != len(names):
        raise ValueError(f"stage: stages must follow the order {list(order)} without repeats, got {list(names)}")
    return names


def slope_at(spec: StageSpec, epoch: int) -> float:
    """The update nonlinearity's slope during `epoch` (0-based) of `spec` (1 linear, 0 relu)."""
    if spec.slope == "linear":
        return 1.0
    if spec.slope == "relu":
        return 0.0
    return anneal_slope(epoch, start=spec.slope_start, decrement=spec.slope_decrement)


def lr_at(spec: StageSpec, epoch: int, iteration: int, iters_per_epoch: int) -> float:
    """Learning rate at global `iteration` (0-based, within the stage) of `epoch`.

    "constant": ``spec.lr``. "rounds": the stage's epochs split into ``spec.rounds`` equal rounds; round
    r uses ``lr * round_decay**r`` with a linear warm-up over the round's first ``warmup_iters``
    iterations (the published compatibility-CNN recipe).
    """
    if spec.schedule == "constant":
        return spec.lr
    per_round = max(1, math.ceil(spec.epochs / spec.rounds))
    rnd = min(epoch // per_round, spec.rounds - 1)
    lr = spec.lr * spec.round_decay ** rnd
    since = iteration - rnd * per_round * iters_per_epoch
    if spec.warmup_iters > 0 and since < spec.warmup_iters:
        lr *= (since + 1) / spec.warmup_iters
    return lr
