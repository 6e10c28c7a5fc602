"""Run an ExecuTorch ``.pte`` stepwise program step by step: :class:`PteStepSession`.

The ExecuTorch adapter of the stepping core (:class:`cordsnet.runtime._core.StepCore`): the same API as
:class:`cordsnet.runtime.StepSession` (``reset``, ``step``, ``run``, ``run_video``, ``run_until``,
``predict``, ``state``), the program doing one Euler step per call. Needs the optional executorch
package (``pip install -e ".[executorch]"``) and hence torch (ExecuTorch's Python runtime takes torch
tensors); both are imported when a session is created, so importing this module (and
:mod:`cordsnet.runtime`) stays torch-free. Arrays in and out are numpy.

    session = PteStepSession("digits_r4-stepwise.pte")
    session.reset(len(images))         # the spontaneous state; B <= session.max_batch
    session.set_image(images)          # (B, C, S, S) float32, normalised (or raw images of the preset)
    for _ in range(session.steps):
        logits = session.step()        # (B, K) after each step; session.state: the rates of every area
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..artifact import PREFIX, check_manifest, companion_path, load_pte_program, read_info
from ._batch import pad_chunks
from ._core import FunctionStepSession

__all__ = ["PteStepSession"]


def _method(path: Path, names: tuple[list[str], list[str]]) -> Callable[[Mapping[str, np.ndarray]], dict[str, Any]]:
    """The program's ``forward`` as ``run(feeds by name) -> outputs by name`` (numpy in and out)."""
    import torch

    from .._quiet import native_stderr_captured

    program = load_pte_program(path)  # hostile bytes raise ValueError instead of aborting in the runtime
    with native_stderr_captured():  # the XNNPACK delegate's cpuinfo start-up lines (fd 2, not ours)
        loaded = (program, program.load_method("forward"))  # the closure holds the program: it owns the bytes
    ins, outs = names

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        got = loaded[1].execute([torch.from_numpy(feeds[n]) for n in ins])
        return {n: t.numpy() for n, t in zip(outs, got)}  # copied into the core's buffers at once

    return run


class PteStepSession(FunctionStepSession):
    """A stepwise / stepwise-drive ``.pte`` program under the StepSession API.

    Args:
        path: the program (its metadata gives the protocol, the spontaneous state and the batch bound).
        encode: the encode program of a stepwise-drive export; default ``<stem>.encode.pte``.

    Attributes:
        info: the program's :class:`~cordsnet.artifact.ArtifactInfo`.
        steps, spontaneous_steps, alpha: the exported protocol.
        max_batch: the largest batch the program's planned memory takes (its fixed batch, if any).

    Raises:
        ValueError: not a stepwise/stepwise-drive program, or a manifest beside it that belongs to
            another program.
    """

    def __init__(self, path: str | os.PathLike, encode: str | os.PathLike | None = None) -> None:
        path = Path(path)
        info = read_info(path, "executorch")
        check_manifest(path)
        if info.kind.session != "step":
            raise ValueError(f"path: expected a stepwise or stepwise-drive program, got graph {info.graph!r}")
        self.steps, self.spontaneous_steps, self.alpha = info.steps, info.spontaneous_steps, info.alpha
        self.fixed_batch = info.batch
        self.max_batch = int(info.metadata.get(PREFIX + "max_batch", self.fixed_batch or 1))
        ins, outs = info.io_names()
        step = _method(path, (ins, outs))
        encoder = None
        if "encode" in info.kind.companions:
            drives = [n for n in ins if not n.startswith("state_")]
            encoder = _method(Path(encode) if encode is not None else companion_path(path, "encode"),
                              (["image"], drives))
        super().__init__(path, info, step, encoder)

    @property
    def providers(self) -> list[str]:
        return ["ExecuTorch"]

    def _check_batch(self, batch: int, name: str) -> None:
        if self.fixed_batch is not None and batch != self.fixed_batch:
            raise ValueError(f"{name}: this program was exported for a batch of exactly {self.fixed_batch}, got "
                             f"{batch} (export again with --batch {batch})")
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"{name}: this program was exported for at most {self.max_batch} images (its planned "
                             f"memory), got {batch}; export with --batch {batch} for a larger batch")

    def _chunks(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Chunks of at most ``max_batch`` images (its fixed batch: exactly, the last padded)."""
        if self.fixed_batch is not None or x.shape[0] <= self.max_batch:
            return pad_chunks(x, self.fixed_batch)
        return [(x[i:i + self.max_batch], len(x[i:i + self.max_batch])) for i in range(0, len(x), self.max_batch)]

    def start(self, images: Any) -> None:
        """Show `images` from the spontaneous state on: ``reset(len(images))`` then ``set_image(images)``.

        Kept for compatibility; the same as the StepSession calls.
        """
        x = self.preprocess(images.detach().cpu().numpy() if hasattr(images, "detach") else images,
                            check_batch=False)
        with self._lock:
            self.reset(x.shape[0])
            self._show(x)
