"""Analysis: spectra vs dense solves, power iteration, reaction times, streamed recording, protocols, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from cordsnet.analysis import (
    arnoldi,
    arnoldi_eigenvalues,
    build_stimulus,
    conv_to_matrix,
    dynamics_operator,
    dynamics_spectrum,
    measure_reaction_times,
    protocol_segments,
    reaction_times,
    record_activity,
    recurrent_spectrum,
    spectral_radius,
    top_eigenvector,
)
from cordsnet.analysis.protocols import parse_protocol
from cordsnet.checkpoint import load_checkpoint, save_checkpoint


def _wn_conv(cin: int, cout: int, seed: int, stride: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False))
    with torch.no_grad():  # g != ||v||: the effective weight differs from v
        conv.parametrizations.weight.original0.mul_(0.4 + torch.rand_like(conv.parametrizations.weight.original0))
    return conv


def _dense_top(matrix: np.ndarray, k: int) -> np.ndarray:
    ev = np.linalg.eigvals(matrix)
    return ev[np.argsort(-np.abs(ev), kind="stable")][:k]


def _assert_same_eigenvalues(found: np.ndarray, expected: np.ndarray, tol: float = 1e-4) -> None:
    """Same multiset up to tol (conjugate pairs may come in either order)."""
    assert found.shape == expected.shape
    np.testing.assert_allclose(np.sort(np.abs(found)), np.sort(np.abs(expected)), atol=tol)
    for z in found:
        assert np.abs(expected - z).min() < tol, (z, expected)


# -------------------------------------------------------------------------------------- spectra
def test_conv_to_matrix_is_the_convolution():
    conv = _wn_conv(3, 5, seed=0, stride=2)  # weight-normalised, strided: non-square
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    m = conv_to_matrix(conv, (3, 6, 6), batch_size=7)
    assert m.shape == (5 * 3 * 3, 3 * 6 * 6)
    with torch.no_grad():
        y = nn.functional.conv2d(x, conv.weight.double(), stride=2, padding=1)
    np.testing.assert_allclose(m @ x.numpy().ravel(), y.numpy().ravel(), atol=1e-12)


@pytest.mark.parametrize("shape, krylov_dim", [((4, 6, 6), None), ((6, 8, 8), 250)])
def test_arnoldi_matches_dense_eig(shape, krylov_dim):
    conv = _wn_conv(shape[0], shape[0], seed=1)
    expected = _dense_top(conv_to_matrix(conv, shape), 12)
    spec = arnoldi(conv, shape, 12, krylov_dim=krylov_dim)
    assert spec.krylov_dim == min(krylov_dim or 300, math.prod(shape))
    _assert_same_eigenvalues(spec.eigenvalues, expected)
    assert np.all(np.diff(np.abs(spec.eigenvalues)) <= 1e-12)  # by decreasing modulus
    assert spec.converged(1e-6).all()
    assert spec.radius == pytest.approx(np.abs(expected[0]), abs=1e-4)


def test_arpack_method_matches_dense_eig_with_exact_residuals(small_model):
    shape = (6, 8, 8)
    conv = _wn_conv(6, 6, seed=2)
    expected = _dense_top(conv_to_matrix(conv, shape), 8)
    spec = arnoldi(conv, shape, 8, method="arpack", krylov_dim=40, return_vectors=True)
    assert spec.info["method"] == "arpack" and spec.krylov_dim == 40
    _assert_same_eigenvalues(spec.eigenvalues, expected)
    assert spec.converged(1e-6).all()
    with torch.no_grad():
        w = conv.weight.double()
        v = torch.from_numpy(spec.vectors[0])[None]
        av = torch.complex(nn.functional.conv2d(v.real, w, padding=1), nn.functional.conv2d(v.imag, w, padding=1))
    assert float((av - spec.eigenvalues[0] * v).abs().pow(2).sum().sqrt()) == pytest.approx(spec.residuals[0], abs=1e-9)
    with pytest.raises(ValueError, match="method"):
        arnoldi(conv, shape, 2, method="lanczos")


def test_arnoldi_on_model_area_and_ritz_vectors(small_model):
    spec = recurrent_spectrum(small_model, 1, k=4, krylov_dim=120, return_vectors=True)
    assert spec.name == "area_conv.1" and spec.dimension == 4096 and spec.krylov_dim == 120
    weight = small_model.area_conv[1].weight.detach().double()
    for lam, vec, res in zip(spec.eigenvalues, spec.vectors, spec.residuals):
        v = torch.from_numpy(vec)[None]
        av = torch.complex(nn.functional.conv2d(v.real, weight, padding=1),
                           nn.functional.conv2d(v.imag, weight, padding=1))
        assert float((av - lam * v).abs().pow(2).sum().sqrt()) == pytest.approx(res, abs=1e-8)
    assert spectral_radius(small_model, 1, krylov_dim=120) == pytest.approx(spec.radius, rel=1e-9)


def test_arnoldi_callable_with_outliers_partial_krylov():
    rng = np.random.default_rng(0)
    n = 400
    basis = np.linalg.qr(rng.standard_normal((n, n)))[0]
    outliers = np.array([3.0, -2.5, 2.0, 1.6])
    diag = np.concatenate([outliers, rng.uniform(-0.5, 0.5, n - 4)])
    block = np.array([[1.2, -1.9], [1.9, 1.2]])  # a complex pair 1.2 +- 1.9j, in the eigenbasis
    a = basis @ (np.diag(diag) + np.pad(block, ((4, n - 6), (4, n - 6)))) @ basis.T
    t = torch.from_numpy(a)
    expected = _dense_top(a, 6)
    spec = arnoldi(lambda x: x.reshape(1, -1) @ t.T, (n,), 6, krylov_dim=80)
    _assert_same_eigenvalues(spec.eigenvalues, expected, tol=1e-8)
    assert spec.converged(1e-8).all()
    pair = spec.eigenvalues[np.abs(spec.eigenvalues.imag) > 0]
    assert len(pair) == 2 and pair[0].imag > 0  # positive imaginary part first


def test_arnoldi_handles_invariant_subspaces_and_affine_callables():
    np.testing.assert_allclose(arnoldi_eigenvalues(lambda x: 2 * x, (30,), 3, krylov_dim=10), [2, 2, 2])
    np.testing.assert_allclose(arnoldi_eigenvalues(lambda x: 0 * x, (30,), 3, krylov_dim=10), [0, 0, 0])
    conv = _wn_conv(2, 2, seed=3)
    with torch.no_grad():
        affine = lambda x: conv(x.float()).double() + 5.0  # noqa: E731 - constant removed by arnoldi
    expected = _dense_top(conv_to_matrix(conv, (2, 4, 4)), 4)
    _assert_same_eigenvalues(arnoldi_eigenvalues(affine, (2, 4, 4), 4), expected, tol=1e-5)


def test_spectrum_argument_errors(small_model):
    conv = _wn_conv(2, 3, seed=0)
    with pytest.raises(ValueError, match="square"):
        arnoldi(conv, (2, 4, 4), 2)
    with pytest.raises(ValueError, match="k: expected at most"):
        arnoldi(_wn_conv(2, 2, seed=0), (2, 2, 2), 9)
    with pytest.raises(ValueError, match="area"):
        spectral_radius(small_model, 5)
    with pytest.raises(ValueError, match="dynamics"):
        spectral_radius(small_model, "jacobian")
    with pytest.raises(TypeError, match="operator"):
        arnoldi(42, (2, 2, 2), 1)


def test_top_eigenvector_with_spectral_gap():
    rng = np.random.default_rng(1)
    n = 60
    basis = np.linalg.qr(rng.standard_normal((n, n)))[0]
    for top in (2.0, -2.0):  # a negative dominant eigenvalue flips sign every iteration
        diag = np.concatenate([[top], rng.uniform(-1.0, 1.0, n - 1)])
        a = torch.from_numpy(basis @ np.diag(diag) @ basis.T)
        res = top_eigenvector(lambda x: x @ a.T, (n,), starts=16, iterations=500)
        assert res.eigenvalue == pytest.approx(top, abs=1e-8)
        assert abs(float(res.vector @ torch.from_numpy(basis[:, 0]))) == pytest.approx(1.0, abs=1e-8)
        assert res.agreement > 1 - 1e-8 and res.iterations < 500


def test_top_eigenvector_of_a_convolution_and_no_gap_warning():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
    with torch.no_grad():  # a positive kernel: Perron-Frobenius gives a real, gapped top eigenvalue
        conv.weight.copy_(torch.rand_like(conv.weight) * 0.2)
    dense = _dense_top(conv_to_matrix(conv, (2, 5, 5)), 2)
    res = top_eigenvector(conv, (2, 5, 5), iterations=2000)
    assert res.eigenvalue == pytest.approx(dense[0].real, abs=1e-6)
    assert res.vector.shape == (2, 5, 5)
    rotation = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # eigenvalues +-i: no gap
    with pytest.warns(RuntimeWarning, match="did not converge"):
        top_eigenvector(lambda x: x @ rotation.T, (2,), iterations=50)


def test_dynamics_jacobian_is_the_jvp_and_matches_block_spectra(published_sd):
    model = load_checkpoint(published_sd(depth=2, image_size=32, seed=4))
    op, n, info = dynamics_operator(model, spontaneous_steps=20)
    assert n == sum(math.prod(s) for s in model.config.state_shapes)
    assert info["fixed_point_residual"] >= 0
    # Linear stage (update slope 1): J is block lower triangular with diagonal blocks
    # (1 - alpha) I + alpha W_i, so its eigenvalues are 1 - alpha + alpha * eig(W_i). Keep W_i small
    # (only 2 output channels non-zero) so the dense spectra are cheap.
    sd = published_sd(depth=2, image_size=32, seed=5)
    for i in range(2):
        g = sd[f"area_conv.{i}.parametrizations.weight.original0"]
        g[2:] = 0.0
        g[:2] = 2.0 + i  # large enough to put outliers outside the bulk at 1 - alpha
    lin = load_checkpoint(sd)
    lin.update_slope = 1.0
    alpha = lin.config.alpha
    expected_parts = []
    for i in range(2):
        sub = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            sub.weight.copy_(lin.area_conv[i].weight[:2, :2])
        expected_parts.append(1 - alpha + alpha * np.linalg.eigvals(conv_to_matrix(sub, (2, 8, 8))))
    allv = np.concatenate(expected_parts + [np.full(n, 1 - alpha)])
    allv = allv[np.argsort(-np.abs(allv), kind="stable")]
    spec = dynamics_spectrum(lin, k=6, spontaneous_steps=10, krylov_dim=100)
    _assert_same_eigenvalues(spec.eigenvalues, allv[:6], tol=1e-6)
    assert spec.info["stable"] == (spec.radius < 1)
    assert spectral_radius(lin, "dynamics", spontaneous_steps=10, krylov_dim=50) == pytest.approx(
        spec.radius, rel=1e-5)


def test_dynamics_jvp_matches_autograd(published_sd):
    model = load_checkpoint(published_sd(depth=4, image_size=32, seed=6))
    op, n, _ = dynamics_operator(model, spontaneous_steps=5)
    state = model.double().spontaneous_state(1, steps=5)
    shapes = model.config.state_shapes
    sizes = [math.prod(s) for s in shapes]

    def f(flat):
        parts = tuple(p.reshape(1, *s) for p, s in zip(torch.split(flat, sizes, dim=1), shapes))
        return torch.cat([r.reshape(1, -1) for r in model.step(parts, None)], dim=1)

    point = torch.cat([s.reshape(1, -1) for s in state], dim=1)
    v = torch.randn(1, n, dtype=torch.float64)
    _, expected = torch.autograd.functional.jvp(f, point, v)
    torch.testing.assert_close(op(v), expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------- reaction times
def test_reaction_times_on_constructed_logits():
    big = 10.0
    logits = torch.zeros(5, 4, 3)  # (steps, B, K); zeros = probability 1/3 each, the baseline here
    logits[2:, 0, 1] = big  # trial 0: class 1 from step index 2 on
    logits[:, 1, 0] = 0.5  # trial 1: never confident
    logits[:, 2, 2] = big  # trial 2: class 2 from the first step
    baseline = torch.zeros(3)
    rt = reaction_times(logits, 0.9, baseline=baseline, alpha=0.2, tau_ms=10.0)
    assert rt.steps.tolist() == [3, -1, 1, -1]  # trial 3 is the baseline itself: never
    assert rt.classes.tolist() == [1, -1, 2, -1]
    assert rt.final_classes.tolist() == [1, 0, 2, 0]
    np.testing.assert_allclose(rt.ms, [6.0, np.nan, 2.0, np.nan])
    assert rt.crossed.tolist() == [True, False, True, False]
    assert rt.probabilities[0] == pytest.approx(math.exp(big) / (math.exp(big) + 2))
    assert rt.evidence[0] == pytest.approx(big)  # lead of class 1 went from 0 to big
    assert not rt.baseline_crosses and rt.baseline_probability == pytest.approx(1 / 3)
    later = reaction_times(logits.numpy(), 0.9, baseline=np.zeros((5, 3)), alpha=0.1, tau_ms=20.0, onset=1)
    assert later.steps.tolist() == [2, -1, 1, -1] and later.ms[0] == pytest.approx(4.0)
    data = json.loads(json.dumps(rt.to_dict()))
    assert data["ms"][1] is None and data["evidence"][1] is None and data["margin"] == 1.0
    with pytest.raises(ValueError, match="threshold"):
        reaction_times(logits, 1.5, baseline=baseline)
    with pytest.raises(ValueError, match="threshold"):  # 1/K: every top class passes, no condition
        reaction_times(logits, 1 / 3, baseline=baseline)
    with pytest.raises(ValueError, match="steps, B, K"):
        reaction_times(logits[0], 0.5, baseline=baseline)
    with pytest.raises(ValueError, match="baseline"):
        reaction_times(logits, 0.9, baseline=torch.zeros(4))
    with pytest.raises(TypeError, match="baseline"):
        reaction_times(logits, 0.9)  # no default: a reaction time needs the no-image baseline


def test_a_confident_baseline_is_flagged_and_does_not_make_trials_react():
    """The resting network outputs class 0 at p ~ 0.9999: a plain threshold would react at step 1."""
    baseline = torch.tensor([10.0, 0.0, 0.0])
    logits = baseline.repeat(6, 2, 1)  # (6, 2, 3): trial 0 stays at rest
    logits[3:, 1] = torch.tensor([0.0, 12.0, 0.0])  # trial 1: class 1 from step index 3
    with pytest.warns(UserWarning, match="already predicts class 0 at p = 1.000 >= threshold 0.9"):
        rt = reaction_times(logits, 0.9, baseline=baseline)
    assert rt.baseline_crosses and rt.baseline_class == 0
    assert rt.steps.tolist() == [-1, 4] and rt.classes.tolist() == [-1, 1]
    # The same class as the baseline is decided only once the image makes the model surer of it.
    surer = baseline.repeat(4, 1, 1)
    surer[2:, 0, 0] = 10.5  # lead +0.5: below the margin of 1
    with pytest.warns(UserWarning, match="already predicts"):
        assert reaction_times(surer, 0.9, baseline=baseline).steps.tolist() == [-1]
    surer[3:, 0, 0] = 11.5  # lead +1.5
    with pytest.warns(UserWarning, match="already predicts"):
        assert reaction_times(surer, 0.9, baseline=baseline).steps.tolist() == [4]


def test_measure_reaction_times_uses_the_run_logits(small_model, images):
    x = images(3)
    rt = measure_reaction_times(small_model, x, 0.2, steps=6, spontaneous_steps=4)
    with torch.no_grad():
        logits = small_model.run(x, steps=6, spontaneous_steps=4, readout="all")
        base = small_model.run(torch.zeros(1, 3, 32, 32), steps=6, spontaneous_steps=4, readout="all")[:, 0]
    expected = reaction_times(logits, 0.2, baseline=base, alpha=small_model.config.alpha)
    assert rt.steps.tolist() == expected.steps.tolist() and rt.classes.tolist() == expected.classes.tolist()
    blank = measure_reaction_times(small_model, torch.zeros(2, 3, 32, 32), 0.2, steps=6, spontaneous_steps=4)
    assert blank.steps.tolist() == [-1, -1]  # the blank image is the baseline: never reacts


def test_recording_to_disk_equals_in_memory_recording(small_model, images, tmp_path):
    x = images(3)
    spont, steps = 5, 7
    with torch.no_grad():
        _, rates = small_model.run(x, steps=steps, spontaneous_steps=spont, record=[0, 1])
    rec = record_activity(small_model, x, [0, 1], out=tmp_path / "rates.npy", window=(spont, spont + steps),
                          steps=steps, spontaneous_steps=spont)
    assert set(rec.paths) == {0, 1}
    assert rec.paths[1] == tmp_path / "rates_area1.npy"
    for a in (0, 1):
        disk = np.load(rec.paths[a], mmap_mode="r")
        assert disk.shape == rec.shapes[a] == tuple(rates[a].shape)
        np.testing.assert_array_equal(disk, rates[a].numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rates_area0.npy", "rates_area1.npy"]  # no temp files
    np.testing.assert_allclose(rec.times_ms, (np.arange(steps) + 1) * 2.0)

    # Chunked batches give the same numbers. float32 on other batch shapes: a CPU's kernels may round
    # differently, by ~1e-7 relative per step over these few steps; 1e-5 leaves 100x room on any machine.
    chunked = record_activity(small_model, x, 1, out=tmp_path / "chunk.npy", window=(spont, spont + steps),
                              steps=steps, spontaneous_steps=spont, batch_size=2)
    np.testing.assert_allclose(chunked.load(1), rates[1].numpy(), rtol=1e-5, atol=1e-6)


def test_recording_full_window_spatial_mean_float16(small_model, images, tmp_path):
    x = images(2)
    spont, steps = 4, 3
    rec = record_activity(small_model, x, [1], out=tmp_path / "r_{area}.npy", steps=steps, spontaneous_steps=spont,
                          spatial_mean=True, dtype="float16")
    data = rec.load(1)
    assert rec.paths[1].name == "r_1.npy" and data.dtype == np.float16 and data.shape == (spont + steps, 2, 64)
    # Spontaneous phase first (identical for every trial), then the stimulus phase.
    state = small_model.initial_state(1)
    spont_means = []
    with torch.no_grad():
        for _ in range(spont):
            state = small_model.step(state, None)
            spont_means.append(state[1].mean(dim=(2, 3))[0].numpy())
        _, rates = small_model.run(x, steps=steps, spontaneous_steps=spont, record=[1])
    # float16 storage: 2^-11 ~ 4.9e-4 relative precision, so 2e-3 is 4 half-precision ulps.
    for t in range(spont):
        np.testing.assert_allclose(data[t], np.broadcast_to(spont_means[t], (2, 64)), rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(data[spont:], rates[1].mean(dim=(3, 4)).numpy(), rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(rec.times_ms, (np.arange(spont + steps) + 1 - spont) * 2.0)

    part = record_activity(small_model, x, [0], out=tmp_path / "part.npy", window=(2, 6), steps=steps,
                           spontaneous_steps=spont)
    full = record_activity(small_model, x, [0], out=tmp_path / "full.npy", steps=steps, spontaneous_steps=spont)
    np.testing.assert_array_equal(part.load(0), full.load(0)[2:6])
    with pytest.raises(ValueError, match="window"):
        record_activity(small_model, x, [0], out=tmp_path / "bad.npy", window=(3, 99), steps=steps,
                        spontaneous_steps=spont)
    with pytest.raises(ValueError, match="dtype"):
        record_activity(small_model, x, [0], out=tmp_path / "bad.npy", dtype="int8", steps=steps)
    assert not (tmp_path / "bad.npy").exists()


def test_recording_a_protocol_sequence(small_model, images, tmp_path):
    x = images(2)
    seq = build_stimulus(x, "blank:2, stimulus:3:contrast=0.5", alpha=small_model.config.alpha)
    rec = record_activity(small_model, seq, [0], out=tmp_path / "seq.npy", spontaneous_steps=3, window=(3, 8))
    with torch.no_grad():
        _, rates = small_model.run(seq, spontaneous_steps=3, record=[0])
    np.testing.assert_array_equal(rec.load(0), rates[0].numpy())


# ------------------------------------------------------------------------------------ protocols
def test_protocol_shapes_timing_contrast_and_noise(images):
    x = images(2, 3, 32)
    protocol = [{"kind": "blank", "ms": 10}, {"kind": "stimulus", "steps": 4, "contrast": 0.5},
                {"kind": "stimulus", "ms": 4, "noise": 0.3, "frozen": True},
                {"kind": "blank", "steps": 3, "noise": 0.1}]
    segs = protocol_segments(protocol, alpha=0.2, tau_ms=10.0)
    assert [(s.kind, s.start, s.steps) for s in segs] == [("blank", 0, 5), ("stimulus", 5, 4), ("stimulus", 9, 2),
                                                          ("blank", 11, 3)]
    assert segs[1].start_ms == 10.0 and segs[-1].stop_ms == 28.0
    seq = build_stimulus(x, protocol, alpha=0.2, seed=7)
    assert seq.shape == (2, 14, 3, 32, 32)
    assert torch.equal(seq[:, :5], torch.zeros_like(seq[:, :5]))  # blank = the zero (mean-image) input
    torch.testing.assert_close(seq[:, 5:9], 0.5 * x[:, None].expand(-1, 4, -1, -1, -1))
    frozen = seq[:, 9:11] - x[:, None]
    torch.testing.assert_close(frozen[:, 0], frozen[:, 1])  # frozen: one noise image per segment
    assert float(frozen.std()) == pytest.approx(0.3, rel=0.05)
    noise = seq[:, 11:]
    assert float(noise.std()) == pytest.approx(0.1, rel=0.05) and not torch.equal(noise[:, 0], noise[:, 1])
    assert torch.equal(seq, build_stimulus(x, protocol, alpha=0.2, seed=7))  # seeded
    assert not torch.equal(seq, build_stimulus(x, protocol, alpha=0.2, seed=8))
    assert parse_protocol("blank:10ms, stimulus:4:contrast=0.5, stimulus:4ms:noise=0.3:frozen=true, "
                          "blank:3:noise=0.1") == protocol
    # Masking: several named images.
    two = build_stimulus({"target": x, "mask": -x}, "stimulus:1:image=target, stimulus:1:image=mask", alpha=0.2)
    assert torch.equal(two[:, 0], x) and torch.equal(two[:, 1], -x)


def test_protocol_drives_run_and_errors(small_model, images):
    x = images(2)
    seq = build_stimulus(x, "blank:4ms, stimulus:6ms", alpha=small_model.config.alpha)
    assert seq.shape[1] == 5
    with torch.no_grad():
        logits = small_model.run(seq, spontaneous_steps=0, readout="all")
        static = small_model.run(x, steps=3, spontaneous_steps=2, readout="all")
    assert logits.shape == (5, 2, 10)
    # Blank frames = the model's blank: 2 blank + 3 stimulus frames == 2 spontaneous + 3 image steps.
    # (float32, 5 steps, the drive computed per frame vs once: ~1e-7 relative rounding; 1e-5 leaves room.)
    torch.testing.assert_close(logits[2:], static, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="whole number"):
        protocol_segments([{"kind": "blank", "ms": 3}], alpha=0.2)
    with pytest.raises(ValueError, match="kind"):
        protocol_segments([{"kind": "flash", "steps": 3}])
    with pytest.raises(ValueError, match="unknown keys"):
        protocol_segments([{"kind": "blank", "steps": 3, "contrast": 2}])
    with pytest.raises(ValueError, match="exactly one"):
        protocol_segments([{"kind": "blank", "steps": 3, "ms": 6}])


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def cli_files(tmp_path, published_sd):
    from PIL import Image

    model = load_checkpoint(published_sd(depth=2, image_size=32, seed=2), dataset="cifar10")
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        imgs.append(path)
    return model, ckpt, imgs


def test_cli_spectrum_table_json_and_plot(cli_files, tmp_path):
    from cordsnet.cli import app

    model, ckpt, _ = cli_files
    runner = CliRunner()
    plot = tmp_path / "spec.png"
    res = runner.invoke(app, ["analyze", "spectrum", str(ckpt), "--area", "0", "--area", "dynamics", "--k", "4",
                              "--krylov-dim", "40", "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    assert "area_conv.0" in res.output and "dynamics" in res.output and "stable" in res.output
    assert plot.read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["analyze", "spectrum", str(ckpt), "--area", "1", "--k", "3", "--krylov-dim", "60",
                              "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data[0]["name"] == "area_conv.1" and len(data[0]["eigenvalues"]) == 3
    assert data[0]["radius"] == pytest.approx(spectral_radius(model, 1, krylov_dim=60), rel=1e-9)
    res = runner.invoke(app, ["analyze", "spectrum", str(ckpt), "--area", "7"])
    assert res.exit_code == 1 and "--area" in res.output


def test_cli_record_and_reaction_time(cli_files, tmp_path):
    from cordsnet.analysis import load_images
    from cordsnet.cli import app

    model, ckpt, imgs = cli_files
    runner = CliRunner()
    out = tmp_path / "rates.npy"
    res = runner.invoke(app, ["record", str(ckpt), str(imgs[0]), str(imgs[1]), "--areas", "0,1", "--out", str(out),
                              "--steps", "4", "--spontaneous-steps", "3", "--window", "3", "7", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["shapes"]["0"] == [4, 2, 64, 8, 8]
    x = load_images(imgs, model.config)
    with torch.no_grad():
        _, rates = model.run(x, steps=4, spontaneous_steps=3, record=[1])
    np.testing.assert_array_equal(np.load(tmp_path / "rates_area1.npy"), rates[1].numpy())

    res = runner.invoke(app, ["record", str(ckpt), str(imgs[0]), "--areas", "1", "--out", str(tmp_path / "m.npy"),
                              "--steps", "2", "--spontaneous-steps", "1", "--spatial-mean", "--float16"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "m.npy").shape == (3, 1, 64) and np.load(tmp_path / "m.npy").dtype == np.float16

    res = runner.invoke(app, ["reaction-time", str(ckpt), *map(str, imgs), "--threshold", "0.15", "--steps", "5",
                              "--spontaneous-steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    expected = measure_reaction_times(model, x, 0.15, steps=5, spontaneous_steps=2)
    assert data["steps"] == expected.steps.tolist() and data["images"] == [str(p) for p in imgs]
    res = runner.invoke(app, ["reaction-time", str(ckpt), *map(str, imgs), "--threshold", "0.15", "--steps", "5"])
    assert res.exit_code == 0 and "reaction times" in res.output
    res = runner.invoke(app, ["record", str(ckpt), "--areas", "0", "--out", str(out)])
    assert res.exit_code == 1 and "IMAGES" in res.output


def test_protocol_text_refuses_a_bad_frozen_flag():
    from cordsnet.analysis.protocols import parse_protocol

    assert parse_protocol("stimulus:5:noise=0.1:frozen=yes")[0]["frozen"] is True
    assert parse_protocol("stimulus:5:noise=0.1:frozen=0")[0]["frozen"] is False
    with pytest.raises(ValueError, match="frozen expects one of"):
        parse_protocol("stimulus:5:frozen=maybe")
