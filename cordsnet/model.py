"""CordsNet: the convolutional recurrent dynamical system of Soo et al. (NeurIPS 2024).

One module, exactly the specification's architecture (``shared/reference/cordsnet-model.md`` §1) and
dynamics (§3). The time loop is a shared driver (:meth:`CordsNet.run`) around a small step function:

* :meth:`CordsNet.drive` maps images to the drive ``u`` once per image; :meth:`CordsNet.drive_terms`
  adds the two terms that stay constant while an image is shown, ``inp_skip(u)`` and
  ``area_area_0(u)``.
* :meth:`CordsNet.step` is one synchronous forward-Euler step of every area.
* :meth:`CordsNet.readout` maps a state to logits.
* :meth:`CordsNet.spontaneous_state` is the (image-independent) state after the blank phase,
  computed once and cached.

Weight normalisation stays a parametrization (so training sees g and v), but evaluation derives the
effective weights ``g * v / ||v||`` once and reuses them until a parameter changes.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from .config import (
    AREA_CHANNELS,
    AREA_FF_CHANNELS,
    AREA_STRIDES,
    DRIVE_CHANNELS,
    SKIP_CHANNELS,
    CordsNetConfig,
)

__all__ = ["CordsNet", "DriveTerms", "State", "READOUTS"]

State = tuple[Tensor, ...]
READOUTS: tuple[str, ...] = ("last", "all")

# How the second feedforward term of an area is formed (first term: relu of the area below, or u).
_SECOND_NONE = 0  # area 0: h_0 = u
_SECOND_INP_SKIP = 1  # area 1: + inp_skip(u)
_SECOND_IDENTITY = 2  # even areas >= 2: + relu(r_{i-2})
_SECOND_PROJECT = 3  # odd areas >= 3: + skip_area[(i-3)/2](relu(r_{i-2}))


class DriveTerms(NamedTuple):
    """The terms of one image that stay constant while it is shown.

    Attributes:
        u: the drive ``avgpool(inp_conv(x))``, (B, 64, S/4, S/4).
        skip: ``inp_skip(u)``, (B, 64, S/4, S/4), added to area 1's feedforward input.
        ff0: ``area_area_0(u)``, (B, 64, S/4, S/4), area 0's whole feedforward term.
    """

    u: Tensor
    skip: Tensor
    ff0: Tensor


class _Weights(NamedTuple):
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


class CordsNet(nn.Module):
    """CordsNet-R{depth}: ``tau dr_i/dt = -r_i + relu(Conv_rec(r_i) + b_i + Conv_ff(h_i))``.

    Args:
        config: the architecture and default protocol; defaults to the published R8 on ImageNet.
        **overrides: fields of :class:`CordsNetConfig` to change, e.g. ``CordsNet(depth=2)``.

    The state dict has exactly the published layout (§2 of the specification).
    """

    def __init__(self, config: CordsNetConfig | None = None, **overrides: object) -> None:
        super().__init__()
        if config is None:
            config = CordsNetConfig()
        if not isinstance(config, CordsNetConfig):
            raise TypeError(f"config: expected a CordsNetConfig, got {type(config).__name__}")
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        depth = config.depth

        def wn(module: nn.Module) -> nn.Module:
            return weight_norm(module, dim=0)

        # Registration order = the published state-dict order.
        self.inp_conv = wn(nn.Conv2d(config.in_channels, DRIVE_CHANNELS, 7, stride=2, padding=3, bias=False))
        self.inp_pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)
        self.inp_skip = wn(nn.Conv2d(DRIVE_CHANNELS, DRIVE_CHANNELS, 3, stride=1, padding=1, bias=False))
        self.area_conv = nn.ModuleList(
            wn(nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False)) for c in AREA_CHANNELS[:depth]
        )
        self.conv_bias = nn.ParameterList(nn.Parameter(torch.zeros(shape)) for shape in config.state_shapes)
        self.area_area = nn.ModuleList(
            wn(nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False))
            for cin, cout, s in zip(AREA_FF_CHANNELS[:depth], AREA_CHANNELS[:depth], AREA_STRIDES[:depth])
        )
        self.skip_area = nn.ModuleList(
            wn(nn.Conv2d(cin, cout, 1, stride=2, padding=0, bias=False))
            for cin, cout in SKIP_CHANNELS[: depth // 2 - 1]
        )
        self.out_fc = wn(nn.Linear(AREA_CHANNELS[depth - 1], config.num_classes))

        # Wiring of the feedforward input h_i, built once: (first source, second kind, second source,
        # projection index). A first source of -1 is the drive u itself.
        wiring = []
        for i in range(depth):
            if i == 0:
                wiring.append((-1, _SECOND_NONE, -1, -1))
            elif i == 1:
                wiring.append((0, _SECOND_INP_SKIP, -1, -1))
            elif i % 2 == 0:
                wiring.append((i - 1, _SECOND_IDENTITY, i - 2, -1))
            else:
                wiring.append((i - 1, _SECOND_PROJECT, i - 2, (i - 3) // 2))
        self._wiring: tuple[tuple[int, int, int, int], ...] = tuple(wiring)
        self._strides: tuple[int, ...] = AREA_STRIDES[:depth]
        self._readout_areas: tuple[int, int] = (depth - 1, depth - 2)

        # Slope of the update's nonlinearity: 0 is the relu of the published model; the trainer's
        # linear (1.0) and annealing (0 < a < 1, a frozen shared PReLU slope) stages change it.
        self.update_slope: float = 0.0

        self._weight_cache: tuple[tuple, _Weights] | None = None
        self._spont_cache: tuple[tuple, State] | None = None

    # ------------------------------------------------------------------------------- properties
    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _param(self) -> Tensor:
        return self.out_fc.bias

    # -------------------------------------------------------------------------------- weights
    def _param_key(self) -> tuple:
        ref = self._param()
        return (ref.device, ref.dtype) + tuple((p.data_ptr(), p._version) for p in self.parameters())

    def _derive(self) -> _Weights:
        return _Weights(
            inp_conv=self.inp_conv.weight,
            inp_skip=self.inp_skip.weight,
            area_conv=tuple(m.weight for m in self.area_conv),
            conv_bias=tuple(self.conv_bias),
            area_area=tuple(m.weight for m in self.area_area),
            skip_area=tuple(m.weight for m in self.skip_area),
            out_weight=self.out_fc.weight,
            out_bias=self.out_fc.bias,
        )

    def effective_weights(self) -> _Weights:
        """The weights the dynamics use, ``g * v / ||v||`` for every weight-normalised layer.

        With gradients disabled (evaluation) they are derived once and reused until a parameter
        changes (in-place updates, ``load_state_dict``, ``.to``); with gradients enabled they are
        derived anew so that autograd sees g and v.
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self._derive()
        key = self._param_key()
        if self._weight_cache is None or self._weight_cache[0] != key:
            with torch.no_grad():
                weights = self._derive()
            self._weight_cache = (key, _Weights(*[_detach(w) for w in weights]))
        return self._weight_cache[1]

    # ------------------------------------------------------------------------------- public API
    def drive(self, images: Tensor) -> Tensor:
        """The image drive ``u = avgpool(inp_conv(x))``.

        Args:
            images: (B, C, S, S), or a sequence (B, T, C, S, S).

        Returns:
            u: (B, 64, S/4, S/4), or (B, T, 64, S/4, S/4) for a sequence.
        """
        x = self._check_images(images)
        weights = self.effective_weights()
        if x.dim() == 5:
            b, t = x.shape[:2]
            u = self._drive(weights, x.flatten(0, 1))
            return u.unflatten(0, (b, t))
        return self._drive(weights, x)

    def drive_terms(self, u: Tensor) -> DriveTerms:
        """The constant-while-shown terms of a drive: ``inp_skip(u)`` and ``area_area_0(u)``.

        Args:
            u: the drive, (B, 64, S/4, S/4).
        """
        self._check_drive(u)
        return self._terms(self.effective_weights(), u)

    def initial_state(self, batch: int = 1) -> State:
        """Zero rates, one (batch, c_i, H_i, W_i) tensor per area."""
        _check_batch(batch)
        ref = self._param()
        return tuple(torch.zeros((batch, *shape), device=ref.device, dtype=ref.dtype)
                     for shape in self.config.state_shapes)

    def step(self, state: Sequence[Tensor], drive: DriveLike, alpha: float | None = None) -> State:
        """One synchronous forward-Euler step of every area.

        Args:
            state: one (B, c_i, H_i, W_i) tensor per area.
            drive: the drive ``u`` (B, 64, S/4, S/4) from :meth:`drive`; or its :class:`DriveTerms`
                (cheaper when one image drives many steps); or None for a blank image (u = 0).
            alpha: dt / tau; defaults to the config's.

        Returns:
            The next state, one tensor per area.
        """
        alpha = self._check_alpha(alpha)
        state = self._check_state(state)
        weights = self.effective_weights()
        terms = self._as_terms(weights, drive, state[0].shape[0])
        return self._step(weights, state, terms, alpha)

    def readout(self, state: Sequence[Tensor]) -> Tensor:
        """Logits ``out_fc(mean_space(relu(r_{D-1}) + relu(r_{D-2})))``, (B, classes)."""
        state = self._check_state(state)
        return self._readout(self.effective_weights(), state)

    def spontaneous_state(self, batch: int = 1, *, steps: int | None = None,
                          alpha: float | None = None) -> State:
        """The state after the blank (spontaneous) phase, the same for every image.

        Computed once without gradients and cached; the cache is invalidated when a parameter,
        alpha, the step count, the update slope, the device or the dtype change.

        Args:
            batch: batch size of the returned state (each row is the same).
            steps: blank steps; defaults to ``config.spontaneous_steps``.
            alpha: dt / tau; defaults to ``config.alpha``.

        Returns:
            One (batch, c_i, H_i, W_i) tensor per area (fresh tensors, safe to modify).
        """
        _check_batch(batch)
        steps = self._check_steps("steps", steps, self.config.spontaneous_steps, allow_zero=True)
        alpha = self._check_alpha(alpha)
        return tuple(r.expand(batch, *r.shape[1:]).clone() for r in self._spontaneous(steps, alpha))

    def clear_caches(self) -> None:
        """Drop the cached effective weights and spontaneous state.

        Not needed after ordinary updates (optimiser steps, ``load_state_dict``, in-place ops under
        ``torch.no_grad()``, ``.to``): those are detected. Only writes through ``param.data``, which
        bypass PyTorch's version counters, need it.
        """
        self._weight_cache = None
        self._spont_cache = None

    def run(self, images: Tensor, *, steps: int | None = None, spontaneous_steps: int | None = None,
            alpha: float | None = None, readout: str = "last",
            record: Iterable[int] | None = None) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        """The published protocol: spontaneous phase, then the image for `steps` steps.

        Args:
            images: (B, C, S, S) shown for every step, or a sequence (B, T, C, S, S) whose frame t
                drives step t (then `steps` defaults to T and must equal it).
            steps: stimulus steps; defaults to ``config.steps``.
            spontaneous_steps: blank steps first (0 starts from the zero state); defaults to
                ``config.spontaneous_steps``.
            alpha: dt / tau; defaults to ``config.alpha``.
            readout: "last" for the logits after the last step, (B, classes); "all" for the logits
                after every stimulus step, (steps, B, classes).
            record: areas whose rates to return at every stimulus step.

        Returns:
            The logits; with `record`, a pair (logits, {area: (steps, B, c, H, W)}).
        """
        x = self._check_images(images)
        if readout not in READOUTS:
            raise ValueError(f"readout: expected one of {list(READOUTS)}, got {readout!r}")
        areas = self._check_record(record)
        video = x.dim() == 5
        if video:
            frames = x.shape[1]
            steps = self._check_steps("steps", steps, frames)
            if steps != frames:
                raise ValueError(f"steps: a sequence of T={frames} frames drives exactly {frames} steps, "
                                 f"got steps={steps}")
        else:
            steps = self._check_steps("steps", steps, self.config.steps)
        spont = self._check_steps("spontaneous_steps", spontaneous_steps, self.config.spontaneous_steps,
                                  allow_zero=True)
        alpha = self._check_alpha(alpha)

        weights = self.effective_weights()
        batch = x.shape[0]
        state: State = tuple(r.expand(batch, *r.shape[1:]) for r in self._spontaneous(spont, alpha))
        terms = None if video else self._terms(weights, self._drive(weights, x))
        logits_per_step: list[Tensor] = []
        rates: dict[int, list[Tensor]] = {a: [] for a in areas}
        for t in range(steps):
            if video:
                terms = self._terms(weights, self._drive(weights, x[:, t]))
            state = self._step(weights, state, terms, alpha)
            if readout == "all":
                logits_per_step.append(self._readout(weights, state))
            for a in areas:
                rates[a].append(state[a])
        logits = torch.stack(logits_per_step) if readout == "all" else self._readout(weights, state)
        if record is None:
            return logits
        return logits, {a: torch.stack(rs) for a, rs in rates.items()}

    def forward(self, images: Tensor) -> Tensor:
        """``run(images)`` with the config's protocol: logits (B, classes)."""
        return self.run(images)

    def extra_repr(self) -> str:
        c = self.config
        return (f"depth={c.depth}, num_classes={c.num_classes}, in_channels={c.in_channels}, "
                f"image_size={c.image_size}, alpha={c.alpha}")

    # ---------------------------------------------------------------------------- computation
    # These take effective weights and do no validation: the export wrappers call them directly.
    def _drive(self, weights: _Weights, x: Tensor) -> Tensor:
        return self.inp_pool(F.conv2d(x, weights.inp_conv, stride=2, padding=3))

    def _terms(self, weights: _Weights, u: Tensor) -> DriveTerms:
        return DriveTerms(
            u=u,
            skip=F.conv2d(u, weights.inp_skip, padding=1),
            ff0=F.conv2d(u, weights.area_area[0], stride=self._strides[0], padding=1),
        )

    def _step(self, weights: _Weights, state: Sequence[Tensor], terms: DriveTerms | None,
              alpha: float) -> State:
        rectified = [torch.relu(r) for r in state]
        new_state = []
        for i, (first, kind, second, proj) in enumerate(self._wiring):
            r = state[i]
            pre = F.conv2d(r, weights.area_conv[i], padding=1) + weights.conv_bias[i]
            if first < 0:  # area 0: the feedforward term is area_area_0(u), constant per image
                if terms is not None:
                    pre = pre + terms.ff0
            else:
                h = rectified[first]
                if kind == _SECOND_INP_SKIP:
                    if terms is not None:
                        h = h + terms.skip
                elif kind == _SECOND_IDENTITY:
                    h = h + rectified[second]
                elif kind == _SECOND_PROJECT:
                    h = h + F.conv2d(rectified[second], weights.skip_area[proj], stride=2)
                pre = pre + F.conv2d(h, weights.area_area[i], stride=self._strides[i], padding=1)
            act = torch.relu(pre) if self.update_slope == 0.0 else F.leaky_relu(pre, self.update_slope)
            new_state.append((1.0 - alpha) * r + alpha * act)
        return tuple(new_state)

    def _readout(self, weights: _Weights, state: Sequence[Tensor]) -> Tensor:
        top, below = self._readout_areas
        pooled = (torch.relu(state[top]) + torch.relu(state[below])).mean(dim=(2, 3))
        return F.linear(pooled, weights.out_weight, weights.out_bias)

    def _spontaneous(self, steps: int, alpha: float) -> State:
        """Batch-1 spontaneous end state, cached (callers must not modify it in place)."""
        key = (self._param_key(), float(alpha), int(steps), float(self.update_slope))
        if self._spont_cache is None or self._spont_cache[0] != key:
            with torch.no_grad():
                weights = self.effective_weights()
                state = self.initial_state(1)
                for _ in range(steps):
                    state = self._step(weights, state, None, alpha)
            self._spont_cache = (key, state)
        return self._spont_cache[1]

    def _as_terms(self, weights: _Weights, drive: DriveLike, batch: int) -> DriveTerms | None:
        if drive is None or isinstance(drive, DriveTerms):
            if isinstance(drive, DriveTerms):
                self._check_drive(drive.skip, batch, "drive.skip")
                self._check_drive(drive.ff0, batch, "drive.ff0")
            return drive
        self._check_drive(drive, batch)
        return self._terms(weights, drive)

    # ------------------------------------------------------------------------------ validation
    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images: expected a floating-point tensor (normalised pixels), got {images.dtype}")
        c, s = self.config.in_channels, self.config.image_size
        if images.dim() not in (4, 5):
            raise ValueError(f"images: expected shape (B, {c}, {s}, {s}) or (B, T, {c}, {s}, {s}), "
                             f"got {tuple(images.shape)} (rank {images.dim()})")
        if images.shape[-3] != c:
            raise ValueError(f"images: expected {c} channel(s) at dim {images.dim() - 3}, "
                             f"got {images.shape[-3]} (shape {tuple(images.shape)})")
        h, w = images.shape[-2:]
        if h != w:
            raise ValueError(f"images: expected square {s}x{s} images, got non-square {h}x{w}")
        if h != s:
            raise ValueError(f"images: expected {s}x{s} images (config.image_size), got {h}x{w}")
        if images.shape[0] == 0 or (images.dim() == 5 and images.shape[1] == 0):
            raise ValueError(f"images: expected a non-empty batch, got shape {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError("images: expected finite pixel values, got NaN or infinity")
        ref = self._param()
        return images.to(device=ref.device, dtype=ref.dtype)

    def _check_state(self, state: Sequence[Tensor]) -> State:
        if not isinstance(state, (tuple, list)):
            raise TypeError(f"state: expected a tuple of {self.depth} tensors, got {type(state).__name__}")
        if len(state) != self.depth:
            raise ValueError(f"state: expected {self.depth} tensors (one per area), got {len(state)}")
        batch = None
        for i, (r, shape) in enumerate(zip(state, self.config.state_shapes)):
            if not isinstance(r, Tensor):
                raise TypeError(f"state[{i}]: expected a torch.Tensor, got {type(r).__name__}")
            if r.dim() != 4 or tuple(r.shape[1:]) != shape:
                raise ValueError(f"state[{i}]: expected shape (B, {', '.join(map(str, shape))}), "
                                 f"got {tuple(r.shape)}")
            if batch is None:
                batch = r.shape[0]
            elif r.shape[0] != batch:
                raise ValueError(f"state[{i}]: expected batch {batch} like state[0], got {r.shape[0]}")
        return tuple(state)

    def _check_drive(self, u: Tensor, batch: int | None = None, name: str = "drive") -> None:
        if not isinstance(u, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, DriveTerms or None, got {type(u).__name__}")
        shape = self.config.drive_shape
        b = u.shape[0] if batch is None else batch
        if u.dim() != 4 or tuple(u.shape[1:]) != shape or u.shape[0] != b:
            raise ValueError(f"{name}: expected shape ({b}, {', '.join(map(str, shape))}), got {tuple(u.shape)}")

    def _check_record(self, record: Iterable[int] | None) -> tuple[int, ...]:
        if record is None:
            return ()
        if isinstance(record, (int, str)):
            record = [record]
        areas = []
        for a in record:
            if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < self.depth:
                raise ValueError(f"record: expected area indices in 0..{self.depth - 1}, got {a!r}")
            if a not in areas:
                areas.append(a)
        return tuple(areas)

    def _check_alpha(self, alpha: float | None) -> float:
        if alpha is None:
            return float(self.config.alpha)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha: expected a float in (0, 1], got {alpha!r}")
        return float(alpha)

    @staticmethod
    def _check_steps(name: str, value: int | None, default: int, allow_zero: bool = False) -> int:
        if value is None:
            return default
        low = 0 if allow_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        return value


def _detach(w: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    if isinstance(w, tuple):
        return tuple(t.detach() for t in w)
    return w.detach()


def _check_batch(batch: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
