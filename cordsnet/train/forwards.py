"""What a training stage runs per batch: the forward modes, the evaluations, the trainable parameters.

Every stage of :mod:`cordsnet.train.stages` names a forward mode (:data:`FORWARDS`), an evaluation
(:data:`EVALUATORS`), the parameters it trains (:data:`TRAINABLE`) and an optimiser
(:data:`OPTIMIZERS`); :class:`~cordsnet.train.trainer.Trainer` looks them up here. The recurrent
modes run the model's own time loop (:func:`cordsnet.functional.trajectory`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from ..model import CordsNet
from ..quantization import ActivationRanges, FakeQuant, int8_dynamics
from .cnn import BatchNormSet, FoldedCNN, compat_forward, folded_activity, folded_forward
from .losses import inverse_loss, spontaneous_penalty, time_weighted_ce, time_weights
from .stages import StageSpec
from .. import functional as CF

__all__ = ["EVALUATORS", "FORWARDS", "OPTIMIZERS", "TrainProtocol", "StageContext", "StageModule", "TRAINABLE",
           "accuracy_counts", "calibrate_ranges", "evaluate_accuracy", "trainable_parameters"]

ForwardResult = tuple[Tensor, Tensor, dict[str, Tensor]]  # (loss, logits (B, K), detached loss terms)


@dataclass(frozen=True)
class TrainProtocol:
    """The recurrent stages' protocol (the :class:`~cordsnet.train.options.TrainOptions` fields).

    Attributes:
        steps: stimulus steps.
        spontaneous_steps: blank steps before the stimulus (stages with ``spontaneous=True``).
        alpha: dt / tau.
        recovery_steps: blank steps after the stimulus, for the spontaneous-stability penalty.
        penalty_window: how many of the last recovery steps the penalty averages.
        ce_window: how many final stimulus steps the time-weighted cross-entropy covers.
    """

    steps: int
    spontaneous_steps: int
    alpha: float
    recovery_steps: int
    penalty_window: int
    ce_window: int


@dataclass
class StageContext:
    """What a forward mode or an evaluation may use: the model, the trainer-side containers, the protocol.

    ``folded`` is None until the ``fold`` stage ran (or a checkpoint written after it was loaded);
    ``ranges`` (the int8 activation ranges) until a quantisation-aware stage starts.
    """

    model: CordsNet
    bn: BatchNormSet
    folded: FoldedCNN | None
    protocol: TrainProtocol
    ranges: ActivationRanges | None = None


# ------------------------------------------------------------------------------ forward modes
def _forward_compat(ctx: StageContext, spec: StageSpec, x: Tensor, y: Tensor) -> ForwardResult:
    logits = compat_forward(ctx.model, ctx.bn, x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    return loss, logits, {}


def _forward_inverse(ctx: StageContext, spec: StageSpec, x: Tensor, y: Tensor) -> ForwardResult:
    model = ctx.model
    if ctx.folded is None:
        raise ValueError("stage 'inverse': needs the folded CNN; run 'compat' and 'fold' first or start "
                         "from a checkpoint written after 'fold' (--init)")
    with torch.no_grad():
        act = folded_activity(model, ctx.folded, x)
    total: Tensor | float = 0.0
    mse_total: Tensor | float = 0.0
    for i in range(model.depth):
        loss, mse = inverse_loss(model.area_conv[i].weight, model.conv_bias[i], act.ff[i], act.pre[i],
                                 iterations=spec.iterations, contraction=spec.contraction)
        total = total + loss
        mse_total = mse_total + mse.detach()
    assert isinstance(total, Tensor) and isinstance(mse_total, Tensor)
    return total, act.logits, {"mse": mse_total}


def _forward_rnn(ctx: StageContext, spec: StageSpec, x: Tensor, y: Tensor) -> ForwardResult:
    """The recurrent dynamics through the model's own time loop: stimulus, then blank recovery steps.

    A quantisation-aware stage (``spec.quantize``) runs the stimulus and recovery steps as the int8
    graph computes them and folds this batch's activation ranges into ``ctx.ranges``; the spontaneous
    state stays float, as the exported artifact stores it.
    """
    model, p = ctx.model, ctx.protocol
    if spec.spontaneous and p.spontaneous_steps > 0:
        spont = model.cached_spontaneous_state(p.spontaneous_steps, p.alpha)  # no gradient, image-independent
    else:
        spont = model.initial_state(1)
    W = model.effective_weights()
    with _quantized(ctx, spec, W) as fq:
        terms = CF.drive_terms(model.dynamics, W, CF.drive(W, x))
        batch = x.shape[0]
        state = tuple(r.expand(batch, *r.shape[1:]) for r in spont)
        window = min(p.ce_window, p.steps)
        logits = []
        for t, state in enumerate(CF.trajectory(model.dynamics, W, state, terms, p.steps, p.alpha)):
            if t >= p.steps - window:
                logits.append(CF.readout(model.dynamics, W, state))
        stacked = torch.stack(logits)
        ce = time_weighted_ce(stacked, y, time_weights(window, device=x.device, dtype=stacked.dtype))
        extra = {"ce": ce.detach()}
        loss = ce
        if spec.penalty > 0 and p.recovery_steps > 0:
            keep = min(p.penalty_window, p.recovery_steps)
            late = [s for t, s in enumerate(CF.trajectory(model.dynamics, W, state, None, p.recovery_steps, p.alpha))
                    if t >= p.recovery_steps - keep]
            pen = spontaneous_penalty(late, spont)
            loss = loss + spec.penalty * pen
            extra["penalty"] = pen.detach()
    if fq is not None:
        ctx.ranges.update(fq.seen)
    return loss, stacked[-1], extra


def _quantized(ctx: StageContext, spec: StageSpec, W: Any) -> Any:
    """A quantisation-aware stage's :class:`FakeQuant` (observing this batch's ranges); else ``with ... as`` None."""
    if not spec.quantize:
        return contextlib.nullcontext()
    if ctx.ranges is None:
        raise ValueError(f"stage {spec.name!r}: a quantisation-aware stage needs activation ranges "
                         "(calibrated when the stage starts)")
    return FakeQuant(ctx.model, W, ctx.ranges, observe=True)


@torch.no_grad()
def calibrate_ranges(model: CordsNet, batches: Iterable[Tensor], protocol: TrainProtocol,
                     momentum: float = 0.05) -> ActivationRanges:
    """The first activation ranges of a quantisation-aware stage: min / max over float trajectories.

    Args:
        model: the float model.
        batches: (B, C, S, S) image batches (training images).
        protocol: the stage's protocol (spontaneous state, steps, alpha).
        momentum: the ranges' moving-average weight for the stage's batches.
    """
    p = protocol
    with int8_dynamics(model, None, spontaneous_steps=p.spontaneous_steps, alpha=p.alpha, quantize=False,
                       observe=True) as fq:  # observes the min / max over every batch and step
        for x in batches:
            model.run(x, steps=p.steps, spontaneous_steps=p.spontaneous_steps, alpha=p.alpha)
    ranges = ActivationRanges(momentum=momentum)
    ranges.update(fq.seen, replace=True)
    return ranges


FORWARDS: dict[str, Callable[[StageContext, StageSpec, Tensor, Tensor], ForwardResult]] = {
    "compat": _forward_compat,
    "inverse": _forward_inverse,
    "rnn": _forward_rnn,
}


# -------------------------------------------------------------------------------- evaluations
def _eval_compat(ctx: StageContext, x: Tensor) -> Tensor:
    return compat_forward(ctx.model, ctx.bn, x)


def _eval_folded(ctx: StageContext, x: Tensor) -> Tensor:
    if ctx.folded is None:
        raise ValueError("evaluation 'folded': needs the folded CNN (run the 'fold' stage first)")
    return folded_forward(ctx.model, ctx.folded, x)


def _eval_linear(ctx: StageContext, x: Tensor) -> Tensor:
    return ctx.model.run(x, steps=ctx.protocol.steps, spontaneous_steps=0, alpha=ctx.protocol.alpha)


def _eval_rnn(ctx: StageContext, x: Tensor) -> Tensor:
    p = ctx.protocol
    return ctx.model.run(x, steps=p.steps, spontaneous_steps=p.spontaneous_steps, alpha=p.alpha)


def _eval_qat(ctx: StageContext, x: Tensor) -> Tensor:
    """The full protocol as the int8 graph computes it (float spontaneous state, quantised steps)."""
    model, p = ctx.model, ctx.protocol
    if ctx.ranges is None:
        raise ValueError("evaluation 'qat': needs the activation ranges of a quantisation-aware stage")
    with int8_dynamics(model, ctx.ranges, spontaneous_steps=p.spontaneous_steps, alpha=p.alpha):
        return model.run(x, steps=p.steps, spontaneous_steps=p.spontaneous_steps, alpha=p.alpha)


EVALUATORS: dict[str, Callable[[StageContext, Tensor], Tensor]] = {
    "compat": _eval_compat,
    "folded": _eval_folded,
    "linear": _eval_linear,
    "rnn": _eval_rnn,
    "qat": _eval_qat,
}


class StageModule(nn.Module):
    """A stage's forward mode as a module, so that DistributedDataParallel can wrap it.

    ``module(x, y)`` returns (loss, logits (B, K), detached loss terms).
    """

    def __init__(self, ctx: StageContext, spec: StageSpec) -> None:
        super().__init__()
        self.model = ctx.model
        self.bn = ctx.bn
        self.ctx = ctx
        self.spec = spec
        self.fn = FORWARDS[spec.kind]

    def forward(self, x: Tensor, y: Tensor) -> ForwardResult:
        return self.fn(self.ctx, self.spec, x, y)


# -------------------------------------------------------------------- parameters, optimisers
def _feedforward(model: CordsNet, bn: BatchNormSet) -> list[nn.Parameter]:
    bias_ids = {id(p) for p in model.conv_bias}
    return [p for p in model.parameters() if id(p) not in bias_ids] + list(bn.parameters())


TRAINABLE: dict[str, Callable[[CordsNet, BatchNormSet], list[nn.Parameter]]] = {
    "none": lambda model, bn: [],
    "recurrent": lambda model, bn: [p for m in model.area_conv for p in m.parameters()] + list(model.conv_bias),
    "all": lambda model, bn: list(model.parameters()),
    "cnn": _feedforward,  # every convolution and out_fc (not the spatial conv_bias) plus the BatchNorms
}


def trainable_parameters(model: CordsNet, bn: BatchNormSet, which: str) -> list[nn.Parameter]:
    """The parameters a stage trains, in a fixed order (the optimiser state is saved by index)."""
    return TRAINABLE[which](model, bn)


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], StageSpec], torch.optim.Optimizer]] = {
    "sgd": lambda params, s: torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay),
    "adamw": lambda params, s: torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay),
}


# ------------------------------------------------------------------------------------ metrics
def accuracy_counts(logits: Tensor, y: Tensor) -> tuple[int, int]:
    """(correct, total) of top-1 predictions; `y` holds class indices (B,) or soft targets (B, K)."""
    target = y.argmax(1) if y.dim() == 2 else y
    return int((logits.argmax(1) == target).sum()), int(target.numel())


@torch.no_grad()
def evaluate_accuracy(fn: Callable[[Tensor], Tensor], loader: Iterable[Any], device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy of ``fn(images) -> logits`` over a loader of (images, labels).

    Args:
        fn: maps (B, C, S, S) images to (B, K) logits.
        loader: yields (images, labels) batches.
        device: where the batches are moved.
        dtype: the floating dtype the images are cast to (None: keep theirs).
    """
    correct = total = 0
    for x, y in loader:
        c, n = accuracy_counts(fn(x.to(device=device, dtype=dtype)), y.to(device))
        correct += c
        total += n
    return correct / max(total, 1)
