"""The int8 scheme in PyTorch (fake quantisation for the 'qat' stage) and its exact match with the int8 export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from cordsnet.export import export
from helpers import exact_int8_kernels
from cordsnet.quantization import (RANGE_PREFIX, ActivationRanges, FakeQuant, activation_params,
                                   fake_quantize_weight, quant_points, read_activation_ranges)
from cordsnet.train.forwards import TrainProtocol, calibrate_ranges
from cordsnet import functional as CF

STEPS, SPONT = 4, 3
PROTOCOL = TrainProtocol(steps=STEPS, spontaneous_steps=SPONT, alpha=0.2, recovery_steps=0, penalty_window=1,
                    ce_window=1)


@pytest.fixture(scope="module")
def r4(state_dict_factory):
    from cordsnet.checkpoint import load_checkpoint

    return load_checkpoint(state_dict_factory(depth=4, seed=3))


def _images(n: int, seed: int = 7) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32))


def _fake_quant_run(model, ranges, x: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """Logits after `steps` stimulus steps as the int8 graph computes them (float spontaneous state)."""
    with torch.no_grad():
        spont = model.cached_spontaneous_state(SPONT, 0.2)
        W = model.effective_weights()
        with FakeQuant(model, W, ranges):
            terms = CF.drive_terms(model.dynamics, W, CF.drive(W, x))
            state = tuple(s.expand(x.shape[0], *s.shape[1:]) for s in spont)
            for state in CF.trajectory(model.dynamics, W, state, terms, steps, 0.2):
                pass
            return CF.readout(model.dynamics, W, state)


@pytest.mark.parametrize("depth", [2, 4, 8])
def test_quant_points_name_each_weight_and_the_tensor_it_reads(depth):
    from cordsnet.model import CordsNet

    model = CordsNet(depth=depth, image_size=32, num_classes=10)
    points = quant_points(model)
    # every convolution of a step and the read-out; the image drive's (once per image) stay float32
    weights = {"out_weight", *(f"area_conv_{i}" for i in range(depth)), *(f"area_area_{i}" for i in range(1, depth)),
               *(f"skip_area_{p}" for p in range(len(model.skip_area)))}
    assert set(points) == weights
    assert all(points[f"area_conv_{i}"][0] == f"state_{i}" for i in range(depth))
    assert points["area_area_1"][0] == "h_1"  # area 1 reads relu(r_0) + inp_skip(u)
    assert points["out_weight"] == ("pooled", None)  # the logits stay float
    for i, wire in enumerate(model.wiring):
        if wire.second == "project":  # the projection reads relu of its source area, area i reads the sum
            assert points[f"skip_area_{wire.projection}"][0] == f"rect_{wire.source}"
            assert points[f"area_area_{i}"][0] == f"h_{i}"


def test_scales_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in ((-1.5, 3.25), (0.0, 7.0), (0.2, 5.0), (-4.0, -1.0), (-0.001, 1e4)):
        zero, scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.uint8(0), np.uint8(255))
        assert activation_params(lo, hi) == (float(scale), int(zero))
    w = torch.randn(6, 3, 3, 3)
    q = fake_quantize_weight(w)
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    levels = q / scale[:, None, None, None]
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.abs().max() <= 127 + 1e-4
    assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))  # the extreme is a level


def test_fake_quant_observes_without_changing_and_touches_only_its_weights(r4):
    x = _images(4)
    W = r4.effective_weights()
    r = torch.rand(4, *r4.config.state_shapes[0])
    with torch.no_grad():
        plain = F.conv2d(r, W.area_conv[0], padding=1)
        with FakeQuant(r4, W, None, quantize=False, observe=True) as fq:
            seen = F.conv2d(r, W.area_conv[0], padding=1)
            other = F.conv2d(r, W.area_conv[0].clone(), padding=1)  # not one of W's tensors
            drive = F.conv2d(x, W.inp_conv, stride=2, padding=3)  # the drive stays float: not observed
    assert torch.equal(seen, plain) and torch.equal(other, plain)
    assert set(fq.seen) == {"state_0", "area_conv_0.out"}
    assert float(fq.seen["state_0"][1]) == pytest.approx(float(r.max()))
    assert torch.equal(drive, F.conv2d(x, W.inp_conv, stride=2, padding=3))
    ranges = calibrate_ranges(r4, [x], PROTOCOL)
    ranges.check(r4)  # every activation of the architecture observed on the float trajectories
    quantized = _fake_quant_run(r4, ranges, x)
    with torch.no_grad():
        reference = r4.run(x, steps=STEPS, spontaneous_steps=SPONT)
    assert not torch.equal(quantized, reference)
    assert (quantized - reference).abs().max() < 0.1 * reference.abs().max()  # rounded, not broken


def _same_ranges(got: dict, want: dict) -> bool:
    """Equal names, each (low, high) equal to float32 rounding (the ranges are stored as float32 tensors).

    (pytest.approx compares flat mappings only: pytest 9 refuses a dict of tuples.)
    """
    return got.keys() == want.keys() and all(
        np.allclose(got[k], want[k], rtol=1e-6, atol=0.0) for k in want)


def test_ranges_moving_average_round_trip_and_checks(r4):
    r = ActivationRanges({"a": (0.0, 2.0)}, momentum=0.25)
    r.update({"a": (torch.tensor(-1.0), torch.tensor(4.0)), "b": (torch.tensor(0.5), torch.tensor(1.0))})
    assert r["a"] == pytest.approx((-0.25, 2.5)) and r["b"] == (0.5, 1.0)  # a new name starts at its batch
    tensors = r.to_tensors()
    assert set(tensors) == {RANGE_PREFIX + "a", RANGE_PREFIX + "b"}
    back = ActivationRanges.from_tensors({**tensors, "bn.x": torch.zeros(1)})
    assert back is not None and _same_ranges(back.as_dict(), r.as_dict())
    assert ActivationRanges.from_tensors({"bn.x": torch.zeros(1)}) is None
    with pytest.raises(ValueError, match=r"activation range 'a': expected finite \(low, high\)"):
        ActivationRanges.from_tensors({RANGE_PREFIX + "a": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="low <= high"):
        ActivationRanges.from_tensors({RANGE_PREFIX + "a": torch.tensor([2.0, 1.0])})
    for bad in ((float("nan"), 1.0), 3.0, (1.0, 2.0, 3.0), (2.0, 1.0), ("x", 1)):  # given as a mapping too
        with pytest.raises(ValueError, match="activation range 'a': expected finite"):
            ActivationRanges({"a": bad})
    with pytest.raises(ValueError, match=r"activation ranges: expected the \d+ activations of a CordsNet-R4, "
                                         r"missing \[.*'state_0'.*\], unexpected \['a', 'b'\]"):
        r.check(r4)


@pytest.mark.parametrize("graph", ["stepwise-drive", "unrolled"])
def test_int8_export_from_learned_ranges_computes_what_the_fake_quantised_model_does(r4, tmp_path, graph):
    """calibration='checkpoint': the graph's Q/DQ scales are the ranges, and it reproduces the training-time
    rounding (both sides round the same values with the same scales; they differ only where float32
    summation order moves a value across a rounding boundary, one uint8 level, rarely)."""
    if not exact_int8_kernels():
        pytest.skip("this CPU's int8 kernels saturate pairwise sums (x86 without VNNI): not the same arithmetic")
    x = _images(100)
    ranges = calibrate_ranges(r4, [x[:16]], PROTOCOL)
    out = tmp_path / f"{graph}.onnx"
    report = export(r4, out, graph=graph, steps=STEPS, spontaneous_steps=SPONT, dtype="int8",
                    calibration="checkpoint", activation_ranges=ranges, verify_images=x.numpy())
    assert report.verification.passed  # against the fake-quantised model it reproduces
    assert "agreement with the quantisation-aware model" in report.verification.summary()
    assert report.verification.float32_agreement is not None  # and how far that is from its float32 weights
    assert "with its float32 weights" in report.verification.summary()
    proto = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    if graph == "stepwise-drive":  # the state input's scale and zero point are the stored range's
        q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "state_0")
        scale, zero = activation_params(*ranges["state_0"])
        assert float(inits[q.input[1]]) == pytest.approx(scale, rel=1e-6) and int(inits[q.input[2]]) == zero
        from cordsnet.runtime import StepSession

        got = StepSession(out, providers="cpu").run(x.numpy())
    else:
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x.numpy()})[0]
    want = _fake_quant_run(r4, ranges, x).numpy()
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.99
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


def test_read_activation_ranges_from_a_checkpoint(r4, tmp_path):
    from cordsnet.checkpoint import save_checkpoint

    ranges = calibrate_ranges(r4, [_images(4)], PROTOCOL)
    save_checkpoint(r4, tmp_path / "q.safetensors", extra_tensors=ranges.to_tensors())
    back = read_activation_ranges(tmp_path / "q.safetensors")
    assert back is not None and _same_ranges(back.as_dict(), ranges.as_dict())
    save_checkpoint(r4, tmp_path / "f.safetensors")
    assert read_activation_ranges(tmp_path / "f.safetensors") is None
