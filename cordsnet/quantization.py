"""The int8 scheme of the ONNX export, in PyTorch: fake quantisation for quantisation-aware training.

The int8 export (:func:`cordsnet.export.precision.quantize_int8`) writes a static QDQ graph: every
convolution of a step and the read-out get per-output-channel symmetric int8 weights, and per-tensor asymmetric
uint8 activations at their input and (convolutions) their output. The Euler update and the additions
stay float32. This module computes exactly that in PyTorch, inside the model's own time loop, so that
the trainer can fine-tune a float checkpoint against the rounding it will meet (the ``qat`` stage):

* :func:`quant_points` names, for each quantised weight of the step, the activation tensor it reads
  and the one it writes; the names are shared by every consumer of the same tensor, as in the ONNX
  graph (``state_i``: area i's state, read by its recurrent convolution; ``rect_i``: relu(r_i);
  ``h_i``: area i's summed feedforward input; ``pooled``: the read-out's input; ``<weight>.out``: a
  convolution's output). The image drive's convolutions (once per image) stay float32.
* :class:`ActivationRanges`: the (low, high) range of each named tensor: calibrated on float
  trajectories, then tracked (moving average of each batch's min/max over all its steps) while the
  weights train, and stored in the checkpoint as extra tensors ``quant.<name>`` (:data:`RANGE_PREFIX`).
  :func:`read_activation_ranges` reads them back; the exporter writes them as the graph's Q/DQ scales
  (``calibration="checkpoint"``) instead of calibrating.
* :class:`FakeQuant`: a ``torch.overrides.TorchFunctionMode`` that, while active, fake-quantises the
  convolutions and the read-out that use one given set of effective weights (the model is unchanged:
  one model class, no quantisation code in its step).

Scales and zero points follow onnxruntime's quantiser: uint8 activations on the range widened to
include 0, ``scale = (high - low) / 255`` (computed in float64, stored float32),
``zero_point = round(-low / scale)``; int8 weights per output channel ``scale = max|w| / 127`` on
[-127, 127]. The read-out's bias (int32 in the graph, scale ``s_in * s_w``) is left float here: its
rounding is below 1e-6 of a logit.
"""

from __future__ import annotations

from .extras import require

require("torch", "cordsnet.quantization")

import contextlib
import os
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .model import CordsNet, Weights

__all__ = ["RANGE_PREFIX", "ActivationRanges", "FakeQuant", "activation_params", "fake_quantize_weight",
           "int8_dynamics", "quant_points", "read_activation_ranges"]

RANGE_PREFIX = "quant."  # checkpoint extra tensors: quant.<tensor name> = (low, high), float32
ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations (onnxruntime QUInt8)
W_QMAX = 127  # symmetric int8 weights on [-127, 127] (onnxruntime QInt8, symmetric)


def quant_points(model: CordsNet) -> dict[str, tuple[str, str | None]]:
    """For each quantised weight of `model`: (the activation it reads, the activation it writes).

    Keys are the weight names of the export (``area_conv_i``, ``area_area_i`` for i >= 1,
    ``skip_area_p``, ``out_weight``): the convolutions of every step and the read-out. The
    written activation is None for the read-out (its output, the logits, stays float). The image
    drive's convolutions (``inp_conv``, ``inp_skip``, ``area_area_0``: once per image, not per step)
    stay float32, in training as in the export.
    """
    points: dict[str, tuple[str, str | None]] = {"out_weight": ("pooled", None)}
    for i, wire in enumerate(model.wiring):
        points[f"area_conv_{i}"] = (f"state_{i}", f"area_conv_{i}.out")
        if wire.first >= 0:
            points[f"area_area_{i}"] = (f"h_{i}", f"area_area_{i}.out")
        if wire.second == "project":
            points[f"skip_area_{wire.projection}"] = (f"rect_{wire.source}", f"skip_area_{wire.projection}.out")
    return points


def _named_weights(weights: Weights) -> Iterator[tuple[str, Tensor]]:
    yield "inp_conv", weights.inp_conv
    yield "inp_skip", weights.inp_skip
    for i, w in enumerate(weights.area_conv):
        yield f"area_conv_{i}", w
    for i, w in enumerate(weights.area_area):
        yield f"area_area_{i}", w
    for i, w in enumerate(weights.skip_area):
        yield f"skip_area_{i}", w
    yield "out_weight", weights.out_weight


def activation_params(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of a uint8 activation with range [low, high], as onnxruntime computes them."""
    lo = np.float32(min(float(low), 0.0))
    hi = np.float32(max(float(high), 0.0))
    scale = np.float32((np.float64(hi) - np.float64(lo)) / (ACT_QMAX - ACT_QMIN))
    if scale < np.finfo(np.float32).tiny:
        return 1.0, 0
    return float(scale), int(np.round(ACT_QMIN - np.float64(lo) / np.float64(scale)))


def fake_quantize_weight(w: Tensor) -> Tensor:
    """Per-output-channel symmetric int8 fake quantisation of a weight (C_out, ...) (straight-through)."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).float()
    scale = torch.where(amax > 0, amax / W_QMAX, torch.ones_like(amax))
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale.to(w.device), zero, 0, -W_QMAX, W_QMAX)


class ActivationRanges:
    """The (low, high) range of each quantised activation, by :func:`quant_points` name.

    Args:
        ranges: name -> (low, high).
        momentum: weight of a new batch in :meth:`update` (exponential moving average).
    """

    def __init__(self, ranges: Mapping[str, Any] | None = None, momentum: float = 0.05) -> None:
        self.ranges: dict[str, tuple[float, float]] = {k: _range(k, v) for k, v in (ranges or {}).items()}
        self.momentum = float(momentum)

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, name: str) -> tuple[float, float]:
        return self.ranges[name]

    def update(self, seen: Mapping[str, tuple[Tensor, Tensor]], *, replace: bool = False) -> None:
        """Fold one batch's observed (min, max) per name in (a moving average; ``replace``: take them).

        Under ``torch.distributed`` the observations are first reduced across processes (min of the
        lows, max of the highs), so every process keeps the same ranges.
        """
        names = sorted(seen)
        if not names:
            return
        lows = torch.stack([seen[k][0].detach().float().reshape(()) for k in names])
        highs = torch.stack([seen[k][1].detach().float().reshape(()) for k in names])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(lows, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(highs, op=torch.distributed.ReduceOp.MAX)
        m = self.momentum
        for k, lo, hi in zip(names, lows.tolist(), highs.tolist()):
            if not (replace or k not in self.ranges):
                old_lo, old_hi = self.ranges[k]
                lo, hi = (1 - m) * old_lo + m * lo, (1 - m) * old_hi + m * hi
            # float32 values, as the checkpoint stores them: training and export use the same scales
            self.ranges[k] = (float(np.float32(lo)), float(np.float32(hi)))

    def to_tensors(self) -> dict[str, Tensor]:
        """Checkpoint extra tensors: ``quant.<name>`` -> (2,) float32 (low, high)."""
        return {RANGE_PREFIX + k: torch.tensor(v, dtype=torch.float32) for k, v in sorted(self.ranges.items())}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], momentum: float = 0.05) -> "ActivationRanges | None":
        """The ranges among checkpoint extra tensors (None if there are none)."""
        found = {k[len(RANGE_PREFIX):]: v.detach().float().reshape(-1).tolist() for k, v in tensors.items()
                 if k.startswith(RANGE_PREFIX)}
        return cls(found, momentum) if found else None

    def check(self, model: CordsNet) -> None:
        """Refuse ranges that do not name exactly the activations of `model`'s architecture."""
        wanted = {n for pair in quant_points(model).values() for n in pair if n is not None}
        missing, extra = sorted(wanted - set(self.ranges)), sorted(set(self.ranges) - wanted)
        if missing or extra:
            raise ValueError(f"activation ranges: expected the {len(wanted)} activations of a CordsNet-R"
                             f"{model.depth}, missing {missing}, unexpected {extra}")

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return dict(self.ranges)


def _range(name: str, value: Any) -> tuple[float, float]:
    """A checked (low, high): two finite numbers, low <= high."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"activation range {name!r}: expected finite (low, high) with low <= high, "
                         f"got {value!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ValueError(f"activation range {name!r}: expected finite (low, high) with low <= high, "
                         f"got {[lo, hi]}")
    return float(np.float32(lo)), float(np.float32(hi))


def read_activation_ranges(path: str | os.PathLike) -> ActivationRanges | None:
    """The activation ranges stored in a checkpoint by the ``qat`` training stage (None if it has none)."""
    from .checkpoint import read_extra_tensors

    return ActivationRanges.from_tensors(read_extra_tensors(path))


class FakeQuant(TorchFunctionMode):
    """While active, the convolutions and the read-out using `weights` compute as the int8 graph does.

    Args:
        model: the model (its wiring names the activations).
        weights: the effective weights of this forward (:meth:`CordsNet.effective_weights`); only
            ``conv2d`` / ``linear`` calls with one of these tensors as weight are touched.
        ranges: the activation ranges (None: observe only, no quantisation).
        quantize: fake-quantise (False: observe only, e.g. to calibrate the first ranges).
        observe: record each activation's min and max over this forward in :attr:`seen`.

    Usage: ``with FakeQuant(model, W, ranges) as fq: ...`` then ``ranges.update(fq.seen)``.
    """

    def __init__(self, model: CordsNet, weights: Weights, ranges: ActivationRanges | None, *,
                 quantize: bool = True, observe: bool = False) -> None:
        super().__init__()
        points = quant_points(model)
        self.table = {id(t): points[name] for name, t in _named_weights(weights) if name in points}
        self.quantize = quantize and ranges is not None
        self.observe = observe
        self.seen: dict[str, tuple[Tensor, Tensor]] = {}
        self.params: dict[str, tuple[float, int]] = {}
        if self.quantize:
            assert ranges is not None
            self.params = {k: activation_params(lo, hi) for k, (lo, hi) in ranges.as_dict().items()}

    def _activation(self, name: str, x: Tensor) -> Tensor:
        if self.observe:
            lo, hi = x.detach().amin(), x.detach().amax()
            if name in self.seen:
                old_lo, old_hi = self.seen[name]
                lo, hi = torch.minimum(lo, old_lo), torch.maximum(hi, old_hi)
            self.seen[name] = (lo, hi)
        if not self.quantize:
            return x
        if name not in self.params:
            raise ValueError(f"activation ranges: no range for {name!r} (have {sorted(self.params)})")
        scale, zero = self.params[name]
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, ACT_QMIN, ACT_QMAX)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if (func is F.conv2d or func is F.linear) and len(args) >= 2:
            point = self.table.get(id(args[1]))
            if point is not None:
                src, dst = point
                x = self._activation(src, args[0])
                w = fake_quantize_weight(args[1]) if self.quantize else args[1]
                out = func(x, w, *args[2:], **kwargs)
                return self._activation(dst, out) if dst is not None else out
        return func(*args, **kwargs)


@contextlib.contextmanager
def int8_dynamics(model: CordsNet, ranges: ActivationRanges | None, *, spontaneous_steps: int, alpha: float,
                  quantize: bool = True, observe: bool = False) -> Iterator[FakeQuant]:
    """While active, ``model.run(..., spontaneous_steps=, alpha=)`` computes as the int8 graph does.

    The spontaneous state stays float32 (the artifact stores it so), computed first; then every step's
    convolutions and the read-out are fake-quantised. Use it under ``torch.no_grad()``: the context holds
    PyTorch's cache of parametrized weights (``parametrize.cached()``), so ``model.run`` computes with the
    very weight tensors :class:`FakeQuant` was given (it finds them by identity). Yields the :class:`FakeQuant`
    (``quantize=False, observe=True``: float dynamics, the activations' ranges recorded in ``.seen``).
    """
    if torch.is_grad_enabled():
        raise RuntimeError("int8_dynamics: use it under torch.no_grad() (training runs FakeQuant itself)")
    with torch.nn.utils.parametrize.cached():
        weights = model.effective_weights()
        model.cached_spontaneous_state(spontaneous_steps, alpha, weights)
        with FakeQuant(model, weights, ranges, quantize=quantize, observe=observe) as fq:
            yield fq
