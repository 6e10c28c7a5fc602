"""The dynamics as functions: the unvalidated fast paths of CordsNet (``docs/specification.md`` §3).

Every function takes the model's :class:`Dynamics` (its wiring, read-out areas and update slope, built
once from the config: :attr:`cordsnet.model.CordsNet.dynamics`) and its effective :class:`Weights`
(:meth:`cordsnet.model.CordsNet.effective_weights`, or frozen copies), and validates nothing. The model's
own methods (``run``, ``step``, ...) validate their inputs and then call these; the trainer (with
gradients), recording and the export wrappers (with frozen weights) call them directly, so every path
runs the same arithmetic::

    from cordsnet import functional as CF

    dyn, w = model.dynamics, model.effective_weights()
    terms = CF.drive_terms(dyn, w, CF.drive(w, x))          # once per image
    for state in CF.trajectory(dyn, w, state, terms, steps=100, alpha=0.2):
        logits = CF.readout(dyn, w, state)

Shapes: images (B, C, S, S); the drive u (B, 64, S/4, S/4); a state is one (B, c_i, H_i, W_i) tensor
per area.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AreaWiring", "DriveLike", "DriveSource", "DriveTerms", "Dynamics", "SECOND_KINDS", "State", "Weights",
           "drive", "drive_terms", "pool", "readout", "step", "trajectory"]

State = tuple[Tensor, ...]

# How the second feedforward term of an area is formed (first term: relu of the area below, or u).
SECOND_KINDS: dict[str, str] = {
    "none": "area 0: h_0 = u",
    "inp_skip": "area 1: + inp_skip(u)",
    "identity": "even areas >= 2: + relu(r_{i-2})",
    "project": "odd areas >= 3: + skip_area[(i-3)/2](relu(r_{i-2}))",
}


class AreaWiring(NamedTuple):
    """Where area i's feedforward input ``h_i`` comes from (built once from the config).

    Attributes:
        first: the area whose rectified rates are the first term, or -1 for the drive ``u`` (area 0).
        second: one of :data:`SECOND_KINDS`.
        source: the area of the second term ("identity"/"project"), else -1.
        projection: index of the ``skip_area`` projection ("project"), else -1.
        stride: stride of ``area_area_i``.
    """

    first: int
    second: str
    source: int
    projection: int
    stride: int


class DriveTerms(NamedTuple):
    """The terms of one image that stay constant while it is shown (computed once per image).

    Attributes:
        skip: ``inp_skip(u)``, (B, 64, S/4, S/4), added to area 1's feedforward input.
        ff0: ``area_area_0(u)``, (B, 64, S/4, S/4), area 0's whole feedforward term.
    """

    skip: Tensor
    ff0: Tensor


class Weights(NamedTuple):
    """Effective (weight-norm-derived) weights, in the order the step uses them."""

    inp_conv: Tensor
    inp_skip: Tensor
    area_conv: tuple[Tensor, ...]
    conv_bias: tuple[Tensor, ...]
    area_area: tuple[Tensor, ...]
    skip_area: tuple[Tensor, ...]
    out_weight: Tensor
    out_bias: Tensor


DriveLike = Union[Tensor, DriveTerms, None]
# What drives the steps of a trajectory: fixed terms, None (blank), or a function of the step index.
DriveSource = Union[DriveTerms, None, Callable[[int], "DriveTerms | None"]]




class Dynamics(NamedTuple):
    """What the step needs besides weights, built once from the config.

    Attributes:
        wiring: one :class:`AreaWiring` per area.
        readout_areas: the two areas the read-out averages (the top two).
        slope: slope of the update's nonlinearity (0: the published relu; the trainer's linear and
            annealing stages set it).
    """

    wiring: tuple[AreaWiring, ...]
    readout_areas: tuple[int, int]
    slope: float = 0.0


def pool(x: Tensor) -> Tensor:
    """The drive's average pooling ``inp_pool``: 3x3, stride 2, padding 1, zeros counted (B, 64, S/2, S/2) -> S/4."""
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=True)


def drive(weights: Weights, x: Tensor) -> Tensor:
    """``u = avgpool(inp_conv(x))`` for (B, C, S, S) images: (B, 64, S/4, S/4)."""
    return pool(F.conv2d(x, weights.inp_conv, stride=2, padding=3))


def drive_terms(dyn: Dynamics, weights: Weights, u: Tensor) -> DriveTerms:
    """:class:`DriveTerms` of a drive ``u`` (B, 64, S/4, S/4): ``inp_skip(u)`` and ``area_area_0(u)``."""
    return DriveTerms(
        skip=F.conv2d(u, weights.inp_skip, padding=1),
        ff0=F.conv2d(u, weights.area_area[0], stride=dyn.wiring[0].stride, padding=1),
    )


def step(dyn: Dynamics, weights: Weights, state: Sequence[Tensor], terms: DriveTerms | None, alpha: float) -> State:
    """One synchronous Euler step of every area (``terms`` None: a blank image)."""
    rectified = [torch.relu(r) for r in state]
    new_state = []
    for i, wire in enumerate(dyn.wiring):
        r = state[i]
        pre = F.conv2d(r, weights.area_conv[i], padding=1) + weights.conv_bias[i]
        if wire.first < 0:  # area 0: the feedforward term is area_area_0(u), constant per image
            if terms is not None:
                pre = pre + terms.ff0
        else:
            h = rectified[wire.first]
            if wire.second == "inp_skip":
                if terms is not None:
                    h = h + terms.skip
            elif wire.second == "identity":
                h = h + rectified[wire.source]
            elif wire.second == "project":
                h = h + F.conv2d(rectified[wire.source], weights.skip_area[wire.projection], stride=2)
            pre = pre + F.conv2d(h, weights.area_area[i], stride=wire.stride, padding=1)
        act = torch.relu(pre) if dyn.slope == 0.0 else F.leaky_relu(pre, dyn.slope)
        new_state.append((1.0 - alpha) * r + alpha * act)
    return tuple(new_state)


def readout(dyn: Dynamics, weights: Weights, state: Sequence[Tensor]) -> Tensor:
    """Logits (B, classes) of a state: ``out_fc(mean_space(relu(r_top) + relu(r_below)))``."""
    top, below = dyn.readout_areas
    pooled = (torch.relu(state[top]) + torch.relu(state[below])).mean(dim=(2, 3))
    return F.linear(pooled, weights.out_weight, weights.out_bias)


def trajectory(dyn: Dynamics, weights: Weights, state: Sequence[Tensor], source: DriveSource, steps: int,
               alpha: float) -> Iterator[State]:
    """THE time loop: yields the state after each of `steps` Euler steps from `state`.

    Args:
        dyn, weights: the model's dynamics and effective weights.
        state: the start, one (B, c_i, H_i, W_i) tensor per area.
        source: :class:`DriveTerms` shown at every step, None for a blank image, or a function
            ``t -> DriveTerms | None`` (a sequence: frame t drives step t).
        steps: number of steps.
        alpha: dt / tau.

    A consumer may ``send`` an index tensor of the rows to continue with (into the current batch);
    later steps then run only those rows. Plain iteration sends nothing: every row runs.
    """
    frames = source if callable(source) else None
    terms = None if callable(source) else source
    rows: Tensor | None = None  # rows of the original batch still running (None: all)
    for t in range(steps):
        if frames is not None:
            terms = frames(t)
            if rows is not None and terms is not None:
                terms = DriveTerms(terms.skip[rows], terms.ff0[rows])
        state = step(dyn, weights, state, terms, alpha)
        keep = yield tuple(state)
        if keep is not None:  # the consumer sent the rows to continue (early exit); see CordsNet.run_until
            state = tuple(r[keep] for r in state)
            if frames is None and terms is not None:
                terms = DriveTerms(terms.skip[keep], terms.ff0[keep])
            rows = keep if rows is None else rows[keep]
