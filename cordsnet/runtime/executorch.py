"""Run an ExecuTorch ``.pte`` stepwise program step by step: :class:`PteStepSession`.

The ExecuTorch counterpart of :class:`cordsnet.runtime.StepSession`: the time loop is yours, the
program does one Euler step. Needs the optional executorch package (``pip install -e ".[executorch]"``)
and hence torch (ExecuTorch's Python runtime takes torch tensors); both are imported when a session
is created, so importing this module (and :mod:`cordsnet.runtime`) stays torch-free. Arrays in and
out are numpy.

    session = PteStepSession("digits_r4-stepwise.pte")
    session.start(images)             # (B, C, S, S) float32, normalised; B <= session.max_batch
    for _ in range(session.steps):
        logits = session.step()        # (B, K) after each step; session.state: the rates of every area
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import PREFIX, ArtifactInfo, check_manifest, check_pte_file, companion_path, read_info

__all__ = ["PteStepSession"]


def _load_method(path: Path) -> Any:
    from executorch.runtime import Runtime

    from .._quiet import native_stderr_captured

    check_pte_file(path)  # hostile bytes raise ValueError here instead of aborting in the runtime
    with native_stderr_captured():  # the XNNPACK delegate's cpuinfo start-up lines (fd 2, not ours)
        return Runtime.get().load_program(path).load_method("forward")


class PteStepSession:
    """A stepwise / stepwise-drive ``.pte`` program with its state, started from the spontaneous state.

    Args:
        path: the program (its metadata gives the protocol, the spontaneous state and the batch bound).
        encode: the encode program of a stepwise-drive export; default ``<stem>.encode.pte``.

    Attributes:
        info: the program's :class:`~cordsnet.artifact.ArtifactInfo`.
        steps, spontaneous_steps, alpha: the exported protocol.
        max_batch: the largest batch the program's planned memory takes (its fixed batch, if any).
        state: the rates of every area after the last step, one (B, c_i, H_i, W_i) array per area.

    Raises:
        ValueError: not a stepwise/stepwise-drive program, or a manifest beside it that belongs to
            another program.
    """

    def __init__(self, path: str | os.PathLike, encode: str | os.PathLike | None = None) -> None:
        import torch

        self._torch = torch
        self.path = Path(path)
        self.info: ArtifactInfo = read_info(self.path, "executorch")
        check_manifest(self.path)
        if self.info.kind.session != "step":
            raise ValueError(f"path: expected a stepwise or stepwise-drive program, got graph {self.info.graph!r}")
        self.steps, self.spontaneous_steps, self.alpha = self.info.steps, self.info.spontaneous_steps, self.info.alpha
        self.fixed_batch = self.info.batch
        self.max_batch = int(self.info.metadata.get(PREFIX + "max_batch", self.fixed_batch or 1))
        self._method = _load_method(self.path)
        self._encode = None
        if "encode" in self.info.kind.companions:
            self._encode = _load_method(Path(encode) if encode is not None else companion_path(self.path, "encode"))
        self._spontaneous = [torch.from_numpy(s) for s in self.info.spontaneous_state()]
        self._drive: list[Any] = []
        self._state: list[Any] = []

    @property
    def state(self) -> list[np.ndarray]:
        """The rates of every area after the last step, one (B, c_i, H_i, W_i) array per area."""
        return [s.numpy() for s in self._state]

    def start(self, images: Any) -> None:
        """Show `images` (B, C, S, S) (normalised) from the spontaneous state on.

        Raises:
            ValueError: wrong shape, or a batch the program was not exported for (beyond
                ``max_batch``, or other than its fixed batch).
        """
        if isinstance(images, self._torch.Tensor):
            images = images.detach().cpu().numpy()
        x = self._torch.from_numpy(np.array(images, dtype=np.float32, copy=True))
        want = tuple(self.info.config.input_shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"images: expected shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        b = x.shape[0]
        if self.fixed_batch is not None and b != self.fixed_batch:
            raise ValueError(f"images: this program was exported for a batch of exactly {self.fixed_batch}, got {b} "
                             f"(export again with --batch {b})")
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"images: this program was exported for at most {self.max_batch} images (its planned "
                             f"memory), got {b}; export with --batch {b} for a larger batch")
        self._drive = [t.clone() for t in self._encode.execute([x])] if self._encode is not None else [x]
        self._state = [r.expand(b, *r.shape[1:]).contiguous() for r in self._spontaneous]

    def step(self) -> np.ndarray:
        """One Euler step; returns the logits (B, K) and updates :attr:`state`."""
        if not self._drive:
            raise RuntimeError("step: call start(images) first")
        out = self._method.execute([*self._drive, *self._state])
        self._state = [t.clone() for t in out[1:]]  # the outputs live in the program's planned memory
        return out[0].clone().numpy()

    def run(self, images: Any, steps: int | None = None) -> np.ndarray:
        """Logits (B, K) after `steps` stimulus steps (default: the exported protocol's)."""
        from .. import validate

        steps = validate.optional_integer("steps", steps, self.steps, min=1)
        self.start(images)
        logits = None
        for _ in range(steps):
            logits = self.step()
        assert logits is not None
        return logits
