"""Verification against a stored reference (cordsnet.runtime.reference, cordsnet.export.reference): made where
torch is, checked where it is not, and failing when the graph or the reference is not what it claims."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cordsnet.export import export
from cordsnet.export.reference import make_reference
from cordsnet.runtime.reference import check_reference, load_reference, save_reference
from helpers import run_without_torch


@pytest.fixture(scope="module")
def graph(small_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "r2-loop.onnx"
    export(small_model, path, graph="loop", steps=6, spontaneous_steps=4, verify=False)
    return path


def test_a_reference_round_trips_and_the_graph_passes(small_model, graph, tmp_path):
    ref = make_reference(small_model, graph)
    assert ref.images.shape == (8, 3, 32, 32) and ref.logits.shape == (8, 10) and ref.steps == 6
    path = save_reference(tmp_path / "r.npz", ref)
    back = load_reference(path)
    np.testing.assert_array_equal(back.logits, ref.logits)
    assert back.state_dict_sha256 == ref.state_dict_sha256
    result = check_reference(graph, path)
    assert result.passed and result.max_abs < 1e-4 and result.agreement == 1.0


def test_the_check_needs_no_torch(small_model, graph, tmp_path):
    path = save_reference(tmp_path / "r.npz", make_reference(small_model, graph))
    res = run_without_torch(f"""
        from cordsnet.runtime.reference import check_reference
        print(check_reference({str(graph)!r}, {str(path)!r}).passed)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "True"


def test_a_reference_the_graph_does_not_reproduce_fails_the_cli(small_model, graph, tmp_path):
    ref = make_reference(small_model, graph)
    bad = np.array(ref.logits)
    bad[0, 0] += 10 * (ref.atol + ref.rtol * abs(bad[0, 0]))  # ten times the tolerance at that logit
    path = save_reference(tmp_path / "bad.npz", type(ref)(**{**ref.__dict__, "logits": bad}))
    res = subprocess.run([sys.executable, "-m", "cordsnet.cli", "verify", str(graph), "--reference", str(path),
                          "--json", "--provider", "cpu"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert json.loads(res.stdout)["passed"] is False


def test_other_weights_and_garbage_are_refused_in_one_line(small_model, graph, tmp_path):
    from helpers import published_model

    _, other = published_model(seed=5)
    with pytest.raises(ValueError, match="other weights"):
        make_reference(other, graph)
    ref = make_reference(small_model, graph)
    path = save_reference(tmp_path / "r.npz", type(ref)(**{**ref.__dict__, "steps": 7}))
    with pytest.raises(ValueError, match="steps 6 .reference: 7."):
        check_reference(graph, path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    res = subprocess.run([sys.executable, "-m", "cordsnet.cli", "verify", str(graph), "--reference", str(junk)],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in res.stderr.splitlines() if " cordsnet.cli: " not in line]  # not the phase log
    assert res.returncode == 1 and len(errors) == 1 and errors[0].startswith("Error: reference:"), res.stderr
