"""Small graph modules built from a :class:`~cordsnet.model.CordsNet` for tracing and export.

Each wrapper freezes the model's effective weights (weight norm folded, ``g * v / ||v||``) as buffers,
so an exported graph holds one constant per weight, and calls the model's functional core
(:mod:`cordsnet.functional`: ``drive``, ``drive_terms``, ``step``, ``readout``, ``trajectory``), so the
exported arithmetic is the model's.

* The spontaneous phase is never simulated in a graph: its end state (batch 1, the same for every
  image) is computed at export with ``model.cached_spontaneous_state(steps, alpha)`` and stored as a buffer,
  expanded to the batch at run time.
* The drive ``u`` and the two terms constant while an image is shown (``inp_skip(u)``,
  ``area_area_0(u)``) are computed once per image, outside the time loop.

Graph pieces (inputs -> outputs, B the batch, D the depth, T the steps):

* :class:`Unrolled`: image -> logits (B, K) or (T, B, K), then ``rates_<a>`` (T, B, c, H, W).
* :class:`Stepwise`: image, state_0..D-1 -> logits, next_state_0..D-1 (one Euler step).
* :class:`StepwiseDrive`: skip, ff0, state_0..D-1 -> logits, next_state_0..D-1.
* :class:`MultiStep`: image, state_0..D-1 -> logits, next_state_0..D-1 after K steps (one call).
* :class:`Encode`: image -> skip, ff0 (the drive terms).
* :class:`Prologue`: image -> skip, ff0, state_0..D-1 (the spontaneous state, expanded to B).
* :class:`LoopBody`: skip, ff0, state_0..D-1 -> next_state_0..D-1 [, logits] (one step, for a Loop).
* :class:`Readout`: state_0..D-1 -> logits.
* :class:`ListStep` / :class:`ListReadout` / :class:`ListPrologue`: the same with the state as a list
  of tensors, for the scripted TorchScript loop (:class:`ScriptLoop`, flattened by :class:`FlatLoop`).
* :class:`WhileLoop`: image, steps -> logits with ``while_loop`` (the ExportedProgram loop).
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..artifact import GRAPH_KINDS, io_names
from ..model import CordsNet, DriveTerms, Weights
from .spec import ExportSpec
from .. import functional as CF

__all__ = [
    "TRACED",
    "TracedGraph",
    "dynamic_shapes",
    "example_inputs",
    "traced_graph",
    "traced_graphs",
    "Encode",
    "MultiStep",
    "ListPrologue",
    "ListReadout",
    "ListStep",
    "LoopBody",
    "Prologue",
    "Readout",
    "ScriptLoop",
    "Stepwise",
    "StepwiseDrive",
    "Unrolled",
    "FlatLoop",
    "WhileLoop",
]


def dynamic_shapes(module: nn.Module, args: tuple, spec: ExportSpec, max_batch: int = 65536) -> tuple | None:
    """``dynamic_shapes`` for torch.export: dim 0 of every non-scalar input is the batch, or None if static.

    Shaped like forward's signature (a ``*state`` parameter takes one tuple of specs); a 0-d input
    (the loop's ``steps``) gets None. The one place the ``Dim("batch")`` is built.
    """
    import inspect

    if spec.batch is not None:
        return None
    dim = torch.export.Dim("batch", min=1, max=max_batch)

    def one(a: Tensor) -> dict[int, object] | None:
        return None if a.dim() == 0 else {0: dim}

    params = list(inspect.signature(module.forward).parameters.values())
    fixed = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    out: list = [one(a) for a in args[: len(fixed)]]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        out.append(tuple(one(a) for a in args[len(fixed):]))
    return tuple(out)


class _Frozen(nn.Module):
    """Holds a model's effective weights and spontaneous end state as buffers (of `dtype`).

    Args:
        model: the source model (not registered as a submodule: its parameters stay out of the graph).
        alpha: dt / tau baked into the graph.
        spontaneous_steps: blank steps whose end state is baked in (0: zeros).
        dtype: dtype of the buffers (and hence of the graph's floating-point I/O).
    """

    def __init__(self, model: CordsNet, *, alpha: float, spontaneous_steps: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # plain attribute, not a submodule
        self.alpha = float(alpha)
        self.depth = model.depth
        with torch.no_grad():
            w = model.effective_weights()
            spont = model.cached_spontaneous_state(spontaneous_steps, alpha)

        def buf(name: str, t: Tensor) -> None:
            self.register_buffer(name, t.detach().to("cpu", dtype).contiguous().clone())

        buf("inp_conv", w.inp_conv)
        buf("inp_skip", w.inp_skip)
        for i in range(self.depth):
            buf(f"area_conv_{i}", w.area_conv[i])
            buf(f"conv_bias_{i}", w.conv_bias[i])
            buf(f"area_area_{i}", w.area_area[i])
            buf(f"spont_{i}", spont[i])
        for k in range(len(w.skip_area)):
            buf(f"skip_area_{k}", w.skip_area[k])
        buf("out_weight", w.out_weight)
        buf("out_bias", w.out_bias)
        self.n_skip = len(w.skip_area)

    def weights(self) -> Weights:
        d = range(self.depth)
        return Weights(
            inp_conv=self.inp_conv,
            inp_skip=self.inp_skip,
            area_conv=tuple(getattr(self, f"area_conv_{i}") for i in d),
            conv_bias=tuple(getattr(self, f"conv_bias_{i}") for i in d),
            area_area=tuple(getattr(self, f"area_area_{i}") for i in d),
            skip_area=tuple(getattr(self, f"skip_area_{k}") for k in range(self.n_skip)),
            out_weight=self.out_weight,
            out_bias=self.out_bias,
        )

    # Shared pieces ---------------------------------------------------------------------------
    def _start(self, batch_like: Tensor) -> Tuple[Tensor, ...]:
        """The spontaneous end state expanded to the batch of `batch_like`."""
        b = batch_like.shape[0]
        return tuple(getattr(self, f"spont_{i}").expand(b, -1, -1, -1) for i in range(self.depth))

    def _drive_terms(self, w: Weights, image: Tensor) -> DriveTerms:
        m = self._model
        return CF.drive_terms(m.dynamics, w, CF.drive(w, image))

    def _step(self, w: Weights, state: Sequence[Tensor], skip: Tensor, ff0: Tensor) -> Tuple[Tensor, ...]:
        return CF.step(self._model.dynamics, w, state, DriveTerms(skip=skip, ff0=ff0), self.alpha)

    def _readout(self, w: Weights, state: Sequence[Tensor]) -> Tensor:
        return CF.readout(self._model.dynamics, w, state)


class Unrolled(_Frozen):
    """image -> logits [, rates_<a> ...] with `steps` steps unrolled in the graph.

    Args:
        steps: stimulus steps (fixed in the graph).
        readout: "last" -> logits (B, K); "all" -> logits (steps, B, K).
        record: areas whose rates (steps, B, c, H, W) are extra outputs, in this order.
    """

    def __init__(self, model: CordsNet, *, steps: int, readout: str = "last",
                 record: Sequence[int] = (), **kw: object) -> None:
        super().__init__(model, **kw)  # type: ignore[arg-type]
        self.steps = int(steps)
        self.readout_all = readout == "all"
        self.record = tuple(record)

    def forward(self, image: Tensor):  # noqa: ANN201 (a Tensor or a tuple of Tensors)
        w = self.weights()
        terms = self._drive_terms(w, image)
        state = self._start(image)
        per_step: List[Tensor] = []
        rates: List[List[Tensor]] = [[] for _ in self.record]
        for state in CF.trajectory(self._model.dynamics, w, state, terms, self.steps, self.alpha):
            if self.readout_all:
                per_step.append(self._readout(w, state))
            for k, a in enumerate(self.record):
                rates[k].append(state[a])
        logits = torch.stack(per_step) if self.readout_all else self._readout(w, state)
        if not self.record:
            return logits
        return (logits, *[torch.stack(r) for r in rates])


class Stepwise(_Frozen):
    """One Euler step driven by an image: (image, state_0..D-1) -> (logits, next_state_0..D-1)."""

    def forward(self, image: Tensor, *state: Tensor) -> Tuple[Tensor, ...]:
        w = self.weights()
        terms = self._drive_terms(w, image)
        nxt = self._step(w, state, terms.skip, terms.ff0)
        return (self._readout(w, nxt), *nxt)


class StepwiseDrive(_Frozen):
    """One Euler step driven by precomputed drive terms: (skip, ff0, state_i...) -> (logits, next_state_i...)."""

    def forward(self, skip: Tensor, ff0: Tensor, *state: Tensor) -> Tuple[Tensor, ...]:
        w = self.weights()
        nxt = self._step(w, state, skip, ff0)
        return (self._readout(w, nxt), *nxt)


class MultiStep(_Frozen):
    """K Euler steps driven by an image: (image, state_0..D-1) -> (logits, next_state_0..D-1) after K steps.

    The drive terms are computed once per call; the K steps are unrolled (the model's own time loop).

    Args:
        steps_per_call: K, the steps one call advances (>= 1).
    """

    def __init__(self, model: CordsNet, *, steps_per_call: int, **kw: object) -> None:
        super().__init__(model, **kw)  # type: ignore[arg-type]
        self.steps_per_call = int(steps_per_call)

    def forward(self, image: Tensor, *state: Tensor) -> Tuple[Tensor, ...]:
        w = self.weights()
        terms = self._drive_terms(w, image)
        nxt: Sequence[Tensor] = state
        for nxt in CF.trajectory(self._model.dynamics, w, state, terms, self.steps_per_call, self.alpha):
            pass
        return (self._readout(w, nxt), *nxt)


class Encode(_Frozen):
    """image -> (skip, ff0): the terms constant while an image is shown, each (B, 64, S/4, S/4)."""

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        terms = self._drive_terms(self.weights(), image)
        return terms.skip, terms.ff0


class Prologue(_Frozen):
    """image -> (skip, ff0, state_0..D-1): drive terms and the spontaneous state expanded to B."""

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        terms = self._drive_terms(self.weights(), image)
        # "+ 0 * ..." is avoided: expand gives a view; clone so the Loop gets its own buffers.
        return (terms.skip, terms.ff0, *[s.clone() for s in self._start(image)])


class LoopBody(_Frozen):
    """(skip, ff0, state_i...) -> (next_state_i... [, logits]): the body of an ONNX Loop."""

    def __init__(self, model: CordsNet, *, with_logits: bool, **kw: object) -> None:
        super().__init__(model, **kw)  # type: ignore[arg-type]
        self.with_logits = with_logits

    def forward(self, skip: Tensor, ff0: Tensor, *state: Tensor) -> Tuple[Tensor, ...]:
        w = self.weights()
        nxt = self._step(w, state, skip, ff0)
        if self.with_logits:
            return (*nxt, self._readout(w, nxt))
        return nxt


class Readout(_Frozen):
    """(state_0..D-1) -> logits (B, K)."""

    def forward(self, *state: Tensor) -> Tensor:
        return self._readout(self.weights(), state)


# ---------------------------------------------------------------- TorchScript scripted loop
class ListPrologue(_Frozen):
    """image -> (skip, ff0, [state_0..D-1]) (traced, then called from :class:`ScriptLoop`)."""

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        terms = self._drive_terms(self.weights(), image)
        return terms.skip, terms.ff0, [s.clone() for s in self._start(image)]


class ListStep(_Frozen):
    """(skip, ff0, [state]) -> [next_state] (traced, then called from :class:`ScriptLoop`)."""

    def forward(self, skip: Tensor, ff0: Tensor, state: List[Tensor]) -> List[Tensor]:
        return list(self._step(self.weights(), state, skip, ff0))


class ListReadout(_Frozen):
    """[state] -> logits (traced, then called from :class:`ScriptLoop`)."""

    def forward(self, state: List[Tensor]) -> Tensor:
        return self._readout(self.weights(), state)


class ScriptLoop(nn.Module):
    """The time loop as TorchScript control flow around traced pieces (compiled with torch.jit.script).

    ``forward(image, steps)`` with `steps` an int64 scalar tensor returns ``(logits, [rates...])``:
    logits (B, K) or (steps, B, K) with readout "all", and one (steps, B, c, H, W) tensor per
    recorded area.
    """

    __constants__ = ["readout_all"]

    def __init__(self, prologue: nn.Module, step: nn.Module, readout: nn.Module, *, readout_all: bool,
                 record: Sequence[int]) -> None:
        super().__init__()
        self.prologue = prologue
        self.step = step
        self.readout = readout
        self.readout_all = readout_all
        self.record = torch.jit.Attribute(list(record), List[int])  # typed even when empty

    def forward(self, image: Tensor, steps: Tensor) -> Tuple[Tensor, List[Tensor]]:
        skip, ff0, state = self.prologue(image)
        per_step: List[Tensor] = []
        rates: List[List[Tensor]] = [[] for _ in self.record]
        for _ in range(int(steps)):
            state = self.step(skip, ff0, state)
            if self.readout_all:
                per_step.append(self.readout(state))
            for k in range(len(self.record)):
                rates[k].append(state[self.record[k]])
        if self.readout_all:
            logits = torch.stack(per_step)
        else:
            logits = self.readout(state)
        return logits, [torch.stack(r) for r in rates]


class FlatLoop(nn.Module):
    """Traced around a scripted :class:`ScriptLoop` so its outputs are flat: (logits, rates_a, ...)."""

    def __init__(self, core: nn.Module, n_record: int) -> None:
        super().__init__()
        self.core = core
        self.n_record = n_record

    def forward(self, image: Tensor, steps: Tensor):  # noqa: ANN201
        logits, rates = self.core(image, steps)
        if self.n_record == 0:
            return logits
        return (logits, *[rates[k] for k in range(self.n_record)])


class WhileLoop(_Frozen):
    """image, steps -> logits (B, K) with ``torch._higher_order_ops.while_loop`` (for torch.export).

    The time loop stays a loop in the ExportedProgram (``steps`` is an int64 scalar tensor). Only
    readout "last" without recorded areas: per-step outputs would need buffers of data-dependent
    size carried through the loop, which torch.export (2.14) does not trace.
    """

    def forward(self, image: Tensor, steps: Tensor) -> Tensor:
        from torch._higher_order_ops.while_loop import while_loop

        w = self.weights()
        terms = self._drive_terms(w, image)
        skip, ff0 = terms.skip, terms.ff0
        state = tuple(s.clone() for s in self._start(image))
        limit = steps.reshape(())

        def cond(i: Tensor, *carry: Tensor) -> Tensor:
            return i < limit

        def body(i: Tensor, *carry: Tensor) -> Tuple[Tensor, ...]:
            return (i + 1, *self._step(w, carry, skip, ff0))

        out = while_loop(cond, body, (torch.zeros((), dtype=torch.int64), *state))
        return self._readout(w, out[1:])


def example_inputs(model: CordsNet, spec: ExportSpec) -> dict[str, Tensor]:
    """Deterministic example inputs for tracing, by contract input name (image, skip, ff0, state_i)."""
    b, dt = spec.trace_batch, spec.torch_dtype
    c = model.config
    gen = torch.Generator().manual_seed(0)
    ex = {"image": torch.randn(b, *c.input_shape, generator=gen).to(dt),
          "skip": torch.randn(b, *c.drive_shape, generator=gen).to(dt),
          "ff0": torch.randn(b, *c.drive_shape, generator=gen).to(dt)}
    spont = model.cached_spontaneous_state(spec.spontaneous_steps, spec.alpha)
    for i, r in enumerate(spont):
        ex[f"state_{i}"] = r.expand(b, *r.shape[1:]).to(dt).clone()
    return ex


# Graph kind -> its traced wrapper. With the kind's entry in cordsnet.artifact.GRAPH_KINDS (names, I/O,
# companions) this is all a new directly traced kind needs: every backend exports it from here.
# ("loop" is missing on purpose: each backend builds its own loop.)
# Graph kind -> (wrapper class, the spec's arguments of that kind beyond ExportSpec.wrapper_kwargs()).
TRACED: dict[str, tuple[type[nn.Module], Callable[[ExportSpec], dict[str, Any]]]] = {
    "unrolled": (Unrolled, lambda s: {"steps": s.steps, "readout": s.readout, "record": s.record}),
    "stepwise": (Stepwise, lambda s: {}),
    "stepwise-drive": (StepwiseDrive, lambda s: {}),
    "multistep": (MultiStep, lambda s: {"steps_per_call": s.steps_per_call}),
    "encode": (Encode, lambda s: {}),
}


class TracedGraph(NamedTuple):
    """One graph to trace: the wrapper, its example inputs and its contract I/O names."""

    kind: str
    module: nn.Module
    args: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]


def traced_graph(model: CordsNet, spec: ExportSpec, kind: str,
                 classes: Mapping[str, type[nn.Module]] | None = None) -> TracedGraph:
    """The wrapper of graph kind `kind` with example inputs named as the contract says.

    Args:
        classes: a backend's own wrapper class per kind (same constructor; e.g. ExecuTorch's forms
            XNNPACK delegates), instead of :data:`TRACED`'s.
    """
    if kind not in TRACED:
        raise ValueError(f"graph: {kind!r} is not traced directly; expected one of {sorted(TRACED)}")
    cls, arguments = TRACED[kind]
    cls = (classes or {}).get(kind, cls)
    ins, outs = io_names(kind, model.depth, spec.readout, spec.record)
    ex = example_inputs(model, spec)
    module = cls(model, **arguments(spec), **spec.wrapper_kwargs())
    return TracedGraph(kind, module, tuple(ex[n] for n in ins), ins, outs)


def traced_graphs(model: CordsNet, spec: ExportSpec) -> list[TracedGraph]:
    """The graph of `spec` followed by its companions (e.g. a stepwise-drive graph's encode graph)."""
    return [traced_graph(model, spec, k) for k in (spec.graph, *GRAPH_KINDS[spec.graph].companions)]
