"""The README's promises: its set-up commands match .ci/run and its numpy-only stepwise script runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers import run_without_torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

def _code_block_after(marker: str, language: str) -> str:
    start = README.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no {language} block after {marker!r}"
    return match.group(1)


def test_ci_runs_the_readme_test_command():
    command = _code_block_after("Tests — install", "bash").strip()
    assert command in (ROOT / ".ci" / "run").read_text()
    assert "cordsnet-cli export --format onnx --steps 100" in _code_block_after("Main job", "bash")


def test_ten_line_stepwise_script_runs_without_torch(tmp_path):
    from sklearn.datasets import load_digits

    from cordsnet.checkpoint import load_checkpoint
    from cordsnet.data import digits_to_tensor
    from cordsnet.export import export

    model = load_checkpoint(None)
    export(model, tmp_path / "digits_r4-stepwise.onnx", graph="stepwise")
    X, y = load_digits(return_X_y=True)
    i = 1000
    np.save(tmp_path / "digit.npy", digits_to_tensor(X[i:i + 1]).numpy())
    script = _code_block_after("Ten lines, numpy and onnxruntime only", "python")
    assert len([line for line in script.splitlines() if line.strip()]) <= 13
    result = run_without_torch(script, cwd=str(tmp_path), timeout=300)  # needs only numpy + onnxruntime
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"prediction {y[i]}"


def _run_bash_block(block: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a README bash block as written, in `cwd`: `cordsnet-cli` is this checkout's CLI, and the
    block's own `pip install` line (already done for the suite) is skipped."""
    import os
    import sys

    script = "set -euo pipefail\ncordsnet-cli() { \"$PYTHON\" -m cordsnet.cli \"$@\"; }\n" + "\n".join(
        ":" if line.startswith("pip install") else line for line in block.splitlines())
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}"
           f"{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.heavy
def test_the_end_to_end_example_runs_as_written(tmp_path):
    """The bundled model's whole loop: six exports (each verified), a digit image, predict on the loop graph."""
    block = _code_block_after("The whole loop on it", "bash")
    res = _run_bash_block(block, tmp_path, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("digits_r4-unrolled.onnx", "digits_r4-loop.onnx", "digits_r4-stepwise.onnx",
                 "digits_r4-stepwise-drive.onnx", "digits_r4-stepwise-drive.encode.onnx", "digits_r4-loop.pt",
                 "digits_r4-unrolled.pt2", "digit.png", "digit.npy"):
        assert (tmp_path / name).is_file(), name
    label = re.search(r"label (\d)", res.stdout).group(1)
    assert re.search(rf"1\. {label} ", res.stdout), res.stdout  # the digit is classified correctly


def test_the_stored_reference_commands_run_as_written(tmp_path):
    """`verify --save-reference` then `verify --reference`, as the runtime section shows them."""
    import shutil

    from cordsnet.artifact import manifest_path
    from cordsnet.weights import BUNDLED_STEPWISE

    shipped = ROOT / "cordsnet" / "weights" / BUNDLED_STEPWISE
    for src in (shipped, manifest_path(shipped)):
        shutil.copy(src, tmp_path / src.name)  # the file name the README's commands use
    lines = [line.split("#")[0].strip() for line in README.splitlines()
             if line.startswith("cordsnet-cli verify digits_r4-stepwise.onnx --")]
    assert len(lines) == 2, lines
    res = _run_bash_block("\n".join(lines), tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "passed" in res.stdout and (tmp_path / "ref.npz").is_file()
