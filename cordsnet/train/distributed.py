"""Where a training process runs: its device, and its place under ``torchrun`` (DistributedDataParallel)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


__all__ = ["barrier", "dist_info", "pick_device"]


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """The device a process runs on: `device` if given (checked), else CUDA device `local_rank` (modulo the
    devices there are) where CUDA is available, else the CPU.

    Raises:
        ValueError: `device` is not a torch device name, or names CUDA on a machine without it.
    """
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but no CUDA device is available here")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def barrier(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()
