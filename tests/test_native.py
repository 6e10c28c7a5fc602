"""examples/c and examples/cpp: the native clients of the stepwise graph, against the Python runtime.

``bash examples/c/build.sh`` (C11, OpenVINO's C API) and ``bash examples/cpp/build.sh`` (C++17,
ExecuTorch's Module API) each build ``build/cordsnet-classify``; both are built once per session
(CMake rebuilds only what changed). Each test skips, saying why, where a compiler, CMake, the SDK in
the Python environment or a Debian development package is missing (``tools/setup-tests.sh`` installs
them).

Parity, as for the browser and Node clients: after the full protocol the logits are within 1e-4 of
the logit scale of :meth:`cordsnet.runtime.StepSession.run` (onnxruntime), and the decision step and
class are those of :meth:`~cordsnet.runtime.StepSession.run_until`, image for image, on held-out digits.

The programs decide with the manifest's ``decision`` block (threshold, margin and the no-image baseline
of ``cordsnet.decision/1``), which every export writes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cordsnet.artifact import manifest_path

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------- prerequisites
def _cmake_version(cmake: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return ()
    m = re.search(r"version (\d+)\.(\d+)", out)
    return tuple(int(g) for g in m.groups()) if m else ()


def _cmake(minimum: tuple[int, int]) -> str | None:
    """The cmake build.sh picks (beside this python, else on PATH), if it is at least `minimum`."""
    for c in (Path(sys.executable).parent / "cmake", shutil.which("cmake")):
        if c and Path(c).is_file() and _cmake_version(str(c)) >= minimum:
            return str(c)
    return None


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _missing(compiler: str, cmake: tuple[int, int], package: str, sdk_files: tuple[str, ...]) -> str | None:
    if shutil.which(compiler) is None:
        return f"no {compiler} compiler (apt-get install build-essential)"
    if _cmake(cmake) is None:
        return f"no CMake >= {cmake[0]}.{cmake[1]} beside {sys.executable} or on PATH (pip install cmake)"
    folder = _package_dir(package)
    if folder is None:
        return f"{package} is not installed for {sys.executable} (pip install {package})"
    if not all((folder / f).exists() for f in sdk_files):
        return f"the {package} package of {sys.executable} lacks its native SDK ({', '.join(sdk_files)})"
    for header, pkg in (("cjson/cJSON.h", "libcjson-dev"), ("openssl/evp.h", "libssl-dev")):
        if not Path("/usr/include", header).is_file():
            return f"no {header} (apt-get install {pkg})"
    return None


CLIENTS = {
    "c": dict(compiler="cc", cmake=(3, 16), package="openvino", format="onnx",
              sdk=("include/openvino/c/openvino.h", "cmake/OpenVINOConfig.cmake")),
    "cpp": dict(compiler="c++", cmake=(3, 28), package="executorch", format="executorch",
                sdk=("include/executorch/extension/module/module.h", "share/cmake/executorch-config.cmake",
                     "lib/libexecutorch.so")),
}
MISSING = {k: _missing(v["compiler"], v["cmake"], v["package"], v["sdk"]) for k, v in CLIENTS.items()}
needs = {k: pytest.mark.skipif(MISSING[k] is not None, reason=f"examples/{k}: {MISSING[k]}") for k in CLIENTS}


def _build(client: str) -> Path:
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "examples" / client / "build.sh")], capture_output=True, text=True,
                         env=env, timeout=900)
    assert res.returncode == 0, f"examples/{client}/build.sh failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    program = ROOT / "examples" / client / "build" / "cordsnet-classify"
    assert program.is_file() and os.access(program, os.X_OK)
    return program


@pytest.fixture(scope="session")
def c_program() -> Path:
    return _build("c")


@pytest.fixture(scope="session")
def cpp_program() -> Path:
    return _build("cpp")


def run(program: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=600)


def result(program: Path, *args: object) -> dict:
    res = run(program, *args)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # nothing but the JSON object: no runtime log on stderr either
    return json.loads(res.stdout)


def refused(program: Path, *args: object) -> str:
    """Exit status 1, nothing on stdout, one line on stderr (returned)."""
    res = run(program, *args)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cordsnet-classify: "), res.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------- artifacts
def decided(artifact: Path) -> Path:
    """The artifact, after checking that the exporter wrote its manifest's decision block (the programs need it)."""
    block = json.loads(manifest_path(artifact).read_text()).get("decision")
    assert block is not None and block["rule"] == "cordsnet.decision/1", f"{artifact}: no decision block"
    return artifact


def copy_artifact(src: Path, folder: Path) -> Path:
    """The artifact, its manifest and companions in `folder` (same names: the manifest names the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in src.parent.glob(src.stem + ".*"):
        shutil.copy(f, folder / f.name)
    return folder / src.name


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("native")


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory, folder) -> Path:
    """The bundled model's stepwise ONNX graph (exported once, shared with test_web.py), with a decision block."""
    from cordsnet.cli import web

    path = copy_artifact(web.default_artifact(tmp_path_factory.getbasetemp() / "web-cache"), folder / "onnx")
    return decided(path)


def _exported(model, folder: Path, name: str, format: str, graph: str) -> Path:
    """`model` exported (unverified: the graphs are compared with the runtime here) with a decision block."""
    from cordsnet.export import export

    path = folder / name
    path.parent.mkdir()
    export(model, path, format=format, graph=graph, verify=False)
    return decided(path)


@pytest.fixture(scope="module")
def bundled_drive(bundled_model, bundled_onnx, folder) -> Path:
    return _exported(bundled_model, folder / "drive", "digits-stepwise-drive.onnx", "onnx", "stepwise-drive")


@pytest.fixture(scope="module")
def bundled_pte(bundled_model, bundled_onnx, folder) -> Path:
    return _exported(bundled_model, folder / "pte", "digits-stepwise.pte", "executorch", "stepwise")


@pytest.fixture(scope="module")
def bundled_pte_drive(bundled_model, bundled_onnx, folder) -> Path:
    return _exported(bundled_model, folder / "pte-drive", "digits-stepwise-drive.pte", "executorch", "stepwise-drive")


def held_out(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` held-out digits (cordsnet.data.digits_split's test split), classes in turn: (N, 1, 32, 32), labels."""
    from cordsnet.data import digits_split, digits_to_tensor

    X, y = digits_split()["test"]
    idx = [int(np.flatnonzero(y == c)[k]) for k in range(count) for c in range(10)][:count]
    return digits_to_tensor(X[idx]).numpy(), y[idx]


def check_parity(program: Path, model: Path, reference: Path, x: np.ndarray, tmp: Path, *extra: str,
                 steps: int | None = None, threshold: float | None = None, margin: float | None = None) -> list[dict]:
    """Run `program` on every image of `x`; compare with StepSession on the ONNX graph `reference`.

    `threshold` / `margin`: what `extra` sets; default the decision block of `model`'s manifest.
    """
    from cordsnet.runtime import StepSession

    block = json.loads(manifest_path(model).read_text())["decision"]
    threshold = block["threshold"] if threshold is None else threshold
    margin = block["margin"] if margin is None else margin
    session = StepSession(reference, providers="cpu")
    want = session.run(x, steps)
    until = session.run_until(x, threshold, steps, margin=margin)
    scale = float(np.abs(want).max())
    outs = []
    for i, image in enumerate(x):
        npy = tmp / f"image-{i}.npy"
        np.save(npy, image if i % 2 else image[None])  # (C, S, S) and (1, C, S, S) both
        out = result(program, model, npy, *extra)
        assert len(out["logits"]) == want.shape[1]
        assert np.abs(np.asarray(out["logits"]) - want[i]).max() <= 1e-4 * scale, (i, out["logits"], want[i])
        decided = bool(until.decided[i])
        assert out["decided_step"] == (int(until.steps[i]) if decided else None), (i, out, until)
        assert out["decided_class"] == (int(until.logits[i].argmax()) if decided else None)
        assert out["steps"] == (steps or session.info.steps) and out["ms_per_step"] > 0
        outs.append(out)
    return outs


# ------------------------------------------------------------------------------------------ parity
@needs["c"]
def test_c_matches_the_python_runtime_on_held_out_digits(c_program, bundled_onnx, tmp_path):
    x, y = held_out(12)
    outs = check_parity(c_program, bundled_onnx, bundled_onnx, x, tmp_path)
    assert all(o["runtime"].startswith("OpenVINO ") and o["graph"] == "stepwise" for o in outs)
    assert sum(o["decided_step"] is not None for o in outs) >= 9  # the rule decides most digits here
    assert sum(int(np.argmax(o["logits"])) == label for o, label in zip(outs, y)) >= 11


@needs["c"]
def test_c_drives_the_stepwise_drive_graph_with_its_encode_graph(c_program, bundled_drive, bundled_onnx, tmp_path):
    outs = check_parity(c_program, bundled_drive, bundled_onnx, held_out(4)[0], tmp_path)
    assert {o["graph"] for o in outs} == {"stepwise-drive"}


@needs["c"]
def test_c_overrides_steps_threshold_and_margin(c_program, bundled_onnx, tmp_path):
    x = held_out(4)[0]
    check_parity(c_program, bundled_onnx, bundled_onnx, x, tmp_path, "--steps", "30", "--threshold", "0.6",
                 "--margin", "0.5", "--warmup", steps=30, threshold=0.6, margin=0.5)


@needs["cpp"]
def test_cpp_matches_the_python_runtime_on_held_out_digits(cpp_program, bundled_pte, bundled_onnx, tmp_path):
    x, y = held_out(12)
    outs = check_parity(cpp_program, bundled_pte, bundled_onnx, x, tmp_path)
    assert all(o["runtime"].startswith("ExecuTorch ") and o["graph"] == "stepwise" for o in outs)
    assert sum(o["decided_step"] is not None for o in outs) >= 9
    assert sum(int(np.argmax(o["logits"])) == label for o, label in zip(outs, y)) >= 11
    check_parity(cpp_program, bundled_pte, bundled_onnx, x[:2], tmp_path, "--steps", "30", "--threshold", "0.6",
                 "--margin", "0.5", steps=30, threshold=0.6, margin=0.5)


@needs["cpp"]
def test_cpp_drives_the_stepwise_drive_program_with_its_encode_program(cpp_program, bundled_pte_drive, bundled_onnx,
                                                                       tmp_path):
    outs = check_parity(cpp_program, bundled_pte_drive, bundled_onnx, held_out(3)[0], tmp_path)
    assert {o["graph"] for o in outs} == {"stepwise-drive"}


@needs["cpp"]
def test_a_pte_manifest_carries_the_programs_own_baseline(bundled_pte, bundled_onnx):
    """The exporter computes a .pte's decision baseline with ExecuTorch (PteStepSession.baseline_logits)."""
    from cordsnet.artifact import read_manifest
    from cordsnet.runtime import StepSession
    from cordsnet.runtime.executorch import PteStepSession

    rule = read_manifest(bundled_pte).decision
    want = StepSession(bundled_onnx, providers="cpu").baseline_logits()
    assert rule.baseline.shape == want.shape == (100, 10)
    np.testing.assert_array_equal(rule.baseline, PteStepSession(bundled_pte).baseline_logits())
    assert np.abs(rule.baseline - want).max() <= 1e-4 * np.abs(want).max()


@needs["cpp"]
def test_cpp_matches_the_executorch_python_runtime_exactly_enough(cpp_program, bundled_pte, tmp_path):
    """The same program in ExecuTorch's Python runtime (PteStepSession): the same arithmetic."""
    from cordsnet.runtime.executorch import PteStepSession

    x = held_out(2)[0]
    want = PteStepSession(bundled_pte).run(x)
    for i, image in enumerate(x):
        np.save(tmp_path / "x.npy", image)
        out = result(cpp_program, bundled_pte, tmp_path / "x.npy")
        np.testing.assert_allclose(out["logits"], want[i], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ refusals
@pytest.fixture(params=["c", "cpp"])
def client(request):
    """(program, a valid model of its format with a decision block)."""
    if MISSING[request.param]:
        pytest.skip(f"examples/{request.param}: {MISSING[request.param]}")
    if request.param == "c":
        return request.getfixturevalue("c_program"), request.getfixturevalue("bundled_onnx")
    return request.getfixturevalue("cpp_program"), request.getfixturevalue("bundled_pte")


def test_bad_input_is_one_line_and_exit_1(client, tmp_path):
    program, model = client
    x = held_out(2)[0]
    good = tmp_path / "good.npy"
    np.save(good, x[0])
    np.save(tmp_path / "two.npy", x)
    np.save(tmp_path / "f64.npy", x[0].astype(np.float64))
    np.save(tmp_path / "size.npy", np.zeros((1, 28, 28), np.float32))
    np.save(tmp_path / "nan.npy", np.full_like(x[0], np.nan))
    (tmp_path / "text.npy").write_text("not an array")
    line = refused(program, model, tmp_path / "two.npy")
    assert "IMAGE: expected one normalised image of shape (C, S, S) = (1, 32, 32)" in line and "got (2, 1, 32, 32)" in line
    assert "float32" in refused(program, model, tmp_path / "f64.npy")
    assert "got (1, 28, 28)" in refused(program, model, tmp_path / "size.npy")
    assert "NaN" in refused(program, model, tmp_path / "nan.npy")
    assert "not a .npy file" in refused(program, model, tmp_path / "text.npy")
    assert "IMAGE: no such file" in refused(program, model, tmp_path / "none.npy")
    assert "MODEL: no such file" in refused(program, tmp_path / "none.onnx", good)
    assert "expected MODEL and IMAGE.npy" in refused(program, model)
    assert "unknown option '--fast'" in refused(program, model, good, "--fast")
    assert "--steps: expected an integer" in refused(program, model, good, "--steps", "ten")
    assert "--threshold: expected a probability in (1/K, 1]" in refused(program, model, good, "--threshold", "0.05")
    assert "--margin: expected evidence in logits > 0" in refused(program, model, good, "--margin", "0")
    # beyond the baseline's T steps there is no decision: refused rather than reported as undecided
    assert "decision baseline covers the protocol's 100 steps" in refused(program, model, good, "--steps", "101")
    lonely = tmp_path / "lonely" / model.name
    lonely.parent.mkdir()
    shutil.copy(model, lonely)
    assert "manifest: cannot read" in refused(program, lonely, good)


def test_a_manifest_of_another_artifact_is_refused(client, tmp_path):
    program, model = client
    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    # the same file name, other bytes: the sha256 and size in the manifest give it away
    other = tmp_path / model.name
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    shutil.copy(manifest_path(model), manifest_path(other))
    assert "belongs to another artifact" in refused(program, other, tmp_path / "x.npy")
    # a manifest naming another file
    renamed = tmp_path / ("renamed" + model.suffix)
    shutil.copy(model, renamed)
    assert f"belongs to '{model.name}', not to 'renamed{model.suffix}'" in refused(
        program, renamed, tmp_path / "x.npy", "--manifest", manifest_path(model))
    # the manifest of an artifact of the other format, beside a file of this program's format
    foreign = tmp_path / "foreign" / model.name
    foreign.parent.mkdir()
    shutil.copy(model, foreign)
    data = json.loads(manifest_path(model).read_text())
    data["artifact"]["format"] = "executorch" if model.suffix == ".onnx" else "onnx"
    manifest_path(foreign).write_text(json.dumps(data))
    assert "describes an artifact of format" in refused(program, foreign, tmp_path / "x.npy")


def test_manifest_defects_are_refused(client, tmp_path):
    program, model = client
    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    good = json.loads(manifest_path(model).read_text())

    def manifest(edit) -> Path:
        data = json.loads(json.dumps(good))
        edit(data)
        copy = tmp_path / model.name
        shutil.copy(model, copy)
        manifest_path(copy).write_text(json.dumps(data))
        return copy

    # a graph kind the graph is not: the manifest disagrees with the graph's own metadata
    unrolled = manifest(lambda d: d.update(graph="unrolled"))
    assert "disagrees with the metadata inside" in refused(program, unrolled, tmp_path / "x.npy")
    assert "no 'decision' block" in refused(program, manifest(lambda d: d.pop("decision")), tmp_path / "x.npy")
    assert "decision.rule" in refused(program, manifest(lambda d: d["decision"].update(rule="cordsnet.decision/2")),
                                      tmp_path / "x.npy")
    assert "decision.baseline.shape" in refused(
        program, manifest(lambda d: d["decision"]["baseline"].update(shape=[100, 9])), tmp_path / "x.npy")
    assert "on spontaneous_state;" in refused(
        program, manifest(lambda d: d["spontaneous_state"]["areas"][0].update(data="AAAA")), tmp_path / "x.npy")
    assert "float32" in refused(program, manifest(lambda d: d["inputs"][0].update(dtype="float16")), tmp_path / "x.npy")
    # a damaged artifact whose manifest was rewritten to match it: the runtime's refusal, on one line
    truncated = tmp_path / "truncated" / model.name
    truncated.parent.mkdir()
    truncated.write_bytes(model.read_bytes()[:2000])
    damaged = json.loads(json.dumps(good))
    damaged["artifact"].update(sha256=hashlib.sha256(truncated.read_bytes()).hexdigest(), size_bytes=2000)
    manifest_path(truncated).write_text(json.dumps(damaged))
    assert re.search(r"is not a readable ONNX file \(truncated|ExecuTorch cannot load",
                     refused(program, truncated, tmp_path / "x.npy"))
    broken = manifest(lambda d: None)
    manifest_path(broken).write_text("{not json")
    assert "is not a JSON object" in refused(program, broken, tmp_path / "x.npy")


# ------------------------------------------------------------------- the manifest against the graph
def test_a_manifest_that_lies_about_a_field_is_refused_naming_it(client, tmp_path):
    """Every field Python's check compares (the set is ArtifactInfo's): a lie with a true sha256 and size is
    refused in one line naming that field alone, as cordsnet.artifact.manifest_disagreements names it."""
    from helpers import check_a_client_refuses_every_lie

    program, model = client
    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    check_a_client_refuses_every_lie(model, tmp_path,
                                     lambda lie: refused(program, model, tmp_path / "x.npy", "--manifest", lie))


def test_an_honest_manifest_is_compared_by_value_not_by_text(client, tmp_path):
    """Objects with their keys in another order, a number written otherwise, an optional field stated with
    its default: the same values, accepted, as by Python."""
    from helpers import python_disagreements

    program, model = client
    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    data = json.loads(manifest_path(model).read_text())
    data["config"] = dict(reversed(data["config"].items()))
    data["preset"] = dict(reversed(data["preset"].items()))
    data["protocol"]["steps_per_call"] = 1
    assert python_disagreements(model, data) == []
    text = json.dumps(data)
    assert '"alpha": 0.2,' in text
    (tmp_path / "same.json").write_text(text.replace('"alpha": 0.2,', '"alpha": 2.000e-1,'))
    assert result(program, model, tmp_path / "x.npy", "--steps", "3", "--manifest", tmp_path / "same.json")["steps"] == 3


@needs["c"]
def test_c_refuses_a_graph_without_its_metadata_or_lacking_a_stated_field(c_program, bundled_onnx, tmp_path):
    from helpers import rewrite_onnx_metadata as _rewritten_onnx

    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    bare = _rewritten_onnx(bundled_onnx, tmp_path / "bare", lambda p: p.clear())
    assert "is not a cordsnet export (no 'cordsnet.format_version' metadata)" in refused(c_program, bare,
                                                                                        tmp_path / "x.npy")
    # the graph lacks cordsnet.exporter (read as ""), the manifest says "legacy"
    lacking = _rewritten_onnx(bundled_onnx, tmp_path / "lacking", lambda p: p.pop("cordsnet.exporter"))
    assert "on exporter; " in refused(c_program, lacking, tmp_path / "x.npy")
    required = _rewritten_onnx(bundled_onnx, tmp_path / "required", lambda p: p.pop("cordsnet.steps"))
    assert "lacks the metadata key 'cordsnet.steps'" in refused(c_program, required, tmp_path / "x.npy")


@needs["c"]
def test_c_metadata_reader_survives_truncated_and_mutated_onnx(c_program, bundled_onnx, tmp_path):
    """Hostile bytes with a manifest made to match them: exit 0 or 1 with one line, never a crash."""
    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    original = bundled_onnx.read_bytes()
    good = json.loads(manifest_path(bundled_onnx).read_text())
    path = tmp_path / bundled_onnx.name
    rng = np.random.default_rng(0)
    tail = len(original) - 120_000  # the metadata_props follow the graph, at the end of the file
    cuts = [int(c) for c in rng.integers(1, len(original), 24)] + [int(c) for c in rng.integers(tail, len(original), 24)]
    cases = [original[:c] for c in cuts]
    for _ in range(60):
        data = bytearray(original)
        for at in rng.integers(tail, len(original), 3):
            data[int(at)] = int(rng.integers(0, 256))
        cases.append(bytes(data))
    refusals = 0
    for data in cases:
        path.write_bytes(data)
        good["artifact"].update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        manifest_path(path).write_text(json.dumps(good))
        res = run(c_program, path, tmp_path / "x.npy", "--steps", "2")
        assert res.returncode in (0, 1), (res.returncode, res.stderr[-500:])  # a signal is negative
        if res.returncode == 1:
            assert len(res.stderr.splitlines()) == 1 and res.stdout == "", res.stderr
            refusals += 1
    assert refusals >= len(cuts)  # every truncated graph is refused


@needs["c"]
def test_c_refuses_a_real_unrolled_export(c_program, bundled_model, tmp_path):
    from cordsnet.export import export

    path = tmp_path / "digits-unrolled.onnx"
    export(bundled_model, path, format="onnx", graph="unrolled", steps=2, verify=False)
    np.save(tmp_path / "x.npy", held_out(1)[0][0])
    assert "is a 'unrolled' graph" in refused(c_program, path, tmp_path / "x.npy")


# -------------------------------------------------------------------------------------- R8 at 224
@pytest.fixture(scope="module")
def r8_graphs(folder):
    """CordsNet-R8 at 224 px (random weights of the published layout), stepwise, a short protocol:
    the ONNX graph and, where ExecuTorch is installed, the .pte."""
    from helpers import make_published_state_dict

    from cordsnet.checkpoint import load_checkpoint
    from cordsnet.export import export

    model = load_checkpoint(make_published_state_dict(depth=8, num_classes=1000, in_channels=3, image_size=224))
    kw = dict(graph="stepwise", steps=3, spontaneous_steps=2, verify=False)
    out = folder / "r8"
    out.mkdir()
    onnx = decided(export(model, out / "r8-stepwise.onnx", format="onnx", **kw).path)
    pte = None
    if MISSING["cpp"] is None:
        pte = decided(export(model, out / "r8-stepwise.pte", format="executorch", batch=1, **kw).path)
    return onnx, pte


def _r8_images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)


@pytest.mark.heavy
@pytest.mark.parametrize("client", [pytest.param("c", marks=needs["c"]), pytest.param("cpp", marks=needs["cpp"])])
def test_r8_at_224_matches_the_python_runtime(client, r8_graphs, request, tmp_path):
    """C drives the ONNX graph, C++ the .pte; both against the Python runtime on the ONNX graph."""
    onnx, pte = r8_graphs
    program = request.getfixturevalue(f"{client}_program")
    outs = check_parity(program, onnx if client == "c" else pte, onnx, _r8_images(), tmp_path)
    assert all(len(o["logits"]) == 1000 and o["steps"] == 3 for o in outs)
