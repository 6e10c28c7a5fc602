"""Backend adapters of the stepping core: what an engine provides, and double buffering written once.

* :class:`Engine`: the primitives of an engine that keeps tensors of its own (onnxruntime OrtValues,
  OpenVINO tensors, host numpy arrays for callables: :class:`HostEngine`).
* :class:`DoubleBuffer` turns any Engine into a :class:`Store` (two state sets alternate, the drives
  shared, the encode graph writing straight into them).
* :class:`Store`: the nine operations :class:`~cordsnet.runtime._core.StepCore` needs. A backend that
  keeps the state inside itself (OpenVINO's stateful model) is a Store directly.
* :class:`Layout`: what a step graph reads and writes.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from ..artifact import ArtifactInfo

__all__ = ["DoubleBuffer", "Engine", "Graph", "HostEngine", "Layout", "Store"]


# --------------------------------------------------------------------------- adapters
class Engine(Protocol):
    """An engine's tensor primitives (an adapter for :class:`DoubleBuffer`).

    ``graph`` is "step" or "encode"; ``slot`` tells bindings of one graph apart (the step graph has
    two, one per state set).
    """

    def tensor(self, shape: Sequence[int], dtype: np.dtype) -> Any:
        """A new zero tensor of the engine."""

    def write(self, tensor: Any, array: np.ndarray) -> None:
        """Copy `array` into `tensor` (same shape)."""

    def read(self, tensor: Any) -> np.ndarray:
        """A host copy of `tensor`."""

    def bind(self, graph: str, slot: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """Bind tensors to a graph's inputs and outputs by name for later :meth:`run` calls."""

    def run(self, graph: str, slot: int) -> None:
        """Run a bound graph (its outputs land in the bound tensors)."""


class Layout(NamedTuple):
    """What a step graph reads and writes, from its metadata and declared inputs.

    Attributes:
        state_in, state_out: ``state_i`` / ``next_state_i`` names, area order.
        state_shapes: (c_i, H_i, W_i) per area.
        drives: the non-state inputs by name -> per-row shape (``image``, or ``skip``/``ff0``).
        dtypes: the numpy dtype of every input and output by name (``image`` included).
        encode: the encode graph's outputs (drive names it writes), or () without one.
        input_shape: (C, S, S) of an image.
        num_classes: K.
    """

    state_in: tuple[str, ...]
    state_out: tuple[str, ...]
    state_shapes: tuple[tuple[int, ...], ...]
    drives: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    encode: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def of(cls, info: ArtifactInfo, shapes: Mapping[str, Sequence[Any]], dtypes: Mapping[str, np.dtype],
           encode: Sequence[str] = ()) -> "Layout":
        """From the metadata, the inputs' shapes (batch first, any form) and every port's dtype."""
        ins, _ = info.io_names()
        state_in = tuple(n for n in ins if n.startswith("state_"))
        cfg = info.config
        drives = {n: tuple(cfg.input_shape) if n == "image" else tuple(int(d) for d in shapes[n][1:])
                  for n in ins if not n.startswith("state_")}
        return cls(state_in, tuple(f"next_{n}" for n in state_in), tuple(tuple(s) for s in cfg.state_shapes), drives,
                   dict(dtypes), tuple(encode), tuple(cfg.input_shape), cfg.num_classes)


class Store(abc.ABC):
    """Where a StepCore's state, drives and logits live: what a backend adapter provides."""

    @abc.abstractmethod
    def allocate(self, batch: int) -> None:
        """(Re)create every buffer for `batch` rows (zeros)."""

    @abc.abstractmethod
    def zero_drives(self) -> None:
        """A blank image: every drive input zero."""

    @abc.abstractmethod
    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        """Set the state (one (B, c_i, H_i, W_i) array per area, in the state dtype)."""

    @abc.abstractmethod
    def read_state(self) -> list[np.ndarray]:
        """Host copies of the current state."""

    @abc.abstractmethod
    def read_drives(self) -> dict[str, np.ndarray]:
        """Host copies of the drive inputs by name."""

    @abc.abstractmethod
    def write_drives(self, drives: Mapping[str, np.ndarray]) -> None:
        """Set drive inputs by name."""

    @abc.abstractmethod
    def set_image(self, x: np.ndarray) -> None:
        """Show a preprocessed (B, C, S, S) batch (through the encode graph, if any)."""

    @abc.abstractmethod
    def step(self) -> None:
        """One graph call: the state advances, the logits are updated."""

    @abc.abstractmethod
    def logits(self) -> np.ndarray:
        """A host copy of the logits after the last step, (B, K) float32."""


class DoubleBuffer(Store):
    """A :class:`Store` on any :class:`Engine`: two state sets alternate, nothing is copied between steps.

    Step k reads set ``cur`` and writes set ``1 - cur`` (binding a state's input and output to one
    buffer would overwrite rates still being read). The drive inputs and the logits are shared by
    both bindings; the encode graph (stepwise-drive) writes its outputs straight into the drives.
    """

    def __init__(self, engine: Engine, layout: Layout) -> None:
        self.engine, self.layout = engine, layout
        self.cur = 0

    def allocate(self, batch: int) -> None:
        e, lay = self.engine, self.layout
        state_dtype = lay.dtypes[lay.state_in[0]]
        self.batch = batch
        self.sets = [[e.tensor((batch, *s), state_dtype) for s in lay.state_shapes] for _ in range(2)]
        self.drives = {n: e.tensor((batch, *shape), lay.dtypes[n]) for n, shape in lay.drives.items()}
        self.logits_tensor = e.tensor((batch, lay.num_classes), lay.dtypes["logits"])
        for k in range(2):
            e.bind("step", k, {**self.drives, **dict(zip(lay.state_in, self.sets[k]))},
                   {"logits": self.logits_tensor, **dict(zip(lay.state_out, self.sets[1 - k]))})
        if lay.encode:
            self.image = e.tensor((batch, *lay.input_shape), lay.dtypes["image"])
            e.bind("encode", 0, {"image": self.image}, {n: self.drives[n] for n in lay.encode})
        self.cur = 0

    def zero_drives(self) -> None:
        for name, t in self.drives.items():  # zeros made on the host: no read back from the device
            self.engine.write(t, np.zeros((self.batch, *self.layout.drives[name]), self.layout.dtypes[name]))

    def write_state(self, arrays: Sequence[np.ndarray]) -> None:
        for t, a in zip(self.sets[self.cur], arrays):
            self.engine.write(t, a)

    def read_state(self) -> list[np.ndarray]:
        return [self.engine.read(t) for t in self.sets[self.cur]]

    def read_drives(self) -> dict[str, np.ndarray]:
        return {n: self.engine.read(t) for n, t in self.drives.items()}

    def write_drives(self, drives: Mapping[str, np.ndarray]) -> None:
        for n, a in drives.items():
            self.engine.write(self.drives[n], np.ascontiguousarray(a))

    def set_image(self, x: np.ndarray) -> None:
        if self.layout.encode:
            self.engine.write(self.image, x)
            self.engine.run("encode", 0)
        else:
            self.engine.write(self.drives["image"], x)

    def step(self) -> None:
        self.engine.run("step", self.cur)
        self.cur = 1 - self.cur

    def logits(self) -> np.ndarray:
        return np.asarray(self.engine.read(self.logits_tensor), dtype=np.float32)


Graph = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class HostEngine:
    """An :class:`Engine` of host numpy arrays around plain functions ``run(feeds) -> outputs by name``.

    For engines without buffers of their own: a TorchScript / ExportedProgram runner in verification,
    ExecuTorch's ``Method.execute``. Each call's outputs are copied into the bound arrays.

    Args:
        graphs: "step" (and "encode") -> the function running that graph.
    """

    def __init__(self, graphs: Mapping[str, Graph]) -> None:
        self.graphs = dict(graphs)
        self.bound: dict[tuple[str, int], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def tensor(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        return np.zeros(tuple(shape), dtype)

    def write(self, tensor: np.ndarray, array: np.ndarray) -> None:
        tensor[...] = array

    def read(self, tensor: np.ndarray) -> np.ndarray:
        return tensor.copy()

    def bind(self, graph: str, slot: int, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        self.bound[graph, slot] = (dict(inputs), dict(outputs))

    def run(self, graph: str, slot: int) -> None:
        inputs, outputs = self.bound[graph, slot]
        got = self.graphs[graph](inputs)
        for name, t in outputs.items():
            t[...] = got[name]


