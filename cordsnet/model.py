"""CordsNet: the convolutional recurrent dynamical system of Soo et al. (NeurIPS 2024).

One module, exactly the architecture and dynamics written down in ``docs/specification.md`` (§1, §3).
There is one time loop, :func:`cordsnet.functional.trajectory` (a generator of states around a small
step function); :meth:`CordsNet.trajectory`, :meth:`CordsNet.run`, the recordings of
:mod:`cordsnet.analysis`, the trainer and the export graphs all consume it.

* :meth:`CordsNet.drive` maps images to the drive ``u`` once per image; :meth:`CordsNet.drive_terms`
  adds the two terms that stay constant while an image is shown, ``inp_skip(u)`` and
  ``area_area_0(u)``.
* :meth:`CordsNet.step` is one synchronous forward-Euler step of every area.
* :meth:`CordsNet.readout` maps a state to logits.
* :meth:`CordsNet.spontaneous_state` is the (image-independent) state after the blank phase,
  computed once and cached.

Two layers of API: the model's validated methods above (what applications call), and the functional
core :mod:`cordsnet.functional` (``drive``, ``drive_terms``, ``step``, ``readout``, ``trajectory``), which
takes the model's :attr:`CordsNet.dynamics` and effective weights explicitly and checks nothing: the
trainer calls it with gradients on, the export wrappers with frozen weights.

Weight normalisation stays a parametrization (so training sees g and v); the effective weights
``g * v / ||v||`` are derived once per protocol call, and PyTorch's ``parametrize.cached()`` holds them
across a block of step-by-step calls (:meth:`CordsNet.effective_weights`).
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Sequence

from .extras import require

require("torch", "cordsnet.model")

import torch  # noqa: E402 (after the extra's check: one line, not a traceback, without torch)
from torch import Tensor, nn  # noqa: E402
from torch.nn.utils.parametrizations import weight_norm  # noqa: E402

from ._quiet import quiet_torch  # noqa: E402
from .threads import apply_to_torch  # noqa: E402

apply_to_torch()  # a thread budget set before torch was imported (cordsnet.threads)
quiet_torch()  # torch's deprecation chatter about calls we make on purpose (cordsnet._quiet)

from .config import (
    AREA_CHANNELS,
    AREA_FF_CHANNELS,
    AREA_STRIDES,
    DRIVE_CHANNELS,
    SKIP_CHANNELS,
    CordsNetConfig,
)
from . import functional as CF
from . import validate
from .decision import DEFAULT_MARGIN
from .functional import (SECOND_KINDS, AreaWiring, DriveLike, DriveSource, DriveTerms, Dynamics, State,  # noqa: F401
                         Weights)  # (re-exported: their home is cordsnet.functional)

__all__ = ["AreaWiring", "CordsNet", "DriveTerms", "Dynamics", "EarlyExit", "Protocol", "State", "Weights", "READOUTS",
           "SECOND_KINDS"]

READOUTS: tuple[str, ...] = ("last", "all")

class Protocol(NamedTuple):
    """A resolved protocol: the arguments of :meth:`CordsNet.run` with the config's defaults filled in."""

    steps: int  # stimulus steps
    spontaneous_steps: int  # blank steps first (0: start from the zero state)
    alpha: float  # dt / tau


class EarlyExit(NamedTuple):
    """What :meth:`CordsNet.run_until` returns, per image.

    Attributes:
        logits: (B, K) at the image's stopping step.
        steps: (B,) int64, stimulus steps it ran.
        decided: (B,) bool: it stopped because it decided (:mod:`cordsnet.decision`).
        converged: (B,) bool: it stopped because its state stopped changing (``tol``).
    """

    logits: Tensor
    steps: Tensor
    decided: Tensor
    converged: Tensor


class CordsNet(nn.Module):
    """CordsNet-R{depth}: ``tau dr_i/dt = -r_i + relu(Conv_rec(r_i) + b_i + Conv_ff(h_i))``.

    Args:
        config: the architecture and default protocol; defaults to the published R8 on ImageNet.
        **overrides: fields of :class:`CordsNetConfig` to change, e.g. ``CordsNet(depth=2)``.

    The state dict has exactly the published layout (``docs/specification.md`` §2).
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
        strides = AREA_STRIDES[:depth]
        wiring = []
        for i in range(depth):
            if i == 0:
                wiring.append(AreaWiring(-1, "none", -1, -1, strides[i]))
            elif i == 1:
                wiring.append(AreaWiring(0, "inp_skip", -1, -1, strides[i]))
            elif i % 2 == 0:
                wiring.append(AreaWiring(i - 1, "identity", i - 2, -1, strides[i]))
            else:
                wiring.append(AreaWiring(i - 1, "project", i - 2, (i - 3) // 2, strides[i]))
        self.wiring: tuple[AreaWiring, ...] = tuple(wiring)
        self.readout_areas: tuple[int, int] = (depth - 1, depth - 2)  # relu of both, averaged over space

        # Slope of the update's nonlinearity: 0 is the relu of the published model; the trainer's
        # linear (1.0) and annealing (0 < a < 1, a frozen shared PReLU slope) stages change it.
        self.update_slope: float = 0.0

        self._spont_cache: tuple[tuple, State] | None = None

    # ------------------------------------------------------------------------------- properties
    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def device(self) -> torch.device:
        """The device of the parameters (inputs are moved there)."""
        return self.out_fc.bias.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (inputs are cast to it)."""
        return self.out_fc.bias.dtype

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each area's feedforward convolution ``area_area_i``."""
        return tuple(w.stride for w in self.wiring)

    @property
    def dynamics(self) -> Dynamics:
        """What :mod:`cordsnet.functional` needs besides weights: the wiring, read-out areas, update slope."""
        return Dynamics(self.wiring, self.readout_areas, self.update_slope)

    # -------------------------------------------------------------------------------- weights
    def _param_key(self) -> tuple:
        return (self.device, self.dtype) + tuple((p.data_ptr(), p._version) for p in self.parameters())

    def _derive(self) -> Weights:
        return Weights(
            inp_conv=self.inp_conv.weight,
            inp_skip=self.inp_skip.weight,
            area_conv=tuple(m.weight for m in self.area_conv),
            conv_bias=tuple(self.conv_bias),
            area_area=tuple(m.weight for m in self.area_area),
            skip_area=tuple(m.weight for m in self.skip_area),
            out_weight=self.out_fc.weight,
            out_bias=self.out_fc.bias,
        )

    def effective_weights(self) -> Weights:
        """The weights the dynamics use, ``g * v / ||v||`` for every weight-normalised layer.

        Derived once per call of the protocol (``run``, ``run_until``, ``trajectory``, an export), never per
        step. Calls of the step-by-step API (``step``, ``readout``, ``drive``) each derive them; around a
        loop of such calls use PyTorch's own cache of parametrized weights, which holds them for the
        whole block::

            with torch.no_grad(), torch.nn.utils.parametrize.cached():
                for t in range(100):
                    state = model.step(state, terms)

        With gradients enabled they are derived with autograd seeing g and v; with gradients disabled
        they are detached.
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self._derive()
        with torch.no_grad():  # computed without a graph (nothing to detach); inside parametrize.cached() the
            return self._derive()  # very tensors of the first derivation (FakeQuant finds them by identity)

    # ------------------------------------------------------------------------------- public API
    def drive(self, images: Tensor) -> Tensor:
        """The image drive ``u = avgpool(inp_conv(x))``.

        Args:
            images: (B, C, S, S), or a sequence (B, T, C, S, S).

        Returns:
            u: (B, 64, S/4, S/4), or (B, T, 64, S/4, S/4) for a sequence.
        """
        x = self.validate_images(images)
        weights = self.effective_weights()
        if x.dim() == 5:
            b, t = x.shape[:2]
            u = CF.drive(weights, x.flatten(0, 1))
            return u.unflatten(0, (b, t))
        return CF.drive(weights, x)

    def drive_terms(self, u: Tensor) -> DriveTerms:
        """The constant-while-shown terms of a drive: ``inp_skip(u)`` and ``area_area_0(u)``.

        Args:
            u: the drive, (B, 64, S/4, S/4).
        """
        self.validate_drive(u)
        return CF.drive_terms(self.dynamics, self.effective_weights(), u)

    def initial_state(self, batch: int = 1) -> State:
        """Zero rates, one (batch, c_i, H_i, W_i) tensor per area."""
        batch = validate.positive_int("batch", batch)
        return tuple(torch.zeros((batch, *shape), device=self.device, dtype=self.dtype)
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
        alpha = self.resolve_protocol(alpha=alpha).alpha
        state = self.validate_state(state)
        weights = self.effective_weights()
        terms = self._as_terms(weights, drive, state[0].shape[0])
        return CF.step(self.dynamics, weights, state, terms, alpha)

    def readout(self, state: Sequence[Tensor]) -> Tensor:
        """Logits ``out_fc(mean_space(relu(r_{D-1}) + relu(r_{D-2})))``, (B, classes)."""
        state = self.validate_state(state)
        return CF.readout(self.dynamics, self.effective_weights(), state)

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
        batch = validate.positive_int("batch", batch)
        p = self.resolve_protocol(spontaneous_steps=steps, alpha=alpha, names=("steps", "steps", "alpha"))
        cached = self.cached_spontaneous_state(p.spontaneous_steps, p.alpha)
        return tuple(r.expand(batch, *r.shape[1:]).clone() for r in cached)

    def cached_spontaneous_state(self, steps: int, alpha: float, weights: Weights | None = None) -> State:
        """The batch-1 spontaneous end state, cached: shared tensors, never modify them in place.

        The unvalidated, copy-free form of :meth:`spontaneous_state` for export and training
        (``steps`` and ``alpha`` as :meth:`resolve_protocol` returns them; `weights`: the caller's
        effective weights, if it holds them already).
        """
        key = (self._param_key(), float(alpha), int(steps), float(self.update_slope))
        if self._spont_cache is None or self._spont_cache[0] != key:
            with torch.no_grad():
                weights = self.effective_weights() if weights is None else weights
                state = self.initial_state(1)
                for state in CF.trajectory(self.dynamics, weights, state, None, steps, alpha):
                    pass
            self._spont_cache = (key, state)
        return self._spont_cache[1]

    def clear_caches(self) -> None:
        """Drop the cached spontaneous state.

        Not needed after ordinary updates (optimiser steps, ``load_state_dict``, in-place ops under
        ``torch.no_grad()``, ``.to``): those are detected. Only writes through ``param.data``, which
        bypass PyTorch's version counters, need it.
        """
        self._spont_cache = None

    def resolve_protocol(self, steps: int | None = None, spontaneous_steps: int | None = None,
                         alpha: float | None = None, *, frames: int | None = None,
                         names: tuple[str, str, str] = ("steps", "spontaneous_steps", "alpha")) -> Protocol:
        """Validate a protocol and fill in the config's defaults.

        Args:
            steps: stimulus steps (>= 1); default ``config.steps``, or `frames` for a sequence.
            spontaneous_steps: blank steps first (>= 0); default ``config.spontaneous_steps``.
            alpha: dt / tau in (0, 1]; default ``config.alpha``.
            frames: T of a (B, T, C, S, S) sequence, which drives exactly T steps.
            names: the argument names used in error messages.

        Raises:
            ValueError: a value out of range, or `steps` differing from a sequence's `frames`.
        """
        c = self.config
        default_steps = c.steps if frames is None else frames
        n = validate.optional_integer(names[0], steps, default_steps, min=1)
        if frames is not None and n != frames:
            raise ValueError(f"{names[0]}: a sequence of T={frames} frames drives exactly {frames} steps, "
                             f"got {names[0]}={steps}")
        spont = validate.optional_integer(names[1], spontaneous_steps, c.spontaneous_steps, min=0)
        a = float(c.alpha) if alpha is None else validate.fraction(names[2], alpha)
        return Protocol(n, spont, a)

    def trajectory(self, images: Tensor, *, steps: int | None = None, spontaneous_steps: int | None = None,
                   alpha: float | None = None) -> Iterator[State]:
        """The published protocol as a generator: the state after each stimulus step.

        Starts from the spontaneous state; a (B, C, S, S) batch drives every step, a (B, T, C, S, S)
        sequence drives step t with frame t. Consume it lazily (e.g. stop early, record some areas):
        ``for t, state in enumerate(model.trajectory(x)): ...``.

        Args:
            images: (B, C, S, S) or (B, T, C, S, S).
            steps, spontaneous_steps, alpha: as for :meth:`run`.

        Yields:
            One state per stimulus step, a tuple of (B, c_i, H_i, W_i) tensors.
        """
        weights, state, drive, protocol = self._begin(images, steps, spontaneous_steps, alpha)
        yield from CF.trajectory(self.dynamics, weights, state, drive, protocol.steps, protocol.alpha)

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
        validate.choice("readout", readout, READOUTS)
        areas = self.validate_areas(record)
        weights, state, drive, protocol = self._begin(images, steps, spontaneous_steps, alpha)
        logits_per_step: list[Tensor] = []
        rates: dict[int, list[Tensor]] = {a: [] for a in areas}
        dyn = self.dynamics
        for state in CF.trajectory(dyn, weights, state, drive, protocol.steps, protocol.alpha):
            if readout == "all":
                logits_per_step.append(CF.readout(dyn, weights, state))
            for a in areas:
                rates[a].append(state[a])
        logits = torch.stack(logits_per_step) if readout == "all" else CF.readout(dyn, weights, state)
        if record is None:
            return logits
        return logits, {a: torch.stack(rs) for a, rs in rates.items()}

    def run_until(self, images: Tensor, threshold: float, max_steps: int | None = None, tol: float | None = None,
                  *, margin: float = DEFAULT_MARGIN, spontaneous_steps: int | None = None,
                  alpha: float | None = None) -> EarlyExit:
        """Anytime inference: run each image only until it has decided (or converged, or max_steps).

        The decision is :func:`cordsnet.decision.decide` (also what reaction times use): at step t the
        top class has softmax probability >= `threshold` *and* the image has widened its lead over the
        no-image baseline at step t by >= `margin`, so a blank image never stops early on a confident
        resting answer. A batch keeps running only the images still undecided.

        Args:
            images: (B, C, S, S) shown at every step.
            threshold: probability in (1/K, 1].
            max_steps: the most stimulus steps (default ``config.steps``).
            tol: also stop an image when its largest state change in one step is below `tol`
                (converged; None: never).
            margin: evidence in logits the image must add (see :mod:`cordsnet.decision`).
            spontaneous_steps, alpha: as for :meth:`run`.

        Returns:
            :class:`EarlyExit`: logits (B, K) at each image's stopping step, steps (B,), decided (B,)
            (False: stopped at max_steps or on convergence without deciding), converged (B,).
        """
        from .decision import check_until, decide

        weights, state, terms, protocol = self._begin(images, max_steps, spontaneous_steps, alpha,
                                                      names=("max_steps", "spontaneous_steps", "alpha"),
                                                      still_only="run_until")
        threshold, margin, tol = check_until(threshold, margin, tol, self.num_classes)
        batch = state[0].shape[0]
        spont = self.cached_spontaneous_state(protocol.spontaneous_steps, protocol.alpha, weights)  # batch 1, cached
        logits = torch.empty(batch, self.num_classes, device=self.device, dtype=self.dtype)
        steps = torch.full((batch,), protocol.steps, dtype=torch.int64)
        decided = torch.zeros(batch, dtype=torch.bool)
        converged = torch.zeros(batch, dtype=torch.bool)
        rows = torch.arange(batch)  # original indices of the running rows
        dyn = self.dynamics
        run = CF.trajectory(dyn, weights, state, terms, protocol.steps, protocol.alpha)
        rest = CF.trajectory(dyn, weights, spont, None, protocol.steps, protocol.alpha)  # the baseline
        keep: Tensor | None = None
        previous = state
        with torch.no_grad():
            for t in range(protocol.steps):
                state = run.send(keep) if t else next(run)
                base = CF.readout(dyn, weights, next(rest))[0]
                out = CF.readout(dyn, weights, state)
                if not bool(torch.isfinite(out).all()):
                    raise ValueError(f"images: the logits became NaN or infinite at step {t + 1}; expected "
                                     f"normalised pixels, got values up to {float(images.abs().max()):.3g}")
                verdict = decide(out.detach().to("cpu", torch.float64).numpy(),
                                 base.to("cpu", torch.float64).numpy(), threshold, margin)
                done = torch.from_numpy(verdict.decided)
                calm = torch.zeros_like(done)
                if tol is not None:
                    change = torch.stack([(a - b).abs().flatten(1).amax(1) for a, b in zip(state, previous)]).amax(0)
                    calm = (change < tol).cpu()
                stop = done | calm if t + 1 < protocol.steps else torch.ones_like(done)
                if bool(stop.any()):
                    ids = rows[stop]
                    logits[ids.to(self.device)] = out[stop.to(out.device)]
                    steps[ids] = t + 1
                    decided[ids] = done[stop]
                    converged[ids] = calm[stop]
                keep_mask = ~stop
                if not bool(keep_mask.any()):
                    break
                keep = torch.nonzero(keep_mask).flatten() if bool(stop.any()) else None
                rows = rows[keep_mask]
                previous = state if keep is None else tuple(r[keep.to(r.device)] for r in state)
                if keep is not None:
                    keep = keep.to(self.device)
        run.close()
        rest.close()
        return EarlyExit(logits, steps, decided, converged)

    def forward(self, images: Tensor) -> Tensor:
        """``run(images)`` with the config's protocol: logits (B, classes)."""
        return self.run(images)

    def extra_repr(self) -> str:
        c = self.config
        return (f"depth={c.depth}, num_classes={c.num_classes}, in_channels={c.in_channels}, "
                f"image_size={c.image_size}, alpha={c.alpha}")

    def _begin(self, images: Tensor, steps: int | None, spontaneous_steps: int | None, alpha: float | None, *,
               names: tuple[str, str, str] = ("steps", "spontaneous_steps", "alpha"),
               still_only: str | None = None) -> tuple[Weights, State, DriveSource, Protocol]:
        """Validated start of the protocol: weights, the spontaneous state at the batch, the drive source.

        `names` are the protocol's argument names in messages; `still_only` names a caller that takes
        (B, C, S, S) images shown at every step, not sequences.
        """
        x = self.validate_images(images)
        video = x.dim() == 5
        if video and still_only is not None:
            raise ValueError(f"images: {still_only} expects (B, C, S, S) images shown at every step, got shape "
                             f"{tuple(x.shape)}; for a sequence use run(..., readout='all') and "
                             "cordsnet.decision.first_decisions")
        protocol = self.resolve_protocol(steps, spontaneous_steps, alpha, frames=x.shape[1] if video else None,
                                         names=names)
        weights = self.effective_weights()
        batch = x.shape[0]
        spont = self.cached_spontaneous_state(protocol.spontaneous_steps, protocol.alpha, weights)
        state: State = tuple(r.expand(batch, *r.shape[1:]) for r in spont)
        if video:
            def drive(t: int) -> DriveTerms:
                return CF.drive_terms(self.dynamics, weights, CF.drive(weights, x[:, t]))
        else:
            drive = CF.drive_terms(self.dynamics, weights, CF.drive(weights, x))
        return weights, state, drive, protocol

    def _as_terms(self, weights: Weights, drive: DriveLike, batch: int) -> DriveTerms | None:
        if drive is None or isinstance(drive, DriveTerms):
            if isinstance(drive, DriveTerms):
                self.validate_drive(drive.skip, batch, "drive.skip")
                self.validate_drive(drive.ff0, batch, "drive.ff0")
            return drive
        self.validate_drive(drive, batch)
        return CF.drive_terms(self.dynamics, weights, drive)

    # ------------------------------------------------------------------------------ validation
    def validate_images(self, images: Tensor) -> Tensor:
        """Check images against the config and move them to the model's device and dtype.

        Args:
            images: (B, C, S, S) or (B, T, C, S, S) floating-point, finite, non-empty.

        Raises:
            TypeError, ValueError: naming what was expected and what was received.
        """
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
        return images.to(device=self.device, dtype=self.dtype)

    def validate_state(self, state: Sequence[Tensor]) -> State:
        """Check a state: one (B, c_i, H_i, W_i) tensor per area, one batch size."""
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

    def validate_drive(self, u: Tensor, batch: int | None = None, name: str = "drive") -> None:
        """Check a drive ``u`` (or one of its terms): (B, 64, S/4, S/4), with batch `batch` if given."""
        if not isinstance(u, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, DriveTerms or None, got {type(u).__name__}")
        shape = self.config.drive_shape
        b = u.shape[0] if batch is None else batch
        if u.dim() != 4 or tuple(u.shape[1:]) != shape or u.shape[0] != b:
            raise ValueError(f"{name}: expected shape ({b}, {', '.join(map(str, shape))}), got {tuple(u.shape)}")

    def validate_areas(self, record: Iterable[int] | None, name: str = "record") -> tuple[int, ...]:
        """Area indices in 0..depth-1 (order kept, repeats dropped); () for None."""
        if isinstance(record, str):
            raise ValueError(f"{name}: expected area indices in 0..{self.depth - 1}, got {record!r}")
        return validate.areas(name, record, self.depth)
