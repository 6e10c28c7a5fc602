"""The artifact contract (cordsnet.artifact): registries, the one metadata parser, the client manifest,
and metadata that lies, checked at every entry point (artifact readers, runtime sessions, verification).

The exported graphs come from the session-scoped ``exported_onnx`` fixture (tests/conftest.py); a test
that alters a graph writes a copy into its own tmp_path (without the manifest unless it says so).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from cordsnet import artifact as A
from cordsnet._io import file_sha256
from cordsnet.runtime import Session, StepSession, open_session, read_info

# onnxruntime's own exception types: a lying artifact must never surface as one of these.
import onnxruntime as ort

ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, n) for n in
                   ("Fail", "InvalidArgument", "InvalidGraph", "RuntimeException")
                   if hasattr(ort.capi.onnxruntime_pybind11_state, n))


# --------------------------------------------------------------------------------- registries
def test_import_is_torch_free_and_runtime_imports_nothing_from_export():
    code = ("import sys, cordsnet.artifact, cordsnet.runtime; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "bad = [m for m in sys.modules if m.startswith('cordsnet.export')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_io_names_follow_the_registry():
    assert A.io_names("unrolled", 2, "all", [1, 0]) == (["image"], ["logits", "rates_1", "rates_0"])
    assert A.io_names("loop", 2) == (["image", "steps"], ["logits"])
    assert A.io_names("stepwise", 3) == (["image", "state_0", "state_1", "state_2"],
                                         ["logits", "next_state_0", "next_state_1", "next_state_2"])
    assert A.io_names("stepwise-drive", 2) == (["skip", "ff0", "state_0", "state_1"],
                                               ["logits", "next_state_0", "next_state_1"])
    assert A.io_names("encode", 8) == (["image"], ["skip", "ff0"])
    with pytest.raises(ValueError, match=r"graph: expected one of \['unrolled', 'loop', 'stepwise', 'stepwise-drive', "
                                         r"'multistep', 'encode'\], got 'rolled'"):
        A.io_names("rolled", 2)
    assert list(A.GRAPHS) == ["unrolled", "loop", "stepwise", "stepwise-drive", "multistep"]
    # "encode" is a companion only
    assert {k: v.session for k, v in A.GRAPH_KINDS.items()} == {
        "unrolled": "whole", "loop": "whole", "stepwise": "step", "stepwise-drive": "step", "multistep": "step",
        "encode": None}


def test_formats_and_paths():
    assert {n: f.suffix for n, f in A.FORMATS.items()} == {"onnx": ".onnx", "torchscript": ".pt",
                                                           "exported-program": ".pt2", "executorch": ".pte"}
    assert A.artifact_format("a/b.ONNX") == "onnx" and A.artifact_format("m.ts") == "torchscript"
    with pytest.raises(ValueError, match="suffix one of"):
        A.artifact_format("m.safetensors")
    assert A.encode_path("d/m-drive.onnx") == Path("d/m-drive.encode.onnx")
    assert A.manifest_path("d/m.pt2") == Path("d/m.pt2.cordsnet.json")


def test_spontaneous_state_codec_round_trip():
    rng = np.random.default_rng(0)
    state = [rng.standard_normal((1, 4, 2, 2)).astype(np.float32), rng.standard_normal((1, 2, 1, 1)).astype(np.float16)]
    back = A.decode_spontaneous_state(A.encode_spontaneous_state(state))
    for a, b in zip(state, back):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for bad in ("not json", "[{}]", '[{"shape": [1], "dtype": "float32", "data": "%%%"}]',
                '[{"shape": [2], "dtype": "float32", "data": "AAAAAA=="}]', '[{"shape": [1], "dtype": "int8", "data": ""}]'):
        with pytest.raises(ValueError, match="malformed 'cordsnet.spontaneous_state'"):
            A.decode_spontaneous_state(bad)


# ------------------------------------------------------------------------------ ArtifactInfo
def test_one_parser_round_trips_and_defaults(exported_onnx, r2_cifar):
    meta = A.read_metadata(exported_onnx["stepwise"])
    info = A.ArtifactInfo.from_metadata(meta)
    assert info.to_metadata() == meta  # what the exporter wrote is exactly what the parser reads back
    assert info.config == r2_cifar.config and info.batch is None and info.kind.session == "step"
    # The optional keys have one set of defaults.
    minimal = {k: v for k, v in meta.items() if k.split(".", 1)[1] in
               ("format_version", "graph", "config", "steps", "spontaneous_steps", "alpha", "batch",
                "spontaneous_state")}
    lean = A.ArtifactInfo.from_metadata(minimal)
    assert (lean.readout, lean.record, lean.dtype, lean.preset, lean.version, lean.exporter) == \
        ("last", (), "float32", None, "", "")
    # Zero spontaneous steps: the state may be absent (zeros).
    zero = {**minimal, "cordsnet.spontaneous_steps": "0"}
    del zero["cordsnet.spontaneous_state"]
    assert all(not s.any() for s in A.ArtifactInfo.from_metadata(zero).spontaneous_state())
    with pytest.raises(ValueError, match="lacks the metadata key 'cordsnet.alpha'"):
        A.ArtifactInfo.from_metadata({k: v for k, v in minimal.items() if k != "cordsnet.alpha"})


def test_the_encode_companion_is_described_by_the_contract(exported_onnx):
    path = A.encode_path(exported_onnx["stepwise-drive"])
    info = A.read_info(path)
    assert info.graph == "encode" and info.io_names() == (["image"], ["skip", "ff0"])
    with pytest.raises(ValueError, match="open the stepwise-drive graph it belongs to"):
        StepSession(path, providers="cpu")
    with pytest.raises(ValueError, match="open the graph it belongs to"):
        open_session(path, providers="cpu")


# ------------------------------------------------------------------------ metadata that lies
def _lying_copy(src: Path, dst_dir: Path, changes: dict[str, str | None]) -> Path:
    """A copy of `src` (and its encode companion) whose cordsnet.* values are replaced (None: removed)."""
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    for k, v in changes.items():
        if v is None:
            props.pop(f"cordsnet.{k}", None)
        else:
            props[f"cordsnet.{k}"] = v
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    out = dst_dir / src.name
    onnx.save(proto, str(out))
    if A.encode_path(src).exists():
        shutil.copy(A.encode_path(src), A.encode_path(out))
    return out


def _config_with(path: Path, **changes) -> str:
    cfg = json.loads(A.read_metadata(path)["cordsnet.config"])
    cfg.update(changes)
    return json.dumps(cfg)


def _refused_everywhere(path: Path, model, match: str) -> None:
    """Every entry point refuses the artifact with one ValueError (never an onnxruntime error, never a hang)."""
    from cordsnet.export import describe_artifact, verify_artifact

    entry_points = {
        "read_info": lambda: A.read_info(path),
        "describe_artifact": lambda: describe_artifact(path),
        "runtime.read_info": lambda: read_info(path, "onnx"),
        "open_session": lambda: open_session(path, providers="cpu").predict(np.zeros((1, 3, 32, 32), np.float32)),
        "Session": lambda: Session(path, providers="cpu").run(np.zeros((1, 3, 32, 32), np.float32)),
        "StepSession": lambda: StepSession(path, providers="cpu").run(np.zeros((1, 3, 32, 32), np.float32)),
        "verify_artifact": lambda: verify_artifact(path, model),
    }
    for name, call in entry_points.items():
        with pytest.raises(ValueError) as err:
            call()
        assert not isinstance(err.value, ORT_ERRORS), (name, err.value)
        text = str(err.value)
        if name not in ("Session", "StepSession") or "graph; " not in text:  # a kind mismatch says which class
            assert __import__("re").search(match, text), (name, text)
        assert "\n" not in text, (name, text)


@pytest.mark.parametrize("graph, changes, match", [
    # Protocols no export writes: bounded instead of hanging predict/verify.
    ("loop", {"steps": "1000000000"}, r"steps: expected an int in \[1, 10000\], got 1000000000"),
    ("stepwise", {"steps": "1e9"}, "expected an integer"),
    ("unrolled", {"spontaneous_steps": "1000000000"}, "spontaneous_steps: expected an int in"),
    ("unrolled", {"steps": "-3"}, "steps: expected an int in"),
    # Batches that are not batches.
    ("unrolled", {"batch": "-1"}, r"batch: expected an int in \[1, "),
    ("stepwise", {"batch": "0"}, "batch: expected an int in"),
    ("loop", {"batch": "two"}, "expected an integer"),
    ("unrolled", {"batch": "2"}, r"input 'image' has shape \['batch', 3, 32, 32\].*batch 2"),  # graph is dynamic
    # Config claims the graph's own I/O contradicts.
    ("unrolled", {"config": "num_classes=12", "preset": "null"}, r"output 'logits' has shape \['batch', 10\].*num_classes 12"),
    ("unrolled", {"config": "num_classes=12"}, "class_names: expected null or 12 names"),
    ("stepwise", {"config": "image_size=64"}, r"spontaneous_state' area 0 has shape \(1, 64, 8, 8\), expected \(1, 64, 16, 16\)"),
    ("loop", {"config": "image_size=64", "spontaneous_steps": "0", "spontaneous_state": None},
     r"input 'image' has shape \['batch', 3, 32, 32\], but the metadata implies \['batch', 3, 64, 64\]"),
    ("unrolled", {"config": "in_channels=1"}, r"preset mean: expected a list of 1 numbers"),
    ("unrolled", {"config": "depth=4"}, "must list 4 areas"),
    ("unrolled", {"config": "depth=3"}, "depth: expected one of"),
    # Graph kind, dtype, readout and record that the graph's I/O contradicts.
    ("unrolled", {"graph": "stepwise", "inputs": None, "outputs": None}, r"describes a 'stepwise' graph .* inputs are \['image'\]"),
    ("loop", {"graph": "unrolled", "inputs": None, "outputs": None}, r"inputs are \['image', 'steps'\]"),
    ("stepwise", {"graph": "stepwise-drive", "inputs": None, "outputs": None}, "inputs"),
    ("stepwise-drive", {"graph": "loop", "inputs": None, "outputs": None}, "inputs"),
    ("unrolled", {"graph": "sideways"}, "graph: expected one of"),
    ("unrolled", {"dtype": "float16"}, "input 'image' is float32, but the metadata claims float16"),
    ("unrolled", {"readout": "all"}, r"output 'logits' has shape \['batch', 10\], but the metadata implies \[4, 'batch', 10\]"),
    ("unrolled", {"record": "[1]"}, "'cordsnet.outputs' lists"),
    ("unrolled", {"record": "[1]", "outputs": None}, r"outputs \['logits', 'rates_1'\], but the graph's outputs are"),
    ("unrolled", {"inputs": '["image", "steps"]'}, "lists"),
    ("stepwise", {"readout": "all"}, "has readout 'last' and no recorded areas"),
    # Values no export writes.
    ("unrolled", {"alpha": "nan"}, "alpha: expected a finite number"),
    ("unrolled", {"alpha": "1.5"}, r"alpha: expected a finite number in \(0, 1\]"),
    ("unrolled", {"format_version": "2"}, "format_version '2'"),
    ("unrolled", {"config": "[" * 100_000}, "JSON nested too deeply"),
    ("unrolled", {"preset": '{"mean": [0, 0, 0], "std": [0, 1, 1]}'}, "preset std: expected a finite number > 0"),
    ("unrolled", {"state_dict_sha256": "xyz"}, "expected 64 hex digits"),
])
def test_metadata_that_lies_is_refused_with_one_line(exported_onnx, r2_cifar, tmp_path, graph, changes, match):
    changes = dict(changes)
    if isinstance(changes.get("config"), str) and "=" in changes["config"] and not changes["config"].startswith("["):
        key, value = changes["config"].split("=")
        changes["config"] = _config_with(exported_onnx[graph], **{key: int(value)})
    path = _lying_copy(exported_onnx[graph], tmp_path, changes)
    _refused_everywhere(path, r2_cifar, match)


def test_non_finite_spontaneous_state_is_refused(exported_onnx, r2_cifar, tmp_path):
    for bad in (np.nan, np.inf):
        info = A.read_info(exported_onnx["stepwise"])
        state = [s.copy() for s in info.spontaneous]
        state[1][0, 3, 2, 1] = bad
        path = _lying_copy(exported_onnx["stepwise"], tmp_path, {"spontaneous_state": A.encode_spontaneous_state(state)})
        _refused_everywhere(path, r2_cifar, "area 1 holds NaN or infinite rates")


# --------------------------------------------------------------------------------- manifest
MANIFEST_KEYS = {"cordsnet_manifest", "format_version", "cordsnet_version", "artifact", "companions", "graph",
                 "config", "protocol", "dtype", "batch", "inputs", "outputs", "preset", "spontaneous_state",
                 "checkpoint_sha256", "state_dict_sha256", "exporter"}


@pytest.mark.parametrize("kind", ["unrolled", "loop", "stepwise", "stepwise-drive", "all"])
def test_manifest_describes_the_artifact_beside_it(exported_onnx, r2_cifar, kind):
    path = exported_onnx[kind]
    data = json.loads(A.manifest_path(path).read_text())
    # the agreed schema (docs/export.md), "exporter" added; "decision" where the runtime has per-step logits
    assert set(data) == MANIFEST_KEYS | ({"decision"} if kind in ("stepwise", "stepwise-drive", "all") else set())
    assert data["cordsnet_manifest"] == 1 and data["format_version"] == A.FORMAT_VERSION
    assert data["artifact"] == {"file": path.name, "format": "onnx", "sha256": file_sha256(path),
                                "size_bytes": path.stat().st_size}
    c = r2_cifar.config
    assert data["config"] == c.to_dict() and data["batch"] is None and data["dtype"] == "float32"
    assert data["protocol"]["steps"] == 4 and data["protocol"]["spontaneous_steps"] == 3
    assert data["protocol"]["dt_ms"] == pytest.approx(data["protocol"]["alpha"] * 10)
    assert data["preset"] == c.preset.to_dict()
    info = A.read_info(path)
    assert [i["name"] for i in data["inputs"]] == info.io_names()[0]
    first = {"name": "skip", "shape": ["batch", 64, 8, 8], "dtype": "float32"} if kind == "stepwise-drive" else \
        {"name": "image", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    assert data["inputs"][0] == first
    # The spontaneous state reads without protobuf: base64 little-endian float32, C order.
    assert data["spontaneous_state"]["encoding"] == "base64-float32-le"
    for area, want in zip(data["spontaneous_state"]["areas"], info.spontaneous):
        got = np.frombuffer(base64.b64decode(area["data"]), dtype="<f4").reshape(area["shape"])
        np.testing.assert_array_equal(got, want)
    if kind == "stepwise-drive":
        enc = A.encode_path(path)
        assert data["companions"] == [{"role": "encode", "file": enc.name, "sha256": file_sha256(enc)}]
    else:
        assert data["companions"] == []
    # One parser: the manifest reads back to the same facts as the metadata.
    m = A.read_manifest(path)
    assert m.info == info and m.file == path.name and A.check_manifest(path) == m


def test_a_manifest_of_another_artifact_is_refused(exported_onnx, r2_cifar, tmp_path):
    from cordsnet.export import describe_artifact, verify_artifact

    path = tmp_path / exported_onnx["unrolled"].name
    shutil.copy(exported_onnx["unrolled"], path)
    shutil.copy(A.manifest_path(exported_onnx["unrolled"]), A.manifest_path(path))
    assert describe_artifact(path)["manifest"] == str(A.manifest_path(path))
    # Another graph under the same name: the manifest beside it no longer belongs to it.
    shutil.copy(exported_onnx["all"], path)
    for call in (lambda: describe_artifact(path), lambda: verify_artifact(path, r2_cifar), lambda: A.check_manifest(path)):
        with pytest.raises(ValueError, match="belongs to another artifact: its sha256"):
            call()
    # A manifest renamed beside another file names its own artifact.
    other = tmp_path / "other.onnx"
    shutil.copy(exported_onnx["unrolled"], other)
    shutil.copy(A.manifest_path(exported_onnx["unrolled"]), A.manifest_path(other))
    with pytest.raises(ValueError, match="belongs to 'r2.unrolled.onnx', not to 'other.onnx'"):
        describe_artifact(other)
    # The runtime does not need the manifest, stale or not: it reads the metadata.
    assert Session(path, providers="cpu").info.readout == "all"


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(cordsnet_manifest=2), "cordsnet_manifest 2"),
    (lambda d: d.pop("protocol"), "lacks 'protocol'"),
    (lambda d: d["protocol"].update(dt_ms=3.0), "dt_ms 3.0 is not alpha"),
    (lambda d: d["protocol"].update(steps=10**9), r"steps: expected an int in \[1, 10000\]"),
    (lambda d: d.update(batch=0), "batch: expected an int in"),
    (lambda d: d["artifact"].update(file="../evil.onnx"), "artifact.file: expected a file name"),
    (lambda d: d["artifact"].update(sha256="abc"), "artifact.sha256: expected 64 hex digits"),
    (lambda d: d["artifact"].update(format="tflite"), "artifact.format: expected one of"),
    (lambda d: d["inputs"][0].update(shape=["batch", 3, 64, 64]), "inputs/outputs do not match"),
    (lambda d: d["spontaneous_state"].update(encoding="base64-float16-le"), "spontaneous_state.encoding"),
    (lambda d: d["spontaneous_state"]["areas"][0].update(data="AAAA"), "malformed 'cordsnet.spontaneous_state'"),
    (lambda d: d.update(companions=[{"role": "encode"}]), "companions: expected a list"),
    (lambda d: d.update(graph="encode"), "inputs/outputs do not match"),
])
def test_malformed_manifests_are_refused(exported_onnx, tmp_path, edit, match):
    data = json.loads(A.manifest_path(exported_onnx["stepwise"]).read_text())
    edit(data)
    bad = tmp_path / "x.onnx.cordsnet.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        A.read_manifest(bad)
    bad.write_text("{" * 50_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        A.read_manifest(bad)


def test_a_format_is_one_registry_entry(exported_onnx, tmp_path, monkeypatch):
    """A format that embeds no metadata (as ExecuTorch's .pte will be) is read from its manifest alone."""
    monkeypatch.setitem(A.FORMATS, "fake", A.ArtifactFormat("fake", ".fake", (".fake",), "cordsnet.export.fake",
                                                            "manifest", "a test format"))
    src = exported_onnx["stepwise"]
    path = tmp_path / "m.fake"
    shutil.copy(src, path)
    data = json.loads(A.manifest_path(src).read_text())
    data["artifact"].update(file=path.name, format="fake")
    A.manifest_path(path).write_text(json.dumps(data))
    assert A.artifact_format(path) == "fake"
    assert A.read_info(path) == A.read_info(src)
    assert A.read_metadata(path)["cordsnet.graph"] == "stepwise"


# --------------------------------------------------------------- a manifest agrees with its artifact
def _flip_state(d):
    import base64

    import numpy as np

    area = d["spontaneous_state"]["areas"][0]
    arr = np.frombuffer(base64.b64decode(area["data"]), "<f4").copy()
    arr[0] += 0.5
    area["data"] = base64.b64encode(arr.tobytes()).decode("ascii")


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["preset"].update(class_names=[f"c{i}" for i in range(10)]), "preset"),
    (lambda d: d["preset"].update(mean=[0.9]), "preset"),
    (lambda d: (d["protocol"].update(steps=50), d.pop("decision")), "steps"),
    (lambda d: d["protocol"].update(spontaneous_steps=7), "spontaneous_steps"),
    (lambda d: d["protocol"].update(alpha=0.1, dt_ms=1.0), "alpha"),
    (lambda d: d.update(state_dict_sha256="0" * 64), "state_dict_sha256"),
    (lambda d: d.update(exporter="someone-else"), "exporter"),
    (_flip_state, "spontaneous_state"),
])
def test_a_manifest_whose_hash_matches_but_whose_fields_lie_is_refused(tmp_path, edit, field):
    from cordsnet.cli import web

    src = Path(A.__file__).parents[1] / "weights" / "digits_r4-stepwise.onnx"
    path = tmp_path / src.name
    shutil.copy(src, path)
    data = json.loads(A.manifest_path(src).read_text())
    edit(data)
    A.manifest_path(path).write_text(json.dumps(data))
    A.read_manifest(path)  # valid on its own: only the artifact's content shows the lie
    with pytest.raises(ValueError, match=rf"disagrees with the metadata inside .* on .*{field}"):
        A.check_manifest(path)
    with pytest.raises(ValueError, match="disagrees"):
        A.describe_artifact(path)
    with pytest.raises(ValueError, match="disagrees"):
        web.make_server(path, port=0)  # the page is never handed a manifest that lies


def test_a_manifest_of_another_format_is_refused(tmp_path):
    src = Path(A.__file__).parents[1] / "weights" / "digits_r4-stepwise.onnx"
    path = tmp_path / src.name
    shutil.copy(src, path)
    data = json.loads(A.manifest_path(src).read_text())
    data["artifact"]["format"] = "torchscript"
    A.manifest_path(path).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="describes a torchscript artifact"):
        A.check_manifest(path)
