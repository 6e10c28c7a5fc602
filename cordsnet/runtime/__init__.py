"""Torch-free inference for exported CordsNet graphs: numpy, Pillow, onnx and onnxruntime only.

* :class:`Session`: whole-protocol graphs (``unrolled``, ``loop``): ``run``, ``predict``.
* :class:`StepSession`: ``stepwise`` / ``stepwise-drive`` / ``multistep`` graphs, one step at a time, the
  state kept in device buffers between steps (onnxruntime: IO binding, optional CUDA graph capture;
  OpenVINO: inside a stateful model). One stepping core (:mod:`._core`) under every backend adapter.
* ``run_until`` on both (:class:`AnytimeResult`): anytime inference, each image stopped when it has
  decided (:mod:`cordsnet.decision`); ``StepSession`` drops decided images from the batch.
* ``backend="openvino"`` (optional extra ``cordsnet[openvino]``): the same float32 ONNX files under
  OpenVINO, ``precision="bf16"`` as a compile hint (:mod:`.openvino_backend`).
* :class:`Preprocessor`: each dataset preset's torchvision test transform, re-stated in numpy/Pillow.
* :func:`resolve_providers` / :class:`ProviderError`: execution-provider selection with no silent
  fallback to the CPU.
* :class:`ArtifactInfo` / :func:`read_info`: the artifact contract's parsed metadata (``cordsnet.artifact``'s one read)
  (:mod:`cordsnet.artifact`), read without creating a session.

Importing this package never imports torch, nor anything from :mod:`cordsnet.export`.
"""

from __future__ import annotations

import os
from typing import Any

from ..artifact import GRAPH_KINDS, ArtifactInfo
from .preprocess import Preprocessor, load_image
from .providers import PROVIDER_ALIASES, ProviderError, resolve_providers
from ..artifact import read_info
from .session import BACKENDS, AnytimeResult, Prediction, Session
from .step_session import StepSession

__all__ = [
    "BACKENDS",
    "GRAPH_KINDS",
    "PROVIDER_ALIASES",
    "ArtifactInfo",
    "AnytimeResult",
    "Prediction",
    "Preprocessor",
    "ProviderError",
    "Session",
    "StepSession",
    "load_image",
    "open_session",
    "read_info",
    "resolve_providers",
]

# GraphKind.session (cordsnet.artifact.GRAPH_KINDS) -> the class that runs it.
SESSIONS: dict[str, type] = {"whole": Session, "step": StepSession}


def _format_or_none(path: str | os.PathLike) -> str | None:
    from ..artifact import artifact_format

    try:
        return artifact_format(path)
    except ValueError:  # an unknown suffix: read_info says what it expected
        return None


def open_session(path: str | os.PathLike, providers: Any = "auto", **kwargs: Any) -> Session | StepSession:
    """A :class:`Session` or :class:`StepSession`, whichever the graph kind in the metadata asks for.

    The metadata is read from the file (no extra onnxruntime session is opened for it).

    Args:
        path: an exported ``.onnx`` graph.
        providers: as for :class:`Session`.
        **kwargs: passed to the session (``cuda_graph``, ``session_options``, ``provider_options``).

    Raises:
        ValueError: the file is another format's artifact (an ExecuTorch ``.pte``, a TorchScript or
            ExportedProgram archive: named, with what runs it), or the graph is a companion (an encode
            graph), not a graph to open by itself.
    """
    from ..artifact import FORMATS

    fmt = _format_or_none(path)
    if fmt is not None and fmt != "onnx":
        raise ValueError(f"model: {str(path)!r} is a {fmt!r} artifact ({FORMATS[fmt].description}); onnxruntime "
                         "and OpenVINO sessions run ONNX graphs (export --format onnx)")
    try:
        info = read_info(path, "onnx")
    except ValueError as exc:
        if fmt is None:  # not an artifact's suffix: perhaps a checkpoint, which is exported first
            raise ValueError(f"{exc} (a checkpoint? export it first: cordsnet-cli export CHECKPOINT --format onnx)") \
                from None
        raise
    if info.kind.session not in SESSIONS:
        raise ValueError(f"model: {str(path)!r} is a {info.graph!r} graph; open the graph it belongs to instead")
    return SESSIONS[info.kind.session](path, providers, **kwargs)
