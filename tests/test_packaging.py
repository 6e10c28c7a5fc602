"""The product outside the checkout: the wheel's contents, and the torch-free install run from elsewhere.

The wheel is built from this checkout with the installed setuptools (``--no-build-isolation``: no index is
contacted), unpacked with ``pip install --no-deps --target`` into a temporary folder, and run from another
directory in a Python where torch cannot be imported: what a user of ``pip install cordsnet`` gets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from helpers import NO_TORCH

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_base_install_needs_no_torch():
    base = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    assert "torch" not in base and "onnxruntime" in base
    torch_extra = " ".join(PYPROJECT["project"]["optional-dependencies"]["torch"])
    assert "torch>=" in torch_extra and "torchvision" in torch_extra


def test_vendored_onnxruntime_web_is_pinned_and_intact():
    ort = ROOT / "web" / "vendor" / "ort"
    meta = json.loads((ort / "VERSION.json").read_text())
    pin = json.loads((ROOT / "web" / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    assert meta["version"] == pin
    for name, digest in meta["files"].items():
        assert hashlib.sha256((ort / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (ort / "LICENSE").read_text()
    page = (ROOT / "web" / "app.mjs").read_text()
    for build in ("ort.wasm.min.mjs", "ort.webgpu.min.mjs"):  # what the page imports is what ships, with
        assert build in page and build in meta["files"]     # every runtime file that build loads
        for runtime in set(re.findall(r"ort-wasm-simd-threaded[a-z.]*\.mjs", (ort / build).read_text())):
            assert runtime in meta["files"] and runtime.replace(".mjs", ".wasm") in meta["files"], (build, runtime)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed (the [test] extra brings it)")
    major = int(setuptools.__version__.split(".")[0])
    if major < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build this pyproject offline")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = out.glob("cordsnet-*.whl")
    return path


def test_the_wheel_carries_the_app_the_graph_the_licences_and_types(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("cordsnet/webapp/index.html", "cordsnet/webapp/app.mjs", "cordsnet/webapp/cordsnet.mjs",
                 "cordsnet/webapp/vendor/ort/ort.wasm.min.mjs", "cordsnet/webapp/vendor/ort/ort-wasm-simd-threaded.wasm",
                 "cordsnet/webapp/vendor/ort/LICENSE", "cordsnet/weights/digits_r4-stepwise.onnx",
                 "cordsnet/weights/digits_r4-stepwise.onnx.cordsnet.json", "cordsnet/weights/digits_r4.safetensors",
                 "cordsnet/py.typed"):
        assert name in names, name
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # every package of the source tree is in the wheel (a subpackage missing from pyproject's list would not be)
    for init in (ROOT / "cordsnet").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names, init
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    assert not any("torch" in r and "extra ==" not in r for r in requires), requires
    assert "Classifier: Typing :: Typed" in text and "License-Expression: MIT" in text
    assert not any("node_modules" in n or n.endswith(("package.json", "package-lock.json")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(site folder with the wheel installed, no dependencies; a working directory outside the checkout)."""
    site = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return site, tmp_path_factory.mktemp("elsewhere")


def _cli(installed: tuple[Path, Path], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    site, cwd = installed
    code = NO_TORCH + f"import sys; sys.path.insert(0, {str(site)!r}); sys.argv = ['cordsnet-cli', *{list(args)!r}]\n" \
        "from cordsnet.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_wheel_runs_info_and_predict_without_torch(installed, tmp_path):
    site, _ = installed
    graph = site / "cordsnet" / "weights" / "digits_r4-stepwise.onnx"
    res = _cli(installed, "info", str(graph), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["graph"] == "stepwise"
    import numpy as np
    from PIL import Image

    img = tmp_path / "blank.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)
    res = _cli(installed, "predict", str(graph), str(img), "--json", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["predictions"][0]["top"]) == 5
    # Nothing a user must read past: the phase log lines (stderr is not a terminal), and no provider warning
    # with the CPU build of onnxruntime (a GPU build without CUDA warns once, by design).
    import onnxruntime

    gpu_build = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    noise = [line for line in res.stderr.splitlines() if " cordsnet.cli: " not in line
             and not (gpu_build and line.startswith("warning: providers='auto'"))]
    assert noise == [], res.stderr


def test_the_installed_wheel_refuses_export_in_one_line_naming_the_extra(installed):
    res = _cli(installed, "export", "--format", "onnx", "--steps", "100")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cordsnet[torch]'" in lines[0], res.stderr


def test_the_installed_wheel_serves_the_browser_app_without_npm_or_torch(installed):
    site, cwd = installed
    code = NO_TORCH + f"import sys; sys.path.insert(0, {str(site)!r}); sys.argv = ['cordsnet-cli', 'web', '--port', '0']\n" \
        "from cordsnet.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ") and str(site) in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert b"app.mjs" in r.read()
        with urllib.request.urlopen(url + "vendor/ort/ort-wasm-simd-threaded.wasm", timeout=30) as r:
            assert r.headers["Content-Type"] == "application/wasm" and r.read(4) == b"\0asm"
        with urllib.request.urlopen(url + "model/manifest.json", timeout=30) as r:
            assert json.loads(r.read())["graph"] == "stepwise"
        for path in ("__init__.py", "vendor/ort/", "vendor/", "%2e/app.mjs", "./app.mjs", "../weights/MODEL_CARD.md",
                     "vendor/ort/VERSION.json/"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(url + path, timeout=30)
            assert exc.value.code == 404, path
    finally:
        proc.terminate()
        proc.wait(timeout=10)
