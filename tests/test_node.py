"""examples/node: the stepwise graph driven by onnxruntime-node from its client manifest (parity check).

Needs ``node`` and onnxruntime-node in examples/node/node_modules (``ONNXRUNTIME_NODE_INSTALL=skip npm ci``
there); skips, saying why, without them. Parity bound as in tests/test_web.py: float32 graph vs the
float64 PyTorch model over the full protocol, max |delta logit| <= 1e-4 of the logit scale.

Decisions: the Node client applies cordsnet.decision with the manifest's baseline; on held-out digits
its decision (step, class, decided or not) equals ``StepSession.run_until``'s image for image, and its
per-step probability and evidence equal ``decision.decide`` on the Python runtime's logits within
bounds derived from the measured logit difference between the two onnxruntime builds.
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
        assert r["reaction_time"]["cls"] == r["prediction"]  # these clear digits decide for their class


def test_node_decisions_equal_the_python_rule_on_held_out_digits(artifact, tmp_path):
    from cordsnet.artifact import read_manifest
    from cordsnet.decision import DEFAULT_MARGIN, DEFAULT_THRESHOLD, decide
    from cordsnet.runtime import StepSession

    X, y = digits_split()["test"]
    idx = [int(i) for c in range(10) for i in np.flatnonzero(y == c)[:4]]  # 40 held-out digits, 4 per class
    x = digits_to_tensor(X[idx]).numpy()
    (tmp_path / "in.json").write_text(json.dumps({"images": x.reshape(len(idx), -1).tolist()}))
    res = node(str(artifact), "--input", str(tmp_path / "in.json"), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["threshold"], out["margin"]) == (DEFAULT_THRESHOLD, DEFAULT_MARGIN)  # the manifest's rule
    rule = read_manifest(artifact).decision
    session = StepSession(artifact, providers="cpu")
    np.testing.assert_array_equal(session.baseline_logits(), rule.baseline)  # one baseline for both
    # 1. the decision, image for image, equals the Python runtime's early exit
    until = session.run_until(x, DEFAULT_THRESHOLD)
    node_steps = [r["reaction_time"]["steps"] if r["reaction_time"] else -1 for r in out["results"]]
    node_classes = [r["reaction_time"]["cls"] if r["reaction_time"] else -1 for r in out["results"]]
    assert node_steps == np.where(until.decided, until.steps, -1).tolist()
    assert node_classes == np.where(until.decided, until.logits.argmax(-1), -1).tolist()
    assert 0.5 < until.decided.mean() and len(set(node_steps)) > 3  # real, varied decisions
    # 2. step for step: probability and evidence vs decision.decide on the Python runtime's logits
    session.reset(len(idx))
    session.set_image(x)
    z_py = np.stack([session.step() for _ in range(rule.baseline.shape[0])])  # (T, B, K)
    z_node = np.stack([r["logits_per_step"] for r in out["results"]], axis=1)
    delta = float(np.abs(z_node - z_py).max())  # the two onnxruntime builds' float32 difference
    assert delta <= 1e-4 * float(np.abs(z_py).max())
    # evidence = lead(z)[c] - lead(b)[c]: b is shared bit for bit, lead(z) moves by <= 2 delta;
    # log p = z_c - logsumexp(z) moves by <= 2 delta, so p by <= p (e^{2 delta} - 1) <= 2.01 delta.
    for t in range(z_py.shape[0]):
        want = decide(z_py[t], rule.baseline[t], DEFAULT_THRESHOLD, DEFAULT_MARGIN)
        got = [r["decisions"][t] for r in out["results"]]
        assert [g["cls"] for g in got] == want.classes.tolist()
        np.testing.assert_allclose([g["evidence"] for g in got], want.evidence, rtol=0, atol=2 * delta + 1e-12)
        np.testing.assert_allclose([g["p"] for g in got], want.probabilities, rtol=0, atol=2.01 * delta + 1e-12)
        assert [g["decided"] for g in got] == want.decided.tolist()


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


def test_node_refuses_a_manifest_without_or_with_a_bad_decision_rule(artifact, tmp_path):
    from cordsnet.artifact import manifest_path

    data = json.loads(manifest_path(artifact).read_text())
    for name, change, match in [
        ("none", lambda d: d.pop("decision"), 'no "decision" block'),
        ("short", lambda d: d["decision"]["baseline"].update(shape=[99, 10]), "decision.baseline.shape"),
        ("rule", lambda d: d["decision"].update(rule="cordsnet.decision/2"), "decision.rule"),
    ]:
        bad = json.loads(json.dumps(data))
        change(bad)
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
        res = node(str(artifact), "--manifest", str(tmp_path / f"{name}.json"))
        assert res.returncode == 1 and match in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
