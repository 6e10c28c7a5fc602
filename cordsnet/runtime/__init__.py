"""Torch-free inference for exported CordsNet graphs: numpy, Pillow and onnxruntime only.

* :class:`Session`: whole-protocol graphs (``unrolled``, ``loop``): ``run``, ``predict``.
* :class:`StepSession`: ``stepwise`` / ``stepwise-drive`` graphs, one step at a time, the state kept
  in device buffers between steps (IO binding, optional CUDA graph capture).
* :class:`Preprocessor`: each dataset preset's torchvision test transform, re-stated in numpy/Pillow.
* :func:`resolve_providers` / :class:`ProviderError`: execution-provider selection with no silent
  fallback to the CPU.

Importing this package never imports torch.
"""

from __future__ import annotations

import os
from typing import Any

from .preprocess import Preprocessor, load_image
from .providers import PROVIDER_ALIASES, ProviderError, resolve_providers
from .session import GRAPH_KINDS, ArtifactInfo, Prediction, Session, StepSession, read_artifact_info

__all__ = [
    "GRAPH_KINDS",
    "PROVIDER_ALIASES",
    "ArtifactInfo",
    "Prediction",
    "Preprocessor",
    "ProviderError",
    "Session",
    "StepSession",
    "load_image",
    "open_session",
    "read_artifact_info",
    "resolve_providers",
]


def open_session(path: str | os.PathLike, providers: Any = "auto", **kwargs: Any) -> Session | StepSession:
    """A :class:`Session` or :class:`StepSession`, whichever the graph kind in the metadata asks for.

    Args:
        path: an exported ``.onnx`` graph.
        providers: as for :class:`Session`.
        **kwargs: passed to the session (``cuda_graph``, ``session_options``, ``provider_options``).
    """
    kind = read_artifact_info(path).graph
    cls = StepSession if kind.startswith("stepwise") else Session
    return cls(path, providers, **kwargs)
