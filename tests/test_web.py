"""The browser app (web/) end to end in a real headless browser, and `cordsnet-cli web`.

Debian's chromium (apt) is driven by Playwright for Python through ``executable_path`` (Playwright's
own browser download is never used); onnxruntime-web is vendored in web/vendor/ort (tools/vendor-ort.sh).
The browser tests skip, saying why, where one of those is missing; the manifest and digits tests
always run.

Parity bound: the page runs the float32 graph; the reference is the PyTorch model in float64. Over
the full protocol (100 spontaneous + 100 stimulus steps) the float32 rounding stays ~1e-5 of the
logit scale (measured 3.8e-6 absolute on logits of magnitude ~10), so 1e-4 of the logit scale holds
with margin on any CPU, threads or not.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from cordsnet.cli import web
from cordsnet.checkpoint import load_checkpoint
from cordsnet.data import digits_split, digits_to_tensor

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "web_app.png"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed: pip install playwright"
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing: apt-get install -y chromium"
    if not (web.ORT_DIST / "ort.wasm.min.mjs").is_file():
        return f"onnxruntime-web is not vendored in {web.ORT_DIST}: run `bash tools/vendor-ort.sh`"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


@pytest.fixture(scope="module")
def bundled():
    return load_checkpoint(None)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The bundled model's stepwise graph, exported (and verified) as `cordsnet-cli web` does by default."""
    return web.default_artifact(tmp_path_factory.getbasetemp() / "web-cache")  # shared with test_node.py


@pytest.fixture(scope="module")
def served(artifact):
    """(playwright, base URL): one Playwright driver and one server for the module's browser tests."""
    from playwright.sync_api import sync_playwright

    server, url = web.serve_in_thread(artifact)
    try:
        with sync_playwright() as p:
            yield p, url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def page(served):
    p, url = served
    errors: list[str] = []
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.wait_for_function("window.cordsnetDemo !== undefined")
    pg.evaluate("window.cordsnetDemo.ready")
    pg.errors = errors
    yield pg
    browser.close()


def held_out(classes: tuple[int, ...] = (2, 5, 8, 9)) -> tuple[np.ndarray, np.ndarray]:
    """One held-out digit of each of `classes` (the last of its class: not one of digits.json's)."""
    X, y = digits_split()["test"]
    idx = [int(np.flatnonzero(y == c)[-1]) for c in classes]
    return X[idx], y[idx]


# ---------------------------------------------------------------------------------- no browser
def test_the_exporter_manifest_is_what_the_page_reads(artifact, bundled):
    """The manifest the exporter wrote beside the default graph follows the schema the page relies on."""
    from cordsnet._io import file_sha256
    from cordsnet.artifact import manifest_path, read_info, read_manifest

    m = web.load_manifest(artifact).data
    assert m == json.loads(manifest_path(artifact).read_text())  # the exporter's own file, checked
    keys = ["cordsnet_manifest", "format_version", "cordsnet_version", "artifact", "companions", "graph", "config",
            "protocol", "dtype", "batch", "inputs", "outputs", "preset", "spontaneous_state", "checkpoint_sha256",
            "state_dict_sha256"]
    assert set(keys) <= set(m)  # extra keys (e.g. "exporter") are allowed; the page ignores them
    assert m["artifact"] == {"file": artifact.name, "format": "onnx", "sha256": file_sha256(artifact),
                             "size_bytes": artifact.stat().st_size}
    assert m["graph"] == "stepwise" and m["batch"] is None and m["companions"] == []
    assert m["protocol"] == {"steps": 100, "spontaneous_steps": 100, "alpha": 0.2, "dt_ms": 2.0, "readout": "last",
                             "record": []}
    assert m["inputs"][0] == {"name": "image", "shape": ["batch", 1, 32, 32], "dtype": "float32"}
    assert m["outputs"][0] == {"name": "logits", "shape": ["batch", 10], "dtype": "float32"}
    assert m["preset"]["class_names"] == [str(d) for d in range(10)] and m["preset"]["mean"] == [0.3051]
    # the decision rule the page applies: cordsnet.decision/1 with the graph's own no-image baseline (T, K)
    assert m["decision"]["rule"] == "cordsnet.decision/1" and m["decision"]["baseline"]["shape"] == [100, 10]
    assert read_manifest(artifact).info == read_info(artifact)  # the same facts as the ONNX metadata
    # The spontaneous state decodes (as JavaScript does: base64 of little-endian float32) to the artifact's own.
    spont = read_info(artifact).spontaneous_state()
    areas = m["spontaneous_state"]["areas"]
    assert m["spontaneous_state"]["encoding"] == "base64-float32-le" and len(areas) == len(spont) == 4
    for i, (a, want) in enumerate(zip(areas, spont)):
        got = np.frombuffer(base64.b64decode(a["data"]), dtype="<f4").reshape(a["shape"])
        np.testing.assert_array_equal(got, want)
        assert a["shape"] == [1, *m["inputs"][1 + i]["shape"][1:]]


def test_the_shipped_graph_carries_the_runtimes_decision_rule():
    """The graph in the wheel (tools/bundle_web_graph.py): its manifest's baseline is the runtime's own."""
    from cordsnet.artifact import read_manifest
    from cordsnet.decision import DEFAULT_MARGIN, DEFAULT_THRESHOLD
    from cordsnet.runtime import StepSession

    shipped = web.default_artifact()
    rule = read_manifest(shipped).decision
    assert rule is not None, "regenerate it: python tools/bundle_web_graph.py"
    assert (rule.threshold, rule.margin) == (DEFAULT_THRESHOLD, DEFAULT_MARGIN)
    # Bit for bit on the machine that wrote it; elsewhere (another CPU, another onnxruntime) float32 rounding
    # over 200 steps stays ~1e-5 of the logit scale (see the module docstring), so 1e-4 of the scale holds.
    here = StepSession(shipped, providers="cpu").baseline_logits()
    np.testing.assert_allclose(rule.baseline, here, rtol=0, atol=1e-4 * np.abs(here).max())


def test_the_shipped_graph_is_the_bundled_model(bundled):
    """The shipped graph holds the bundled weights (a stale graph after new weights fails here) and runs
    the published protocol as the PyTorch model does (float64 reference, 1e-4 of the logit scale)."""
    from cordsnet.checkpoint import default_checkpoint_path, state_dict_sha256
    from cordsnet.artifact import read_info
    from cordsnet.runtime import StepSession

    shipped = web.default_artifact()
    info = read_info(shipped)
    assert info.state_dict_sha256 == state_dict_sha256(bundled.state_dict())
    X, _ = digits_split()["test"]
    x = digits_to_tensor(X[:4])
    with torch.no_grad():  # a float64 copy: the shared fixture must not change
        want = load_checkpoint(default_checkpoint_path()).double()(x.double()).numpy()
    got = StepSession(shipped, providers="cpu").run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_an_artifact_without_a_manifest_is_refused(artifact, tmp_path):
    lonely = tmp_path / artifact.name
    shutil.copy(artifact, lonely)
    with pytest.raises(ValueError, match="artifact: .* has no client manifest beside it"):
        web.make_server(lonely, port=0)


def test_the_server_hands_out_the_exporter_manifest_with_extra_keys(artifact, tmp_path):
    """Byte for byte what the exporter wrote (an extra key such as "exporter" passes through)."""
    from cordsnet.artifact import manifest_path

    if not (web.ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip(f"onnxruntime-web is not vendored in {web.ORT_DIST}: run `bash tools/vendor-ort.sh`")
    server, url = web.serve_in_thread(artifact)
    try:
        with urllib.request.urlopen(url + "model/manifest.json") as r:
            assert r.read() == manifest_path(artifact).read_bytes()
        assert "exporter" in json.loads(manifest_path(artifact).read_text())
    finally:
        server.shutdown()
        server.server_close()


def test_a_manifest_of_another_artifact_is_refused(artifact, tmp_path):
    other = tmp_path / artifact.name
    shutil.copy(artifact, other)
    from cordsnet.artifact import manifest_path

    manifest = json.loads(manifest_path(artifact).read_text())
    manifest["artifact"]["sha256"] = "0" * 64
    manifest_path(other).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="belongs to another artifact"):
        web.make_server(other, port=0)


def test_an_unrolled_graph_is_refused(small_model, tmp_path):
    from cordsnet.export import export

    path = tmp_path / "r2-unrolled.onnx"
    export(small_model, path, graph="unrolled", steps=2, spontaneous_steps=2, verify=False)
    with pytest.raises(ValueError, match="stepwise ONNX graph"):
        web.make_server(path, port=0)


def test_bundled_digits_are_held_out_and_normalise_to_the_model_input():
    doc = json.loads((web.WEB_DIR / "digits.json").read_text())
    X, y = digits_split()["test"]
    train_scans = {tuple(r) for r in digits_split()["train"][0].astype(int)}
    assert sorted(d["label"] for d in doc["digits"]) == sorted(list(range(10)) * 2)
    for d in doc["digits"]:
        assert d["scan"] == [int(v) for v in X[d["index"]]] and d["label"] == int(y[d["index"]])
        assert tuple(d["scan"]) not in train_scans
        # the page's normalisation, (raw - mean) / std with the manifest's preset, gives the model input
        want = digits_to_tensor(X[d["index"]]).numpy().ravel()
        got = (np.asarray(d["raw"], dtype=np.float64) - 0.3051) / 0.3234
        np.testing.assert_allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------------------------- browser
def python_decisions(artifact, x: np.ndarray) -> list[tuple[int, int] | None]:
    """The Python runtime's early exit (cordsnet.decision, the CLI's default threshold) per image:
    (steps, class) or None when undecided."""
    from cordsnet.decision import DEFAULT_THRESHOLD
    from cordsnet.runtime import StepSession

    r = StepSession(artifact, providers="cpu").run_until(np.asarray(x, np.float32), DEFAULT_THRESHOLD)
    return [(int(n), int(z.argmax())) if d else None for n, z, d in zip(r.steps, r.logits, r.decided)]


@needs_browser
def test_browser_matches_pytorch_over_the_full_protocol(page, bundled, artifact):
    X, y = held_out()
    x = digits_to_tensor(X)
    ref = bundled.double()
    try:
        with torch.no_grad():
            want = ref.run(x.double(), readout="all").numpy()  # (steps, B, K), 100 spontaneous + 100 steps
    finally:
        bundled.float()
    scale = float(np.abs(want[-1]).max())
    decisions = python_decisions(artifact, x.numpy())
    for b in range(len(y)):
        got = page.evaluate("([x, s]) => window.cordsnetDemo.classify(x, {steps: s})",
                            [x[b].numpy().ravel().tolist(), 100])
        rt = got["reactionTime"]  # cordsnet.decision in the page, with the manifest's baseline
        assert (None if rt is None else (rt["steps"], rt["cls"])) == decisions[b]
        logits = np.asarray(got["logits"])
        assert np.abs(logits - want[-1, b]).max() <= 1e-4 * scale
        probs = np.asarray(got["probabilities"])
        assert probs.shape == (100, 10)
        np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(want[:, b]), -1).numpy(), atol=1e-5)
        assert int(logits.argmax()) == int(y[b])
    assert page.errors == []


@needs_browser
def test_classify_refuses_a_wrong_input_size(page):
    with pytest.raises(Exception, match="expected 1024 numbers"):
        page.evaluate("window.cordsnetDemo.classify([1, 2, 3], {steps: 2})")


@needs_browser
def test_the_page_animates_a_run(page, tmp_path, artifact):
    info = page.evaluate("({backend: window.cordsnetDemo.info.backend, coi: window.cordsnetDemo.info.crossOriginIsolated})")
    assert info["coi"] is True and info["backend"] in ("WASM, 1 thread", "WebGPU")  # COOP/COEP served
    doc = json.loads((web.WEB_DIR / "digits.json").read_text())
    k = next(i for i, d in enumerate(doc["digits"]) if d["label"] == 3)
    run = page.evaluate("(k) => window.cordsnetDemo.show(k, {pace: 0})", k)
    assert run["prediction"] == 3 and run["reactionTime"]["cls"] == 3
    assert 1 <= run["reactionTime"]["steps"] <= 100 and run["reactionTime"]["ms"] == 2.0 * run["reactionTime"]["steps"]
    assert page.inner_text("#prediction") == "3"
    # the reaction time the page shows is the Python rule's (StepSession.run_until on the page's input:
    # the digit's raw pixels as float32, normalised with the manifest's preset, as web/cordsnet.mjs does)
    raw = np.asarray(doc["digits"][k]["raw"], np.float32).astype(np.float64)
    x = ((raw - 0.3051) / 0.3234).astype(np.float32).reshape(1, 1, 32, 32)
    (steps, cls), = python_decisions(artifact, x)
    assert (run["reactionTime"]["steps"], run["reactionTime"]["cls"]) == (steps, cls)
    assert page.inner_text("#rt") == f"{2.0 * steps:.0f} ms ({steps} steps)"
    assert "step 100 / 100" in page.inner_text("#clock")
    assert page.locator("#areas canvas.maps").count() == 4
    shot = tmp_path / "web_app.png"
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert img.shape[0] >= 800 and img.shape[1] == 1280 and img.std() > 20  # a drawn page, not a blank one
    if os.environ.get("CORDSNET_UPDATE_SCREENSHOT"):  # refresh the committed copy shown in the docs
        shutil.copy(shot, DOCS_SCREENSHOT)


@needs_browser
def test_cli_web_serves_with_cross_origin_isolation(artifact):
    proc = subprocess.Popen([sys.executable, "-c", "from cordsnet.cli import main; main()", "web", str(artifact), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {artifact} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url) as r:
            assert r.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert b"app.mjs" in r.read()
        with urllib.request.urlopen(url + "model/manifest.json") as r:
            assert json.loads(r.read())["artifact"]["file"] == artifact.name
        with urllib.request.urlopen(url + "vendor/ort/ort.wasm.min.mjs") as r:
            assert r.headers["Content-Type"] == "text/javascript"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_web_refuses_a_bad_artifact_in_one_line(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not onnx")
    res = subprocess.run([sys.executable, "-c", "from cordsnet.cli import main; main()", "web", str(bad), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().startswith("Error: artifact:") and len(res.stderr.strip().splitlines()) == 1


def _cli_web(*options: str) -> tuple[subprocess.Popen, tuple[str, int]]:
    """`cordsnet-cli web` (the shipped graph) on a free port of 127.0.0.1: (process, (host, port))."""
    if not (web.ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip(f"onnxruntime-web is not vendored in {web.ORT_DIST}: run `bash tools/vendor-ort.sh`")
    proc = subprocess.Popen([sys.executable, "-c", "from cordsnet.cli import main; main()", "web", "--port", "0",
                             *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if " at http://" not in line:
        proc.kill()
        pytest.fail(f"cordsnet-cli web did not start: {line!r} {proc.stderr.read()[-2000:]}")
    host, port = line.split(" at http://")[1].split("/")[0].split(":")
    return proc, (host, int(port))


def _get(address: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(address, timeout=10)
    s.sendall(b"GET /model/manifest.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return s


def test_cli_web_limits_reach_the_server():
    """--max-connections 1: a second client waits while a silent one holds the slot; --idle-timeout 3: the
    silent one is dropped after 3 s (the defaults, 64 and 30 s, would answer at once and hold it for 30 s)."""
    proc, address = _cli_web("--idle-timeout", "3", "--max-connections", "1")
    try:
        with socket.create_connection(address, timeout=10) as silent:
            silent.sendall(b"GET / HTTP/1.1\r\n")  # a half-sent request, then silence: it holds the only slot
            time.sleep(0.3)
            with _get(address) as waiting:
                waiting.settimeout(0.7)
                with pytest.raises(TimeoutError):  # queued in the backlog, not served
                    waiting.recv(64)
                silent.close()  # the slot frees: the waiting client is served now
                waiting.settimeout(10)
                assert waiting.recv(64).startswith(b"HTTP/1.1 200")
        with socket.create_connection(address, timeout=10) as idle:
            idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            t0 = time.perf_counter()
            assert idle.recv(1024) == b""  # closed by the server, not by the 10 s socket timeout here
            assert 2.0 < time.perf_counter() - t0 < 8.0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("option, value", [("--idle-timeout", "0"), ("--idle-timeout", "-1"),
                                           ("--max-connections", "0"), ("--header-timeout", "0")])
def test_cli_web_refuses_bad_limits_in_one_line(option, value):
    res = subprocess.run([sys.executable, "-c", "from cordsnet.cli import main; main()", "web", "--port", "0",
                          option, value], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().startswith(f"Error: {option}: expected") and len(res.stderr.strip().splitlines()) == 1


def test_cli_web_help_documents_the_limits():
    res = subprocess.run([sys.executable, "-c", "from cordsnet.cli import main; main()", "web", "--help"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0
    for option, default in (("--idle-timeout", web.IDLE_TIMEOUT_S), ("--max-connections", web.MAX_CONNECTIONS)):
        assert option in res.stdout and f"[default: {default}]" in res.stdout, res.stdout
    assert "--header-timeout" in res.stdout and f"default: {web.HEADER_TIMEOUT_S:g}" in res.stdout, res.stdout


# ------------------------------------------------------------------ slow or old clients: the header deadline
@pytest.fixture
def deadline_server():
    """The shipped graph served in a thread on 127.0.0.1 with a 30 s idle timeout and a 2 s header deadline."""
    if not (web.ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip(f"onnxruntime-web is not vendored in {web.ORT_DIST}: run `bash tools/vendor-ort.sh`")
    server = web.make_server(web.default_artifact(), port=0, idle_timeout=30.0, header_timeout=2.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()


def _trickle(address: tuple[str, int], chunks: list[bytes], every: float, limit: float) -> float | None:
    """Send `chunks` one per `every` seconds; seconds until the server closed the connection (None: still open
    after `limit` seconds). A close shows as EOF, a reset or a broken pipe; nothing is ever answered."""
    with socket.create_connection(address, timeout=10) as s:
        t0 = time.perf_counter()
        for chunk in chunks:
            try:
                s.sendall(chunk)
                s.settimeout(every)
                try:
                    data = s.recv(1024)
                except TimeoutError:
                    data = None
            except (BrokenPipeError, ConnectionResetError):
                return time.perf_counter() - t0
            if data is not None:
                assert data == b"", data  # the server answers nothing to a half-sent request: it closes it
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > limit:
                return None
    pytest.fail("ran out of chunks before the limit")


@pytest.mark.parametrize("chunks, every", [
    ([b"GET / HTTP/1.1\r\nHost: x\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(40)], 0.5),  # a line per 0.5 s
    ([bytes([c]) for c in b"GET /index.html HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100], 0.2),  # a byte per 0.2 s
], ids=["header-lines", "bytes"])
def test_web_drops_a_client_that_trickles_its_headers_at_the_deadline(deadline_server, chunks, every):
    """Every byte comes well within the 30 s idle timeout, yet the head is cut off 2 s after its first byte."""
    closed = _trickle(deadline_server, chunks, every, limit=6.0)
    assert closed is not None and 1.5 < closed < 4.0, closed


def test_web_answers_an_http09_request_at_once(deadline_server):
    with socket.create_connection(deadline_server, timeout=1.0) as s:
        t0 = time.perf_counter()
        s.sendall(b"GET /\r\n")  # no version, no headers: nothing more is coming
        reply = b""
        while chunk := s.recv(4096):  # until the server closes; a TimeoutError after 1 s fails the test
            reply += chunk
        assert time.perf_counter() - t0 < 1.0
    assert reply.startswith(b"HTTP/1.1 505 "), reply[:200]


def test_web_keeps_the_idle_timeout_between_keep_alive_requests(deadline_server):
    """A normal GET is served; a pause longer than the header deadline (but not the idle timeout) between two
    requests on one connection is fine: the deadline counts from a request's first byte."""
    with socket.create_connection(deadline_server, timeout=10) as s:
        f = s.makefile("rb")
        for pause in (0.0, 2.5):
            time.sleep(pause)
            s.sendall(b"GET /model/manifest.json HTTP/1.1\r\nHost: x\r\n\r\n")
            assert f.readline().startswith(b"HTTP/1.1 200"), pause
            head = list(iter(f.readline, b"\r\n"))
            length = next(int(line.split(b":")[1]) for line in head if line.lower().startswith(b"content-length:"))
            assert json.loads(f.read(length))["artifact"]["file"] == web.default_artifact().name
        f.close()


def test_cli_web_header_timeout_reaches_the_server():
    proc, address = _cli_web("--header-timeout", "1")
    try:
        closed = _trickle(address, [b"GET / HTTP/1.1\r\n"] + [b"X-Slow: %d\r\n" % i for i in range(40)], 0.25,
                          limit=5.0)
        assert closed is not None and 0.7 < closed < 3.0, closed  # the default would be 10 s
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_web_refuses_a_bad_header_timeout():
    with pytest.raises(ValueError, match="header_timeout: expected"):
        web.make_server(web.default_artifact(), port=0, header_timeout=0)


@needs_browser
def test_a_drawn_digit_runs(page):
    box = page.locator("#draw").bounding_box()
    page.locator("#pace").select_option("0")
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.15
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 11):  # a vertical stroke: a "1"
        page.mouse.move(x, y + k * box["height"] * 0.07)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#clock').textContent.includes('step 100 / 100')")
    page.wait_for_function("window.cordsnetDemo.lastRun && !document.querySelector('#run').disabled")
    assert "your drawing" in page.inner_text("#preview-caption")
    assert page.evaluate("window.cordsnetDemo.lastRun.prediction") == 1


@needs_browser
def test_webgpu_when_an_adapter_exists(served, bundled):
    """WebGPU through SwiftShader (a software adapter: correct but slow, so two steps only)."""
    p, url = served
    gpu_flags = [f for f in CHROMIUM_FLAGS if f != "--disable-gpu"] + [
        "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
        "--use-webgpu-adapter=swiftshader"]
    X, _ = held_out()
    x = digits_to_tensor(X[:1])
    with torch.no_grad():
        want = bundled.double().run(x.double(), steps=2).numpy()[0]
    bundled.float()
    browser = p.chromium.launch(executable_path=CHROMIUM, args=gpu_flags)
    try:
        pg = browser.new_page()
        pg.goto(url + "?ep=webgpu")
        pg.wait_for_function("window.cordsnetDemo !== undefined")
        try:
            pg.evaluate("window.cordsnetDemo.ready")
        except Exception as exc:
            if "no WebGPU adapter" in str(exc):
                pytest.skip("this chromium offers no WebGPU adapter, not even SwiftShader's")
            raise
        assert pg.evaluate("window.cordsnetDemo.info.backend") == "WebGPU"
        got = pg.evaluate("([x]) => window.cordsnetDemo.classify(x, {steps: 2})", [x[0].numpy().ravel().tolist()])
    finally:
        browser.close()
    assert np.abs(np.asarray(got["logits"]) - want).max() <= 1e-4 * float(np.abs(want).max())


@needs_browser
def test_wasm_threads_under_cross_origin_isolation(served, bundled):
    """?threads=2 (the default for models larger than 64 px): SharedArrayBuffer threads, same numbers."""
    p, url = served
    X, _ = held_out()
    x = digits_to_tensor(X[:1])
    with torch.no_grad():
        want = bundled.double().run(x.double()).numpy()[0]
    bundled.float()
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    try:
        pg = browser.new_page()
        pg.goto(url + "?ep=wasm&threads=2")
        pg.wait_for_function("window.cordsnetDemo !== undefined")
        pg.evaluate("window.cordsnetDemo.ready")
        assert pg.evaluate("window.cordsnetDemo.info.backend") == "WASM, 2 threads"
        got = pg.evaluate("([x]) => window.cordsnetDemo.classify(x, {steps: 100})", [x[0].numpy().ravel().tolist()])
    finally:
        browser.close()
    assert np.abs(np.asarray(got["logits"]) - want).max() <= 1e-4 * float(np.abs(want).max())
