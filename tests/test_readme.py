"""The README's promises: its set-up commands match .ci/run and its numpy-only stepwise script runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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
