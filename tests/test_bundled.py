"""The bundled default model (cordsnet/weights/digits_r4.safetensors): loads, is accurate, exports, reacts.

The accuracy and reaction-time checks use the full published protocol (alpha 0.2, 100 spontaneous +
100 stimulus steps) on all 360 held-out digits, run once for the module (about 20 s on one CPU core).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cordsnet.checkpoint import DEFAULT_CHECKPOINT, default_checkpoint_path, read_checkpoint_metadata
from cordsnet.data import digits_split, digits_to_tensor


@pytest.fixture(scope="module")
def bundled(bundled_model):
    """(the session's bundled model, its path); one torch thread (small convolutions, shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = default_checkpoint_path()
    except FileNotFoundError as exc:
        pytest.fail(f"the bundled model is missing: {exc}")
    yield bundled_model, path
    torch.set_num_threads(before)


def test_bundled_model_loads(bundled) -> None:
    model, path = bundled
    assert path.name == DEFAULT_CHECKPOINT and path.stat().st_size <= 10 * 1024 * 1024
    c = model.config
    assert (c.depth, c.num_classes, c.in_channels, c.image_size, c.dataset) == (4, 10, 1, 32, "digits")
    assert (c.alpha, c.steps, c.spontaneous_steps) == (0.2, 100, 100)
    assert model.update_slope == 0.0  # the published relu dynamics
    meta = read_checkpoint_metadata(path)
    assert "reproduce" in meta and "cordsnet-cli train" in meta["reproduce"]


@pytest.fixture(scope="module")
def heldout(bundled):
    """(logits after every stimulus step (100, 360, 10), labels (360,), no-image logits (100, 10))."""
    model, _ = bundled
    X, y = digits_split()["test"]
    images = digits_to_tensor(X)
    with torch.no_grad():
        logits = torch.cat([model.run(images[i:i + 120], steps=100, spontaneous_steps=100, alpha=0.2, readout="all")
                            for i in range(0, len(y), 120)], dim=1)
        baseline = model.run(torch.zeros(1, 1, 32, 32), steps=100, spontaneous_steps=100, alpha=0.2,
                             readout="all")[:, 0]
    return logits, y, baseline


def test_bundled_model_heldout_accuracy(heldout) -> None:
    """Full protocol on the whole held-out split (test part of train_test_split(..., random_state=0))."""
    logits, y, _ = heldout
    accuracy = float((logits[-1].argmax(1).numpy() == y).mean())
    assert len(y) == 360
    assert accuracy >= 0.97, accuracy


def test_a_blank_image_never_reacts(bundled) -> None:
    """With no image the model says 8 at p = 0.998: the plain threshold rule reacts at step 1, ours never."""
    from cordsnet.analysis import measure_reaction_times

    model, _ = bundled
    with pytest.warns(UserWarning, match="already predicts class 8"):
        rt = measure_reaction_times(model, torch.zeros(2, 1, 32, 32), 0.9)
    assert rt.steps.tolist() == [-1, -1] and rt.baseline_crosses and rt.baseline_class == 8
    assert rt.baseline_probability > 0.99
    # Low-contrast noise around the blank does not make it react either.
    noise = 0.05 * torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning):
        assert measure_reaction_times(model, noise, 0.9, steps=60).steps.tolist() == [-1, -1, -1]


def test_held_out_digits_react_at_sensible_steps(heldout) -> None:
    """Figures of docs/analysis.md: at threshold 0.9 about 9 in 10 held-out digits decide, at a median of
    35 steps (70 ms), almost always for the right class; never in the first 10 steps (the drive needs
    them to reach the readout)."""
    from cordsnet.analysis import reaction_times

    logits, y, baseline = heldout
    with pytest.warns(UserWarning, match="already predicts class 8"):
        rt = reaction_times(logits, 0.9, baseline=baseline)
    decided = rt.crossed
    assert decided.mean() >= 0.85, decided.mean()  # measured: 326 / 360
    steps = rt.steps[decided]
    assert steps.min() > 10 and 25 <= np.median(steps) <= 45, (steps.min(), np.median(steps))  # measured 21, 35
    assert (rt.classes[decided] == y[decided]).mean() >= 0.98  # measured: 99.1 %
    for digit in range(10):  # every digit, including the resting network's own 8, can react
        assert decided[y == digit].any(), digit
    plain = (torch.softmax(logits, -1).amax(-1) >= 0.9).float().argmax(0)  # the old rule: step 1 for all
    assert (plain == 0).all()


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
    # Both float32, other kernels (onnxruntime vs torch), 200 recurrent steps: the project's parity rule is
    # 1e-4 of the logit scale; these logits reach ~10, so 1e-3 absolute is that rule.
    assert np.allclose(got, expected, atol=1e-3, rtol=1e-3), np.abs(got - expected).max()
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_run_until_stops_where_reaction_times_say(bundled, heldout) -> None:
    """Early exit on the bundled model: the same steps as the reaction times, the blank runs to the end.

    (All 360 held-out digits at threshold 0.9: 97.50 % top-1, like the full protocol, with 42.3 mean
    stimulus steps instead of 100; docs/analysis.md.)"""
    from cordsnet.decision import first_decisions

    model, _ = bundled
    logits, y, baseline = heldout
    X, _ = digits_split()["test"]
    images = torch.cat([torch.zeros(1, 1, 32, 32), digits_to_tensor(X[:30])])
    with torch.no_grad():
        out = model.run_until(images, 0.9)
    assert out.steps[0] == 100 and not out.decided[0]  # the blank never decides
    expected = first_decisions(logits[:, :30].double().numpy(), baseline.double().numpy(), 0.9)
    # Exact equality is proven in float64 (tests/test_model.py); here both are float32 at other batch
    # sizes, so a crossing within rounding distance of the threshold could move on another CPU: allow one.
    mismatched = out.steps[1:].numpy() != np.where(expected.steps > 0, expected.steps, 100)
    assert mismatched.sum() <= 1, mismatched.sum()
    assert (out.logits[1:].argmax(1).numpy() == y[:30]).mean() >= 0.95
    assert out.steps[1:].float().mean() < 60
