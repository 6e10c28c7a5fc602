"""The one image pipeline: image files and pixels -> a model's input, in numpy + Pillow (torch-free).

Every surface goes through this module: the runtime sessions (``predict``, ``predict --until``), the
analysis commands (``record``, ``reaction-time``, :func:`cordsnet.analysis.load_images` is a thin torch
adapter over :meth:`Preprocessor.batch`) and the ImageNet folder loader of :mod:`cordsnet.data`
(:func:`to_mode`), so the same file gives the same pixels everywhere. Only :func:`load_image` opens
image files.

The test transform of a model with input side S is torchvision's
``Resize(preset.resize_size(S)) -> CenterCrop(S) -> ToTensor() -> Normalize(mean, std)``
applied to a PIL image in the model's mode ("RGB" for 3 channels, "L" for 1). This module repeats it
step for step with the same Pillow call (``Image.resize(..., BILINEAR)``, which antialiases when it
shrinks), the same size and crop arithmetic, and float32 arithmetic for the scaling and the
normalisation, so the arrays agree with torchvision's to float32 rounding.

Every Pillow mode is scaled correctly or refused (:meth:`Preprocessor.to_pil`):

* 8-bit modes ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX", ...)
  are converted with Pillow's ``Image.convert`` to the model's mode, as the datasets are (alpha is
  dropped, palettes are expanded; where Pillow has no direct conversion to "L" it goes through "RGB").
* 16-bit greyscale ("I;16", "I;16B", ...) and 32-bit integer ("I") images are read as 16-bit:
  0..65535 maps to 0..255 (an "I" image with values outside 0..65535 is refused); 32-bit float ("F")
  images must hold values in [0, 1], which map to 0..255. Either is then greyscale ("L"), replicated
  to RGB for a 3-channel model.
* A mode Pillow cannot convert is refused with one line naming it; a decompression bomb (more pixels
  than ``PIL.Image.MAX_IMAGE_PIXELS`` allows: Pillow itself only warns below twice the limit) is
  refused before it is decoded; only regular files are opened (no directories, FIFOs or devices).

A model without a dataset preset gets :meth:`Preprocessor.for_config`'s identity normalisation
(resize + crop + [0, 1], with a warning).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .._io import register_input

__all__ = ["ImageLike", "Preprocessor", "load_image", "to_mode"]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

# Model input channels -> the PIL mode images are converted to (what the datasets yield).
_MODES: dict[int, str] = {1: "L", 3: "RGB"}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file completely (the only place image files are opened).

    Args:
        path: a regular file in any format Pillow reads.

    Returns:
        The decoded image, in the file's own mode (see :func:`to_mode` for the conversion).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a
            decompression bomb), or not an image Pillow can decode (unknown format or truncated data).
    """
    p = Path(path)
    register_input(p)  # no output of the running command may replace it (cordsnet._io.input_scope)
    if not p.exists():
        raise FileNotFoundError(f"image: no such file {str(p)!r}")
    if not p.is_file():
        what = "the directory" if p.is_dir() else "something that is not a regular file:"
        raise ValueError(f"image: expected an image file, got {what} {str(p)!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns below 2x the limit
            with Image.open(p) as img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and img.width * img.height > limit:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} = {img.width * img.height} "
                                                       f"pixels, more than PIL.Image.MAX_IMAGE_PIXELS = {limit}")
                img.load()
                return img.copy()
    except UnidentifiedImageError:
        raise ValueError(f"image: cannot decode {str(p)!r} (not an image format Pillow knows)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image: {str(p)!r} is too large to decode safely ({exc}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"image: cannot decode {str(p)!r} ({exc})") from None


def to_mode(image: ImageLike, mode: str) -> Image.Image:
    """Any single image (path, PIL image, uint8 HW / HWC or uint16 HW array) as a PIL image in `mode`.

    The one conversion of every Pillow mode (module docstring): wide modes are scaled to 8-bit
    greyscale, everything else goes through Pillow's ``convert``; what cannot be converted is refused.

    Args:
        image: the image.
        mode: "L" or "RGB" (a model's input mode).
    """
    if mode not in _MODES.values():
        raise ValueError(f"mode: expected one of {sorted(_MODES.values())}, got {mode!r}")
    if isinstance(image, (str, os.PathLike)):
        img = load_image(image)
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        img = _array_to_pil(image)
    else:
        raise TypeError(f"image: expected a path, a PIL image or a uint8 (H, W[, C]) array, got "
                        f"{type(image).__name__}")
    if img.mode in _WIDE_MODES:
        img = _wide_to_l(img)
    if img.mode != mode:
        img = _convert(img, mode)
    return img


@dataclass(frozen=True)
class Preprocessor:
    """A dataset preset's test transform for a model of input side `image_size`.

    Args:
        mean: per-channel mean after scaling pixels to [0, 1] (length = channels).
        std: per-channel standard deviation.
        image_size: S, the model's input side.
        resize_size: the shorter side after the resize (``preset.resize_size(S)``).
        name: preset name, for messages.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    resize_size: int
    name: str = "custom"

    def __post_init__(self) -> None:
        if len(self.mean) not in _MODES or len(self.std) != len(self.mean):
            raise ValueError(f"preset {self.name!r}: expected mean and std of equal length 1 or 3, got "
                             f"{len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"preset {self.name!r}: std must be positive, got {self.std}")

    @classmethod
    def from_preset(cls, preset: Mapping[str, Any] | Any, image_size: int) -> "Preprocessor":
        """Build from a ``DatasetPreset`` or its ``to_dict()`` (the ``cordsnet.preset`` metadata)."""
        data = preset.to_dict() if hasattr(preset, "to_dict") else dict(preset)
        ratio = float(data.get("resize_ratio", 1.0))
        return cls(tuple(float(m) for m in data["mean"]), tuple(float(s) for s in data["std"]), int(image_size),
                   int(round(image_size * ratio)), str(data.get("name", "custom")))

    @classmethod
    def for_config(cls, config: Any) -> "Preprocessor":
        """The test transform of a model's config (a :class:`~cordsnet.config.CordsNetConfig`).

        Its dataset preset's normalisation; without a preset, resize + crop + [0, 1] only (mean 0,
        std 1, a ``RuntimeWarning`` says so).

        Raises:
            ValueError: the preset's channel count differs from ``config.in_channels``.
        """
        channels, size, preset = int(config.in_channels), int(config.image_size), config.preset
        if channels not in _MODES:
            raise ValueError(f"config.in_channels: images can be preprocessed for 1 or 3 channels, got {channels}")
        if preset is None:
            warnings.warn("images: the model's config names no dataset preset; images are scaled to [0, 1] but "
                          "not normalised", RuntimeWarning, stacklevel=2)
            return cls((0.0,) * channels, (1.0,) * channels, size, size, "none")
        pre = cls.from_preset(preset, size)
        if pre.channels != channels:
            raise ValueError(f"config: preset {pre.name!r} has {pre.channels} channel(s), the model "
                             f"{channels}")
        return pre

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to before the transform."""
        return _MODES[self.channels]

    # ---------------------------------------------------------------------------------- steps
    def to_pil(self, image: ImageLike) -> Image.Image:
        """Any single image (path, PIL image, uint8 HW / HWC array) as a PIL image in :attr:`mode` (:func:`to_mode`)."""
        return to_mode(image, self.mode)

    def resize(self, img: Image.Image) -> Image.Image:
        """torchvision ``Resize(resize_size)``: shorter side to `resize_size`, aspect ratio kept."""
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) == (w, h):
            return img
        return img.resize((new_w, new_h), Image.BILINEAR)

    def center_crop(self, arr: np.ndarray) -> np.ndarray:
        """torchvision ``CenterCrop(image_size)`` on an (H, W, C) array (zero padding if too small)."""
        s = self.image_size
        h, w = arr.shape[:2]
        if s > h or s > w:
            pad_top, pad_left = (s - h) // 2 if s > h else 0, (s - w) // 2 if s > w else 0
            pad_bottom, pad_right = (s - h + 1) // 2 if s > h else 0, (s - w + 1) // 2 if s > w else 0
            arr = np.pad(arr, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)))
            h, w = arr.shape[:2]
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        return arr[top:top + s, left:left + s]

    def __call__(self, image: ImageLike) -> np.ndarray:
        """Preprocess one image.

        Returns:
            (C, S, S) float32, normalised.
        """
        img = self.resize(self.to_pil(image))
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = self.center_crop(arr)
        x = arr.astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Preprocess several images: (N, C, S, S) float32."""
        if len(images) == 0:
            raise ValueError("images: expected at least one image, got an empty list")
        return np.stack([self(img) for img in images])


# Modes with more than 8 bits per sample: scaled to 8-bit greyscale by _wide_to_l.
_WIDE_MODES: tuple[str, ...] = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit greyscale ("L"): see the module docstring."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        if not np.isfinite(arr).all():
            raise ValueError("image: a float (mode 'F') image holds NaN or infinite values")
        low, high, top = 0.0, 1.0, 1.0
        hint = "expected values in [0, 1] (divide by 255 or save the image as 8-bit)"
    else:
        low, high, top = 0.0, 65535.0, 65535.0
        hint = "expected 16-bit values in [0, 65535] (save the image as 8- or 16-bit)"
    if arr.size and (arr.min() < low or arr.max() > high):
        raise ValueError(f"image: a mode {img.mode!r} image with values in [{arr.min():g}, {arr.max():g}]; {hint}")
    return Image.fromarray(np.round(arr / top * 255.0).astype(np.uint8), "L")


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """``img.convert(mode)``, through "RGB" where Pillow has no direct conversion; refused when it has none."""
    try:
        return img.convert(mode)
    except ValueError:
        pass
    try:
        return img.convert("RGB").convert(mode)
    except ValueError:
        raise ValueError(f"image: Pillow cannot convert a mode {img.mode!r} image to {mode!r}; convert it to "
                         "RGB or L first") from None


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.dtype == np.uint16 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1)):
        return Image.fromarray(np.ascontiguousarray(arr.reshape(arr.shape[:2]), dtype=np.uint16))  # mode "I;16"
    if arr.dtype != np.uint8:
        raise TypeError(f"image: expected a uint8 (H, W) or (H, W, C) array of pixels, got dtype {arr.dtype} "
                        f"(pass normalised float images as (B, C, S, S) arrays instead)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA")
    raise ValueError(f"image: expected a uint8 array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                     f"got shape {arr.shape}")
