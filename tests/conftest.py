"""Shared fixtures. Builders live in ``tests/helpers.py`` (import them from there, not from this file)."""

from __future__ import annotations

import os

# One thread per engine (PyTorch, onnxruntime, OpenVINO; here and in the CLI subprocesses the tests start):
# the suite's time then holds on a loaded 2-core machine, where default threading oversubscribes the cores.
# Set CORDSNET_NUM_THREADS / OMP_NUM_THREADS to override. (Before torch is imported: OpenMP reads it once.)
os.environ.setdefault("CORDSNET_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite's caches (screened .pte records, TensorRT engines, fetched files) in a folder of its own, never
# the user's ~/.cache/cordsnet (tests that check the cache set their own with monkeypatch).
if "CORDSNET_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["CORDSNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="cordsnet-test-cache-")

import pytest  # noqa: E402

from cordsnet.config import CordsNetConfig  # noqa: E402
from cordsnet.model import CordsNet  # noqa: E402
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
