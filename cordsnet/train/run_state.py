"""A training run's state as it is stored in its checkpoints: written and parsed in this one place.

The trainer's checkpoints are ordinary project checkpoints (:func:`cordsnet.checkpoint.save_checkpoint`)
whose extra tensors and string metadata carry what a resumed run needs. The layout:

========================  =============================================================
extra tensor              what
========================  =============================================================
``bn.<name>``             the compatibility CNN's BatchNorm layers (:class:`BatchNormSet`)
``folded.<name>``         the folded CNN's biases and frozen convolutions (:class:`FoldedCNN`)
``optim.<index>.<key>``   the optimiser state of trainable parameter `index` (e.g. ``exp_avg``)
``best_acc``              validation accuracy of the best epoch of a ``select_best`` stage
``best.<name>``           that epoch's model state dict
``quant.<name>``          int8 activation range (low, high) of a quantisation-aware stage
                          (:data:`cordsnet.quantization.RANGE_PREFIX`; kept in the final checkpoint,
                          where the exporter reads it)
========================  =============================================================

==========================  ===========================================================
metadata key                JSON
==========================  ===========================================================
``train.state``             stage index and name, epoch, done, stage names, scheduler iteration,
                            update slope, per-stage summary (:class:`TrainState`)
``train.options``           the run's :class:`~cordsnet.train.options.TrainOptions`
``train.stage_spec``        the current stage's :class:`~cordsnet.train.stages.StageSpec`
``train.metrics``           the metric history (one dict per epoch)
``train.optimizer``         the optimiser's parameter groups (only while a stage is in progress)
``train.summary``           per-stage summary (final checkpoint)
``train.changes``           options changed on resume with ``allow_changes``: one
                            {"stage", "epoch", "changes": {option: [before, after]}} per resume
==========================  ===========================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from .._io import load_json
from ..quantization import RANGE_PREFIX

__all__ = ["RESULT_NEUTRAL_OPTIONS", "RunExtras", "TrainState", "describe_changes", "option_changes", "pack_extras",
           "parse_train_state", "unpack_extras"]

BN, FOLDED, OPTIM, BEST, BEST_ACC = "bn.", "folded.", "optim.", "best.", "best_acc"

STATE_KEY = "train.state"
OPTIONS_KEY = "train.options"
SPEC_KEY = "train.stage_spec"
METRICS_KEY = "train.metrics"
OPTIMIZER_KEY = "train.optimizer"
SUMMARY_KEY = "train.summary"
CHANGES_KEY = "train.changes"

# TrainOptions fields that do not shape the result: where it runs and how it reports. Every other field
# (learning rates, batch size, seed, protocol, stages, epochs, data limits, ...) must be the same on resume.
RESULT_NEUTRAL_OPTIONS = frozenset({"out", "overwrite", "device", "progress", "threads", "num_workers", "data_root",
                                    "download", "allow_changes"})


def option_changes(stored: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{option: (stored value, value now)} for every result-shaping option a resume would change.

    Args:
        stored: the run's options as its checkpoint recorded them (``train.options``, parsed).
        now: the options of the resuming call, in the same JSON form.
    """
    keys = (set(stored) | set(now)) - RESULT_NEUTRAL_OPTIONS
    return {k: (stored.get(k), now.get(k)) for k in sorted(keys) if stored.get(k) != now.get(k)}


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """One line: ``lr 0.001 -> 0.01, seed 0 -> 1``."""
    return ", ".join(f"{k} {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}"
                     for k, (a, b) in changes.items())


@dataclass
class RunExtras:
    """The extra tensors of a trainer checkpoint, split by what they belong to.

    Attributes:
        bn: BatchNormSet state dict ({} if none).
        folded: FoldedCNN state dict ({} before the ``fold`` stage).
        optim: optimiser state by parameter index ({} when no stage is in progress).
        best: (validation accuracy, model state dict) of the best epoch so far, or None.
        ranges: int8 activation ranges ``quant.<name>`` tensors, prefix included ({} if none).
    """

    bn: dict[str, Tensor] = field(default_factory=dict)
    folded: dict[str, Tensor] = field(default_factory=dict)
    optim: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    best: tuple[float, dict[str, Tensor]] | None = None
    ranges: dict[str, Tensor] = field(default_factory=dict)


def pack_extras(extras: RunExtras) -> dict[str, Tensor]:
    """The flat ``extra_tensors`` mapping for :func:`~cordsnet.checkpoint.save_checkpoint`."""
    out = {BN + k: v for k, v in extras.bn.items()}
    out.update({FOLDED + k: v for k, v in extras.folded.items()})
    for idx, st in extras.optim.items():
        for key, val in st.items():
            out[f"{OPTIM}{idx}.{key}"] = val if isinstance(val, Tensor) else torch.tensor(val)
    if extras.best is not None:
        out[BEST_ACC] = torch.tensor(extras.best[0], dtype=torch.float64)
        out.update({BEST + k: v for k, v in extras.best[1].items()})
    out.update(extras.ranges)
    return out


def unpack_extras(extra: Mapping[str, Tensor], *, strict: bool = True) -> RunExtras:
    """Split the extra tensors read back by :func:`~cordsnet.checkpoint.read_extra_tensors`.

    Args:
        extra: the extra tensors, without their ``extra.`` prefix.
        strict: refuse keys outside the layout (False: ignore them, e.g. a checkpoint another tool
            wrote that only starts a run).

    Raises:
        ValueError: with `strict`, a key outside the layout above.
    """
    out = RunExtras()
    best: dict[str, Tensor] = {}
    for key, val in extra.items():
        if key == BEST_ACC:
            continue
        if key.startswith(BN):
            out.bn[key[len(BN):]] = val
        elif key.startswith(FOLDED):
            out.folded[key[len(FOLDED):]] = val
        elif key.startswith(BEST):
            best[key[len(BEST):]] = val
        elif key.startswith(RANGE_PREFIX):
            out.ranges[key] = val
        elif key.startswith(OPTIM) and key.count(".") >= 2 and key.split(".", 2)[1].isdigit():
            _, idx, name = key.split(".", 2)
            out.optim.setdefault(int(idx), {})[name] = val
        elif strict:
            raise ValueError(f"extra tensors: unexpected key {key!r}; expected the prefixes "
                             f"{[BN, FOLDED, OPTIM, BEST, RANGE_PREFIX]} or {BEST_ACC!r}")
    if BEST_ACC in extra:
        out.best = (float(extra[BEST_ACC]), best)
    return out


@dataclass
class TrainState:
    """Where a run stands (the ``train.state`` metadata).

    Attributes:
        stage_index, stage: the stage being (or last) trained.
        epoch: epochs of that stage completed.
        done: the stage is finished (resume starts the next one).
        stages: the run's stage names, in order (a resume must use the same).
        iteration: the scheduler's iteration counter within the stage.
        update_slope: the model's update slope at that point.
        summary: per-stage summary so far.
    """

    stage_index: int
    stage: str
    epoch: int
    done: bool
    stages: list[str]
    iteration: int
    update_slope: float
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"stage_index": self.stage_index, "stage": self.stage, "epoch": self.epoch,
                           "done": self.done, "stages": self.stages, "scheduler": {"iteration": self.iteration},
                           "update_slope": self.update_slope, "summary": self.summary})


def parse_train_state(meta: Mapping[str, str], source: str = "checkpoint") -> TrainState:
    """The :class:`TrainState` of a trainer checkpoint's metadata.

    Raises:
        ValueError: no ``train.state`` (not written by the trainer) or a malformed one.
    """
    if STATE_KEY not in meta:
        raise ValueError(f"{source}: not written by the trainer (no {STATE_KEY} metadata)")
    try:
        raw = load_json(meta[STATE_KEY], STATE_KEY, allow_nan=True)  # a stage summary may hold a NaN metric
        state = TrainState(stage_index=int(raw["stage_index"]), stage=str(raw["stage"]), epoch=int(raw["epoch"]),
                           done=bool(raw["done"]), stages=[str(s) for s in raw["stages"]],
                           iteration=int(raw["scheduler"]["iteration"]), update_slope=float(raw["update_slope"]),
                           summary=dict(raw.get("summary", {})))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise ValueError(f"{source}: malformed {STATE_KEY} metadata ({type(exc).__name__}: {exc})") from None
    # A position the run could have reached: a stage of its own list, named as listed, no negative count.
    if not (0 <= state.stage_index < len(state.stages) and state.stages[state.stage_index] == state.stage
            and state.epoch >= 0 and state.iteration >= 0 and math.isfinite(state.update_slope)):
        raise ValueError(f"{source}: malformed {STATE_KEY} metadata (stage {state.stage_index} {state.stage!r} of "
                         f"{state.stages}, epoch {state.epoch}, iteration {state.iteration}, slope "
                         f"{state.update_slope}); resume from an intact checkpoint")
    return state
