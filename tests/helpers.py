"""Builders shared by the tests (and benchmarks): import them, don't copy them, don't import conftest.

``from helpers import published_model`` works in every test module (pytest puts ``tests/`` on the path
through ``conftest.py``); a benchmark adds ``tests/`` to ``sys.path`` first.
"""

from __future__ import annotations

import torch

from cordsnet.config import CordsNetConfig
from cordsnet.model import CordsNet

__all__ = ["exact_int8_kernels", "make_images", "make_published_state_dict", "published_model"]


def make_published_state_dict(depth: int = 2, num_classes: int = 10, in_channels: int = 3,
                              image_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the exact published layout (docs/specification.md §2), stable dynamics and
    non-zero biases.

    Weight-norm magnitudes g are drawn so the recurrent dynamics stay bounded; every conv_bias is a
    non-zero spatial map, so the spontaneous phase does real work.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = CordsNetConfig(depth=depth, num_classes=num_classes, in_channels=in_channels,
                         image_size=image_size, dataset=None)
    template = CordsNet(cfg).state_dict()
    sd = {}
    for key, t in template.items():
        if key.endswith("original1"):  # v: direction
            sd[key] = torch.randn(t.shape, generator=gen)
        elif key.endswith("original0"):  # g: per-output-channel norm of the effective weight
            scale = {"area_conv": 0.3, "out_fc": 0.9}.get(key.split(".")[0], 1.6)
            sd[key] = (0.5 + 0.5 * torch.rand(t.shape, generator=gen)) * scale
        elif key.startswith("conv_bias"):
            sd[key] = 0.2 * torch.randn(t.shape, generator=gen) + 0.05
        else:  # out_fc.bias
            sd[key] = 0.1 * torch.randn(t.shape, generator=gen)
    return sd


def published_model(depth: int = 2, size: int = 32, classes: int = 10, channels: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], CordsNet]:
    """(state dict, model loaded from it) for a random published-layout checkpoint; a fresh model each call."""
    from cordsnet.checkpoint import load_checkpoint

    sd = make_published_state_dict(depth=depth, num_classes=classes, in_channels=channels, image_size=size,
                                   seed=seed)
    return sd, load_checkpoint(sd).to(dtype)


def make_images(batch: int = 2, channels: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Seeded standard-normal images (B, C, S, S), float32."""
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# A meta-path finder that makes `import torch` (and torchvision) fail in a subprocess: code run through
# run_without_torch proves it needs only numpy, onnxruntime (or OpenVINO) and the torch-free modules.
NO_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "torchvision") or name.startswith(("torch.", "torchvision.")):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _BlockTorch())
"""


def run_without_torch(code: str, *, cwd: str | None = None, timeout: float = 180):
    """Run `code` in a fresh Python with torch blocked and this checkout first on the path.

    Returns:
        The ``subprocess.CompletedProcess`` (text stdout/stderr).
    """
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def exact_int8_kernels() -> bool:
    """Whether this CPU's u8 x s8 int8 kernels sum their products exactly.

    On x86 without VNNI, onnxruntime's and oneDNN's U8S8 kernels use ``vpmaddubsw``, whose pairwise
    int16 sums saturate (documented by onnxruntime's quantisation guide); there an int8 graph and
    its fake-quantised PyTorch statement can differ by more than rounding. Other architectures and
    VNNI (``avx512_vnni`` / ``avx_vnni``) sum in int32.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags
