"""The one recording core (simulate_batch / make_plan) and its .npy writer, against CordsNet.run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordsnet.analysis.recording import make_plan, record_activity, simulate_batch
from cordsnet import functional as CF


def test_core_equals_run_for_areas_and_logits(small_model, images):
    x = images(3, 3, 32, seed=4)
    spont, steps = 3, 4
    plan = make_plan(small_model, [0, 1], logits=True, steps=steps, spontaneous_steps=spont)
    assert plan.window == (0, spont + steps) and plan.shapes == {"area_0": (64, 8, 8), "area_1": (64, 8, 8),
                                                                 "logits": (10,)}
    got = {t: {k: v.clone() for k, v in vals.items()} for t, vals in simulate_batch(small_model, x, plan)}
    assert sorted(got) == list(range(spont + steps))
    with torch.no_grad():
        logits, rates = small_model.run(x, steps=steps, spontaneous_steps=spont, readout="all", record=[0, 1])
        blank = list(CF.trajectory(small_model.dynamics, small_model.effective_weights(), small_model.initial_state(1),
                                                      None, spont, small_model.config.alpha))
    for t in range(spont, spont + steps):  # the stimulus phase is run's trajectory, bit for bit
        assert torch.equal(got[t]["area_1"], rates[1][t - spont]) and torch.equal(got[t]["logits"], logits[t - spont])
    for t in range(spont):  # the blank phase: the batch-1 spontaneous trajectory, the same for every trial
        assert got[t]["area_0"].shape == (3, 64, 8, 8)
        assert torch.equal(got[t]["area_0"], blank[t][0].expand(3, -1, -1, -1))
    assert torch.equal(got[spont - 1]["area_1"][0], small_model.spontaneous_state(1, steps=spont)[1][0])


def test_core_window_spatial_mean_and_sequences(small_model, images):
    x = images(2, 3, 32, seed=5)
    plan = make_plan(small_model, 1, window=(2, 5), spatial_mean=True, steps=4, spontaneous_steps=3)
    out = [(t, v["area_1"].clone()) for t, v in simulate_batch(small_model, x, plan)]
    assert [t for t, _ in out] == [2, 3, 4] and out[0][1].shape == (2, 64)
    np.testing.assert_allclose(plan.times_ms, [0.0, 2.0, 4.0])  # index P-1 is onset: (t + 1 - P) * dt
    with torch.no_grad():
        _, rates = small_model.run(x, steps=4, spontaneous_steps=3, record=[1])
    torch.testing.assert_close(out[1][1], rates[1][0].mean(dim=(2, 3)), rtol=0, atol=0)

    seq = torch.stack([x, -x, x], dim=1)  # (B, T=3, C, S, S): frame t drives step t
    plan = make_plan(small_model, [0], frames=3, spontaneous_steps=2, window=(2, 4))
    got = [v["area_0"].clone() for _, v in simulate_batch(small_model, seq, plan)]
    with torch.no_grad():
        _, rates = small_model.run(seq, spontaneous_steps=2, record=[0])
    assert len(got) == 2 and all(torch.equal(g, r) for g, r in zip(got, rates[0][:2]))
    with pytest.raises(ValueError, match="images: expected a \\(B, 3"):
        next(simulate_batch(small_model, x, plan))


def test_plan_errors(small_model):
    with pytest.raises(ValueError, match="areas: expected at least one area"):
        make_plan(small_model, [])
    with pytest.raises(ValueError, match="window: expected 0 <= start < stop <= 7"):
        make_plan(small_model, [0], window=(0, 8), steps=4, spontaneous_steps=3)
    with pytest.raises(ValueError, match="dtype"):
        make_plan(small_model, [0], dtype="int8")
    with pytest.raises(ValueError, match="areas"):
        make_plan(small_model, [5])
    with pytest.raises(TypeError, match="model: expected a CordsNet"):
        make_plan(object(), [0])
    assert make_plan(small_model, (), logits=True).shapes == {"logits": (10,)}


def test_npy_writer_chunks_and_float16_equal_the_core(small_model, images, tmp_path):
    x = images(5, 3, 32, seed=6)
    rec = record_activity(small_model, x, [0, 1], out=tmp_path / "r.npy", window=(1, 6), steps=4,
                          spontaneous_steps=2, batch_size=2, dtype="float16", spatial_mean=True)
    plan = make_plan(small_model, [0, 1], window=(1, 6), steps=4, spontaneous_steps=2, spatial_mean=True)
    # The writer simulates batches of 2 with the same core: the same batches give the same numbers.
    full = np.concatenate([np.stack([v["area_1"].numpy().copy() for _, v in simulate_batch(small_model, x[i:i + 2],
                                                                                            plan)])
                           for i in (0, 2, 4)], axis=1)
    stored = rec.load(1)
    assert stored.shape == (5, 5, 64) and stored.dtype == np.float16
    np.testing.assert_array_equal(stored, full.astype(np.float16))
    assert rec.shapes[0] == (5, 5, 64) and rec.to_dict()["window"] == [1, 6]


def test_blank_phase_reuse_gives_the_same_variables(small_model, images):
    from cordsnet.analysis.recording import blank_phase

    x = images(2, 3, 32, seed=7)
    plan = make_plan(small_model, [0, 1], logits=True, window=(1, 6), steps=3, spontaneous_steps=3)
    blank = blank_phase(small_model, plan)
    assert blank is not None and len(blank) == 2 and blank[0]["area_0"].shape == (1, 64, 8, 8)
    fresh = [(t, {k: v.clone() for k, v in vals.items()}) for t, vals in simulate_batch(small_model, x, plan)]
    reused = [(t, {k: v.clone() for k, v in vals.items()}) for t, vals in simulate_batch(small_model, x, plan, blank)]
    assert [t for t, _ in fresh] == [t for t, _ in reused] == [1, 2, 3, 4, 5]
    for (_, a), (_, b) in zip(fresh, reused):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert blank_phase(small_model, plan, max_bytes=0) is None  # too large to keep: simulated per batch
    assert blank_phase(small_model, make_plan(small_model, [0], window=(3, 6), steps=3, spontaneous_steps=3)) is None
