"""Anytime inference in the runtime: ``StepSession.run_until`` / ``Session.run_until`` and ``predict --until``.

The main check runs the bundled digits model's stepwise export (60 steps) on held-out digits against
``CordsNet.run_until``: both use :func:`cordsnet.decision.decide`, so stopping steps and decisions must be
identical, and the logits agree to float32 rounding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cordsnet.data import digits_split, digits_to_tensor
from cordsnet.decision import DEFAULT_MARGIN, first_decisions
from cordsnet.export import export
from cordsnet.runtime import EarlyExit, Session, StepSession, open_session

MAX_STEPS = 60  # enough for most held-out digits to decide at 0.9 (mean ~42 steps), short enough to test
THRESHOLD = 0.9
N_DIGITS = 24


@pytest.fixture(scope="module")
def bundled_stepwise(bundled_model, tmp_path_factory):
    """The bundled model's stepwise graph (float32, dynamic batch; verified over MAX_STEPS steps)."""
    path = tmp_path_factory.mktemp("anytime") / "digits_r4.stepwise.onnx"
    export(bundled_model, path, format="onnx", graph="stepwise", steps=MAX_STEPS)
    return path


@pytest.fixture(scope="module")
def digits():
    X, y = digits_split()["test"]
    return digits_to_tensor(X[:N_DIGITS]).numpy(), y[:N_DIGITS]


def _decision_distance(z: np.ndarray, base: np.ndarray, threshold: float, margin: float) -> np.ndarray:
    """(T, B) signed distance of the criterion from its boundary: min(p - threshold, evidence - margin)."""
    from cordsnet.decision import evidence

    zz = z.astype(np.float64)
    top = zz.argmax(-1)
    p = 1.0 / np.exp(zz - zz.max(-1, keepdims=True)).sum(-1)
    ev = np.take_along_axis(evidence(zz, base[:, None, :].astype(np.float64)), top[..., None], -1)[..., 0]
    return np.minimum(p - threshold, ev - margin)


def test_stepsession_run_until_equals_the_model(bundled_model, bundled_stepwise, digits):
    x, y = digits
    with torch.no_grad():
        ref = bundled_model.run_until(torch.from_numpy(x), THRESHOLD, max_steps=MAX_STEPS)
    session = StepSession(bundled_stepwise, providers="cpu")
    out = session.run_until(x, THRESHOLD, max_steps=MAX_STEPS)
    assert isinstance(out, EarlyExit)
    # Premise of exact equality: at every step up to each image's stop, the criterion is at least 1e-4
    # away from its boundary (probability and evidence), while the graph and the model differ by float32
    # rounding of logits of magnitude ~10 (~1e-5). So no decision can flip between the two.
    session.reset(N_DIGITS)
    session.set_image(x)
    z = np.stack([session.step() for _ in range(MAX_STEPS)])
    dist = _decision_distance(z, session.baseline_logits(MAX_STEPS), THRESHOLD, DEFAULT_MARGIN)
    upto = np.arange(MAX_STEPS)[:, None] < out.steps[None, :]
    assert np.abs(dist[upto]).min() > 1e-4
    np.testing.assert_array_equal(out.steps, ref.steps.numpy())
    np.testing.assert_array_equal(out.decided, ref.decided.numpy())
    # float32 graph vs float32 PyTorch, same operations in another order: logits of magnitude <= ~10
    # agree to 1e-4 (the export's verification tolerance).
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), atol=1e-4, rtol=0)
    assert out.decided.sum() >= N_DIGITS // 2 and (out.steps < MAX_STEPS).sum() >= N_DIGITS // 2
    # The same as reading the full trajectory off afterwards (first_decisions on every step's logits).
    first = first_decisions(z, session.baseline_logits(MAX_STEPS), THRESHOLD)
    np.testing.assert_array_equal(np.where(first.steps > 0, first.steps, MAX_STEPS), out.steps)
    np.testing.assert_array_equal(out.logits, z[out.steps - 1, np.arange(N_DIGITS)])
    assert (out.logits.argmax(1)[out.decided] == y[out.decided]).mean() >= 0.9


def test_blank_image_never_decides(bundled_stepwise):
    session = StepSession(bundled_stepwise, providers="cpu")
    base = session.baseline_logits(MAX_STEPS)
    # What a plain "top probability >= threshold" rule would see: the resting network is confident.
    p = np.exp(base - base.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert p[0].max() >= THRESHOLD
    blank = np.zeros((3, 1, 32, 32), np.float32)  # normalised zero: no drive at all
    for threshold, margin in ((THRESHOLD, DEFAULT_MARGIN), (0.2, 1e-3)):
        out = session.run_until(blank, threshold, max_steps=MAX_STEPS, margin=margin)
        assert not out.decided.any() and (out.steps == MAX_STEPS).all() and not out.converged.any()


def test_undecided_rows_drop_out_of_the_batch(bundled_stepwise, digits, monkeypatch):
    x, _ = digits
    session = StepSession(bundled_stepwise, providers="cpu")
    session.baseline_logits(MAX_STEPS)  # cached before counting
    batches: list[int] = []
    step = session.step

    def counting_step(*args, **kwargs):
        batches.append(session.batch)
        return step(*args, **kwargs)

    monkeypatch.setattr(session, "step", counting_step)  # the public method run_until steps with
    out = session.run_until(x, THRESHOLD, max_steps=MAX_STEPS)
    # Every step ran exactly the rows still undecided: the work is the sum of the stopping steps.
    assert len(batches) == out.steps.max()
    assert sum(batches) == out.steps.sum() < N_DIGITS * MAX_STEPS
    assert batches[0] == N_DIGITS and all(a >= b for a, b in zip(batches, batches[1:]))
    assert batches[-1] == (out.steps == out.steps.max()).sum()
    # Each image alone stops where it stopped in the batch.
    for i in (0, int(np.argmax(out.steps))):
        alone = session.run_until(x[i:i + 1], THRESHOLD, max_steps=MAX_STEPS)
        assert alone.steps[0] == out.steps[i] and alone.decided[0] == out.decided[i]


def test_convergence_tolerance_and_errors(bundled_stepwise, digits):
    x, _ = digits
    session = StepSession(bundled_stepwise, providers="cpu")
    huge = session.run_until(x[:3], THRESHOLD, max_steps=5, tol=1e9)  # every change is below 1e9
    assert (huge.steps == 1).all() and huge.converged.all()
    none = session.run_until(x[:3], THRESHOLD, max_steps=5, tol=1e-30)
    plain = session.run_until(x[:3], THRESHOLD, max_steps=5)
    np.testing.assert_array_equal(none.steps, plain.steps)
    assert not none.converged.any()
    with pytest.raises(ValueError, match="threshold"):
        session.run_until(x[:1], 0.1)  # 1/K: no condition at all
    with pytest.raises(ValueError, match="max_steps"):
        session.run_until(x[:1], THRESHOLD, max_steps=0)
    with pytest.raises(ValueError, match="tol"):
        session.run_until(x[:1], THRESHOLD, tol=-1.0)
    with pytest.raises(ValueError, match="margin"):
        session.run_until(x[:1], THRESHOLD, margin=0.0)


def test_whole_graphs_read_off_the_same_decisions(graphs_all, graphs_stepwise):
    """Session.run_until on a readout="all" graph = StepSession.run_until (same steps), no work saved."""
    x = np.random.default_rng(3).standard_normal((6, 3, 32, 32)).astype(np.float32)
    step = StepSession(graphs_stepwise, providers="cpu")
    whole = Session(graphs_all, providers="cpu")
    z = whole.run(x)  # (4, 6, 10)
    base = whole.baseline_logits()
    np.testing.assert_allclose(base, step.baseline_logits(), atol=1e-5)
    # a threshold that some images reach within the 4 steps and some do not
    p = np.exp(z - z.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).max(-1)
    threshold = float(np.median(p[-1]))
    a = whole.run_until(x, threshold, margin=1e-3)
    b = step.run_until(x, threshold, margin=1e-3)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.decided, b.decided)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    assert 0 < a.decided.sum() < len(x)
    with pytest.raises(ValueError, match="tol"):
        whole.run_until(x, threshold, tol=1e-3)
    with pytest.raises(ValueError, match="max_steps"):
        whole.run_until(x, threshold, max_steps=5)  # an unrolled graph has 4 steps


def test_readout_last_whole_graph_says_what_to_use(exported_onnx):
    with pytest.raises(ValueError, match="readout 'last'.*stepwise"):
        Session(exported_onnx["loop"], providers="cpu").run_until(np.zeros((1, 3, 32, 32), np.float32), 0.9)


def test_static_batch_graph_runs_until_without_shrinking(r2_cifar, graphs_stepwise, tmp_path):
    static = tmp_path / "static3.onnx"
    export(r2_cifar, static, format="onnx", graph="stepwise", batch=3, steps=4, spontaneous_steps=3)
    x = np.random.default_rng(5).standard_normal((5, 3, 32, 32)).astype(np.float32)
    dynamic = StepSession(graphs_stepwise, providers="cpu").run_until(x, 0.11, margin=1e-3)
    fixed = StepSession(static, providers="cpu").run_until(x, 0.11, margin=1e-3)
    np.testing.assert_array_equal(fixed.steps, dynamic.steps)
    np.testing.assert_array_equal(fixed.decided, dynamic.decided)
    np.testing.assert_allclose(fixed.logits, dynamic.logits, atol=1e-5)


def test_cli_predict_until_prints_steps(bundled_stepwise, digits, tmp_path, exported_onnx):
    from PIL import Image
    from typer.testing import CliRunner

    from cordsnet.cli import app
    from cordsnet.data import _digits_raw

    X, _ = digits_split()["test"]
    raw = _digits_raw(X[:2], 32).numpy()
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"d{i}.png")
        Image.fromarray((raw[i, 0] * 255).round().astype(np.uint8), "L").save(paths[-1])
    run = CliRunner().invoke
    res = run(app, ["predict", str(bundled_stepwise), *map(str, paths), "--until", "0.9", "--max-steps",
                    str(MAX_STEPS), "--provider", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)["predictions"]
    want = open_session(bundled_stepwise, "cpu").run_until([str(p) for p in paths], 0.9, MAX_STEPS)
    assert [d["steps"] for d in data] == want.steps.tolist()
    assert [d["decided"] for d in data] == want.decided.tolist()
    res = run(app, ["predict", str(bundled_stepwise), str(paths[0]), "--until", "0.9", "--provider", "cpu"])
    assert res.exit_code == 0 and f"{want.steps[0]} steps" in res.output
    res = run(app, ["predict", str(exported_onnx["loop"]), str(paths[0]), "--until", "0.9", "--provider", "cpu"])
    assert res.exit_code == 1 and "readout 'last'" in res.output and "Traceback" not in res.output
    res = run(app, ["predict", str(bundled_stepwise), str(paths[0]), "--max-steps", "3", "--provider", "cpu"])
    assert res.exit_code == 1 and "--until" in res.output


@pytest.fixture(scope="module")
def graphs_all(exported_onnx):
    return exported_onnx["all"]


@pytest.fixture(scope="module")
def graphs_stepwise(exported_onnx):
    return exported_onnx["stepwise"]
