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

from cordsnet.checkpoint import load_checkpoint
from cordsnet.cli import web
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


# ------------------------------------------------------------------- the manifest against the graph
def refused(*args: str) -> str:
    """Exit status 1, one line on stderr (returned)."""
    res = node(*args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (res.returncode, res.stderr)
    return lines[0]


def test_node_refuses_a_manifest_that_lies_about_a_field_naming_it(artifact, tmp_path):
    """Every field Python's check compares: a lie with a true sha256 and size, refused naming that field alone."""
    from helpers import check_a_client_refuses_every_lie

    check_a_client_refuses_every_lie(artifact, tmp_path, lambda lie: refused(str(artifact), "--manifest", str(lie)))


def test_node_refuses_a_manifest_of_other_bytes_or_another_file(artifact, tmp_path):
    from cordsnet.artifact import manifest_path

    good = json.loads(manifest_path(artifact).read_text())
    for name, change, match in [
        ("sha", lambda d: d["artifact"].update(sha256="0" * 64), "belongs to another artifact"),
        ("size", lambda d: d["artifact"].update(size_bytes=1), "belongs to another artifact"),
        ("file", lambda d: d["artifact"].update(file="other.onnx"), "belongs to \"other.onnx\""),
        ("format", lambda d: d["artifact"].update(format="executorch"), "this program runs onnx"),
    ]:
        data = json.loads(json.dumps(good))
        change(data)
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        assert match in refused(str(artifact), "--manifest", str(tmp_path / f"{name}.json"))


def test_node_refuses_a_graph_without_its_metadata_lacking_a_stated_field_or_truncated(artifact, tmp_path):
    import hashlib

    from helpers import rewrite_onnx_metadata

    from cordsnet.artifact import manifest_path

    bare = rewrite_onnx_metadata(artifact, tmp_path / "bare", lambda p: p.clear())
    assert "is not a cordsnet export (no 'cordsnet.format_version' metadata)" in refused(str(bare))
    lacking = rewrite_onnx_metadata(artifact, tmp_path / "lacking", lambda p: p.pop("cordsnet.exporter"))
    assert "on exporter; " in refused(str(lacking))  # read as "", the manifest says "legacy"
    required = rewrite_onnx_metadata(artifact, tmp_path / "required", lambda p: p.pop("cordsnet.alpha"))
    assert "lacks the metadata key 'cordsnet.alpha'" in refused(str(required))
    truncated = tmp_path / "truncated" / artifact.name
    truncated.parent.mkdir()
    truncated.write_bytes(artifact.read_bytes()[:-1000])  # the metadata_props follow the graph
    data = json.loads(manifest_path(artifact).read_text())
    data["artifact"].update(sha256=hashlib.sha256(truncated.read_bytes()).hexdigest(), size_bytes=truncated.stat().st_size)
    manifest_path(truncated).write_text(json.dumps(data))
    assert "is not a readable ONNX file (truncated, corrupt or not ONNX)" in refused(str(truncated))


def test_node_compares_an_honest_manifest_by_value(artifact, tmp_path):
    """Objects with their keys in another order, a number written otherwise: the same values, accepted."""
    from helpers import python_disagreements

    from cordsnet.artifact import manifest_path

    data = json.loads(manifest_path(artifact).read_text())
    data["config"] = dict(reversed(data["config"].items()))
    data["preset"] = dict(reversed(data["preset"].items()))
    assert python_disagreements(artifact, data) == []
    text = json.dumps(data)
    assert '"alpha": 0.2,' in text
    (tmp_path / "same.json").write_text(text.replace('"alpha": 0.2,', '"alpha": 2.000e-1,'))
    (tmp_path / "in.json").write_text(json.dumps({"images": [[0.0] * 32 * 32]}))
    res = node(str(artifact), "--manifest", str(tmp_path / "same.json"), "--input", str(tmp_path / "in.json"),
               "--steps", "3", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["steps"] == 3
