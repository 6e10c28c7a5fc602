"""Staged training of CordsNet (docs/specification.md §4): stages as data, one loop, single process or DDP.

Import cost: this package imports torch (``import cordsnet`` does not import it).
"""

from ..extras import require

require("torch", "cordsnet.train")

from .cnn import BatchNormSet, FoldedCNN, compat_forward, fold_batchnorm, folded_activity, folded_forward
from .losses import (anneal_slope, contraction_penalty, inverse_loss, spontaneous_penalty, time_weighted_ce,
                     time_weights)
from .stages import PIPELINES, STAGES, StageSpec, lr_at, resolve_stage, resolve_stages, slope_at
from .forwards import EVALUATORS, FORWARDS, OPTIMIZERS, TRAINABLE, StageContext, evaluate_accuracy
from .run_state import RunExtras, TrainState, pack_extras, parse_train_state, unpack_extras
from .options import TRAIN_DTYPES, TrainOptions
from .trainer import Trainer, train

__all__ = [
    "BatchNormSet", "TRAIN_DTYPES", "EVALUATORS", "OPTIMIZERS", "RunExtras", "StageContext", "TRAINABLE", "TrainState",
    "pack_extras", "parse_train_state", "unpack_extras", "FORWARDS", "FoldedCNN", "PIPELINES", "STAGES", "StageSpec", "TrainOptions",
    "Trainer", "anneal_slope", "compat_forward", "contraction_penalty", "evaluate_accuracy", "fold_batchnorm",
    "folded_activity", "folded_forward", "inverse_loss", "lr_at", "resolve_stage", "resolve_stages", "slope_at",
    "spontaneous_penalty", "time_weighted_ce", "time_weights", "train",
]
