"""examples/node: the stepwise graph driven by onnxruntime-node from its client manifest (parity check).

Needs ``node`` and onnxruntime-node in examples/node/node_modules (``ONNXRUNTIME_NODE_INSTALL=skip npm ci``
there); skips, saying why, without them. Parity bound as in tests/test_web.py: float32 graph vs the
float64 PyTorch model over the full protocol, max |delta logit| <= 1e-4 of the logit scale.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from cordsnet.cli import web
from cordsnet.checkpoint import load_checkpoint
from cordsnet.data import digits_split, digits_to_tensor

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
NODE = shutil.which("node")


def node_missing() -> str | None:
    if NODE is None:
        return "node is not installed"
    if not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        return f"onnxruntime-node is not installed: run `ONNXRUNTIME_NODE_INSTALL=skip npm ci` in {EXAMPLE}"
    return None


pytestmark = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return web.default_artifact(tmp_path_factory.getbasetemp() / "web-cache")  # shared with test_web.py


def node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, str(EXAMPLE / "classify.mjs"), *args], capture_output=True, text=True, timeout=120)


def test_node_matches_pytorch_over_the_full_protocol(artifact, tmp_path):
    X, y = digits_split()["test"]
    idx = [int(np.flatnonzero(y == c)[-1]) for c in (0, 4, 7)]
    x = digits_to_tensor(X[idx])
    (tmp_path / "in.json").write_text(json.dumps({"images": x.reshape(len(idx), -1).tolist()}))
    res = node(str(artifact), "--input", str(tmp_path / "in.json"), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["runtime"].startswith("onnxruntime-node ") and out["steps"] == 100
    model = load_checkpoint(None).double()
    with torch.no_grad():
        want = model.run(x.double(), readout="all").numpy()  # (100, B, K) after 100 spontaneous steps
    scale = float(np.abs(want[-1]).max())
    for b, r in enumerate(out["results"]):
        assert np.abs(np.asarray(r["logits"]) - want[-1, b]).max() <= 1e-4 * scale
        np.testing.assert_allclose(r["probabilities"], torch.softmax(torch.from_numpy(want[:, b]), -1).numpy(),
                                   atol=1e-5)
        assert r["prediction"] == int(y[idx[b]])
        # the decision that holds: from its step on, the same class stays above 0.9
        rt = r["reaction_time"]
        p = torch.softmax(torch.from_numpy(want[:, b]), -1).numpy()
        assert (p[rt["steps"] - 1:].argmax(-1) == rt["cls"]).all() and (p[rt["steps"] - 1:].max(-1) >= 0.9).all()
        assert rt["steps"] == 1 or p[rt["steps"] - 2].max() < 0.9 or p[rt["steps"] - 2].argmax() != rt["cls"]


def test_node_default_input_is_the_bundled_held_out_digits(artifact):
    res = node(str(artifact), "--steps", "100")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 20 and all("ms/step" in line for line in lines)
    correct = sum(line.split(":")[1].split(",")[0].split(" (label ")[0].strip() ==
                  line.split("(label ")[1].split(")")[0] for line in lines)
    assert correct >= 18  # the bundled model's held-out accuracy is ~97%


def test_node_refuses_a_missing_manifest_in_one_line(artifact, tmp_path):
    lonely = tmp_path / artifact.name
    shutil.copy(artifact, lonely)
    res = node(str(lonely))
    assert res.returncode == 1
    assert res.stderr.strip().startswith("Error: manifest: cannot read") and len(res.stderr.strip().splitlines()) == 1
