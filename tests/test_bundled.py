"""The bundled default model (cordsnet/weights/digits_r4.safetensors): loads, is accurate, exports.

The accuracy check is the full published protocol (alpha 0.2, 100 spontaneous + 100 stimulus steps)
on all 360 held-out digits, not a shortened one (about 20 s on one CPU core).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cordsnet.checkpoint import DEFAULT_CHECKPOINT, default_checkpoint_path, load_checkpoint, read_metadata
from cordsnet.data import digits_split, digits_to_tensor


@pytest.fixture(scope="module")
def bundled():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is fastest on a shared CPU
    try:
        path = default_checkpoint_path()
    except FileNotFoundError as exc:
        pytest.fail(f"the bundled model is missing: {exc}")
    yield load_checkpoint(None), path
    torch.set_num_threads(before)


def test_bundled_model_loads(bundled) -> None:
    model, path = bundled
    assert path.name == DEFAULT_CHECKPOINT and path.stat().st_size <= 10 * 1024 * 1024
    c = model.config
    assert (c.depth, c.num_classes, c.in_channels, c.image_size, c.dataset) == (4, 10, 1, 32, "digits")
    assert (c.alpha, c.steps, c.spontaneous_steps) == (0.2, 100, 100)
    assert model.update_slope == 0.0  # the published relu dynamics
    meta = read_metadata(path)
    assert "reproduce" in meta and "cordsnet-cli train" in meta["reproduce"]


def test_bundled_model_heldout_accuracy(bundled) -> None:
    """Full protocol on the whole held-out split (test part of train_test_split(..., random_state=0))."""
    model, _ = bundled
    X, y = digits_split()["test"]
    images = digits_to_tensor(X)
    with torch.no_grad():
        logits = torch.cat([model.run(images[i:i + 120], steps=100, spontaneous_steps=100, alpha=0.2)
                            for i in range(0, len(y), 120)])
    accuracy = float((logits.argmax(1).numpy() == y).mean())
    assert len(y) == 360
    assert accuracy >= 0.97, accuracy


def test_bundled_model_onnx_agrees(bundled, tmp_path: Path) -> None:
    import onnxruntime as ort

    import cordsnet.export as export_api

    model, _ = bundled
    out = tmp_path / "digits.onnx"
    export_api.export(model, out, format="onnx", steps=100, verify=False)
    X, y = digits_split()["test"]
    images = digits_to_tensor(X[:40])
    with torch.no_grad():
        expected = model.run(images).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"image": images.numpy()})
    assert np.allclose(got, expected, atol=1e-3, rtol=1e-3), np.abs(got - expected).max()
    assert np.array_equal(got.argmax(1), expected.argmax(1))
