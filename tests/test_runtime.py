"""Runtime: torch-free onnxruntime sessions, providers, preprocessing, hardening and the CLI commands.

Graphs are R2 at 32 px with a short protocol (3 spontaneous + 4 stimulus steps), exported once per
test session by the ``exported_onnx`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import run_without_torch
import torch

from cordsnet.checkpoint import save_checkpoint
from cordsnet.config import PRESETS, get_preset
from cordsnet.export import export
from cordsnet.runtime import (Preprocessor, ProviderError, Session, StepSession, load_image, open_session,
                              read_info, resolve_providers)
from cordsnet.runtime import providers as providers_mod

STEPS, SPONT, SIZE = 4, 3, 32
REPO = Path(__file__).resolve().parents[1]


def export_graph(model, output: Path, **kw) -> Path:
    kw.setdefault("steps", STEPS)
    kw.setdefault("spontaneous_steps", SPONT)
    export(model, output, format="onnx", **kw)
    return output


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(r2_cifar):
    return r2_cifar


@pytest.fixture(scope="module")
def graphs(exported_onnx):
    """One exported graph per kind (R2, 32 px, cifar10 preset); read-only."""
    return exported_onnx


def _x(batch=2, seed=1, channels=3):
    return np.random.default_rng(seed).standard_normal((batch, channels, SIZE, SIZE)).astype(np.float32)


def _ref(model, x, **kw):
    with torch.no_grad():
        out = model.run(torch.from_numpy(x), **kw)
    if isinstance(out, torch.Tensor):
        return out.numpy()
    logits, rates = out
    return logits.numpy(), {a: r.numpy() for a, r in rates.items()}


# -------------------------------------------------------------------------------- Session
def test_session_unrolled_matches_model(model, graphs):
    s = Session(graphs["unrolled"], providers="cpu")
    assert s.providers == ["CPUExecutionProvider"]
    assert s.info.graph == "unrolled" and s.info.steps == STEPS and s.info.spontaneous_steps == SPONT
    assert s.config.depth == 2 and s.class_names == list(PRESETS["cifar10"].class_names)
    x = _x()
    logits = s.run(x)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _ref(model, x), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(s.run(x[0]), logits[:1], atol=1e-5)  # a single CHW image


def test_session_bound_buffers_path(model, graphs):
    # The fixed-buffer IO-binding path (what cuda_graph=True uses on a GPU), run here with CPU OrtValues.
    s = Session(graphs["all"], providers="cpu", io_binding=True)
    outs = []
    for batch, seed in ((2, 1), (3, 2), (2, 3)):  # batch 2 again: its buffers are reused
        x = _x(batch=batch, seed=seed)
        out = s.run_outputs(x)
        ref_logits, ref_rates = _ref(model, x, readout="all", record=[1])
        np.testing.assert_allclose(out["logits"], ref_logits, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(out["rates_1"], ref_rates[1], atol=1e-4, rtol=1e-4)
        outs.append(out)
    # What a call returned is the caller's: the next call on the same buffers does not change it.
    np.testing.assert_allclose(outs[0]["logits"], _ref(model, _x(batch=2, seed=1), readout="all", record=[1])[0],
                               atol=1e-4, rtol=1e-4)


def test_session_readout_all_and_rates(model, graphs):
    s = Session(graphs["all"], providers="cpu")
    x = _x(batch=3)
    out = s.run_outputs(x)
    ref_logits, ref_rates = _ref(model, x, readout="all", record=[1])
    assert out["logits"].shape == (STEPS, 3, 10) and out["rates_1"].shape == (STEPS, 3, 64, 8, 8)
    np.testing.assert_allclose(out["logits"], ref_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["rates_1"], ref_rates[1], atol=1e-4, rtol=1e-4)
    p = s.predict(x, top_k=3)  # predicts from the last step
    np.testing.assert_array_equal(p.indices, np.argsort(-ref_logits[-1], axis=1)[:, :3])


def test_session_loop_any_steps(model, graphs):
    s = Session(graphs["loop"], providers="cpu")
    x = _x()
    np.testing.assert_allclose(s.run(x), _ref(model, x), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(s.run(x, steps=7), _ref(model, x, steps=7), atol=1e-4, rtol=1e-4)


def test_predict_indices_names_probabilities(model, graphs):
    s = Session(graphs["unrolled"], providers="cpu")
    x = _x(batch=3)
    p = s.predict(x, top_k=4)
    ref = _ref(model, x)
    np.testing.assert_array_equal(p.indices, np.argsort(-ref, axis=1)[:, :4])
    assert p.probabilities.shape == (3, 4) and np.all(np.diff(p.probabilities, axis=1) <= 0)
    full = s.predict(x, top_k=10).probabilities
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-5)
    names = PRESETS["cifar10"].class_names
    assert p.names == [[names[i] for i in row] for row in p.indices]
    assert s.predict(x, top_k=50).indices.shape == (3, 10)  # clamped to the number of classes
    with pytest.raises(ValueError, match="top_k"):
        s.predict(x, top_k=0)


def test_session_accepts_raw_images(model, graphs, tmp_path):
    from PIL import Image

    s = Session(graphs["unrolled"], providers="cpu")
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    pre = Preprocessor.from_preset(get_preset("cifar10"), SIZE)
    expected = s.run(pre(img)[None])
    for form in (img, [img], Image.fromarray(img), str(tmp_path / "a.png"), tmp_path / "a.png", img[None]):
        np.testing.assert_allclose(s.run(form), expected, atol=1e-6)
    assert s.run([img, img[:, ::-1].copy()]).shape == (2, 10)


# ---------------------------------------------------------------------------- StepSession
@pytest.mark.parametrize("kind", ["stepwise", "stepwise-drive"])
def test_stepsession_video_equals_model_run(model, graphs, kind):
    s = StepSession(graphs[kind], providers="cpu")
    video = np.random.default_rng(5).standard_normal((2, 5, 3, SIZE, SIZE)).astype(np.float32)
    ref_all = _ref(model, video, readout="all")  # (5, 2, 10): frame t drives step t
    s.reset(batch=2)
    for t in range(5):
        logits = s.step(video[:, t])
        np.testing.assert_allclose(logits, ref_all[t], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(s.run_video(video, readout="all"), ref_all, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(s.run_video([video[:, t] for t in range(5)]), ref_all[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["stepwise", "stepwise-drive"])
def test_stepsession_protocol_and_state(model, graphs, kind):
    s = StepSession(graphs[kind], providers="cpu")
    assert s.providers == ["CPUExecutionProvider"]
    x = _x(batch=3, seed=7)
    # reset() gives the spontaneous state of the metadata (= the model's).
    s.reset(batch=3)
    spont = [r.numpy() for r in model.spontaneous_state(3, steps=SPONT)]
    for got, want in zip(s.state, spont):
        np.testing.assert_allclose(got, want, atol=1e-6)
    # The whole protocol (one image, STEPS steps), and steps without a new image keep showing it.
    np.testing.assert_allclose(s.run(x), _ref(model, x), atol=1e-4, rtol=1e-4)
    s.reset(3)
    s.step(x)
    for _ in range(STEPS - 2):
        s.step()
    np.testing.assert_allclose(s.step(), _ref(model, x), atol=1e-4, rtol=1e-4)
    assert s.steps_taken == STEPS
    # Blank steps after reset continue the spontaneous phase.
    s.reset(1)
    s.step()
    want = [r.numpy() for r in model.spontaneous_state(1, steps=SPONT + 1)]
    for got, w in zip(s.state, want):
        np.testing.assert_allclose(got, w, atol=1e-5)
    # Setting the state, then stepping, equals the model's step from that state.
    rng = np.random.default_rng(2)
    new = [rng.random((2, *shape), dtype=np.float32) for shape in model.config.state_shapes]
    s.state = new
    assert s.batch == 2
    for got, w in zip(s.state, new):
        np.testing.assert_array_equal(got, w)
    xs = _x(batch=2, seed=9)
    logits = s.step(xs)
    with torch.no_grad():
        nxt = model.step(tuple(torch.from_numpy(a) for a in new), model.drive(torch.from_numpy(xs)))
        ref_logits = model.readout(nxt).numpy()
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    for got, w in zip(s.state, nxt):
        np.testing.assert_allclose(got, w.numpy(), atol=1e-5)


def test_float16_and_static_batch_graphs(model, tmp_path):
    x = _x(batch=2, seed=4)
    ref = _ref(model, x)
    for kind in ("unrolled", "stepwise", "stepwise-drive"):
        path = export_graph(model, tmp_path / f"{kind}.f16.onnx", graph=kind, dtype="float16",
                            verify_images=np.random.default_rng(0).standard_normal((100, 3, 32, 32), np.float32))
        s = (StepSession if kind.startswith("stepwise") else Session)(path, providers="cpu")
        assert s.info.dtype == "float16" and s.preprocess(x).dtype == np.float16
        out = s.run(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=5e-3, rtol=5e-2)
        np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
    path = export_graph(model, tmp_path / "static.onnx", graph="stepwise", batch=2)
    s = StepSession(path, providers="cpu")
    assert s.batch == 2 and s.info.batch == 2
    np.testing.assert_allclose(s.run(x), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="fixed batch of 2, got batch 1"):
        s.reset(1)


def test_grayscale_model_predicts_from_rgb_and_gray_files(tmp_path, r2_factory):
    from PIL import Image

    m = r2_factory(dataset="mnist", channels=1)
    path = export_graph(m, tmp_path / "mnist.onnx", graph="unrolled")
    s = Session(path, providers="cpu")
    rgb = np.random.default_rng(8).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    x = s.preprocess([str(tmp_path / "rgb.png"), gray])
    assert x.shape == (2, 1, SIZE, SIZE)
    np.testing.assert_array_equal(x[0], x[1])  # an RGB image is converted to L like the dataset images
    np.testing.assert_allclose(s.run(x), _ref(m, x), atol=1e-4, rtol=1e-4)


def test_stepsession_state_errors(graphs):
    s = StepSession(graphs["stepwise"], providers="cpu")
    good = s.state
    with pytest.raises(ValueError, match=r"state\[1\]: expected shape \(1, 64, 8, 8\), got \(1, 64, 4, 4\)"):
        s.state = [good[0], np.zeros((1, 64, 4, 4), np.float32)]
    with pytest.raises(ValueError, match="expected 2 arrays"):
        s.state = good[:1]
    with pytest.raises(TypeError, match="state"):
        s.state = np.zeros(3)
    with pytest.raises(ValueError, match="finite"):
        s.state = [np.full_like(good[0], np.nan), good[1]]
    with pytest.raises(ValueError, match="expected a batch of 1"):
        s.step(_x(batch=2))
    with pytest.raises(ValueError, match="batch"):
        s.reset(0)
    with pytest.raises(ValueError, match="cuda_graph"):
        StepSession(graphs["stepwise"], providers="cpu", cuda_graph=True)


def test_graph_kind_mismatch(graphs):
    with pytest.raises(ValueError, match="use StepSession"):
        Session(graphs["stepwise"], providers="cpu")
    with pytest.raises(ValueError, match="use Session"):
        StepSession(graphs["unrolled"], providers="cpu")
    with pytest.raises(ValueError, match="exactly 4 steps"):
        Session(graphs["unrolled"], providers="cpu").run(_x(), steps=5)


# ------------------------------------------------------------------------------ providers
CUDA_USABLE = providers_mod._unavailable_reason("CUDAExecutionProvider") is None
cpu_only = pytest.mark.skipif(CUDA_USABLE, reason="the CUDA provider is usable on this machine")


@cpu_only
def test_cuda_request_fails_clearly(graphs):
    for name in ("cuda", "tensorrt", ["CUDAExecutionProvider", "CPUExecutionProvider"]):
        with pytest.raises(ProviderError, match="cannot be used here") as exc:
            Session(graphs["unrolled"], providers=name)
        assert "CUDAExecutionProvider" in str(exc.value) or "TensorrtExecutionProvider" in str(exc.value)
    with pytest.raises(ProviderError, match="cannot be loaded|does not include"):
        StepSession(graphs["stepwise"], providers="cuda")
    with pytest.raises(ValueError, match="expected one of"):
        resolve_providers("gpu")
    with pytest.raises(ValueError, match="unknown onnxruntime provider"):
        resolve_providers(["NoSuchExecutionProvider"])


@cpu_only
def test_auto_warns_once_and_runs(model, graphs, monkeypatch):
    """A GPU build that cannot use CUDA warns once; a CPU build runs on the CPU without a word."""
    if "CUDAExecutionProvider" not in providers_mod.ort.get_available_providers():  # a CPU build here
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert Session(graphs["unrolled"]).providers == ["CPUExecutionProvider"]
        # as if it were onnxruntime-gpu on a machine without CUDA
        monkeypatch.setattr(providers_mod.ort, "get_available_providers",
                            lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
        monkeypatch.setitem(providers_mod._REASONS, "CUDAExecutionProvider", "no NVIDIA driver on this machine")
    for cls, path in ((Session, graphs["unrolled"]), (StepSession, graphs["stepwise-drive"])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = cls(path)  # providers="auto"
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == 1, [str(w.message) for w in caught]
        assert "running on the CPU" in str(runtime[0].message)
        assert s.providers == ["CPUExecutionProvider"]
        x = _x()
        np.testing.assert_allclose(s.run(x), _ref(model, x), atol=1e-4, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit CPU request does not warn
        Session(graphs["unrolled"], providers="cpu")


@cpu_only
def test_no_silent_fallback_when_provider_loads_but_session_lacks_it(graphs, monkeypatch):
    # Pretend the CUDA library loads: onnxruntime then creates a CPU-only session, which must be refused.
    monkeypatch.setitem(providers_mod._REASONS, "CUDAExecutionProvider", None)
    if "CUDAExecutionProvider" not in providers_mod.ort.get_available_providers():
        monkeypatch.setattr(providers_mod.ort, "get_available_providers",
                            lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="instead"):
        Session(graphs["unrolled"], providers="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = Session(graphs["unrolled"], providers="auto")
    assert s.providers == ["CPUExecutionProvider"]
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 1


# ------------------------------------------------------------------- TensorRT caches and warm-up
SHIPPED = Path(__file__).resolve().parent.parent / "cordsnet" / "weights" / "digits_r4-stepwise.onnx"


class _FakeGpuSession:
    """Stands in for onnxruntime.InferenceSession on a machine without TensorRT: records what it was asked."""

    made: list = []

    def __init__(self, path, sess_options=None, providers=(), provider_options=()):
        self.options = dict(zip(providers, provider_options))
        self.runs: list = []
        type(self).made.append(self)

    def get_providers(self):
        return list(self.options)

    def get_inputs(self):
        return []

    def run(self, outputs, feeds):
        self.runs.append(feeds)


def test_tensorrt_sessions_get_engine_and_timing_caches_per_graph(monkeypatch, tmp_path):
    import onnx
    import onnxruntime as ort

    from cordsnet.artifact import file_sha256
    from cordsnet.runtime.providers import CUDA, TENSORRT, create_session, resolve_providers, tensorrt_cache_options

    monkeypatch.setenv("CORDSNET_CACHE_DIR", str(tmp_path / "cache"))
    for name in (TENSORRT, CUDA):  # as if both provider libraries loaded
        monkeypatch.setitem(providers_mod._REASONS, name, None)
    monkeypatch.setattr(providers_mod.ort, "get_available_providers", lambda: [TENSORRT, CUDA, "CPUExecutionProvider"])
    monkeypatch.setattr(providers_mod.ort, "InferenceSession", _FakeGpuSession)
    monkeypatch.setattr(_FakeGpuSession, "made", [])
    other = tmp_path / "other.onnx"  # the same graph, other bytes
    proto = onnx.load(str(SHIPPED))
    proto.doc_string = "another graph"
    onnx.save(proto, str(other))

    plan = resolve_providers("tensorrt", provider_options={TENSORRT: {"trt_max_workspace_size": "1048576"}})
    for graph in (SHIPPED, other):
        session = create_session(graph, plan)
        folder = tmp_path / "cache" / "tensorrt" / file_sha256(graph) / f"onnxruntime-{ort.__version__}"
        assert session.options[TENSORRT] == {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(folder),
                                             "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(folder),
                                             "trt_max_workspace_size": "1048576"}  # the caller's option kept
        assert folder.is_dir() and session.options[CUDA] == {} and len(session.runs) == 1  # warmed up once
    assert len({s.options[TENSORRT]["trt_engine_cache_path"] for s in _FakeGpuSession.made}) == 2
    # The caller's options win; a float16 graph also builds float16 layers.
    off = create_session(SHIPPED, resolve_providers("tensorrt", provider_options={
        TENSORRT: {"trt_engine_cache_enable": "0"}}))
    assert off.options[TENSORRT]["trt_engine_cache_enable"] == "0"
    assert tensorrt_cache_options("0" * 64, "float16")["trt_fp16_enable"] == "1"
    assert "trt_fp16_enable" not in tensorrt_cache_options("0" * 64, "float32")
    with pytest.raises(ValueError, match="sha256: expected the hex sha256"):
        tensorrt_cache_options("../../elsewhere")
    # A CUDA-graph session is not warmed up here: its first run captures the graph.
    graph = create_session(SHIPPED, resolve_providers("tensorrt", provider_options={
        TENSORRT: {"trt_cuda_graph_enable": "1"}}))
    assert graph.runs == []


def test_cpu_sessions_get_no_tensorrt_options_and_no_warm_up(monkeypatch, tmp_path):
    from cordsnet.runtime.providers import CPU, create_session, resolve_providers

    monkeypatch.setenv("CORDSNET_CACHE_DIR", str(tmp_path / "cache"))
    warmed = []
    monkeypatch.setattr(providers_mod, "warm_up", warmed.append)
    plan = resolve_providers("cpu")
    session = create_session(SHIPPED, plan)
    assert session.get_providers() == [CPU] and warmed == []
    assert not any(k.startswith("trt_") for o in session.get_provider_options().values() for k in o)
    assert not (tmp_path / "cache").exists()
    assert StepSession(SHIPPED, providers="cpu").providers == [CPU] and warmed == []


def test_warm_up_runs_every_graph_kind_on_zero_inputs(graphs, caplog):
    from cordsnet.runtime.providers import warm_up

    for kind, path in graphs.items():
        cls = StepSession if kind.startswith("stepwise") else Session
        session = cls(path, providers="cpu").onnx_session
        with caplog.at_level("WARNING", logger="cordsnet.runtime"):
            warm_up(session)
        assert not caplog.records, (kind, caplog.text)


# ----------------------------------------------------------------------------- bad input
def test_bad_images(graphs):
    s = Session(graphs["unrolled"], providers="cpu")
    with pytest.raises(ValueError, match=r"expected 3 channel\(s\) at dim 1, got 1"):
        s.run(np.zeros((1, 1, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="expected 32x32 images, got 16x16"):
        s.run(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"expected shape \(B, 3, 32, 32\)"):
        s.run(np.zeros((3, SIZE), np.float32))
    with pytest.raises(TypeError, match="dtype int32"):
        s.run(np.zeros((1, 3, SIZE, SIZE), np.int32))
    with pytest.raises(ValueError, match="finite"):
        s.run(np.full((1, 3, SIZE, SIZE), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8 array of shape"):
        s.run(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(TypeError, match="images"):
        s.run(42)


def test_bad_model_files(graphs, tmp_path):
    import onnx
    import onnx.helper as h

    with pytest.raises(FileNotFoundError, match="no such file"):
        Session(tmp_path / "missing.onnx", providers="cpu")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(graphs["unrolled"].read_bytes()[:2000])
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad in (truncated, text, empty):
        with pytest.raises(ValueError, match="model: "):
            Session(bad, providers="cpu")
    plain = tmp_path / "plain.onnx"
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [h.make_tensor_value_info("x", 1, [1, 2])],
                     [h.make_tensor_value_info("y", 1, [1, 2])])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), str(plain))
    with pytest.raises(ValueError, match="not a cordsnet export"):
        Session(plain, providers="cpu")
    with pytest.raises(ValueError, match="directory"):
        Session(tmp_path, providers="cpu")
    drive_only = tmp_path / "lonely.onnx"
    drive_only.write_bytes(graphs["stepwise-drive"].read_bytes())
    with pytest.raises(FileNotFoundError, match="encode graph"):
        StepSession(drive_only, providers="cpu")


def test_undecodable_image(graphs, tmp_path):
    s = Session(graphs["unrolled"], providers="cpu")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="cannot decode"):
        s.run(str(bad))
    from PIL import Image

    good = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut2.png"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(cut)
    with pytest.raises(FileNotFoundError):
        s.run(str(tmp_path / "nope.png"))


def test_no_preset_refuses_raw_images(tmp_path, r2_factory):
    m = r2_factory(dataset=None)
    path = export_graph(m, tmp_path / "nopreset.onnx", graph="unrolled")
    s = Session(path, providers="cpu")
    with pytest.raises(ValueError, match="no dataset preset"):
        s.run(np.zeros((8, 8, 3), np.uint8))
    assert s.predict(_x(1), top_k=2).names[0][0].isdigit()


# ------------------------------------------------------------------------------ torch-free
def test_runtime_imports_and_runs_without_torch(graphs):
    res = run_without_torch(f"""
        import sys
        import numpy as np
        import cordsnet, cordsnet.runtime
        from cordsnet.runtime import Session, StepSession
        x = np.zeros((1, 3, 32, 32), np.float32)
        a = Session({str(graphs["unrolled"])!r}, providers="cpu").run(x)
        s = StepSession({str(graphs["stepwise-drive"])!r}, providers="cpu")
        s.reset(1)
        b = s.step(np.zeros((32, 32, 3), np.uint8))
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("OK", a.shape, b.shape)
    """, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "OK (1, 10) (1, 10)" in res.stdout


# ---------------------------------------------------------------------------- preprocessing
# (the pipeline itself is tested in tests/test_preprocess.py)


def test_preprocessing_of_files_and_metadata_preset(graphs, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[1]
    Image.fromarray(photo).save(tmp_path / "flower.png")
    s = Session(graphs["unrolled"], providers="cpu")
    # the metadata's preset (cifar10) drives the one pipeline, proven equal to torchvision in test_preprocess.py
    np.testing.assert_array_equal(s.preprocess(str(tmp_path / "flower.png"))[0],
                                  Preprocessor.from_preset(get_preset("cifar10"), SIZE)(Image.fromarray(photo)))


# ------------------------------------------------------------------------------------ CLI
def _cli(*args):
    from typer.testing import CliRunner

    from cordsnet.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_predict(model, graphs, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)).save(paths[-1])
    res = _cli("predict", graphs["unrolled"], *paths, "--top-k", "3", "--provider", "cpu", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["providers"] == ["CPUExecutionProvider"] and len(data["predictions"]) == 2
    expected = Session(graphs["unrolled"], providers="cpu").predict([str(p) for p in paths], top_k=3)
    for pred, idx in zip(data["predictions"], expected.indices):
        assert [t["index"] for t in pred["top"]] == idx.tolist()
    res = _cli("predict", graphs["stepwise"], paths[0], "--provider", "cpu")
    assert res.exit_code == 0, res.output
    assert "1. " in res.output and str(paths[0]) in res.output
    # A static-batch graph (batch 2) with 3 images: chunks, the last one padded.
    static = export_graph(model, tmp_path / "static2.onnx", graph="unrolled", batch=2)
    paths.append(tmp_path / "img2.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(paths[-1])
    res = _cli("predict", static, *paths, "--top-k", "2", "--provider", "cpu", "--json")
    assert res.exit_code == 0, res.output
    got = [[t["index"] for t in p["top"]] for p in json.loads(res.output)["predictions"]]
    want = Session(graphs["unrolled"], providers="cpu").predict([str(p) for p in paths], top_k=2).indices
    assert got == want.tolist()


def test_cli_errors_are_one_line(graphs, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    cases = [
        ("predict", tmp_path / "missing.onnx", bad),
        ("predict", graphs["unrolled"], bad, "--provider", "cpu"),
        *([("predict", graphs["unrolled"], bad, "--provider", "cuda")] if not CUDA_USABLE else []),
        ("bench", tmp_path / "missing.onnx"),
        ("bench", graphs["unrolled"], "--provider", "cpu", "--cuda-graph"),
        ("verify", tmp_path / "missing.onnx"),
    ]
    for args in cases:
        res = _cli(*args)
        assert res.exit_code == 1, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, res.output)


@pytest.mark.parametrize("kind", ["unrolled", "stepwise-drive"])
def test_cli_bench_json(graphs, kind):
    res = _cli("bench", graphs[kind], "--provider", "cpu", "--batch", "2", "--warmup", "1", "--iterations", "2",
               "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["graph"] == kind and data["batch"] == 2 and data["steps"] == STEPS
    for key in ("per_image_ms", "per_step_ms", "per_batch_ms"):
        assert 0 < data[key]["p50"] <= data[key]["p99"]
    assert data["images_per_s"] > 0 and data["providers"] == ["CPUExecutionProvider"]
    res = _cli("bench", graphs[kind], "--provider", "cpu", "--iterations", "1", "--warmup", "0")
    assert res.exit_code == 0 and "per step" in res.output


def test_cli_verify(model, graphs, tmp_path, r2_factory):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(model, ckpt)
    res = _cli("verify", graphs["stepwise"], "--checkpoint", ckpt, "--provider", "cpu")
    assert res.exit_code == 0, res.output
    other = tmp_path / "other.safetensors"
    save_checkpoint(r2_factory(seed=5), other)
    res = _cli("verify", graphs["unrolled"], "--checkpoint", other, "--provider", "cpu")
    assert res.exit_code == 1 and res.output.startswith("Error: ")


def test_stepwise_drive_with_another_suffix_finds_its_encode_graph(model, tmp_path):
    path = export_graph(model, tmp_path / "r2-drive.bin", graph="stepwise-drive")
    assert (tmp_path / "r2-drive.encode.bin").exists()
    session = StepSession(path, providers="cpu")
    x = _x()
    session.reset(2)
    for _ in range(3):
        logits = session.step(x)
    state = model.spontaneous_state(2)
    terms = model.drive_terms(model.drive(torch.from_numpy(x)))
    with torch.no_grad():
        for _ in range(3):
            state = model.step(state, terms)
        expected = model.readout(state).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


# --------------------------------------------------------------------- static batch: any count
@pytest.mark.parametrize("kind", ["unrolled", "stepwise", "stepwise-drive"])
def test_static_batch_graphs_take_any_number_of_images(model, graphs, tmp_path, kind):
    path = export_graph(model, tmp_path / f"b2-{kind}.onnx", graph=kind, batch=2, verify=False)
    static = (StepSession if kind.startswith("stepwise") else Session)(path, providers="cpu")
    dynamic = (StepSession if kind.startswith("stepwise") else Session)(graphs[kind], providers="cpu")
    for n in (1, 2, 3, 5):
        x = _x(batch=n, seed=n)
        got = static.run(x)
        assert got.shape == (n, 10)
        # Padding never leaks into results. Both are float32 onnxruntime runs of the same graph at other batch
        # sizes: kernels may block differently, so allow float32 rounding (logits are O(1)), not exact equality.
        np.testing.assert_allclose(got, dynamic.run(x), atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(static.predict(x, top_k=3).indices, dynamic.predict(x, top_k=3).indices)
    if kind == "unrolled":  # time-major outputs are split and joined on their batch axis (dim 1)
        path = export_graph(model, tmp_path / "b2-all.onnx", graph="unrolled", batch=2, readout="all", record=[0])
        out = Session(path, providers="cpu").run_outputs(_x(batch=3))
        ref_logits, ref_rates = _ref(model, _x(batch=3), readout="all", record=[0])
        assert out["logits"].shape == (STEPS, 3, 10) and out["rates_0"].shape == (STEPS, 3, 64, 8, 8)
        np.testing.assert_allclose(out["rates_0"], ref_rates[0], atol=1e-4, rtol=1e-4)


# -------------------------------------------------------------- non-finite inputs and outputs
def test_non_finite_outputs_are_an_error_never_a_ranking(model, graphs, tmp_path):
    huge = np.full((2, 3, SIZE, SIZE), 3e38, np.float32)  # finite, but the first convolution overflows
    for kind in ("unrolled", "loop"):
        s = Session(graphs[kind], providers="cpu")
        with pytest.raises(ValueError, match="logits: the graph produced NaN or infinite values"):
            s.predict(huge)
        with pytest.raises(ValueError, match="NaN or infinite"):
            s.run_outputs(-huge)
    for kind in ("stepwise", "stepwise-drive"):
        s = StepSession(graphs[kind], providers="cpu")
        with pytest.raises(ValueError, match="NaN or infinite"):
            s.predict(huge)
        s.reset(2)
        with pytest.raises(ValueError, match="NaN or infinite"):
            s.step(huge)
        s.step(fetch=False)  # the state is now NaN: the next fetched logits are refused too
        with pytest.raises(ValueError, match="NaN or infinite"):
            s.step()
        s.reset(2)  # reset recovers
        assert np.isfinite(s.step(_x())).all()
    # A float16 graph: values finite in float32 that overflow float16 are refused before running.
    path = export_graph(model, tmp_path / "h.onnx", graph="unrolled", dtype="float16", verify=False)
    with pytest.raises(ValueError, match="overflow the graph's float16 input"):
        Session(path, providers="cpu").run(np.full((1, 3, SIZE, SIZE), 1e5, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="expected finite pixel values"):
            Session(graphs["unrolled"], providers="cpu").predict(np.full((1, 3, SIZE, SIZE), bad, np.float32))


def test_steps_are_bounded(graphs):
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, 10000\], got 1000000000"):
        Session(graphs["loop"], providers="cpu").run(_x(), steps=10**9)
    with pytest.raises(ValueError, match="steps: expected an int in"):
        StepSession(graphs["stepwise"], providers="cpu").run(_x(), steps=0)
    with pytest.raises(ValueError, match="io_binding"):
        Session(graphs["loop"], providers="cpu", io_binding=True)




# ---------------------------------------------------------------------------- threads
def test_one_stepsession_from_several_threads(model, graphs):
    from concurrent.futures import ThreadPoolExecutor

    for kind in ("stepwise", "stepwise-drive"):
        s = StepSession(graphs[kind], providers="cpu")
        inputs = [_x(batch=1 + k % 3, seed=k) for k in range(12)]
        want = [_ref(model, x) for x in inputs]
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(lambda x: s.run(x, steps=STEPS), inputs))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


def test_one_session_with_io_binding_from_several_threads(model, graphs):
    from concurrent.futures import ThreadPoolExecutor

    s = Session(graphs["unrolled"], providers="cpu", io_binding=True)
    inputs = [_x(batch=2, seed=k) for k in range(12)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(s.run, inputs))
    for x, g in zip(inputs, got):
        np.testing.assert_allclose(g, _ref(model, x), atol=1e-4, rtol=1e-4)


def test_metadata_is_read_without_an_onnxruntime_session(graphs, monkeypatch):
    """open_session reads the kind from the file; the only onnxruntime session is the one it returns."""
    import onnxruntime

    created = []
    real = onnxruntime.InferenceSession

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **k):
            created.append(a[0] if a else k.get("path_or_bytes"))
            super().__init__(*a, **k)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Counting)
    info = read_info(graphs["unrolled"], "onnx")
    assert info.graph == "unrolled" and created == []
    open_session(graphs["unrolled"], providers="cpu")
    assert len(created) == 1


def test_open_session_names_another_formats_artifact_and_a_checkpoint(graphs, tmp_path):
    """predict/bench go through open_session: a .pte/.pt/.pt2 is named as what it is (not "not a readable
    ONNX file"), and a checkpoint gets the hint to export it first."""
    import shutil

    from cordsnet.artifact import FORMATS

    for fmt in ("executorch", "torchscript", "exported-program"):
        p = tmp_path / f"m{FORMATS[fmt].suffix}"
        shutil.copy(graphs["stepwise"], p)  # the suffix decides; the bytes are never read
        with pytest.raises(ValueError, match=rf"is a '{fmt}' artifact .*run ONNX graphs"):
            open_session(p, providers="cpu")
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"\x08\x00" * 64)
    with pytest.raises(ValueError, match="a checkpoint\\? export it first"):
        open_session(ckpt, providers="cpu")
    odd = tmp_path / "graph.bin"  # an ONNX graph under another suffix still opens, as before
    shutil.copy(graphs["stepwise"], odd)
    assert open_session(odd, providers="cpu").info.graph == "stepwise"


def test_cli_refuses_lying_metadata_and_bad_tolerances_in_one_line(model, graphs, tmp_path):
    import onnx

    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(model, ckpt)
    proto = onnx.load(str(graphs["loop"]))
    for p in proto.metadata_props:
        if p.key == "cordsnet.steps":
            p.value = "1000000000"  # would keep the loop running for hours
    lying = tmp_path / "lying.onnx"
    onnx.save(proto, str(lying))
    img = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    for args, match in [(("predict", lying, img, "--provider", "cpu"), "steps"), (("info", lying), "steps"),
                        (("verify", lying, "--checkpoint", ckpt), "steps"),
                        (("verify", graphs["unrolled"], "--checkpoint", ckpt, "--atol", "-1", "--provider", "cpu"),
                         "atol")]:
        res = _cli(*args)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (args, res.output)
        assert match in lines[0], (args, res.output)


def test_openvino_backend_without_openvino_says_how_to_install(graphs, monkeypatch):
    """Runs everywhere: with openvino unimportable, backend="openvino" is one clear error, never a fallback."""
    from cordsnet.runtime import openvino_backend

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setattr(openvino_backend, "_CORE", None)
    with pytest.raises(ProviderError, match=r"pip install 'cordsnet\[openvino\]'"):
        StepSession(graphs["stepwise"], backend="openvino")


def test_step_session_counts_the_steps_of_a_multistep_graph(r2_cifar, tmp_path):
    """A multistep graph advances K Euler steps per call: run(steps) makes steps / K calls, steps_taken
    counts Euler steps, and run_until stops at call boundaries (multiples of K)."""
    import torch

    from cordsnet.export import export
    from cordsnet.runtime import StepSession

    path = tmp_path / "r2.multistep.onnx"
    export(r2_cifar, path, graph="multistep", steps=4, spontaneous_steps=3, steps_per_call=2)
    s = StepSession(path, providers="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = s.run(x, steps=4)
    assert s.steps_taken == 4
    with torch.no_grad():
        want = r2_cifar.run(torch.from_numpy(x), steps=4, spontaneous_steps=3).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)  # float32 graph vs float32 model
    with pytest.raises(ValueError, match="advances 2 steps per call"):
        s.run(x, steps=3)
    with pytest.raises(ValueError, match="one frame per step"):
        s.run_video(np.stack([x, x], axis=1))
    out = s.run_until(x, 0.99, max_steps=4)
    assert set(out.steps.tolist()) <= {2, 4}
    assert s.baseline_logits(4).shape == (2, 10)  # one row per call
