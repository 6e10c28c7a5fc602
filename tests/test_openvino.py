"""The OpenVINO backend of the runtime: parity with onnxruntime, state kept in the backend, precision rules.

Skipped as a whole where ``openvino`` cannot be imported (it is the optional extra ``cordsnet[openvino]``).
Small graphs are the conftest's R2 at 32 px (3 spontaneous + 4 stimulus steps); the bf16 check runs the
bundled digits model's full protocol on the 360 held-out digits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import run_without_torch

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cordsnet[openvino]')")

from cordsnet.runtime import ProviderError, Session, StepSession, open_session  # noqa: E402
from cordsnet.runtime import openvino_backend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HAS_BF16 = "bf16" in openvino_backend.available_precisions("CPU")


def _x(batch=3, seed=2):
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


# Same float32 graph, other kernels (OpenVINO's CPU plugin vs onnxruntime's MLAS): per-operation
# rounding differs at 1 ulp; over 3 + 4 steps of logits of magnitude ~1 that stays far below 1e-4.
ATOL = 1e-4


@pytest.mark.parametrize("kind", ["unrolled", "loop", "all"])
def test_whole_graphs_match_onnxruntime_in_float32(exported_onnx, kind):
    x = _x()
    ref = Session(exported_onnx[kind], providers="cpu").run_outputs(x)
    session = Session(exported_onnx[kind], backend="openvino", precision="f32")
    assert session.providers == ["OpenVINO:CPU:f32"] and session.backend == "openvino"
    out = session.run_outputs(x)
    assert out.keys() == ref.keys()
    for name in ref:
        np.testing.assert_allclose(out[name], ref[name], atol=ATOL, rtol=0, err_msg=name)
    if kind == "loop":  # the steps input
        np.testing.assert_allclose(session.run(x, steps=2), Session(exported_onnx[kind], providers="cpu").run(
            x, steps=2), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["stepwise", "stepwise-drive"])
def test_step_sessions_keep_state_in_openvino_and_match_onnxruntime(exported_onnx, kind):
    x = _x()
    ref = StepSession(exported_onnx[kind], providers="cpu")
    session = StepSession(exported_onnx[kind], backend="openvino")  # precision defaults to f32
    assert session.precision == "f32"
    np.testing.assert_allclose(session.run(x), ref.run(x), atol=ATOL, rtol=0)
    # Step by step with a new image half-way (state stays in the OpenVINO tensors between calls).
    for s in (ref, session):
        s.reset(3)
    frames = [x, x, x[::-1].copy(), x[::-1].copy()]
    for frame in frames:
        np.testing.assert_allclose(session.step(frame), ref.step(frame), atol=ATOL, rtol=0)
    for a, b in zip(session.state, ref.state):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    # State assignment and a batch change re-bind the tensors.
    session.state = ref.state
    np.testing.assert_allclose(session.step(), ref.step(), atol=ATOL, rtol=0)
    session.reset(1)
    assert session.batch == 1 and session.step().shape == (1, 10)
    # Anytime inference on this backend: the same decisions.
    a = session.run_until(x, 0.11, margin=1e-3)
    b = ref.run_until(x, 0.11, margin=1e-3)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.decided, b.decided)


@pytest.fixture(scope="module")
def bundled_drive(bundled_model, tmp_path_factory):
    """The bundled model's stepwise-drive graph with the published protocol (100 + 100 steps), unverified."""
    from cordsnet.export import export

    path = tmp_path_factory.mktemp("ov-stateful") / "digits_r4.stepwise-drive.onnx"
    export(bundled_model, path, format="onnx", graph="stepwise-drive", verify=False)
    return path


def _digits(n):
    from cordsnet.data import digits_split, digits_to_tensor

    X, _ = digits_split()["test"]
    return digits_to_tensor(X[:n]).numpy()


def test_stateful_openvino_equals_stateless_and_onnxruntime_over_the_full_protocol(bundled_drive):
    """The state kept inside OpenVINO (ReadValue/Assign, the default) vs passed in and out every call
    (stateless) vs onnxruntime: the logits after every one of the 100 stimulus steps within 1e-4 of the
    logit scale; reset and a batch change between protocols give the same again."""
    x = _digits(12)
    ort_s = StepSession(bundled_drive, providers="cpu")
    stateful = StepSession(bundled_drive, backend="openvino")
    stateless = StepSession(bundled_drive, backend="openvino", stateful=False)
    assert (stateful.stateful, stateless.stateful, ort_s.stateful) == (True, False, False)
    steps = ort_s.info.steps
    assert steps == 100 and ort_s.info.spontaneous_steps == 100
    for batch in (12, 5):  # a batch change re-binds the drives and re-sets the variables
        xb = x[:batch]
        for s in (ort_s, stateful, stateless):
            s.reset(batch)
            s.set_image(xb)
        for _ in range(steps):
            ref = ort_s.step()
            scale = float(np.abs(ref).max())
            np.testing.assert_allclose(stateful.step(), ref, atol=1e-4 * scale, rtol=0)
            np.testing.assert_allclose(stateless.step(), ref, atol=1e-4 * scale, rtol=0)
        for a, b in zip(stateful.state, ort_s.state):  # read only now, when asked
            np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.abs(b).max())), rtol=0)
    # reset really starts over: the spontaneous state, then the same first steps as a fresh session.
    stateful.reset(2)
    for a, spont in zip(stateful.state, stateful.info.spontaneous_state()):
        np.testing.assert_array_equal(a, np.broadcast_to(spont, a.shape))
    fresh = StepSession(bundled_drive, backend="openvino")
    fresh.reset(2)
    np.testing.assert_array_equal(stateful.step(x[:2]), fresh.step(x[:2]))
    # State assignment goes into the variables.
    stateful.state = ort_s.state
    ort_s.set_image(x[:5])
    stateful.set_image(x[:5])
    np.testing.assert_allclose(stateful.step(), ort_s.step(), atol=1e-4 * scale, rtol=0)
    # Anytime inference (compaction rewrites the variables with the remaining rows): the same decisions.
    a, b = stateful.run_until(x, 0.9), ort_s.run_until(x, 0.9)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.decided, b.decided)
    with pytest.raises(ValueError, match="stateful: backend 'onnxruntime' cannot keep the state"):
        StepSession(bundled_drive, providers="cpu", stateful=True)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU's OpenVINO plugin does not report BF16")
def test_stateful_bfloat16_keeps_the_answers(bundled_drive):
    """Where the CPU has bfloat16 (detected, never assumed), the stateful bf16 session keeps float32's answers."""
    x = _digits(40)
    ref = StepSession(bundled_drive, providers="cpu").run(x)
    out = StepSession(bundled_drive, backend="openvino", precision="bf16").run(x)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_open_session_and_errors(exported_onnx, monkeypatch):
    s = open_session(exported_onnx["stepwise"], "auto", backend="openvino", precision="float32")
    assert isinstance(s, StepSession) and s.precision == "f32"
    with pytest.raises(ValueError, match="precision: expected one of"):
        Session(exported_onnx["unrolled"], backend="openvino", precision="int4")
    with pytest.raises(ValueError, match="precision: applies to backend='openvino'"):
        Session(exported_onnx["unrolled"], providers="cpu", precision="bf16")
    with pytest.raises(ValueError, match="backend: expected one of"):
        Session(exported_onnx["unrolled"], backend="tensorflow")
    with pytest.raises(ProviderError, match="OpenVINO device 'NPU7'"):
        Session(exported_onnx["unrolled"], providers="npu7", backend="openvino")
    with pytest.raises(ValueError, match="io_binding"):
        Session(exported_onnx["unrolled"], backend="openvino", io_binding=True)
    # No silent fallback: a CPU that does not report BF16 refuses precision="bf16".
    core = openvino_backend._core()
    real = core.get_property

    class NoBF16:
        available_devices = core.available_devices

        def get_property(self, device, name):
            value = real(device, name)
            return [c for c in value if c != "BF16"] if name == "OPTIMIZATION_CAPABILITIES" else value

    monkeypatch.setattr(openvino_backend, "_CORE", NoBF16())
    with pytest.raises(ProviderError, match="'bf16' needs BF16 support"):
        StepSession(exported_onnx["stepwise"], backend="openvino", precision="bf16")


def test_float16_graphs_are_refused(r2_cifar, tmp_path):
    from cordsnet.export import export

    path = tmp_path / "half.onnx"
    export(r2_cifar, path, format="onnx", graph="unrolled", dtype="float16", steps=4, spontaneous_steps=3,
           verify=False)  # only the file's dtype matters here
    with pytest.raises(ValueError, match="runs float32 graphs"):
        Session(path, backend="openvino")


def test_int8_graphs_run_as_int8_and_agree_with_onnxruntime(r2_cifar, tmp_path):
    """OpenVINO reads the QDQ graph (its Q/DQ pairs become int8 convolutions); both backends round the same
    values with the same scales, so their answers agree (only the kernels' summation order differs)."""
    import numpy as np

    from cordsnet.export import export
    from cordsnet.runtime import StepSession

    rng = np.random.default_rng(0)
    images = rng.standard_normal((100, 3, 32, 32)).astype(np.float32)
    path = tmp_path / "q.onnx"
    export(r2_cifar, path, graph="stepwise-drive", dtype="int8", steps=6, spontaneous_steps=3,
           calibration_images=images[:8], verify_images=images)
    session = StepSession(path, backend="openvino", precision="f32")  # the float parts exact: same rounding
    assert session.stateful is False  # int8 at f32: the stateless path is the faster one (docs/runtime.md)
    ov = session.run(images)
    ref = StepSession(path, providers="cpu").run(images)
    np.testing.assert_allclose(StepSession(path, backend="openvino", precision="f32", stateful=True).run(images[:8]),
                               ov[:8],
                               atol=1e-4 * float(np.abs(ov).max()), rtol=0)
    from helpers import exact_int8_kernels

    if not exact_int8_kernels():
        pytest.skip("this CPU's int8 kernels saturate pairwise sums (x86 without VNNI): backends may differ")
    assert np.mean(ov.argmax(1) == ref.argmax(1)) >= 0.99
    assert np.abs(ov - ref).max() <= 0.05 * np.abs(ref).max()


def test_int8_default_precision_is_the_devices_bf16_and_stateful(r2_cifar, tmp_path, monkeypatch):
    """precision=None on an int8 graph: bf16 where the device reports it (then stateful), else f32
    (then stateless); a float32 graph stays f32 either way."""
    from cordsnet.export import export

    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    path = tmp_path / "q.onnx"
    export(r2_cifar, path, graph="stepwise-drive", dtype="int8", steps=3, spontaneous_steps=2,
           calibration_images=images, verify=False)
    session = StepSession(path, backend="openvino")
    assert (session.precision, session.stateful) == (("bf16", True) if HAS_BF16 else ("f32", False))
    assert session.providers == [f"OpenVINO:CPU:{session.precision}"]
    monkeypatch.setattr(openvino_backend, "available_precisions", lambda device="CPU": ["f32"])
    session = StepSession(path, backend="openvino")
    assert (session.precision, session.stateful) == ("f32", False)
    monkeypatch.setattr(openvino_backend, "available_precisions", lambda device="CPU": ["f32", "bf16"])
    assert openvino_backend.default_precision("int8", "CPU") == "bf16"
    assert openvino_backend.default_precision("float32", "CPU") == "f32"


def test_openvino_backend_is_torch_free(exported_onnx):
    res = run_without_torch(f"""
        import sys
        import numpy as np
        from cordsnet.runtime import StepSession
        s = StepSession({str(exported_onnx["stepwise-drive"])!r}, backend="openvino")
        out = s.run_until(np.zeros((2, 3, 32, 32), np.float32), 0.9)
        assert "torch" not in sys.modules
        print("OK", out.steps.tolist(), out.decided.tolist())
    """)
    assert res.returncode == 0, res.stderr
    assert "OK [4, 4] [False, False]" in res.stdout


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_BF16, reason="this CPU's OpenVINO plugin does not report BF16")
def test_bf16_keeps_the_bundled_models_answers(bundled_model, tmp_path):
    """bf16 (OpenVINO compile hint) vs float32 onnxruntime, full protocol (100 + 100 steps), 360 held-out digits.

    bf16 keeps 8 bits of mantissa, so logits differ by ~0.05 after 100 recurrent steps (measured: max
    0.06); top-1 moves only where the two best classes are closer than that, which no held-out digit is
    (100 % agreement measured); the test asks for >= 99 %, the issue's bar for reduced precision.
    """
    from cordsnet.data import digits_split, digits_to_tensor
    from cordsnet.export import export

    path = tmp_path / "digits_r4.stepwise-drive.onnx"
    export(bundled_model, path, format="onnx", graph="stepwise-drive", steps=5)
    X, y = digits_split()["test"]
    x = digits_to_tensor(X).numpy()
    ref = StepSession(path, providers="cpu").run(x, steps=100)
    out = StepSession(path, backend="openvino", precision="bf16").run(x, steps=100)
    agree = (out.argmax(1) == ref.argmax(1)).mean()
    assert agree >= 0.99, agree
    assert (out.argmax(1) == y).mean() >= 0.97


@pytest.mark.heavy
@pytest.mark.skipif(not HAS_BF16, reason="this CPU's OpenVINO plugin does not report BF16")
def test_int8_default_precision_keeps_the_answer(bundled_model, tmp_path):
    """An int8 graph at its default OpenVINO precision (bf16 float parts, stateful) vs the float32 model,
    full protocol (100 + 100 steps), 360 held-out digits: >= 99 % top-1 agreement, the precision rule.

    Measured: 99.4 % (the int8 rounding already moves 0.3 %; bf16 float parts add one digit whose two
    best classes are closer than bf16's ~0.05 logit error after 100 steps)."""
    import torch

    from cordsnet.data import digits_split
    from cordsnet.export import export
    from cordsnet.export.precision import preset_images

    path = tmp_path / "digits_r4.int8.onnx"
    export(bundled_model, path, graph="stepwise-drive", dtype="int8", verify=False)  # calibrated: full protocol
    held, _ = preset_images(bundled_model, "test")
    with torch.no_grad():
        ref = bundled_model.run(torch.from_numpy(held)).argmax(1).numpy()
    session = StepSession(path, backend="openvino")
    assert (session.precision, session.stateful) == ("bf16", True)
    out = session.run(held, steps=100)
    assert (out.argmax(1) == ref).mean() >= 0.99
    assert (out.argmax(1) == digits_split()["test"][1]).mean() >= 0.97


def test_cli_predict_and_bench_with_openvino(exported_onnx, tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from cordsnet.cli import app

    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img)
    run = CliRunner().invoke
    res = run(app, ["predict", str(exported_onnx["stepwise"]), str(img), "--backend", "openvino", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["providers"] == ["OpenVINO:CPU:f32"]
    want = StepSession(exported_onnx["stepwise"], providers="cpu").predict([str(img)], top_k=5).indices[0]
    assert [t["index"] for t in data["predictions"][0]["top"]] == want.tolist()
    res = run(app, ["bench", str(exported_onnx["stepwise"]), "--backend", "openvino", "--iterations", "2",
                    "--warmup", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["providers"] == ["OpenVINO:CPU:f32"]
    res = run(app, ["predict", str(exported_onnx["stepwise"]), str(img), "--precision", "bf16"])
    assert res.exit_code == 1 and "precision: applies to backend='openvino'" in res.output
