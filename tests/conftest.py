"""Shared fixtures: state dicts of the published layout with non-trivial (non-zero bias) weights."""

from __future__ import annotations

import pytest
import torch

from cordsnet.config import CordsNetConfig
from cordsnet.model import CordsNet


def make_published_state_dict(depth: int = 2, num_classes: int = 10, in_channels: int = 3,
                              image_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the exact published layout (§2), stable dynamics and non-zero biases.

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


@pytest.fixture
def published_sd():
    """Factory fixture: published_sd(depth=..., num_classes=..., in_channels=..., image_size=..., seed=...)."""
    return make_published_state_dict


@pytest.fixture
def small_model():
    """A CordsNet-R2 on 32-px RGB images, 10 classes, loaded from a published-layout state dict."""
    from cordsnet.checkpoint import load_checkpoint

    return load_checkpoint(make_published_state_dict(depth=2, num_classes=10, in_channels=3, image_size=32))


@pytest.fixture
def images():
    """Factory: images(batch, channels, size, seed) -> (B, C, S, S) float32."""
    def make(batch: int = 2, channels: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
        return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return make
