"""The functional core (cordsnet.functional): the model's validated methods are these functions, and the
one time loop's row compaction (what run_until relies on) continues exactly the rows it keeps."""

from __future__ import annotations

import torch

from cordsnet import functional as CF
from helpers import make_images, published_model


def test_the_model_methods_are_the_functions():
    _, model = published_model(depth=4, dtype=torch.float64)
    x = make_images(3, 3, 32).double()
    dyn, w = model.dynamics, model.effective_weights()
    with torch.no_grad():
        u = CF.drive(w, x)
        assert torch.equal(u, model.drive(x))
        terms = CF.drive_terms(dyn, w, u)
        state = model.spontaneous_state(3, steps=4)
        assert all(torch.equal(a, b) for a, b in zip(CF.step(dyn, w, state, terms, 0.2), model.step(state, terms, 0.2)))
        assert torch.equal(CF.readout(dyn, w, state), model.readout(state))


def test_trajectory_sent_rows_continue_exactly_those_rows():
    _, model = published_model(depth=4, dtype=torch.float64)
    x = make_images(4, 3, 32).double()
    dyn, w = model.dynamics, model.effective_weights()
    with torch.no_grad():
        terms = CF.drive_terms(dyn, w, CF.drive(w, x))
        start = model.spontaneous_state(4, steps=2)
        full = list(CF.trajectory(dyn, w, start, terms, 5, 0.2))
        gen = CF.trajectory(dyn, w, start, terms, 5, 0.2)
        next(gen), next(gen)
        kept = gen.send(torch.tensor([1, 3]))  # step 3 runs rows 1 and 3 only
        rest = [kept, *gen]
    for t, state in enumerate(rest, start=2):
        for a, b in zip(state, full[t]):
            torch.testing.assert_close(a, b[[1, 3]], rtol=0, atol=1e-12)
