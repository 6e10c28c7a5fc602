"""Stimulus protocols: (B, T, C, S, S) sequences of blank / stimulus segments for :meth:`CordsNet.run`.

A protocol is a list of segments, each a mapping such as::

    [{"kind": "blank", "ms": 100},
     {"kind": "stimulus", "ms": 200, "contrast": 0.5, "noise": 0.2},
     {"kind": "blank", "steps": 50}]

or the equivalent text ``"blank:100ms, stimulus:200ms:contrast=0.5:noise=0.2, blank:50"`` (see
:func:`parse_protocol`). Durations are in steps or in milliseconds (``dt = alpha * tau``, 2 ms for
the published alpha = 0.2 and tau = 10 ms; a duration in ms must be a whole number of steps).

Frames live in the model's *normalised* input space:

* blank: the zero tensor. This is the published blank: it gives an exactly zero drive (``inp_conv``
  has no bias), i.e. the image whose pixels equal the dataset mean.
* stimulus: ``contrast * image`` (contrast scales the deviation from the mean image: 1 = the image,
  0 = blank), from the trial's image.
* noise (any segment): additive Gaussian noise of standard deviation ``noise`` in normalised units,
  independent per trial, frame and pixel (``"frozen": true`` draws one noise image per trial and
  segment instead), from a seeded generator.

``model.run(sequence, spontaneous_steps=...)`` drives step t with frame t; the model's own
spontaneous (blank) phase still runs first unless ``spontaneous_steps=0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from .. import validate

__all__ = ["SEGMENT_KINDS", "Segment", "build_stimulus", "parse_protocol", "protocol_segments", "TAU_MS"]

TAU_MS = 10.0  # the published time constant


@dataclass(frozen=True)
class Segment:
    """One resolved segment of a protocol.

    Attributes:
        kind: a key of :data:`SEGMENT_KINDS`.
        start: first step (frame index) of the segment.
        steps: its length in steps.
        dt_ms: milliseconds per step.
        contrast: multiplier of the image (stimulus segments; 0 for blank).
        noise: standard deviation of the additive noise, normalised units.
        frozen: one noise image for the whole segment instead of fresh noise per frame.
        image: key of the image shown (stimulus segments with several images), else None.
    """

    kind: str
    start: int
    steps: int
    dt_ms: float
    contrast: float = 0.0
    noise: float = 0.0
    frozen: bool = False
    image: str | None = None

    @property
    def stop(self) -> int:
        return self.start + self.steps

    @property
    def start_ms(self) -> float:
        return self.start * self.dt_ms

    @property
    def stop_ms(self) -> float:
        return self.stop * self.dt_ms


@dataclass(frozen=True)
class SegmentKind:
    """How a kind of segment forms its frames (before noise)."""

    keys: frozenset[str]  # optional keys it accepts besides kind / ms / steps
    frame: Callable[[Segment, Mapping[str, Tensor]], Tensor | None]  # None = the zero frame
    default_contrast: float


def _blank_frame(seg: Segment, images: Mapping[str, Tensor]) -> None:
    return None


def _stimulus_frame(seg: Segment, images: Mapping[str, Tensor]) -> Tensor:
    key = seg.image if seg.image is not None else next(iter(images))
    if key not in images:
        raise ValueError(f"protocol: segment at step {seg.start} shows image {key!r}; images are {sorted(images)}")
    return seg.contrast * images[key]


_COMMON = frozenset({"noise", "frozen"})
SEGMENT_KINDS: dict[str, SegmentKind] = {
    "blank": SegmentKind(_COMMON, _blank_frame, 0.0),
    "stimulus": SegmentKind(_COMMON | {"contrast", "image"}, _stimulus_frame, 1.0),
}

SegmentSpec = Union[Mapping[str, Any], str]


def _steps_of(spec: Mapping[str, Any], dt_ms: float, where: str) -> int:
    has_ms, has_steps = "ms" in spec, "steps" in spec
    if has_ms == has_steps:
        raise ValueError(f"protocol{where}: expected exactly one of 'ms' or 'steps', got keys {sorted(spec)}")
    if has_steps:
        return validate.positive_int(f"protocol{where}: steps", spec["steps"])
    ms = validate.number(f"protocol{where}: ms", spec["ms"], low=0.0, low_open=True)
    ratio = float(ms) / dt_ms
    steps = round(ratio)
    if steps < 1 or abs(ratio - steps) > 1e-6 * max(1.0, ratio):
        raise ValueError(f"protocol{where}: ms: {ms} ms is not a whole number of {dt_ms:g} ms steps "
                         f"(dt = alpha * tau)")
    return steps


def protocol_segments(protocol: Sequence[SegmentSpec] | str, *, alpha: float = 0.2,
                      tau_ms: float = TAU_MS) -> list[Segment]:
    """Resolve a protocol description into timed :class:`Segment` s.

    Args:
        protocol: a list of segment mappings (keys: ``kind``; ``ms`` or ``steps``; and, by kind,
            ``contrast``, ``noise``, ``frozen``, ``image``), or the text form of :func:`parse_protocol`.
        alpha: dt / tau of the model.
        tau_ms: the time constant in ms.

    Returns:
        The segments, with their start step and length.
    """
    if isinstance(protocol, str):
        protocol = parse_protocol(protocol)
    if isinstance(protocol, Mapping) or not isinstance(protocol, Sequence) or not protocol:
        raise ValueError(f"protocol: expected a non-empty list of segments, got {protocol!r}")
    dt_ms = validate.fraction("alpha", alpha) * validate.number("tau_ms", tau_ms, low=0.0, low_open=True)
    out: list[Segment] = []
    start = 0
    for idx, spec in enumerate(protocol):
        where = f"[{idx}]"
        if not isinstance(spec, Mapping):
            raise ValueError(f"protocol{where}: expected a mapping with a 'kind', got {spec!r}")
        kind_name = spec.get("kind")
        if kind_name not in SEGMENT_KINDS:
            raise ValueError(f"protocol{where}: kind: expected one of {sorted(SEGMENT_KINDS)}, got {kind_name!r}")
        kind = SEGMENT_KINDS[kind_name]
        unknown = sorted(set(spec) - {"kind", "ms", "steps"} - kind.keys)
        if unknown:
            raise ValueError(f"protocol{where}: unknown keys {unknown} for a {kind_name!r} segment; valid keys are "
                             f"{sorted({'kind', 'ms', 'steps'} | kind.keys)}")
        steps = _steps_of(spec, dt_ms, where)
        contrast = spec.get("contrast", kind.default_contrast)
        noise = spec.get("noise", 0.0)
        contrast = validate.number(f"protocol{where}: contrast", contrast)
        noise = validate.number(f"protocol{where}: noise", noise, low=0.0)  # a standard deviation
        frozen = validate.boolean(f"protocol{where}: frozen", spec.get("frozen", False))
        image = spec.get("image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"protocol{where}: image: expected the name of an image, got {image!r}")
        out.append(Segment(kind_name, start, steps, dt_ms, float(contrast), float(noise), frozen, image))
        start += steps
    return out


def parse_protocol(text: str) -> list[dict[str, Any]]:
    """Parse the text form of a protocol.

    Segments are separated by commas; each is ``kind:duration[:key=value...]`` where duration is a
    number of steps (``50``) or milliseconds (``100ms``), e.g.
    ``"blank:100ms, stimulus:200ms:contrast=0.5:noise=0.1, blank:50"``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"protocol: expected a text such as 'blank:100ms, stimulus:200ms', got {text!r}")
    segments = []
    for part in text.split(","):
        fields = [f.strip() for f in part.strip().split(":")]
        if len(fields) < 2 or not fields[0]:
            raise ValueError(f"protocol: segment {part.strip()!r}: expected 'kind:duration[:key=value...]'")
        spec: dict[str, Any] = {"kind": fields[0]}
        duration = fields[1]
        try:
            if duration.endswith("ms"):
                spec["ms"] = float(duration[:-2])
            else:
                spec["steps"] = int(duration)
        except ValueError:
            raise ValueError(f"protocol: segment {part.strip()!r}: duration {duration!r} is not a number of "
                             "steps (50) or milliseconds (100ms)") from None
        for item in fields[2:]:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"protocol: segment {part.strip()!r}: expected key=value, got {item!r}")
            key = key.strip()
            value = value.strip()
            if key == "frozen":
                flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
                if value.lower() not in flags:
                    raise ValueError(f"protocol: segment {part.strip()!r}: frozen expects one of "
                                     f"{sorted(flags)}, got {value!r}")
                spec[key] = flags[value.lower()]
            elif key == "image":
                spec[key] = value
            else:
                try:
                    spec[key] = float(value)
                except ValueError:
                    raise ValueError(f"protocol: segment {part.strip()!r}: {key}={value!r} is not a number") from None
        segments.append(spec)
    return segments


def build_stimulus(images: Tensor | Mapping[str, Tensor], protocol: Sequence[SegmentSpec] | str, *,
                   alpha: float = 0.2, tau_ms: float = TAU_MS, seed: int = 0) -> Tensor:
    """Build the frame sequence of a protocol.

    Args:
        images: (B, C, S, S) normalised images, one per trial; or a mapping name -> (B, C, S, S)
            (e.g. ``{"target": ..., "mask": ...}``) selected by the stimulus segments' ``image`` key
            (default: the first).
        protocol: the description (see :func:`protocol_segments`).
        alpha: dt / tau of the model (``model.config.alpha``).
        tau_ms: time constant in ms.
        seed: seed of the noise generator.

    Returns:
        (B, T, C, S, S) frames, T the protocol's total steps, same dtype/device as the images.
        Memory: B * T * C * S * S numbers.
    """
    if isinstance(images, Tensor):
        images = {"stimulus": images}
    if not isinstance(images, Mapping) or not images:
        raise TypeError(f"images: expected a (B, C, S, S) tensor or a mapping of them, got {type(images).__name__}")
    ref = None
    for name, img in images.items():
        if not isinstance(img, Tensor) or img.dim() != 4 or not img.is_floating_point():
            raise ValueError(f"images[{name!r}]: expected a floating-point (B, C, S, S) tensor, got "
                             f"{getattr(img, 'shape', type(img).__name__)}")
        if ref is not None and img.shape != ref.shape:
            raise ValueError(f"images[{name!r}]: expected shape {tuple(ref.shape)} like the others, "
                             f"got {tuple(img.shape)}")
        ref = img
    assert ref is not None
    segments = protocol_segments(protocol, alpha=alpha, tau_ms=tau_ms)
    total = segments[-1].stop
    frames = torch.zeros((ref.shape[0], total, *ref.shape[1:]), dtype=ref.dtype, device=ref.device)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    for seg in segments:
        base = SEGMENT_KINDS[seg.kind].frame(seg, images)
        window = frames[:, seg.start:seg.stop]
        if base is not None:
            window += base[:, None]
        if seg.noise > 0:
            noise_shape = (ref.shape[0], 1 if seg.frozen else seg.steps, *ref.shape[1:])
            noise = torch.randn(noise_shape, generator=gen, dtype=ref.dtype).to(ref.device)
            window += seg.noise * noise
    return frames
