"""Shared fixtures. Builders live in ``tests/helpers.py`` (import them from there, not from this file)."""

from __future__ import annotations

import pytest

from helpers import make_images, make_published_state_dict

__all__ = ["make_published_state_dict"]  # kept importable for modules not yet moved to helpers


@pytest.fixture
def published_sd():
    """Factory fixture: published_sd(depth=..., num_classes=..., in_channels=..., image_size=..., seed=...)."""
    return make_published_state_dict


@pytest.fixture(scope="session")
def small_model():
    """A CordsNet-R2 on 32-px RGB images, 10 classes, from a published-layout state dict. Shared by the
    whole session: tests must not change it (use helpers.published_model for a model of one's own)."""
    from cordsnet.checkpoint import load_checkpoint

    return load_checkpoint(make_published_state_dict(depth=2, num_classes=10, in_channels=3, image_size=32))


@pytest.fixture(scope="session")
def bundled_model():
    """The bundled digits model (cordsnet/weights/digits_r4.safetensors), shared: tests must not change it."""
    from cordsnet.checkpoint import load_checkpoint

    return load_checkpoint(None)


@pytest.fixture
def images():
    """Factory: images(batch, channels, size, seed) -> (B, C, S, S) float32."""
    return make_images


@pytest.fixture
def file_size_limit():
    """limit(n): writes past n bytes fail with OSError (EFBIG), like a full disk; restored afterwards."""
    resource = pytest.importorskip("resource")
    import signal

    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the default kill

    def limit(n: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, before[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, before)
    signal.signal(signal.SIGXFSZ, handler)
