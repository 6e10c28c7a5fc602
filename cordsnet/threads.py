"""CPU threads: one setting for PyTorch, onnxruntime and OpenVINO (torch-free).

Every engine defaults to one thread per core; two of them in one process, or two processes on one
machine, then oversubscribe the cores and each runs several times slower than alone. The CLI's
``--threads N`` and :func:`set_num_threads` set one budget for all of them; ``CORDSNET_NUM_THREADS``
in the environment sets it for a whole process tree (the test suite uses it).

* PyTorch: ``torch.set_num_threads(n)`` when torch is imported (now or later in this process, through
  :func:`apply_to_torch`).
* onnxruntime: ``SessionOptions.intra_op_num_threads`` of every session the runtime creates.
* OpenVINO: ``INFERENCE_NUM_THREADS`` of every model the runtime compiles.
"""

from __future__ import annotations

import os
import sys

from . import validate

__all__ = ["ENV", "MAX_THREADS", "apply_to_torch", "num_threads", "set_num_threads"]

ENV = "CORDSNET_NUM_THREADS"  # the process tree's default thread budget (unset: the engines' own defaults)
_threads: int | None = None
MAX_THREADS = 1024  # more than any machine's cores; 100000 threads took onnxruntime minutes to start


def set_num_threads(threads: int | None) -> None:
    """Set the thread budget of every engine in this process (None: back to the engines' defaults).

    Args:
        threads: in [1, :data:`MAX_THREADS`], or None.

    Raises:
        ValueError: `threads` is not a positive integer.
    """
    global _threads
    _threads = None if threads is None else validate.positive_int("threads", threads, max=MAX_THREADS,
                                                                  why="more threads than cores only slow down")
    apply_to_torch()


def num_threads() -> int | None:
    """The budget set by :func:`set_num_threads`, else ``$CORDSNET_NUM_THREADS``, else None (engine defaults)."""
    if _threads is not None:
        return _threads
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV}: expected a positive integer, got {value!r}")
    if int(value) > MAX_THREADS:
        raise ValueError(f"{ENV}: expected at most {MAX_THREADS} threads, got {value!r}")
    return int(value)


def apply_to_torch() -> None:
    """Give PyTorch the budget, if torch is already imported (model code calls this after importing it)."""
    n = num_threads()
    torch = sys.modules.get("torch")
    if n is not None and torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
