"""Image files -> normalised (B, C, S, S) tensors: a thin torch adapter over the one image pipeline.

The pixels come from :class:`cordsnet.runtime.preprocess.Preprocessor` (the runtime's ``predict``
uses the same code), so ``record`` and ``reaction-time`` see exactly what ``predict`` sees, for every
Pillow mode (16-bit greyscale included) and with the same decompression-bomb guard.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from ..config import CordsNetConfig
from ..runtime.preprocess import Preprocessor

__all__ = ["load_images"]


def load_images(paths: Sequence[str | os.PathLike] | str | os.PathLike, config: CordsNetConfig) -> Tensor:
    """Load image files and preprocess them for a model.

    Args:
        paths: image files (anything Pillow reads; see :mod:`cordsnet.runtime.preprocess` for how
            each mode is converted to grayscale or RGB to match ``config.in_channels``).
        config: the model's config (image size, channels, dataset preset; without a preset the
            images are scaled to [0, 1] only, with a warning).

    Returns:
        (B, C, S, S) float32, normalised as in the preset's test transform.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("paths: expected at least one image file, got none")
    return torch.from_numpy(Preprocessor.for_config(config).batch(list(paths)))
