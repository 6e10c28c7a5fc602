"""The runtime's stepping core (cordsnet/runtime/_core.py): batch rules written once, the API over any adapter."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from cordsnet.artifact import companion_path, read_info
from cordsnet.runtime import StepSession
from cordsnet.runtime._core import FunctionStepSession, compact, join_chunks, pad_chunks


def test_pad_chunks_and_join_chunks_drop_the_padding_along_each_batch_axis():
    x = np.arange(5)[:, None] * np.ones((5, 3))
    chunks = pad_chunks(x, 2)
    assert [real for _, real in chunks] == [2, 2, 1]
    assert all(c.shape == (2, 3) for c, _ in chunks)
    np.testing.assert_array_equal(chunks[-1][0], [x[4], x[4]])  # padded with its last row
    assert pad_chunks(x, None)[0][0] is x and pad_chunks(x, 5)[0][1] == 5
    parts = [{"logits": c, "trace": np.stack([c, c + 10])} for c, _ in chunks]  # trace: time-major (T, B, 3)
    joined = join_chunks(parts, [r for _, r in chunks], {"logits": 0, "trace": 1}.__getitem__)
    np.testing.assert_array_equal(joined["logits"], x)
    np.testing.assert_array_equal(joined["trace"], np.stack([x, x + 10]))


def test_compact_keeps_the_running_rows_in_order():
    rows, keep = compact(np.array([0, 3, 4, 7]), np.array([False, True, False, True]))
    np.testing.assert_array_equal(rows, [0, 4])
    np.testing.assert_array_equal(keep, [True, False, True, False])


@pytest.mark.parametrize("kind", ["stepwise", "stepwise-drive"])
def test_the_api_over_plain_functions_equals_step_session(exported_onnx, images, kind):
    """The core over host functions (what verification uses for TorchScript / ExportedProgram) gives the
    StepSession answers: run, run_until, state; trace chains every call's input state to the previous
    output and starts from the spontaneous state."""
    path = exported_onnx[kind]
    info = read_info(path, "onnx")

    def graph(p):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        return lambda feeds: dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()})))

    encode = graph(companion_path(path, "encode")) if kind == "stepwise-drive" else None
    host = FunctionStepSession(path, info, graph(path), encode)
    ref = StepSession(path, providers="cpu")
    x = images(3, 3, 32).numpy()
    np.testing.assert_allclose(host.run(x), ref.run(x), atol=1e-6, rtol=0)
    for a, b in zip(host.state, ref.state):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    a, b = host.run_until(x, 0.11, margin=1e-3), ref.run_until(x, 0.11, margin=1e-3)
    np.testing.assert_array_equal(a.steps, b.steps)
    calls = list(host.trace(x, inputs=True))
    assert [k for _, k, _ in calls] == list(range(info.steps))
    for i, spont in enumerate(info.spontaneous_state()):
        np.testing.assert_array_equal(calls[0][2][f"state_{i}"], np.broadcast_to(spont, (3, *spont.shape[1:])))
        for (_, _, prev), (_, _, cur) in zip(calls, calls[1:]):
            np.testing.assert_array_equal(cur[f"state_{i}"], prev[f"next_state_{i}"])
    np.testing.assert_allclose(calls[-1][2]["logits"], ref.run(x), atol=1e-6, rtol=0)


def test_trace_of_a_static_batch_graph_keeps_only_the_real_rows(r2_cifar, tmp_path, images):
    from cordsnet.export import export

    path = tmp_path / "b2.onnx"
    export(r2_cifar, path, graph="stepwise", batch=2, steps=3, spontaneous_steps=2, verify=False)
    s = StepSession(path, providers="cpu")
    x = images(3, 3, 32).numpy()
    calls = list(s.trace(x))
    assert [(start, k) for start, k, _ in calls] == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]
    assert calls[-1][2]["logits"].shape == (1, 10)  # the padded row dropped
    np.testing.assert_allclose(np.concatenate([calls[2][2]["logits"], calls[-1][2]["logits"]]), s.run(x),
                               atol=1e-6, rtol=0)
