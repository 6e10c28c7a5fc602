"""Export: every graph kind x format, verification, metadata, the client manifest, atomic writes, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from cordsnet.checkpoint import load_checkpoint, save_checkpoint
from cordsnet._io import file_sha256
from cordsnet.artifact import manifest_path, read_manifest
from cordsnet.export import (
    ArtifactInfo,
    VerificationError,
    decode_spontaneous_state,
    describe_artifact,
    encode_path,
    export,
    read_info,
    read_metadata,
    verify_artifact,
)

STEPS, SPONT = 4, 3
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
GRAPHS = ("unrolled", "loop", "stepwise", "stepwise-drive")


@pytest.fixture(scope="module")
def models(state_dict_factory):
    return {d: load_checkpoint(state_dict_factory(depth=d, seed=d)) for d in (2, 4)}


@pytest.fixture(scope="module")
def r2(models):
    return models[2]


def _images(batch: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def _run(model, images: np.ndarray, **kw):
    with torch.no_grad():
        return model.run(torch.from_numpy(images), spontaneous_steps=kw.pop("spontaneous_steps", SPONT), **kw)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ every graph kind x format
@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_graph_kind_x_format_verifies(models, tmp_path, depth, fmt, graph):
    model = models[depth]
    out = tmp_path / f"m{SUFFIX[fmt]}"
    report = export(model, out, format=fmt, graph=graph, steps=STEPS, spontaneous_steps=SPONT)
    v = report.verification
    assert v.passed and v.max_abs <= 1e-4 and v.top1_agreement == 1.0
    assert v.steps == STEPS and v.batch == 3
    files = sorted(p.name for p in tmp_path.iterdir())
    expected = ["m" + SUFFIX[fmt], f"m{SUFFIX[fmt]}.cordsnet.json"] + \
        (["m.encode" + SUFFIX[fmt]] if graph == "stepwise-drive" else [])
    assert files == sorted(expected)  # the artifact, its companion and manifest; no temporary files left behind
    assert sorted(p.name for p in report.files) == sorted(expected)
    meta = read_info(out).to_dict()
    assert meta["graph"] == graph and meta["steps"] == STEPS and meta["config"]["depth"] == depth
    if fmt == "onnx":
        for f in [f for f in report.files if f.suffix == ".onnx"]:
            onnx.checker.check_model(str(f), full_check=True)
            proto = onnx.load(str(f))
            assert proto.ir_version <= 10
            names = [i.name for i in proto.graph.input]
            want = {"unrolled": ["image"], "loop": ["image", "steps"],
                    "stepwise": ["image", *[f"state_{i}" for i in range(depth)]],
                    "stepwise-drive": ["skip", "ff0", *[f"state_{i}" for i in range(depth)]]}[graph]
            assert names == (["image"] if f.name.endswith(".encode.onnx") else want)
        if graph == "loop":
            assert any(n.op_type == "Loop" for n in onnx.load(str(out)).graph.node)


def test_loop_graph_takes_the_step_count(r2, tmp_path):
    """The loop graphs really loop: other step counts than the exported one match model.run."""
    images = _images(2)
    out = tmp_path / "loop.onnx"
    export(r2, out, graph="loop", steps=STEPS, spontaneous_steps=SPONT)
    logits = _session(out).run(["logits"], {"image": images, "steps": np.array(7, dtype=np.int64)})[0]
    np.testing.assert_allclose(logits, _run(r2, images, steps=7).numpy(), atol=1e-5, rtol=1e-4)
    ts = tmp_path / "loop.pt"
    export(r2, ts, format="torchscript", graph="loop", steps=STEPS, spontaneous_steps=SPONT)
    assert verify_artifact(ts, r2, steps=9).passed
    from cordsnet.export.torchscript import load

    got = load(ts)(torch.from_numpy(images), torch.tensor(6))
    np.testing.assert_allclose(got.numpy(), _run(r2, images, steps=6).numpy(), atol=1e-5, rtol=1e-4)
    pt2 = tmp_path / "loop.pt2"
    export(r2, pt2, format="exported-program", graph="loop", steps=STEPS, spontaneous_steps=SPONT, verify=False)
    assert verify_artifact(pt2, r2, steps=9, batch=1).passed


# ------------------------------------------------------------------------------ dynamic batch
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_dynamic_batch(r2, tmp_path, fmt):
    out = tmp_path / f"u{SUFFIX[fmt]}"
    export(r2, out, format=fmt, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT, verify=False)
    for batch in (1, 5):
        report = verify_artifact(out, r2, batch=batch)
        assert report.passed and report.batch == batch
    if fmt == "onnx":
        sess = _session(out)
        assert sess.get_inputs()[0].shape[0] == "batch"
        for batch in (1, 5):
            images = _images(batch)
            np.testing.assert_allclose(sess.run(None, {"image": images})[0], _run(r2, images, steps=STEPS).numpy(),
                                       atol=1e-4, rtol=1e-3)


def test_fixed_batch(r2, tmp_path):
    out = tmp_path / "b2.onnx"
    report = export(r2, out, graph="stepwise", steps=2, spontaneous_steps=SPONT, batch=2)
    assert report.verification.batch == 2
    assert _session(out).get_inputs()[0].shape == [2, 3, 32, 32]
    assert read_metadata(out)["cordsnet.batch"] == "2"


# ------------------------------------------------------------------ readout all, record, alpha
@pytest.mark.parametrize("graph", ["unrolled", "loop"])
def test_readout_all_and_record(r2, tmp_path, graph):
    out = tmp_path / f"{graph}.onnx"
    export(r2, out, graph=graph, steps=STEPS, spontaneous_steps=SPONT, readout="all", record=[1, 0])
    images = _images(2)
    feeds = {"image": images}
    if graph == "loop":
        feeds["steps"] = np.array(STEPS, dtype=np.int64)
    sess = _session(out)
    assert [o.name for o in sess.get_outputs()] == ["logits", "rates_1", "rates_0"]
    logits, r1, r0 = sess.run(None, feeds)
    want_logits, want_rates = _run(r2, images, steps=STEPS, readout="all", record=[1, 0])
    assert logits.shape == (STEPS, 2, 10) and r1.shape == (STEPS, 2, 64, 8, 8)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(r1, want_rates[1].numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(r0, want_rates[0].numpy(), atol=1e-4, rtol=1e-3)


def test_alpha_override(r2, tmp_path):
    out = tmp_path / "a.onnx"
    export(r2, out, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT, alpha=0.5)
    assert read_info(out).to_dict()["alpha"] == 0.5
    images = _images(2)
    got = _session(out).run(None, {"image": images})[0]
    np.testing.assert_allclose(got, _run(r2, images, steps=STEPS, alpha=0.5).numpy(), atol=1e-4, rtol=1e-3)
    assert not np.allclose(got, _run(r2, images, steps=STEPS).numpy(), atol=1e-3)
    spont = decode_spontaneous_state(read_metadata(out))
    want = r2.spontaneous_state(1, steps=SPONT, alpha=0.5)
    np.testing.assert_allclose(spont[0], want[0].detach().numpy(), atol=1e-7)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_float16(models, tmp_path, fmt):
    model = models[4]
    out = tmp_path / f"h{SUFFIX[fmt]}"
    report = export(model, out, format=fmt, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT, dtype="float16",
                    verify_images=_images(100))
    v = report.verification
    assert v.passed and v.top1_agreement >= 0.99 and v.dtype == "float16"
    assert 0 < v.max_abs < 0.05  # the differences are measured and reported
    meta = read_metadata(out)
    assert meta["cordsnet.dtype"] == "float16"
    assert decode_spontaneous_state(meta)[0].dtype == np.float16
    if fmt == "onnx":
        assert _session(out).get_inputs()[0].type == "tensor(float16)"


# --------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_metadata_round_trip(r2, tmp_path, fmt):
    out = tmp_path / f"s{SUFFIX[fmt]}"
    export(r2, out, format=fmt, graph="stepwise", steps=2, spontaneous_steps=SPONT, checkpoint_sha256="ab" * 32)
    meta = read_metadata(out)
    required = ["format_version", "graph", "config", "steps", "spontaneous_steps", "alpha", "readout", "record",
                "dtype", "batch", "preset", "version", "checkpoint_sha256", "spontaneous_state"]
    assert all(isinstance(meta[f"cordsnet.{k}"], str) for k in required)
    info = ArtifactInfo.from_metadata(meta).to_dict()
    assert info["config"] == r2.config.to_dict()
    assert info["preset"] == r2.config.preset.to_dict()
    assert (info["steps"], info["spontaneous_steps"], info["alpha"]) == (2, SPONT, 0.2)
    assert (info["readout"], info["record"], info["dtype"], info["batch"]) == ("last", [], "float32", None)
    assert info["checkpoint_sha256"] == "ab" * 32 and info["version"]
    spont = decode_spontaneous_state(meta)
    want = r2.spontaneous_state(1, steps=SPONT)
    assert [s.shape for s in spont] == [(1, 64, 8, 8), (1, 64, 8, 8)]
    for got, ref in zip(spont, want):
        np.testing.assert_array_equal(got, ref.detach().numpy())
    assert np.abs(spont[0]).max() > 0  # the spontaneous phase did work (non-zero biases)
    desc = describe_artifact(out)
    assert desc["graph"] == "stepwise" and desc["spontaneous_state"][1]["shape"] == [1, 64, 8, 8]


def test_zero_spontaneous_steps_give_zero_state(r2, tmp_path):
    out = tmp_path / "z.onnx"
    export(r2, out, graph="stepwise", steps=2, spontaneous_steps=0)
    assert all(not s.any() for s in decode_spontaneous_state(read_metadata(out)))


def test_import_is_torch_free():
    code = ("import sys, cordsnet.export, cordsnet.artifact; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------- numpy-only stepwise application
def _numpy_stepwise(path: Path, images: np.ndarray, steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """What an application with only numpy and onnxruntime does (docs/export.md)."""
    sess = _session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    state = [np.repeat(s, images.shape[0], axis=0) for s in decode_spontaneous_state(meta)]
    drive = {"image": images}
    if meta["cordsnet.graph"] == "stepwise-drive":
        skip, ff0 = _session(encode_path(path)).run(["skip", "ff0"], {"image": images})
        drive = {"skip": skip, "ff0": ff0}
    names = [o.name for o in sess.get_outputs()]
    for _ in range(steps):
        out = dict(zip(names, sess.run(None, {**drive, **{f"state_{i}": s for i, s in enumerate(state)}})))
        state = [out[f"next_state_{i}"] for i in range(len(state))]
    return out["logits"], state


@pytest.mark.parametrize("graph", ["stepwise", "stepwise-drive"])
def test_numpy_stepwise_loop_equals_unrolled(models, tmp_path, graph):
    model = models[4]
    unrolled = tmp_path / "u.onnx"
    export(model, unrolled, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT, record=[3], verify=False)
    step = tmp_path / f"{graph}.onnx"
    export(model, step, graph=graph, steps=STEPS, spontaneous_steps=SPONT, verify=False)
    images = _images(3)
    want_logits, want_rates = _session(unrolled).run(None, {"image": images})
    logits, state = _numpy_stepwise(step, images, STEPS)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(state[3], want_rates[-1], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ verification catches faults
def test_verification_catches_a_corrupted_graph(r2, tmp_path):
    out = tmp_path / "c.onnx"
    export(r2, out, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT)
    proto = onnx.load(str(out))
    init = next(t for t in proto.graph.initializer if t.name.endswith("area_conv_1"))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr[0, 0, 1, 1] += 0.05  # one weight, slightly off
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(out))
    with pytest.raises(ValueError, match="belongs to another artifact"):  # the manifest no longer matches
        verify_artifact(out, r2)
    manifest_path(out).unlink()
    with pytest.raises(VerificationError, match="verification failed") as err:
        verify_artifact(out, r2)
    assert not err.value.report.passed and err.value.report.max_abs > 1e-4


def test_verification_catches_wrong_metadata(r2, tmp_path):
    out = tmp_path / "m.onnx"
    export(r2, out, graph="stepwise", steps=STEPS, spontaneous_steps=SPONT)
    proto = onnx.load(str(out))
    for p in proto.metadata_props:
        if p.key == "cordsnet.spontaneous_steps":
            p.value = str(SPONT + 5)  # the baked-in state no longer matches what the metadata claims
    onnx.save(proto, str(out))
    manifest_path(out).unlink()
    with pytest.raises(VerificationError):
        verify_artifact(out, r2)


def test_failed_verification_leaves_no_file_and_keeps_the_old_one(r2, tmp_path, monkeypatch):
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"old model")
    import cordsnet.export.api as api

    real = api.build_metadata

    def lying_metadata(*args, **kwargs):
        meta = real(*args, **kwargs)
        meta["cordsnet.alpha"] = "0.5"  # the graph bakes in 0.2
        return meta

    monkeypatch.setattr(api, "build_metadata", lying_metadata)
    with pytest.raises(VerificationError):
        export(r2, out, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT)
    assert out.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]  # no manifest, no temporaries


@pytest.mark.parametrize("fmt, target", [("onnx", "cordsnet.export.onnx.save"),
                                         ("torchscript", "torch.jit.save")])
def test_interrupted_export_keeps_the_old_file(r2, tmp_path, monkeypatch, fmt, target):
    out = tmp_path / f"keep{SUFFIX[fmt]}"
    out.write_bytes(b"old model")
    module_name, attr = target.rsplit(".", 1)
    module = sys.modules[module_name] if module_name in sys.modules else __import__(module_name, fromlist=[attr])
    real = getattr(module, attr)

    def half_write(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # a torn file ...
        raise KeyboardInterrupt  # ... and the process interrupted mid-export

    monkeypatch.setattr(module, attr, half_write)
    with pytest.raises(KeyboardInterrupt):
        export(r2, out, format=fmt, graph="stepwise", steps=2, spontaneous_steps=SPONT)
    assert out.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_external_data_for_large_models(r2, tmp_path, monkeypatch):
    import cordsnet.export.onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_THRESHOLD", 0)  # pretend the model is over 2 GB
    out = tmp_path / "big.onnx"
    report = export(r2, out, graph="loop", steps=STEPS, spontaneous_steps=SPONT)
    assert report.verification.passed
    assert (tmp_path / "big.onnx.data").is_file() and out.stat().st_size < 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.cordsnet.json", "big.onnx.data"]
    data = {c["role"]: c for c in read_manifest(out).companions}["external-data"]
    assert data["file"] == "big.onnx.data" and data["sha256"] == file_sha256(tmp_path / "big.onnx.data")


# --------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, match", [
    ({"graph": "rolled"}, r"graph: expected one of \['unrolled', 'loop', 'stepwise', 'stepwise-drive', 'multistep'\]"),
    ({"format": "tflite"}, "format: expected one of"),
    ({"dtype": "float64"}, "dtype: expected one of"),
    ({"dtype": "int8", "format": "torchscript"}, r"dtype: a int8 graph is written in format \['onnx'\], got format 'torchscript'"),
    ({"dtype": "int8", "graph": "loop"}, "int8 export quantises graph"),
    ({"dtype": "float16"}, "verify_images: a float16 export is verified on images of the model's own preset"),
    ({"dtype": "float16", "verify_images": np.zeros((10, 3, 32, 32), np.float32)}, "expected at least 100 images"),
    ({"dtype": "float16", "verify_images": np.zeros((100, 1, 32, 32), np.float32)}, "verify_images: expected float"),
    ({"graph": "multistep"}, "steps_per_call: the multistep graph needs"),
    ({"graph": "multistep", "steps": 10, "steps_per_call": 3}, "steps_per_call: expected a divisor of steps 10"),
    ({"graph": "stepwise", "steps_per_call": 2}, "steps_per_call: only the multistep graph"),
    ({"calibration": "median"}, "calibration: expected one of"),
    ({"readout": "first"}, "readout: expected one of"),
    ({"steps": 0}, r"steps: expected an int in \[1, 10000\], got 0"),
    ({"steps": 10**9}, "longer protocols are not exported"),
    ({"spontaneous_steps": -1}, "spontaneous_steps: expected an int in"),
    ({"batch": 0}, "batch: expected an int in"),
    ({"atol": -1.0}, "atol: expected a finite number >= 0"),
    ({"rtol": float("nan")}, "rtol: expected a finite number >= 0"),
    ({"graph": "stepwise", "record": [0]}, "stepwise graph returns the whole state"),
    ({"record": [5]}, "record: expected area indices"),
    ({"format": "torchscript", "opset": 17}, "opset: only applies"),
    ({"opset": 99}, "opset: expected an int in"),
    ({"exporter": "tf"}, "exporter: expected one of"),
    ({"format": "exported-program", "graph": "loop", "readout": "all"}, "exported-program loop graph supports"),
])
def test_bad_options_are_refused(r2, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export(r2, tmp_path / "x.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, r2):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_r2.safetensors"
    save_checkpoint(r2, path)
    return path


def test_cli_export_and_info(checkpoint, tmp_path, monkeypatch):
    from cordsnet._io import file_sha256
    from cordsnet.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(checkpoint), "--format", "onnx", "--graph", "loop", "--steps", "3",
                              "--spontaneous-steps", "2", "--record", "0,1", "--readout", "all"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "tiny_r2-loop.onnx"  # the default name: <checkpoint stem>-<graph>.onnx
    assert out.is_file() and "verification passed" in res.output and "max abs diff" in res.output
    meta = read_info(out).to_dict()
    assert meta["checkpoint_sha256"] == file_sha256(checkpoint)
    assert (meta["record"], meta["readout"], meta["steps"], meta["spontaneous_steps"]) == ([0, 1], "all", 3, 2)
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["graph"] == "loop"

    res = runner.invoke(app, ["export", str(checkpoint), "--format", "torchscript", "--graph", "stepwise-drive",
                              "--steps", "2", "--spontaneous-steps", "2", "--output", "sd.pt", "--no-verify"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sd.pt").is_file() and (tmp_path / "sd.encode.pt").is_file()
    assert "skipped" in res.output


def test_cli_export_errors_exit_1(checkpoint, tmp_path, monkeypatch):
    from cordsnet.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(checkpoint), "--graph", "sideways"])
    assert res.exit_code == 1 and "sideways" in res.output
    res = runner.invoke(app, ["export", str(checkpoint), "--graph", "stepwise", "--record", "0"])
    assert res.exit_code == 1 and "Error:" in res.output
    # A graph that fails verification (its metadata claims another alpha than the graph bakes in).
    import cordsnet.export.api as api

    real = api.build_metadata
    monkeypatch.setattr(api, "build_metadata",
                        lambda *a, **k: {**real(*a, **k), "cordsnet.alpha": "0.9"})
    res = runner.invoke(app, ["export", str(checkpoint), "--steps", "2", "--output", "bad.onnx"])
    assert res.exit_code == 1 and "verification failed" in res.output
    assert list(tmp_path.iterdir()) == []


def test_cli_export_without_checkpoint_uses_the_bundled_model(tmp_path, monkeypatch):
    from cordsnet.checkpoint import default_checkpoint_path
    from cordsnet.cli import app

    monkeypatch.chdir(tmp_path)
    try:
        default_checkpoint_path()
    except FileNotFoundError:
        res = CliRunner().invoke(app, ["export", "--steps", "2"])
        assert res.exit_code == 1 and "bundled default model" in res.output
        return
    res = CliRunner().invoke(app, ["export", "--steps", "2", "--spontaneous-steps", "2", "--graph", "stepwise"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "digits_r4-stepwise.onnx").is_file()


# ------------------------------------------------------------------- verification arguments
def test_verify_refuses_bad_tolerances_and_other_weights(r2, models, tmp_path, state_dict_factory):
    out = tmp_path / "v.onnx"
    export(r2, out, graph="unrolled", steps=STEPS, spontaneous_steps=SPONT, verify=False)
    for kwargs, match in [({"atol": -1}, "atol: expected a finite number >= 0, got -1"),
                          ({"rtol": float("inf")}, "rtol: expected a finite number >= 0"),
                          ({"min_top1": 0}, r"min_top1: expected a finite number in \(0, 1\]"),
                          ({"batch": 0}, "batch: expected an int in"),
                          ({"steps": 10**6}, "steps: expected an int in")]:
        with pytest.raises(ValueError, match=match):
            verify_artifact(out, r2, **kwargs)
    # Other weights, same architecture: refused up front (library users get the guard the CLI had).
    other = load_checkpoint(state_dict_factory(depth=2, seed=7))
    with pytest.raises(ValueError, match="exported from other weights than the model given") as err:
        verify_artifact(out, other)
    assert not isinstance(err.value, VerificationError)
    with pytest.raises(VerificationError):  # without the guard the comparison itself fails
        verify_artifact(out, other, check_weights=False)
    with pytest.raises(ValueError, match="differs from the model's"):
        verify_artifact(out, models[4])


def test_float16_report_says_what_passed(models, tmp_path):
    report = export(models[4], tmp_path / "h.onnx", graph="stepwise", steps=STEPS, spontaneous_steps=SPONT,
                    dtype="float16", verify_images=_images(100)).verification
    assert report.passed and report.failures == []
    text = report.summary()
    assert "top-1 agreement with the float32 model >= 99%" in text and "every value finite" in text
    assert "not a criterion" in text and "100 images passed as verify_images" in text
    assert report.to_dict()["criterion"] == report.criterion()
    f32 = export(models[4], tmp_path / "f.onnx", graph="stepwise", steps=STEPS, spontaneous_steps=SPONT).verification
    assert "within atol 0.0001 + rtol 0.001" in f32.summary()


def test_report_times_and_refused_outputs(r2, tmp_path):
    report = export(r2, tmp_path / "t.onnx", graph="stepwise", steps=2, spontaneous_steps=SPONT)
    assert report.verify_seconds > 0 and report.total_seconds >= report.export_seconds + report.verify_seconds
    assert report.to_dict()["manifest"] == str(tmp_path / "t.onnx.cordsnet.json")
    for name in ("model.safetensors", "model.pth", "m.onnx.cordsnet.json", "cfg.json"):
        (tmp_path / name).write_bytes(b"precious")
        with pytest.raises(ValueError, match="has the suffix of a checkpoint or data file"):
            export(r2, tmp_path / name, graph="stepwise", steps=2, spontaneous_steps=SPONT)
        assert (tmp_path / name).read_bytes() == b"precious"


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_manifest_of_torch_formats(r2, tmp_path, fmt):
    out = tmp_path / f"d{SUFFIX[fmt]}"
    export(r2, out, format=fmt, graph="stepwise-drive", steps=2, spontaneous_steps=SPONT, batch=2)
    m = read_manifest(out)
    assert m.format == fmt and m.sha256 == file_sha256(out) and m.info.batch == 2
    assert m.companions == ({"role": "encode", "file": f"d.encode{SUFFIX[fmt]}",
                             "sha256": file_sha256(encode_path(out))},)
    assert m.data["inputs"][0]["shape"] == [2, 64, 8, 8]
    assert describe_artifact(out)["manifest"] == str(manifest_path(out))


def test_output_suffix_of_another_format_is_refused(r2, tmp_path):
    for fmt, name in [("onnx", "m.pt"), ("torchscript", "m.onnx"), ("exported-program", "m.ts")]:
        with pytest.raises(ValueError, match=f"has the suffix of the .* format; a {fmt} export"):
            export(r2, tmp_path / name, format=fmt, graph="stepwise", steps=2, spontaneous_steps=SPONT)
    assert list(tmp_path.iterdir()) == []


def test_write_errors_name_the_destination(r2, tmp_path, monkeypatch):
    import cordsnet.export.onnx as onnx_backend

    def disk_full(proto, path):
        raise OSError(28, "No space left on device", str(path))  # path: the temporary file

    monkeypatch.setattr(onnx_backend, "save", disk_full)
    out = tmp_path / "full.onnx"
    with pytest.raises(OSError, match=r"output: cannot write '.*full.onnx': No space left on device") as err:
        export(r2, out, graph="stepwise", steps=2, spontaneous_steps=SPONT)
    assert ".tmp" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
