"""cordsnet: run, export, serve and train CordsNet (Soo et al., NeurIPS 2024).

``import cordsnet`` never imports torch: the torch-backed names (``CordsNet``, ``load_checkpoint``,
``save_checkpoint``) load their modules on first use, so an application with only numpy and
onnxruntime can use :mod:`cordsnet.runtime` and :mod:`cordsnet.config`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import PRESETS, CordsNetConfig, DatasetPreset, get_preset

__version__ = "0.1.0"

_LAZY = {
    "CordsNet": "cordsnet.model",
    "DriveTerms": "cordsnet.model",
    "load_checkpoint": "cordsnet.checkpoint",
    "save_checkpoint": "cordsnet.checkpoint",
    "CheckpointError": "cordsnet.checkpoint",
    "save_pretrained": "cordsnet.pretrained",
}

__all__ = ["PRESETS", "CordsNetConfig", "DatasetPreset", "get_preset", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cordsnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
