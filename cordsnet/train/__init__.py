"""Staged training of CordsNet (specification §4): stages as data, one loop, single process or DDP.

Import cost: this package imports torch (``import cordsnet`` does not import it).
"""

from .cnn import BatchNormSet, FoldedCNN, compat_forward, fold_batchnorm, folded_activity, folded_forward
from .losses import (anneal_slope, contraction_penalty, inverse_loss, spontaneous_penalty, time_weighted_ce,
                     time_weights)
from .stages import PIPELINES, STAGES, StageSpec, lr_at, resolve_stage, resolve_stages, slope_at
from .trainer import EVALUATORS, FORWARDS, TrainOptions, Trainer, evaluate_accuracy, train

__all__ = [
    "BatchNormSet", "EVALUATORS", "FORWARDS", "FoldedCNN", "PIPELINES", "STAGES", "StageSpec", "TrainOptions",
    "Trainer", "anneal_slope", "compat_forward", "contraction_penalty", "evaluate_accuracy", "fold_batchnorm",
    "folded_activity", "folded_forward", "inverse_loss", "lr_at", "resolve_stage", "resolve_stages", "slope_at",
    "spontaneous_penalty", "time_weighted_ce", "time_weights", "train",
]
