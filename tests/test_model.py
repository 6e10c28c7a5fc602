"""CordsNet against the specification: parity with an independent re-statement, the step API, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from _reference import max_rel_error, reference_run
from helpers import published_model
from cordsnet.config import CordsNetConfig
from cordsnet.model import CordsNet, DriveTerms
from cordsnet import functional as CF

# float32 against the float64 re-statement: max |Δlogit| <= TOL * max |logit| (the project's parity rule;
# measured ~1e-6 here: 200 float32 steps with the contraction of stable dynamics keep rounding small).
TOL = 1e-4


@pytest.mark.parametrize("depth", [2, 4, 6, 8])
def test_full_protocol_matches_reference(depth):
    """100 spontaneous + 100 stimulus steps at 32 px, float64 and float32, against docs/specification.md §3 restated."""
    sd, model = published_model(depth=depth, size=32, classes=7, seed=depth)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(depth))
    ref = reference_run(sd, x, steps=100, spontaneous_steps=100)
    assert ref.abs().max() > 0.1  # non-trivial logits
    with torch.no_grad():
        out32 = model.run(x)
        out64 = model.double().run(x.double())
    assert out32.shape == (2, 7)
    assert max_rel_error(out64, ref) <= 1e-10
    assert max_rel_error(out32, ref) <= TOL


@pytest.mark.heavy
@pytest.mark.parametrize("depth", [2, 8])
def test_published_size_matches_reference(depth):
    """224 px (the published input size), 1000 classes, a shortened protocol."""
    sd, model = published_model(depth=depth, size=224, classes=1000, seed=3)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ref = reference_run(sd, x, steps=4, spontaneous_steps=3)
    with torch.no_grad():
        out = model.run(x, steps=4, spontaneous_steps=3)
    assert max_rel_error(out, ref) <= TOL


def test_grayscale_and_alpha_override():
    sd, model = published_model(depth=4, size=32, classes=10, channels=1, seed=5)
    x = torch.randn(3, 1, 32, 32)
    ref = reference_run(sd, x, steps=7, spontaneous_steps=5, alpha=0.5)
    with torch.no_grad():
        out = model.run(x, steps=7, spontaneous_steps=5, alpha=0.5)
    assert max_rel_error(out, ref) <= TOL


# Tests that compare two code paths of the model run in float64: the paths do the same arithmetic, but
# with other batch shapes (a batch-1 spontaneous state expanded, frame by frame), for which a CPU's
# float32 kernels may pick other algorithms and round differently. In float64 any such difference stays
# ~1e-15 of the values, so 1e-12 proves the paths equal on any machine.
EXACT = 1e-12


def test_step_loop_equals_run():
    _, model = published_model(depth=4, dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model.run(x, steps=6, spontaneous_steps=4)
        state = model.initial_state(2)
        for _ in range(4):
            state = model.step(state, None)
        assert all(torch.allclose(a, b, atol=EXACT) for a, b in zip(state, model.spontaneous_state(2, steps=4)))
        u = model.drive(x)
        terms = model.drive_terms(u)
        state_u = state
        for _ in range(6):
            state = model.step(state, terms)
            state_u = model.step(state_u, u)  # the raw drive gives the same step
        assert torch.equal(model.readout(state), model.readout(state_u))
        assert torch.allclose(model.readout(state), expected, atol=EXACT)


def test_video_of_identical_frames_equals_static_image():
    _, model = published_model(depth=2, dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    video = x.unsqueeze(1).expand(2, 5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.run(video), model.run(x, steps=5), atol=EXACT)
        with pytest.raises(ValueError, match="steps"):
            model.run(video, steps=6)


def test_video_matches_reference():
    sd, model = published_model(depth=4, seed=2)
    video = torch.randn(2, 6, 3, 32, 32)
    ref, ref_rates = reference_run(sd, video, steps=6, spontaneous_steps=5, all_logits=True, record=(1, 3))
    with torch.no_grad():
        out, rates = model.run(video, spontaneous_steps=5, readout="all", record=[1, 3])
    assert max_rel_error(out, ref) <= TOL
    for a in (1, 3):
        assert max_rel_error(rates[a], ref_rates[a]) <= TOL


def test_readout_all_and_record_shapes():
    _, model = published_model(depth=4, dtype=torch.float64)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        last = model.run(x, steps=5, spontaneous_steps=2)
        every, rates = model.run(x, steps=5, spontaneous_steps=2, readout="all", record=[0, 3])
    assert every.shape == (5, 3, 10)
    assert torch.allclose(every[-1], last, atol=EXACT)
    assert set(rates) == {0, 3}
    assert rates[0].shape == (5, 3, 64, 8, 8)
    assert rates[3].shape == (5, 3, 128, 4, 4)
    with torch.no_grad():
        final = _final_state(model, x)
    assert torch.allclose(rates[0][-1], final[0], atol=EXACT)
    assert torch.allclose(rates[3][-1], final[3], atol=EXACT)


def _final_state(model, x):
    state = model.spontaneous_state(x.shape[0], steps=2)
    terms = model.drive_terms(model.drive(x))
    for _ in range(5):
        state = model.step(state, terms)
    return state


def test_spontaneous_state_is_cached_and_invalidated():
    _, model = published_model(depth=2)
    with torch.no_grad():
        first = model.cached_spontaneous_state(10, 0.2)
        assert model.cached_spontaneous_state(10, 0.2) is first  # cached
        assert model.cached_spontaneous_state(11, 0.2) is not first  # step count
        a = model.spontaneous_state(1, steps=10, alpha=0.3)
        b = model.spontaneous_state(1, steps=10, alpha=0.2)
        assert not torch.allclose(a[0], b[0])  # alpha
        before = model.spontaneous_state(1, steps=10)
        model.conv_bias[0].add_(0.5)  # a weight change invalidates
        after = model.spontaneous_state(1, steps=10)
    assert not torch.allclose(before[0], after[0])
    three = model.spontaneous_state(3, steps=10)
    assert three[1].shape[0] == 3 and torch.equal(three[1][0], three[1][2])
    three[0].add_(1.0)  # returned tensors are the caller's own
    assert torch.equal(model.spontaneous_state(1, steps=10)[0], after[0])
    assert any(r.abs().max() > 0 for r in after)  # non-zero biases make it non-trivial


def test_weight_norm_not_rederived_per_step():
    """Weight norm is derived once per layer per protocol call, not once per step; inside PyTorch's
    ``parametrize.cached()`` once for the whole block, step-by-step calls included.

    Counted through PyTorch's public hooks: every derivation of a parametrized weight calls the
    layer's parametrization module (``layer.parametrizations.weight``), whose forward hooks fire.
    """
    _, model = published_model(depth=4)
    calls = {"n": 0}
    layers = [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]
    handles = [m.parametrizations.weight.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
               for m in layers]
    try:
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            model.run(x, steps=20, spontaneous_steps=20)
            first = calls["n"]
            with parametrize.cached():  # the standard cache: one derivation for the whole block
                model.run(x, steps=20, spontaneous_steps=20)
                state = model.spontaneous_state(1, steps=3)
                for _ in range(5):
                    state = model.step(state, None)
                model.readout(state)
                cached = calls["n"] - first
            model.step(state, None)  # outside the block: derived again
    finally:
        for h in handles:
            h.remove()
    n_weight_normed = 1 + 1 + 4 + 4 + 1 + 1  # inp_conv, inp_skip, area_conv, area_area, skip_area, out_fc
    assert len(layers) == n_weight_normed
    assert first == n_weight_normed  # derived through the parametrization, once per layer, not per step
    assert cached == n_weight_normed  # once for the whole cached block (a run and six step-by-step calls)
    assert calls["n"] == 3 * n_weight_normed


def test_drive_is_computed_once_per_image(monkeypatch):
    _, model = published_model(depth=4)
    calls = {"drive": 0, "terms": 0}
    drive, terms = CF.drive, CF.drive_terms
    monkeypatch.setattr(CF, "drive", lambda *a: calls.__setitem__("drive", calls["drive"] + 1) or drive(*a))
    monkeypatch.setattr(CF, "drive_terms", lambda *a: calls.__setitem__("terms", calls["terms"] + 1) or terms(*a))
    with torch.no_grad():
        model.run(torch.randn(2, 3, 32, 32), steps=12, spontaneous_steps=5)
    assert calls == {"drive": 1, "terms": 1}


def test_gradients_reach_g_and_v():
    _, model = published_model(depth=2)
    model.train()
    loss = model.run(torch.randn(2, 3, 32, 32), steps=3, spontaneous_steps=2).logsumexp(-1).sum()
    loss.backward()
    assert model.area_conv[0].parametrizations.weight.original0.grad is not None
    assert model.area_conv[0].parametrizations.weight.original1.grad.abs().sum() > 0
    assert model.inp_conv.parametrizations.weight.original1.grad.abs().sum() > 0


def test_config_overrides_and_architecture():
    model = CordsNet(depth=8)
    assert sum(p.numel() for p in model.parameters()) == 12_475_280
    assert len(model.state_dict()) == 53
    assert CordsNet(CordsNetConfig(depth=2, num_classes=5)).out_fc.bias.shape == (5,)
    with pytest.raises(ValueError, match="depth"):
        CordsNet(depth=3)
    with pytest.raises(ValueError, match="image_size"):
        CordsNet(image_size=100)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: torch.randn(2, 1, 32, 32), ValueError, "channel"),
        (lambda: torch.randn(2, 3, 32, 64), ValueError, "non-square"),
        (lambda: torch.randn(2, 3, 64, 64), ValueError, "32x32"),
        (lambda: torch.randn(3, 32, 32), ValueError, "rank 3"),
        (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating"),
        (lambda: torch.full((2, 3, 32, 32), float("nan")), ValueError, "finite"),
        (lambda: [[0.0]], TypeError, "Tensor"),
    ],
)
def test_bad_images_are_refused(make, error, match):
    _, model = published_model(depth=2)
    with pytest.raises(error, match=match):
        model.run(make(), steps=2, spontaneous_steps=0)


def test_bad_state_and_arguments_are_refused():
    _, model = published_model(depth=2)
    state = model.initial_state(2)
    u = model.drive(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="expected 2 tensors"):
        model.step(state[:1], u)
    with pytest.raises(ValueError, match=r"state\[1\]"):
        model.step((state[0], torch.zeros(2, 64, 4, 4)), u)
    with pytest.raises(ValueError, match="batch"):
        model.step((state[0], torch.zeros(3, 64, 8, 8)), u)
    with pytest.raises(ValueError, match="drive"):
        model.step(state, torch.zeros(2, 64, 4, 4))
    with pytest.raises(ValueError, match="drive.skip"):
        model.step(state, DriveTerms(torch.zeros(1, 64, 8, 8), u))
    with pytest.raises(ValueError, match="readout"):
        model.run(torch.randn(1, 3, 32, 32), readout="first")
    with pytest.raises(ValueError, match="record"):
        model.run(torch.randn(1, 3, 32, 32), steps=1, record=[2])
    with pytest.raises(ValueError, match="alpha"):
        model.run(torch.randn(1, 3, 32, 32), alpha=1.5)
    with pytest.raises(ValueError, match="steps"):
        model.run(torch.randn(1, 3, 32, 32), steps=0)
    with pytest.raises(ValueError, match="batch"):
        model.initial_state(0)


# ------------------------------------------------------------------------------- early exit
def _decisions_of_run(model, x, threshold, steps, spont, margin=1.0):
    from cordsnet.decision import first_decisions

    with torch.no_grad():
        every = model.run(x, steps=steps, spontaneous_steps=spont, readout="all")
        base = model.run(torch.zeros_like(x[:1]), steps=steps, spontaneous_steps=spont, readout="all")[:, 0]
    return every, first_decisions(every.numpy(), base.numpy(), threshold, margin)


def test_run_until_stops_each_image_where_its_reaction_time_is(monkeypatch):
    """run_until = run(readout="all") + the reaction-time criterion, image by image (float64: exact)."""
    _, model = published_model(depth=2, classes=4, dtype=torch.float64, seed=7)
    x = torch.cat([torch.zeros(1, 3, 32, 32, dtype=torch.float64),  # blank: never decides
                   3 * torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)])
    every, expected = _decisions_of_run(model, x, 0.36, steps=12, spont=6, margin=0.25)
    assert (expected.steps > 0).sum() >= 2 and (expected.steps < 0).sum() >= 2  # a mixed batch
    batches = []
    step = CF.step
    monkeypatch.setattr(CF, "step", lambda d, w, s, *a: batches.append(s[0].shape[0]) or step(d, w, s, *a))
    out = model.run_until(x, 0.36, max_steps=12, margin=0.25, spontaneous_steps=6)
    stop = torch.from_numpy(np.where(expected.steps > 0, expected.steps, 12))
    assert torch.equal(out.steps, stop)
    assert torch.equal(out.decided, torch.from_numpy(expected.steps > 0))
    assert not out.decided[0] and out.steps[0] == 12 and not out.converged.any()
    torch.testing.assert_close(out.logits, every[stop - 1, torch.arange(8)], rtol=0, atol=EXACT)
    # Only undecided images keep running: the stimulus batch shrinks as images decide (plus the
    # batch-1 baseline in lockstep).
    stimulus = [b for b in batches if b != 1 or len(x) == 1]
    assert stimulus[0] == 8 and stimulus == sorted(stimulus, reverse=True)
    assert stimulus[-1] == int((out.steps == 12).sum())
    assert sum(stimulus) == int(out.steps.sum())  # work done = steps used, image by image


def test_run_until_convergence_and_errors():
    _, model = published_model(depth=2, dtype=torch.float64)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        huge = model.run_until(x, 0.99, max_steps=5, tol=1e9, spontaneous_steps=3)
        none = model.run_until(x, 0.99, max_steps=5, tol=1e-300, spontaneous_steps=3)
    assert huge.steps.tolist() == [1, 1, 1] and huge.converged.all()
    assert none.steps.tolist() == [5, 5, 5] and not none.converged.any()
    with torch.no_grad():
        last = model.run(x, steps=5, spontaneous_steps=3)
    torch.testing.assert_close(none.logits[~none.decided], last[~none.decided], rtol=0, atol=EXACT)
    with pytest.raises(ValueError, match="threshold"):
        model.run_until(x, 0.1)  # 1/K for K = 10: no condition at all
    with pytest.raises(ValueError, match="max_steps"):
        model.run_until(x, 0.9, max_steps=0)
    with pytest.raises(ValueError, match="tol"):
        model.run_until(x, 0.9, tol=-1.0)
    with pytest.raises(ValueError, match="sequence"):
        model.run_until(x.unsqueeze(1).expand(3, 4, 3, 32, 32), 0.9)
    with pytest.raises(ValueError, match="NaN or infinite at step 1"):  # never a ranking of NaN logits
        model.run_until(torch.full((1, 3, 32, 32), 1e308, dtype=torch.float64), 0.9, max_steps=3)


def test_trajectory_send_selects_rows():
    """The one time loop can drop rows mid-run (what run_until uses); plain iteration is unchanged."""
    _, model = published_model(depth=2, dtype=torch.float64)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    W = model.effective_weights()
    terms = model.drive_terms(model.drive(x))
    with torch.no_grad():
        full = list(CF.trajectory(model.dynamics, W, model.spontaneous_state(4, steps=2), terms, 4, 0.2))
        gen = CF.trajectory(model.dynamics, W, model.spontaneous_state(4, steps=2), terms, 4, 0.2)
        first = next(gen)
        second = gen.send(torch.tensor([1, 3]))  # continue rows 1 and 3 only
        third = gen.send(torch.tensor([1]))  # then only the original row 3
        fourth = next(gen)
    assert torch.equal(first[0], full[0][0])
    torch.testing.assert_close(second[0], full[1][0][[1, 3]], rtol=0, atol=EXACT)
    torch.testing.assert_close(third[1], full[2][1][[3]], rtol=0, atol=EXACT)
    torch.testing.assert_close(fourth[1], full[3][1][[3]], rtol=0, atol=EXACT)
