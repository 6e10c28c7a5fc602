"""Analysis and neuroscience outputs for CordsNet (docs/specification.md §3 and §6).

* Spectra (:mod:`cordsnet.analysis.spectra`): a convolution as a dense matrix, Arnoldi eigenvalues of
  large linear operators (recurrent convolutions, the Jacobian of the dynamics), the top eigenvector
  by batched power iteration, spectral radii.
* Reaction times (:mod:`cordsnet.analysis.reaction`): the first step at which a trial has decided
  (confident, with evidence from the image relative to the no-image baseline; the criterion of
  :mod:`cordsnet.decision`), in steps and milliseconds.
* Activity recording (:mod:`cordsnet.analysis.recording`): chosen areas, a step window, optional
  spatial averaging and float16, streamed step by step into ``.npy`` memory maps.
* Stimulus protocols (:mod:`cordsnet.analysis.protocols`): blank / stimulus / blank sequences with
  contrast and additive noise, as (B, T, C, S, S) tensors that :meth:`CordsNet.run` accepts.
* Image loading with a checkpoint's dataset preset (:mod:`cordsnet.analysis.images`).

This package imports torch (it is not part of the torch-free runtime).
"""

from __future__ import annotations

from ..extras import require

require("torch", "cordsnet.analysis")

from .images import load_images
from .protocols import SEGMENT_KINDS, Segment, build_stimulus, parse_protocol, protocol_segments
from .reaction import ReactionTimes, baseline_logits, measure_reaction_times, reaction_times
from .recording import RECORD_DTYPES, Recording, record_activity
from .spectra import (
    EIGEN_METHODS,
    SPECTRUM_TARGETS,
    PowerIterationResult,
    Spectrum,
    arnoldi,
    arnoldi_eigenvalues,
    conv_to_matrix,
    dynamics_operator,
    dynamics_spectrum,
    recurrent_spectrum,
    spectral_radius,
    top_eigenvector,
)

__all__ = [
    "EIGEN_METHODS",
    "PowerIterationResult",
    "RECORD_DTYPES",
    "ReactionTimes",
    "Recording",
    "SEGMENT_KINDS",
    "SPECTRUM_TARGETS",
    "Segment",
    "Spectrum",
    "arnoldi",
    "arnoldi_eigenvalues",
    "baseline_logits",
    "build_stimulus",
    "conv_to_matrix",
    "dynamics_operator",
    "dynamics_spectrum",
    "load_images",
    "measure_reaction_times",
    "parse_protocol",
    "protocol_segments",
    "reaction_times",
    "record_activity",
    "recurrent_spectrum",
    "spectral_radius",
    "top_eigenvector",
]
