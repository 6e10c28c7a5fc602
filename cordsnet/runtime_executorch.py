"""Run an ExecuTorch ``.pte`` stepwise program step by step: :class:`PteStepSession`.

The ExecuTorch counterpart of driving a stepwise ONNX graph with onnxruntime: the time loop is
yours, the program does one Euler step. Needs the optional executorch package
(``pip install -e ".[executorch]"``) and hence torch (ExecuTorch's Python runtime takes torch tensors).

    session = PteStepSession("digits_r4-stepwise.pte")
    session.start(images)             # (B, C, S, S), normalised; B <= session.max_batch
    for _ in range(session.steps):
        logits = session.step()        # (B, K) after each step; session.state: the rates of every area
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .export.executorch import load, read_pte_metadata
from .export.metadata import decode_spontaneous_state, encode_path, parse_metadata

__all__ = ["PteStepSession"]


class PteStepSession:
    """A stepwise / stepwise-drive ``.pte`` program with its state, started from the spontaneous state.

    Args:
        path: the program (its metadata gives the protocol, the spontaneous state and the batch bound).
        encode: the encode program of a stepwise-drive export; default ``<stem>.encode.pte``.

    Attributes:
        steps, spontaneous_steps, alpha: the exported protocol.
        max_batch: the largest batch the program's planned memory takes (its fixed batch, if any).
        state: the rates of every area after the last step, one (B, c_i, H_i, W_i) tensor per area.
    """

    def __init__(self, path: str | os.PathLike, encode: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        meta = read_pte_metadata(self.path)
        info = parse_metadata(meta)
        self.graph = info["graph"]
        if self.graph not in ("stepwise", "stepwise-drive"):
            raise ValueError(f"path: expected a stepwise or stepwise-drive program, got graph {self.graph!r}")
        self.steps, self.spontaneous_steps, self.alpha = info["steps"], info["spontaneous_steps"], info["alpha"]
        self.config = info["config"]
        self.fixed_batch = None if info["batch"] == "dynamic" else int(info["batch"])
        self.max_batch = int(meta.get("cordsnet.max_batch", self.fixed_batch or 1))
        self.inputs = json.loads(meta["cordsnet.inputs"])
        self._method = load(self.path)
        self._encode = load(encode or encode_path(self.path)) if self.graph == "stepwise-drive" else None
        self._spontaneous = [torch.from_numpy(s.astype(np.float32)) for s in decode_spontaneous_state(meta)]
        self._drive: list[Tensor] = []
        self.state: list[Tensor] = []

    def start(self, images: Tensor | np.ndarray) -> None:
        """Show `images` (B, C, S, S) (normalised) from the spontaneous state on.

        Raises:
            ValueError: wrong shape, or a batch the program was not exported for (beyond
                ``max_batch``, or other than its fixed batch).
        """
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        c, s = self.config["in_channels"], self.config["image_size"]
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"images: expected shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        b = x.shape[0]
        if self.fixed_batch is not None and b != self.fixed_batch:
            raise ValueError(f"images: this program was exported for a batch of exactly {self.fixed_batch}, got {b} "
                             f"(export again with --batch {b})")
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"images: this program was exported for at most {self.max_batch} images (its planned "
                             f"memory), got {b}; export with --batch {b} for a larger batch")
        self._drive = list(self._encode.execute([x.contiguous()])) if self._encode is not None else [x.contiguous()]
        self.state = [r.expand(b, *r.shape[1:]).contiguous() for r in self._spontaneous]

    def step(self) -> Tensor:
        """One Euler step; returns the logits (B, K) and updates :attr:`state`."""
        if not self._drive:
            raise RuntimeError("step: call start(images) first")
        out = self._method.execute([*self._drive, *self.state])
        self.state = [t.clone() for t in out[1:]]  # the outputs live in the program's planned memory
        return out[0].clone()

    def run(self, images: Tensor | np.ndarray, steps: int | None = None) -> Tensor:
        """Logits (B, K) after `steps` stimulus steps (default: the exported protocol's)."""
        self.start(images)
        steps = self.steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        logits: Any = None
        for _ in range(steps):
            logits = self.step()
        return logits
