"""Image files -> normalised (B, C, S, S) tensors with a model's dataset preset (torchvision transforms)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..config import CordsNetConfig

__all__ = ["load_images", "image_transform"]

_MODES = {1: "L", 3: "RGB"}  # PIL mode for each supported channel count


def image_transform(config: CordsNetConfig):
    """The test-time transform of `config`'s dataset preset, as a torchvision ``Compose``.

    Resize the shorter side to ``preset.resize_size(S)`` (antialiased), centre-crop S x S, scale to
    [0, 1] and normalise with the preset's mean and std. Without a preset: resize + crop + [0, 1]
    only (a warning says so).
    """
    from torchvision.transforms import v2

    size = config.image_size
    preset = config.preset
    steps = [
        v2.ToImage(),
        v2.Resize(preset.resize_size(size) if preset is not None else size, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if preset is not None:
        steps.append(v2.Normalize(list(preset.mean), list(preset.std)))
    else:
        warnings.warn("load_images: the model's config names no dataset preset; images are scaled to [0, 1] "
                      "but not normalised", RuntimeWarning, stacklevel=3)
    return v2.Compose(steps)


def load_images(paths: Sequence[str | os.PathLike], config: CordsNetConfig) -> Tensor:
    """Load image files and preprocess them for a model.

    Args:
        paths: image files (anything Pillow reads), converted to grayscale or RGB to match
            ``config.in_channels``.
        config: the model's config (image size, channels, dataset preset).

    Returns:
        (B, C, S, S) float32, normalised as in the preset's test transform.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("paths: expected at least one image file, got none")
    mode = _MODES.get(config.in_channels)
    if mode is None:
        raise ValueError(f"config.in_channels: images can be loaded for 1 or 3 channels, got {config.in_channels}")
    transform = image_transform(config)
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"image: no such file {str(path)!r}")
        try:
            with Image.open(path) as img:
                out.append(transform(img.convert(mode)))
        except UnidentifiedImageError:
            raise ValueError(f"image: {str(path)!r} is not an image file Pillow can read") from None
    return torch.stack(out)
