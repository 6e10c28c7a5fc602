"""Loss terms and schedules of the staged training (docs/specification.md §4.3-§4.6)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import validate

__all__ = [
    "anneal_slope",
    "contraction_penalty",
    "inverse_loss",
    "spontaneous_penalty",
    "time_weighted_ce",
    "time_weights",
]


def time_weights(window: int = 30, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """``logspace(-3, 0, window)``: weights of the last `window` steps' cross-entropies, (window,)."""
    return torch.logspace(-3.0, 0.0, window, device=device, dtype=dtype)


def time_weighted_ce(logits: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Cross-entropy of the logits of the last T steps, weighted per step and averaged.

    ``mean_t(w_t * CE(logits_t, target))`` with ``w = logspace(-3, 0, T)`` by default.

    Args:
        logits: (T, B, K), the logits after each of the last T steps (oldest first).
        target: (B,) class indices, or (B, K) class probabilities (CutMix / MixUp).
        weights: (T,) step weights; default :func:`time_weights` (T).

    Returns:
        Scalar loss.
    """
    steps = logits.shape[0]
    if weights is None:
        weights = time_weights(steps, device=logits.device, dtype=logits.dtype)
    if weights.shape != (steps,):
        raise ValueError(f"weights: expected shape ({steps},) to match the logits' steps, got {tuple(weights.shape)}")
    flat_target = target.repeat(steps) if target.dim() == 1 else target.repeat(steps, 1)
    per_step = F.cross_entropy(logits.flatten(0, 1), flat_target, reduction="none").view(steps, -1).mean(1)
    return (weights * per_step).mean()


def spontaneous_penalty(states: Sequence[Sequence[Tensor]], spontaneous: Sequence[Tensor]) -> Tensor:
    """The spontaneous-stability penalty of docs/specification.md §4.5.

    The mean squared distance of every area's rates from its pre-stimulus spontaneous state, summed
    over the given (late, post-stimulus blank) steps and the areas, divided by ``steps * depth``.

    Args:
        states: the states of the last blank steps, each one (B, c_i, H_i, W_i) tensor per area.
        spontaneous: the pre-stimulus spontaneous state, one (1 or B, c_i, H_i, W_i) tensor per area.

    Returns:
        Scalar penalty.
    """
    if not states:
        raise ValueError("states: expected at least one post-stimulus state")
    depth = len(spontaneous)
    total = sum(F.mse_loss(r, s.expand_as(r)) for state in states for r, s in zip(state, spontaneous))
    return total / (len(states) * depth)


def contraction_penalty(weight: Tensor, drive: Tensor, power: int = 3) -> Tensor:
    """``mean((W^power d)^2)``: applying the recurrent convolution W `power` times to d must shrink it.

    Args:
        weight: (c, c, 3, 3) recurrent convolution.
        drive: (B, c, H, W), ``b + u``.
    """
    x = drive
    for _ in range(power):
        x = F.conv2d(x, weight, padding=1)
    return x.square().mean()


def inverse_loss(weight: Tensor, bias: Tensor, ff: Tensor, target: Tensor, *, iterations: int = 3,
                 contraction: float = 10.0) -> tuple[Tensor, Tensor]:
    """The inverse-initialisation loss of one area (docs/specification.md §4.3).

    The steady state of the linear recurrence ``r = W r + b + u`` is approximated by `iterations`
    fixed-point iterations from ``r = b + u`` and compared with the CNN's pre-activation.

    Args:
        weight: W, the RNN's recurrent convolution (c, c, 3, 3).
        bias: b, the RNN's spatial bias (c, H, W).
        ff: u, the feedforward term ``area_area(h)`` (B, c, H, W).
        target: the CNN's pre-activation (B, c, H, W).
        iterations: fixed-point iterations.
        contraction: weight of :func:`contraction_penalty`.

    Returns:
        (loss, mse): the full loss and its mean-squared-error part.
    """
    base = bias + ff
    r = base
    for _ in range(iterations):
        r = F.conv2d(r, weight, padding=1) + base
    mse = F.mse_loss(r, target)
    return mse + contraction * contraction_penalty(weight, base), mse


def anneal_slope(epoch: int, *, start: float = 0.95, decrement: float = 0.05) -> float:
    """The PReLU slope of annealing epoch `epoch` (0-based): ``max(0, start - decrement * epoch)``."""
    validate.integer("epoch", epoch, min=0)
    return max(0.0, start - decrement * epoch)
