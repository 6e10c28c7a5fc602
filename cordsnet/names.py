"""The names of the toolkit's choices: one list each, torch-free (the CLI's choices are built from these).

Each tuple is the one list of a registry's keys. The registry that gives the names their meaning lives
where the work is (often behind torch or onnxruntime) and is keyed by this list, so the CLI can offer the
choices in ``--help`` without importing torch, and no second copy can fall out of step:

* :data:`EXPORTERS`: the torch.onnx exporters (``cordsnet.export.spec``);
* :data:`CALIBRATIONS`: int8 calibration methods (``cordsnet.export.precision``);
* :data:`BACKENDS`: runtime engines (``cordsnet.runtime``);
* :data:`OPENVINO_PRECISIONS`: OpenVINO compile precisions (``cordsnet.runtime.openvino_backend``);
* :data:`SPLITS`: dataset splits (``cordsnet.data``).

The artifact contract's own registries (formats, graph kinds, dtypes, readouts) are torch-free already
and live in :mod:`cordsnet.artifact`.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable

__all__ = ["BACKENDS", "CALIBRATIONS", "EXPORTERS", "OPENVINO_PRECISIONS", "SPLITS", "choices"]

EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
CALIBRATIONS: tuple[str, ...] = ("minmax", "percentile", "entropy", "checkpoint")
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
OPENVINO_PRECISIONS: tuple[str, ...] = ("f32", "bf16", "f16")
SPLITS: tuple[str, ...] = ("train", "val", "test")


def choices(name: str, keys: Iterable[object]) -> type[Enum]:
    """A str Enum of a registry's keys, in order (Typer shows its values as an option's choices).

    Example: ``choices("Backend", BACKENDS)("openvino").value == "openvino"``.
    """
    return Enum(name, {str(k).replace("-", "_"): str(k) for k in keys}, type=str)  # type: ignore[return-value]
