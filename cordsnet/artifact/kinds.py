"""The artifact contract's constants, precisions and graph kinds (:data:`GRAPH_KINDS`, :func:`io_names`).

Part of :mod:`cordsnet.artifact` (torch-free); see that package for the whole contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import validate

PREFIX = "cordsnet."
FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS: tuple[str, ...] = ("1",)
EXTRA_FILE = "cordsnet.json"  # TorchScript / ExportedProgram extra file holding the map as JSON
MANIFEST_SUFFIX = ".cordsnet.json"  # the client manifest: <artifact file name> + this
MANIFEST_VERSION = 1
MAX_METADATA_BYTES = 64 << 20  # a metadata map or manifest: the largest spontaneous state is a few MB
PTE_METADATA_METHOD = "cordsnet_metadata"  # ExecuTorch: constant method of a .pte returning the map as JSON

# ONNX: opsets the exporter writes (the legacy exporter's range) and the IR version files are pinned
# to (onnx >= 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses; IR 10 loads from 1.20 on).
DEFAULT_OPSET = 18
MIN_OPSET = 14
MAX_OPSET = 20
IR_VERSION = 10

# Longest protocol (stimulus or spontaneous steps) an artifact may claim: the config's bound (one
# definition, cordsnet.config.MAX_STEPS). A claim beyond it is refused as corrupt metadata instead of
# hanging a reader; run longer with StepSession.step in your own loop.

READOUTS: tuple[str, ...] = ("last", "all")  # "last": logits (B, K); "all": logits at every step (T, B, K)

# Precisions of an artifact's arithmetic (``cordsnet.dtype``) -> the numpy dtype of its floating-point
# inputs and outputs. float32/float16: weights, activations and I/O in that type. bfloat16: weights
# stored as bfloat16, float32 I/O (numpy has no bfloat16; a backend with bf16 units computes in it).
# int8: static QDQ quantisation (int8 weights per channel, uint8 activations), float32 I/O.
# See docs/precision.md.
DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                               "bfloat16": np.dtype(np.float32), "int8": np.dtype(np.float32)}
REDUCED_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "int8")  # verified by top-1 agreement, not tolerance


# ------------------------------------------------------------------------------------- graph kinds
@dataclass(frozen=True)
class GraphKind:
    """One graph kind of the contract.

    Attributes:
        name: registry key (the ``cordsnet.graph`` value).
        description: one line for docs and ``--help``.
        inputs, outputs: I/O name templates in order; ``state_*``/``next_state_*`` expand to one name
            per area, ``rates_*`` to one per recorded area.
        session: what runs it: "whole" (the protocol in one call, ``runtime.Session``), "step" (one
            Euler step per call, ``runtime.StepSession``) or None (a companion run by its parent).
        per_step_outputs: readout "all" and recorded areas are possible.
        companions: roles of companion graphs written beside it (``<stem>.<role><suffix>``).
        exported: False for a kind that is only written as another kind's companion.
        multi_step: one call advances ``steps_per_call`` Euler steps (a metadata key), not one.
        formats: the :data:`~cordsnet.artifact.formats.FORMATS` it can be written in (None: every one).
        int8: an int8 export quantises it (onnxruntime's quantiser does not reach into a Loop body).

    Derived facts (properties): :attr:`steps_input` (a loop in the graph: each backend builds its own
    loop), :attr:`fixed_steps` (the protocol unrolled in the graph), :attr:`image_step` (one Euler step
    from the image itself, no companion: what the browser app runs).
    """

    name: str
    description: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    session: str | None
    per_step_outputs: bool = False
    companions: tuple[str, ...] = ()
    exported: bool = True
    multi_step: bool = False
    formats: tuple[str, ...] | None = None
    int8: bool = True

    @property
    def steps_input(self) -> bool:
        """The step count is an input (``steps``, an int64 scalar) rather than fixed in the graph."""
        return "steps" in self.inputs

    @property
    def fixed_steps(self) -> bool:
        """The whole protocol, its steps fixed in the graph (the time loop unrolled)."""
        return self.session == "whole" and not self.steps_input

    @property
    def image_step(self) -> bool:
        """One Euler step per call from the image and the state, with no companion graph."""
        return self.session == "step" and not self.multi_step and not self.companions and "image" in self.inputs

    def writes(self, format: str) -> bool:
        """Whether this kind can be written in `format`."""
        return self.formats is None or format in self.formats


GRAPH_KINDS: dict[str, GraphKind] = {k.name: k for k in (
    GraphKind("unrolled", "the time loop unrolled, steps fixed in the graph; input image",
              ("image",), ("logits", "rates_*"), "whole", per_step_outputs=True),
    GraphKind("loop", "the time loop as a loop in the graph; inputs image and steps (int64 scalar)",
              ("image", "steps"), ("logits", "rates_*"), "whole", per_step_outputs=True,
              formats=("onnx", "torchscript", "exported-program"), int8=False),
    GraphKind("stepwise", "one Euler step; inputs image and state_0..state_{D-1}",
              ("image", "state_*"), ("logits", "next_state_*"), "step"),
    GraphKind("stepwise-drive", "one Euler step from precomputed drive terms (skip, ff0), with an encode graph",
              ("skip", "ff0", "state_*"), ("logits", "next_state_*"), "step", companions=("encode",)),
    GraphKind("multistep", "K Euler steps per call (K = steps_per_call in the metadata); inputs image and "
              "state_0..state_{D-1}", ("image", "state_*"), ("logits", "next_state_*"), "step", multi_step=True,
              formats=("onnx", "torchscript", "exported-program")),
    GraphKind("encode", "image -> drive terms (skip, ff0): the companion of a stepwise-drive graph",
              ("image",), ("skip", "ff0"), None, exported=False, int8=False),
)}
DEFAULT_GRAPH = next(iter(GRAPH_KINDS))  # what an export writes unless told: the first kind (unrolled)

# The kinds a user can export (name -> description), in registry order.
GRAPHS: dict[str, str] = {k.name: k.description for k in GRAPH_KINDS.values() if k.exported}


def _kind(graph: str, name: str = "graph") -> GraphKind:
    return GRAPH_KINDS[validate.choice(name, graph, list(GRAPH_KINDS))]


def io_names(graph: str, depth: int, readout: str = "last", record: Sequence[int] = ()) -> tuple[list[str], list[str]]:
    """Input and output names of a graph kind, in order (the contract applications rely on).

    Args:
        graph: a key of :data:`GRAPH_KINDS`.
        depth: number of areas D.
        readout: "last" or "all" (names do not depend on it; kept for symmetry).
        record: recorded areas (outputs ``rates_<area>``) of an unrolled/loop graph.

    Returns:
        (inputs, outputs), e.g. (["image", "state_0", "state_1"], ["logits", "next_state_0", "next_state_1"]).
    """
    kind = _kind(graph)

    def expand(templates: Sequence[str]) -> list[str]:
        out: list[str] = []
        for t in templates:
            if t.endswith("state_*"):
                out += [t[:-1] + str(i) for i in range(depth)]
            elif t == "rates_*":
                out += [f"rates_{a}" for a in record]
            else:
                out.append(t)
        return out

    return expand(kind.inputs), expand(kind.outputs)
