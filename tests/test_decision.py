"""cordsnet.decision: the baseline-aware decision criterion shared by reaction times and early exit."""

from __future__ import annotations

import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

from cordsnet.decision import (DEFAULT_MARGIN, baseline_confidence, check_threshold, decide, evidence,
                               first_decisions, lead)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_lead_and_evidence_by_hand() -> None:
    x = np.array([3.0, 1.0, -2.0])
    np.testing.assert_allclose(lead(x), [2.0, -2.0, -5.0])  # x[c] - max of the others
    b = np.array([0.0, 5.0, 0.0])
    np.testing.assert_allclose(lead(b), [-5.0, 5.0, -5.0])
    np.testing.assert_allclose(evidence(x, b), [7.0, -7.0, 0.0])
    # Ties: the top class leads by 0 against its equal rival.
    np.testing.assert_allclose(lead(np.array([1.0, 1.0, 0.0])), [0.0, 0.0, -1.0])


def test_evidence_is_zero_for_the_baseline_and_shift_invariant() -> None:
    b = _rng().normal(size=(7, 10)) * 5
    np.testing.assert_array_equal(evidence(b, b), np.zeros_like(b))
    z = _rng(1).normal(size=(7, 4, 10)) * 5
    shifted = z + _rng(2).normal(size=(7, 4, 1)) * 100  # a constant per step and trial
    np.testing.assert_allclose(evidence(shifted, b[:, None]), evidence(z, b[:, None]), atol=1e-9)


def test_the_baseline_never_decides_at_any_threshold() -> None:
    """The blank image's logits are the baseline: evidence is exactly 0 < margin, however confident."""
    base = _rng(3).normal(size=(50, 10)) * 20  # very confident at rest, drifting
    logits = np.repeat(base[:, None, :], 3, axis=1)
    for threshold in (0.11, 0.5, 0.9, 0.999, 1.0):
        found = first_decisions(logits, base, threshold)
        assert found.steps.tolist() == [-1, -1, -1]
        assert np.isnan(found.probabilities).all() and found.classes.tolist() == [-1, -1, -1]


def test_first_decisions_equals_decide_step_by_step() -> None:
    """The offline rule is the online rule applied at every step (so early exit = reaction time)."""
    rng = _rng(4)
    T, B, K = 30, 16, 5
    base = rng.normal(size=(T, K))
    walk = np.cumsum(rng.normal(scale=0.6, size=(T, B, K)), axis=0)
    walk[:, ::4] *= 0.05  # some trials stay near the baseline
    logits = base[:, None, :] + walk
    for threshold, margin in ((0.6, 0.5), (0.9, 1.0), (0.95, 3.0)):
        found = first_decisions(logits, base, threshold, margin)
        steps = np.full(B, -1)
        for t in range(T):
            d = decide(logits[t], base[t], threshold, margin)
            new = d.decided & (steps < 0)
            steps[new] = t + 1
            if t + 1 in found.steps:
                hit = found.steps == t + 1
                np.testing.assert_array_equal(d.classes[hit], found.classes[hit])
                np.testing.assert_allclose(d.probabilities[hit], found.probabilities[hit])
                np.testing.assert_allclose(d.evidence[hit], found.evidence[hit])
        np.testing.assert_array_equal(steps, found.steps)
        assert (found.steps > 0).any() and (found.steps < 0).any()  # the case is not trivial


def test_constant_baseline_equals_a_repeated_one() -> None:
    rng = _rng(5)
    base = rng.normal(size=6) * 3
    logits = base + np.cumsum(rng.normal(size=(20, 8, 6)), axis=0)
    a = first_decisions(logits, base, 0.8)
    b = first_decisions(logits, np.tile(base, (20, 1)), 0.8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_confidence_and_evidence_are_both_required() -> None:
    base = np.zeros(3)
    confident_no_evidence = np.array([[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])  # p = 1/3
    assert first_decisions(confident_no_evidence, base, 0.5).steps.tolist() == [-1]
    weak = np.array([[[0.9, 0.0, 0.0]]])  # evidence 0.9 < 1, p = 0.55
    assert first_decisions(weak, base, 0.5).steps.tolist() == [-1]
    assert first_decisions(weak, base, 0.5, margin=0.5).steps.tolist() == [1]
    assert first_decisions(weak, base, 0.6, margin=0.5).steps.tolist() == [-1]  # not confident enough


def test_baseline_confidence_and_threshold_bounds() -> None:
    cls, p = baseline_confidence(np.array([[0.0, 0.0], [0.0, 9.0]]))
    assert cls == 1 and p == pytest.approx(1 / (1 + np.exp(-9.0)))
    assert check_threshold(0.9, 10) == 0.9
    for bad in (0.1, 0.0, 1.01, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad, 10)
    assert DEFAULT_MARGIN == 1.0


@pytest.mark.parametrize("call, match", [
    (lambda: first_decisions(np.zeros((4, 3)), np.zeros(3), 0.9), r"logits: expected floating-point logits \(T, B, K\)"),
    (lambda: first_decisions(np.zeros((4, 2, 3)), np.zeros(4), 0.9), r"baseline: expected \(3,\) or \(4, 3\)"),
    (lambda: first_decisions(np.zeros((4, 2, 3)), np.zeros((5, 3)), 0.9), "baseline"),
    (lambda: first_decisions(np.full((4, 2, 3), np.nan), np.zeros(3), 0.9), "finite"),
    (lambda: first_decisions(np.zeros((4, 2, 3), dtype=np.int64), np.zeros(3), 0.9), "floating-point"),
    (lambda: first_decisions(np.zeros((4, 2, 3)), np.zeros(3), 0.9, margin=0), "margin"),
    (lambda: decide(np.zeros((2, 3)), np.zeros(4), 0.9), "baseline: expected 3 classes"),
    (lambda: decide(np.zeros((2, 1)), np.zeros(1), 0.9), "K >= 2"),
])
def test_bad_arguments_name_themselves(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_torch_free() -> None:
    code = "import sys, cordsnet.decision; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------ the manifest block
def _rule(steps: int = 6, k: int = 4, seed: int = 0):
    from cordsnet.decision import DecisionRule

    return DecisionRule(0.9, DEFAULT_MARGIN, _rng(seed).normal(size=(steps, k)) * 3)


def test_decision_rule_round_trips_through_json_exactly() -> None:
    import json

    from cordsnet.decision import RULE, DecisionRule

    rule = _rule()
    block = json.loads(json.dumps(rule.to_manifest()))
    assert list(block) == ["rule", "threshold", "margin", "baseline"] and block["rule"] == RULE
    assert list(block["baseline"]) == ["encoding", "shape", "data"] and block["baseline"]["shape"] == [6, 4]
    back = DecisionRule.from_manifest(block, steps=6, num_classes=4)
    np.testing.assert_array_equal(back.baseline, rule.baseline)  # float32 both ways, bit for bit
    assert (back.threshold, back.margin) == (0.9, DEFAULT_MARGIN)
    z = _rng(1).normal(size=(6, 5, 4)) * 4
    z[:, 0] = rule.baseline  # a blank image: never decides
    got, want = back.first_decisions(z), first_decisions(z, rule.baseline, 0.9, DEFAULT_MARGIN)
    assert (got.steps >= 0).any() and (got.steps < 0).any()  # a case with both outcomes
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _bad(block: dict, path: tuple, value) -> dict:
    import copy

    out = copy.deepcopy(block)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize("path,value,match", [
    (("rule",), "cordsnet.decision/2", "decision.rule"),
    (("threshold",), 0.1, "threshold"),
    (("threshold",), True, "threshold"),
    (("margin",), 0.0, "margin"),
    (("baseline", "encoding"), "base64-float64-le", "encoding"),
    (("baseline", "shape"), [5, 4], r"expected \[6, 4\]"),
    (("baseline", "shape"), [6, 4, 1], r"\[T, K\]"),
    (("baseline", "shape"), [10**9, 4], "shape"),
    (("baseline", "data"), "AAAA", "characters"),
    (("baseline", "data"), "!" * 32, "base64"),
])
def test_decision_block_is_validated(path, value, match) -> None:
    from cordsnet.decision import DecisionRule

    with pytest.raises(ValueError, match=match):
        DecisionRule.from_manifest(_bad(_rule().to_manifest(), path, value), steps=6, num_classes=4)


def test_non_finite_baseline_is_refused() -> None:
    import base64

    from cordsnet.decision import DecisionRule

    block = _rule().to_manifest()
    values = np.zeros((6, 4), "<f4")
    values[2, 1] = np.nan
    block["baseline"]["data"] = base64.b64encode(values.tobytes()).decode()
    with pytest.raises(ValueError, match="finite"):
        DecisionRule.from_manifest(block, steps=6, num_classes=4)


def test_exported_manifests_carry_the_runtimes_baseline(exported_onnx, r2_cifar, tmp_path) -> None:
    """Every graph the runtime can step has the block; its baseline is the runtime's (bit for bit) and
    the PyTorch model's (float32 tolerance); a manifest that lies about it is refused when read."""
    import json

    import torch

    from cordsnet.analysis import baseline_logits
    from cordsnet.artifact import read_manifest
    from cordsnet.decision import DEFAULT_THRESHOLD
    from cordsnet.runtime import open_session

    with torch.no_grad():
        want = baseline_logits(r2_cifar, torch.zeros(1, 3, 32, 32)).numpy()  # (T, K) from the spontaneous state
    for kind in ("stepwise", "stepwise-drive", "all"):
        rule = read_manifest(exported_onnx[kind]).decision
        assert rule is not None, kind
        assert (rule.threshold, rule.margin) == (DEFAULT_THRESHOLD, DEFAULT_MARGIN)
        np.testing.assert_array_equal(rule.baseline, open_session(exported_onnx[kind], "cpu").baseline_logits())
        np.testing.assert_allclose(rule.baseline, want, atol=1e-4, rtol=1e-4)
    for kind in ("unrolled", "loop"):  # readout "last": no per-step logits, no block
        assert read_manifest(exported_onnx[kind]).decision is None
        assert "decision" not in json.loads(Path(str(exported_onnx[kind]) + ".cordsnet.json").read_text())
    # a stale block (another protocol's length) is refused by read_manifest
    src = Path(str(exported_onnx["stepwise"]) + ".cordsnet.json")
    data = json.loads(src.read_text())
    data["decision"]["baseline"]["shape"] = [data["protocol"]["steps"] + 1, 10]
    bad = tmp_path / src.name
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="decision.baseline.shape"):
        read_manifest(bad)
