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


# ---------------------------------------------------------------------------- exported graphs
# Shared by test_artifact.py, test_export.py and test_runtime.py: exporting is the slow part, so each
# graph is exported once per test session.
EXPORT_STEPS, EXPORT_SPONTANEOUS = 4, 3  # a short protocol: 3 spontaneous + 4 stimulus steps


@pytest.fixture(scope="session")
def state_dict_factory():
    """Session-scoped :func:`make_published_state_dict`, for module- and session-scoped fixtures."""
    return make_published_state_dict


def _r2_model(dataset: str | None = "cifar10", channels: int = 3, seed: int = 0) -> CordsNet:
    from cordsnet.checkpoint import load_checkpoint

    sd = make_published_state_dict(depth=2, num_classes=10, in_channels=channels, image_size=32, seed=seed)
    cfg = CordsNetConfig(depth=2, num_classes=10, in_channels=channels, image_size=32, steps=EXPORT_STEPS,
                         spontaneous_steps=EXPORT_SPONTANEOUS, dataset=dataset)
    return load_checkpoint(sd, config=cfg)


@pytest.fixture(scope="session")
def r2_factory():
    """Factory: r2_factory(dataset="cifar10", channels=3, seed=0) -> a CordsNet-R2 at 32 px with the short protocol."""
    return _r2_model


@pytest.fixture(scope="session")
def r2_cifar() -> CordsNet:
    """CordsNet-R2 at 32 px, RGB, cifar10 preset, protocol 3 spontaneous + 4 stimulus steps."""
    return _r2_model()


@pytest.fixture(scope="session")
def exported_onnx(r2_cifar, tmp_path_factory):
    """One ONNX graph per kind of `r2_cifar`: {"unrolled", "loop", "stepwise", "stepwise-drive", "all"} -> path.

    "all" is an unrolled graph with readout "all" and area 1 recorded. Treat the files as read-only:
    tests that alter a graph copy it first.
    """
    from cordsnet.export import export

    root = tmp_path_factory.mktemp("exported")
    kinds = {"unrolled": {}, "loop": {}, "stepwise": {}, "stepwise-drive": {},
             "all": {"graph": "unrolled", "readout": "all", "record": [1]}}
    out = {}
    for name, kw in kinds.items():
        kw = {"graph": name, **kw}
        out[name] = root / f"r2.{name}.onnx"
        export(r2_cifar, out[name], format="onnx", steps=EXPORT_STEPS, spontaneous_steps=EXPORT_SPONTANEOUS, **kw)
    return out
