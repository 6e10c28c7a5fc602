"""The install layers: which optional extra brings which part, and one clear error when it is missing.

``pip install cordsnet`` is the torch-free runtime (config, artifact contract, :mod:`cordsnet.runtime`
on onnxruntime, the CLI's ``info``/``predict``/``bench``/``web``). Everything else is an extra; this
registry is the one place that says which (pyproject.toml's ``[project.optional-dependencies]`` lists
the same extras with their version ranges, and ``tests/test_extras.py`` keeps the two in step).

A module that needs an extra calls :func:`require` before importing it, so a missing part is one line
naming the extra (a :class:`MissingExtraError`, an ``ImportError``), never a traceback from deep inside::

    from .extras import require
    require("torch", "cordsnet.model")
    import torch

Torch-free: imports nothing but the standard library.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["EXTRAS", "Extra", "MissingExtraError", "available", "require"]


@dataclass(frozen=True)
class Extra:
    """One optional extra: the import names it provides and what they are for.

    Attributes:
        modules: top-level import names the extra installs (all must be importable).
        purpose: what it adds, for the error message.
    """

    modules: tuple[str, ...]
    purpose: str


EXTRAS: dict[str, Extra] = {
    "torch": Extra(("torch", "torchvision", "onnxscript", "safetensors", "sklearn"),
                   "PyTorch: the model, checkpoints, export, training, analysis and recording"),
    "openvino": Extra(("openvino",), "the OpenVINO runtime backend (backend='openvino')"),
    "executorch": Extra(("executorch",), "ExecuTorch export and .pte sessions"),
    "zarr": Extra(("zarr", "numcodecs", "xarray"), "dataset-scale recording into Zarr stores (record --dataset, evaluate)"),
    "plot": Extra(("matplotlib",), "plots (analyze spectrum --plot, evaluate --plot)"),
    "hub": Extra(("huggingface_hub",), "the Hugging Face Hub: load_checkpoint('hf-hub:ORG/NAME')"),
    "brainscore": Extra(("xarray",), "Brain-Score's BrainModel interface (cordsnet.brainscore)"),
}


class MissingExtraError(ModuleNotFoundError):
    """A part of cordsnet needs an optional extra that is not installed (the message names it)."""


def available(extra: str) -> bool:
    """Whether every module of `extra` can be imported (without importing it)."""
    return not _missing(_extra(extra))


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` naming the extra unless all of its modules are installed.

    Args:
        extra: a key of :data:`EXTRAS`.
        what: what needs it (a module, a command or an option), for the message.

    Raises:
        MissingExtraError: one line: what needs which extra, and the pip command that installs it.
        ValueError: `extra` is not a key of :data:`EXTRAS`.
    """
    spec = _extra(extra)
    missing = _missing(spec)
    if missing:
        raise MissingExtraError(f"{what} needs {spec.purpose.split(':')[0]} ({', '.join(missing)} not installed): "
                                f"pip install 'cordsnet[{extra}]'", name=missing[0])


def _extra(extra: str) -> Extra:
    try:
        return EXTRAS[extra]
    except KeyError:
        raise ValueError(f"extra: expected one of {', '.join(EXTRAS)}, got {extra!r}") from None


def _missing(spec: Extra) -> list[str]:
    out = []
    for name in spec.modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-installed package counts as missing
            found = False
        if not found:
            out.append(name)
    return out
