"""ExecuTorch export (``--format executorch``, XNNPACK) and the ``.pte`` step runner.

The equal-forms test needs only torch; the rest needs the optional executorch package
(``pip install -e ".[executorch]"``, installed by .ci/run) and skips, saying so, without it.
Small models (R2, 32 px) and few steps keep the lowering quick. Parity: the programs run float32 and
are checked by the export's own verification (atol 1e-4 + rtol 1e-3, as every format) and here
against the float64 model within 1e-4 of the logit scale (float32 rounding over a few steps is ~1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordsnet.export import wrappers as W
from cordsnet.export.executorch import MAX_BATCH, WRAPPERS, executorch_missing

# The XNNPACK-form wrappers, derived from each kind's traced wrapper (cordsnet.export.executorch.WRAPPERS).
XnnpackStepwise, XnnpackEncode, XnnpackUnrolled = WRAPPERS["stepwise"], WRAPPERS["encode"], WRAPPERS["unrolled"]

needs_executorch = pytest.mark.skipif(executorch_missing() is not None, reason=str(executorch_missing()))
KW = dict(spontaneous_steps=3, steps=3)


def test_xnnpack_forms_equal_the_model(small_model, images):
    """Zero padding + avg_pool2d(3, 2) == AvgPool2d(3, 2, padding=1, count_include_pad=True); mean with
    keepdim + reshape == mean(dim=(2, 3)); compared in float64, where both are exact up to rounding."""
    m = small_model.double()
    kw = dict(alpha=0.2, spontaneous_steps=3, dtype=torch.float64)
    x = images(2, 3, 32).double()
    states = [torch.rand(2, *s.shape[1:], dtype=torch.float64) for s in m.cached_spontaneous_state(3, 0.2)]
    with torch.no_grad():
        for ours, theirs, args in [
            (XnnpackStepwise(m, **kw), W.Stepwise(m, **kw), (x, *states)),
            (XnnpackEncode(m, **kw), W.Encode(m, **kw), (x,)),
            (XnnpackUnrolled(m, steps=3, **kw), W.Unrolled(m, steps=3, **kw), (x,)),
        ]:
            a, b = ours(*args), theirs(*args)
            for p, q in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
                torch.testing.assert_close(p, q, atol=1e-12, rtol=0)
        # the padding matters: without it the pooled map would differ at the border
        u = torch.rand(2, 64, 16, 16, dtype=torch.float64)
        want = torch.nn.AvgPool2d(3, 2, padding=1, count_include_pad=True)(u)
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(torch.nn.functional.pad(u, (1, 1, 1, 1)), 3, 2), want)
        assert not torch.allclose(torch.nn.functional.avg_pool2d(u, 3, 2, padding=1, count_include_pad=False), want)


@needs_executorch
@pytest.mark.parametrize("graph", ["unrolled", "stepwise", "stepwise-drive"])
def test_export_verifies_and_delegates_every_conv_pool_linear(small_model, tmp_path, graph):
    from cordsnet.artifact import check_manifest, describe_artifact, read_info, read_manifest, read_metadata
    from cordsnet.export import export

    path = tmp_path / f"r2-{graph}.pte"
    report = export(small_model, path, format="executorch", graph=graph, **KW)
    assert report.verification.passed and report.verification.runner.startswith("executorch.runtime")
    assert report.verification.max_abs < 1e-4
    programs = report.to_dict()["details"]["delegation"]
    assert [d["graph"] for d in programs] == ([graph, "encode"] if graph == "stepwise-drive" else [graph])
    assert all(f.is_file() for f in report.files) and report.manifest in report.files
    for d in programs:
        assert d["delegated_nodes"] > 0 and d["delegated_subgraphs"] >= 1
        assert not [op for op in d["portable_ops"] if any(k in op for k in ("convolution", "pool", "linear", "mm"))]
        assert d["by_operator"]["aten_convolution_default"]["portable"] == 0
    assert programs[0]["by_operator"]["aten_convolution_default"]["delegated"] > 0
    if graph != "stepwise-drive":  # the pool sits in the drive (encode program for stepwise-drive)
        assert programs[0]["by_operator"]["aten_avg_pool2d_default"] == {"delegated": 1, "portable": 0}
    meta = read_metadata(path)  # from the program's own constant method
    assert meta["cordsnet.graph"] == graph and meta["cordsnet.max_batch"] == str(MAX_BATCH)
    manifest = check_manifest(path)  # the client manifest beside it belongs to these bytes
    assert manifest is not None and manifest.format == "executorch" and manifest.info == read_info(path)
    assert [c["role"] for c in manifest.companions] == (["encode"] if graph == "stepwise-drive" else [])
    assert read_manifest(path).info.graph == graph
    described = describe_artifact(path)  # what `cordsnet-cli info m.pte` prints
    assert described["format"] == "executorch" and described["manifest"] == str(manifest.path)


@needs_executorch
@pytest.mark.parametrize("graph", ["stepwise", "stepwise-drive"])
def test_step_session_matches_the_model(small_model, images, tmp_path, graph):
    from cordsnet.export import export
    from cordsnet.runtime.executorch import PteStepSession

    path = tmp_path / f"r2-{graph}.pte"
    export(small_model, path, format="executorch", graph=graph, verify=False, **KW)
    session = PteStepSession(path)
    x = images(4, 3, 32)
    logits = session.run(x, steps=5)
    m = small_model.double()
    try:
        with torch.no_grad():
            want, rates = m.run(x.double(), steps=5, spontaneous_steps=3, record=[0, 1])
    finally:
        small_model.float()
    assert isinstance(logits, np.ndarray) and logits.shape == (4, 10)
    assert np.abs(logits - want.numpy()).max() <= 1e-4 * float(want.abs().max())
    np.testing.assert_allclose(session.state[1], rates[1][-1].numpy(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=f"at most {MAX_BATCH} images"):
        session.start(images(MAX_BATCH + 1, 3, 32))


@needs_executorch
def test_pte_session_has_the_step_session_api(small_model, images, tmp_path):
    """PteStepSession runs on the runtime's stepping core: reset, run_until and state like StepSession."""
    from cordsnet.export import export
    from cordsnet.runtime import StepSession
    from cordsnet.runtime.executorch import PteStepSession

    pte = tmp_path / "r2.pte"
    onnx = tmp_path / "r2.onnx"
    export(small_model, pte, format="executorch", graph="stepwise", verify=False, **KW)
    export(small_model, onnx, graph="stepwise", verify=False, **KW)
    session, ref = PteStepSession(pte), StepSession(onnx, providers="cpu")
    x = images(3, 3, 32).numpy()
    a, b = session.run_until(x, 0.11, margin=1e-3), ref.run_until(x, 0.11, margin=1e-3)
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4, rtol=0)
    session.reset(2)
    assert session.batch == 2 and session.steps_taken == 0
    for got, spont in zip(session.state, session.info.spontaneous_state()):
        np.testing.assert_array_equal(got, np.broadcast_to(spont, got.shape))
    np.testing.assert_allclose(session.step(x[:2]), ref.run(x[:2], steps=1), atol=1e-4, rtol=0)


@needs_executorch
def test_a_fixed_batch_program_refuses_another_batch(small_model, images, tmp_path):
    from cordsnet.export import export
    from cordsnet.runtime.executorch import PteStepSession

    path = tmp_path / "r2-b2.pte"
    export(small_model, path, format="executorch", graph="stepwise", batch=2, **KW)
    session = PteStepSession(path)
    assert session.max_batch == 2 and session.run(images(2, 3, 32), steps=2).shape == (2, 10)
    with pytest.raises(ValueError, match="exactly 2, got 3"):
        session.start(images(3, 3, 32))


@needs_executorch
def test_failed_verification_fails_the_export(small_model, tmp_path, monkeypatch):
    from cordsnet.export import VerificationError, export

    def wrong(self, w, state):  # a readout off by one logit
        return W.Stepwise._readout(self, w, state) + 1.0

    monkeypatch.setattr(XnnpackStepwise, "_readout", wrong)
    path = tmp_path / "bad.pte"
    with pytest.raises(VerificationError, match="verification failed"):
        export(small_model, path, format="executorch", graph="stepwise", **KW)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


@needs_executorch
def test_unsupported_kinds_are_refused_before_any_work(small_model, tmp_path, monkeypatch):
    import cordsnet.export.executorch as backend
    from cordsnet.export import export

    def no_work(*args, **kwargs):
        raise AssertionError("the backend was asked to write")

    monkeypatch.setattr(backend, "write", no_work)
    with pytest.raises(ValueError, match="graph: the executorch format exports one of"):
        export(small_model, tmp_path / "x.pte", format="executorch", graph="loop", **KW)
    with pytest.raises(ValueError, match="dtype: the executorch format exports float32"):
        export(small_model, tmp_path / "x.pte", format="executorch", graph="stepwise", dtype="float16", **KW)
    assert list(tmp_path.iterdir()) == []


def test_executorch_is_a_registered_format():
    from cordsnet.artifact import FORMATS, artifact_format

    assert FORMATS["executorch"].suffix == ".pte" and artifact_format("m.pte") == "executorch"
    assert FORMATS["executorch"].backend == "cordsnet.export.executorch"


# ------------------------------------------------------------------ screening foreign programs in a child
@pytest.fixture(scope="module")
def screening_cache(tmp_path_factory):
    """A cache folder of this module's own (the screened-program record lives there), set for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cordsnet-cache")
        mp.setenv("CORDSNET_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def exported_pte(small_model, screening_cache, tmp_path_factory):
    """An R2 stepwise program written (and verified) by the exporter."""
    from cordsnet.export import export

    path = tmp_path_factory.mktemp("pte") / "r2-stepwise.pte"
    export(small_model, path, format="executorch", graph="stepwise", **KW)
    return path


@pytest.fixture()
def fresh_process(monkeypatch, screening_cache):
    """Forget what this process has screened (as a new process would) and count the screening children."""
    from cordsnet.artifact import reading

    monkeypatch.setattr(reading, "_screened_here", set())
    children = []
    screen = reading._screen_pte
    monkeypatch.setattr(reading, "_screen_pte", lambda path, data: children.append(path) or screen(path, data))
    return children


def _hostile_copy(source, dest):
    """`source` with the first operator name made invalid UTF-8: the flatbuffer stays structure-valid, and
    ExecuTorch 1.5.1 aborts (SIGABRT, an uncaught C++ exception) when it logs the unknown operator."""
    import re

    data = bytearray(source.read_bytes())
    found = re.search(rb"(aten|executorch_prim)::[a-z_]+\x00", data)
    assert found is not None, "no operator name in the program"
    data[found.start():found.start() + 4] = b"\xff" * 4
    dest.write_bytes(bytes(data))
    return dest


def _record(folder):
    import json

    from cordsnet.artifact.reading import PTE_SCREENED_FILE

    path = folder / PTE_SCREENED_FILE
    return json.loads(path.read_text())["sha256"] if path.is_file() else []


@needs_executorch
def test_a_program_that_aborts_the_runtime_is_refused_and_the_interpreter_survives(exported_pte, fresh_process,
                                                                                   screening_cache, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from cordsnet.artifact import file_sha256, read_info
    from cordsnet.runtime.executorch import PteStepSession

    hostile = _hostile_copy(exported_pte, tmp_path / "hostile.pte")
    for open_it in (read_info, PteStepSession):  # info and the runtime; verify goes through the same loader
        with pytest.raises(ValueError, match=r"hostile\.pte'.* killed the ExecuTorch runtime \(SIGABRT\)"):
            open_it(hostile)
    assert len(fresh_process) == 2 and file_sha256(hostile) not in _record(screening_cache)  # never recorded safe
    cli = [sys.executable, "-c", "from cordsnet.cli import main; main()", "info", str(hostile)]
    res = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr[-2000:]
    assert res.stderr.startswith("Error: model:") and "(SIGABRT)" in res.stderr
    # The control: the same bytes loaded in-process without the screening kill the interpreter (the
    # program's forward names the broken operator: info alone, which loads only the metadata method, would not).
    session = "import sys; from cordsnet.runtime.executorch import PteStepSession; PteStepSession(sys.argv[1])"
    res = subprocess.run([sys.executable, "-c", session, str(hostile)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CORDSNET_PTE_SCREEN": "0"})
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr[-2000:])


@needs_executorch
def test_the_safe_record_skips_the_child_until_a_byte_changes(exported_pte, fresh_process, screening_cache,
                                                              tmp_path, monkeypatch):
    from cordsnet.artifact import file_sha256, read_info, reading
    from cordsnet.runtime.executorch import PteStepSession

    assert file_sha256(exported_pte) in _record(screening_cache)  # the exporter's own programs: recorded at export
    PteStepSession(exported_pte)
    assert fresh_process == []
    foreign = tmp_path / "foreign.pte"
    data = bytearray(exported_pte.read_bytes())
    data[-8] ^= 0x01  # a bit of the last weights: another program, which loads
    foreign.write_bytes(bytes(data))
    read_info(foreign)
    assert fresh_process == [foreign] and file_sha256(foreign) in _record(screening_cache)
    monkeypatch.setattr(reading, "_screened_here", set())  # a new process: only the record on disk remembers
    read_info(foreign)
    PteStepSession(foreign)
    assert fresh_process == [foreign]
    data[-8] ^= 0x02  # one byte more changed: unknown bytes again
    foreign.write_bytes(bytes(data))
    read_info(foreign)
    assert fresh_process == [foreign, foreign]


def test_the_safe_record_is_bounded_and_survives_damage(monkeypatch, tmp_path):
    import hashlib

    from cordsnet.artifact import reading

    monkeypatch.setenv("CORDSNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(reading, "_screened_here", set())
    monkeypatch.setattr(reading, "PTE_SCREENED_MAX", 3)
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(5)]
    for d in digests:
        reading.remember_safe_pte(d)
    assert _record(tmp_path) == digests[-3:]
    (tmp_path / reading.PTE_SCREENED_FILE).write_text("{not json")
    monkeypatch.setattr(reading, "_screened_here", set())
    assert not reading._known_safe(digests[-1])  # a damaged record trusts nothing, and is rewritten
    reading.remember_safe_pte(digests[0])
    assert _record(tmp_path) == digests[:1]
    with pytest.raises(ValueError, match="digest: expected the hex sha256"):
        reading.remember_safe_pte("../../etc")
