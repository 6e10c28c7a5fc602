"""Per-step time of the stepwise graph in the applications' runtimes, side by side (batch 1).

    python benchmarks/bench_apps.py                                  # bundled R4 and R8 at 224
    python benchmarks/bench_apps.py --models bundled --steps 20      # a quick run

For each model (the bundled digits R4 at 32 px; CordsNet-R8 at 224 px with random weights of the
published layout, as in the tests) it exports the stepwise graph once as ONNX (with its client
manifest) and as an ExecuTorch ``.pte`` (XNNPACK, batch 1), then times one Euler step, state fed back,
batch 1, in:

* onnxruntime CPU from Python (``InferenceSession.run``, default threads);
* onnxruntime-node (examples/node/classify.mjs);
* onnxruntime-web WASM (its WASM-only build) in headless Debian chromium (the web app's
  ``cordsnetDemo.classify``), on min(4, cores) threads (cross-origin isolated) and on one thread;
* ExecuTorch with the XNNPACK delegate (:class:`cordsnet.runtime.executorch.PteStepSession`);
* the native clients (built first with ``bash examples/{c,cpp}/build.sh``, incremental): the C program
  on OpenVINO's C API (the ONNX graph) and the C++ program on ExecuTorch's Module API (the ``.pte``),
  each run with ``--warmup``.

Every runtime first runs the steps once (warm-up: session initialisation, kernel selection) and is
then timed over the same number of steps; the figure is the mean time of one step. Prints a table and
JSON (``--json PATH`` writes it). A runtime that is not installed is reported as such, not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import make_published_state_dict  # noqa: E402

from cordsnet.cli import web  # noqa: E402
from cordsnet.checkpoint import load_checkpoint  # noqa: E402
from cordsnet.export import export  # noqa: E402
from cordsnet.artifact import decode_spontaneous_state, read_metadata  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
MODELS: dict[str, Callable[[], Any]] = {
    "bundled": lambda: load_checkpoint(None),
    "r8-224": lambda: load_checkpoint(make_published_state_dict(depth=8, num_classes=1000, in_channels=3,
                                                                image_size=224)),
}
DEFAULT_STEPS = {"bundled": 100, "r8-224": 3}  # R8 at 224 is ~100x the work of a step: few steps


def ort_python(onnx: Path, image: np.ndarray, steps: int) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    spont = decode_spontaneous_state(read_metadata(onnx))
    depth = len(spont)

    def run() -> float:
        state = [s.astype(np.float32) for s in spont]
        t0 = time.perf_counter()
        for _ in range(steps):
            out = sess.run(None, {"image": image, **{f"state_{i}": s for i, s in enumerate(state)}})
            state = out[1:1 + depth]
        return (time.perf_counter() - t0) / steps

    run()
    return run()


def ort_node(onnx: Path, image: np.ndarray, steps: int, tmp: Path) -> float | str:
    node = shutil.which("node")
    if node is None or not (ROOT / "examples/node/node_modules/onnxruntime-node").is_dir():
        return "not installed (node, or `ONNXRUNTIME_NODE_INSTALL=skip npm ci` in examples/node)"
    inp = tmp / "input.json"
    inp.write_text(json.dumps({"images": [image.ravel().tolist()] * 2}))  # the first is the warm-up
    res = subprocess.run([node, str(ROOT / "examples/node/classify.mjs"), str(onnx), "--input", str(inp),
                          "--steps", str(steps), "--json"], capture_output=True, text=True, timeout=3600)
    if res.returncode:
        return f"failed: {res.stderr.strip()}"
    return json.loads(res.stdout)["results"][1]["ms_per_step"] / 1e3


def ort_web(onnx: Path, image: np.ndarray, steps: int, threads: int | None = None) -> tuple[float | str, str]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "not installed (pip install playwright)", ""
    if not Path(CHROMIUM).is_file() or not (web.ORT_DIST / "ort.wasm.min.mjs").is_file():
        return f"not installed ({CHROMIUM}, or web/vendor/ort: bash tools/vendor-ort.sh)", ""
    server, url = web.serve_in_thread(onnx)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.set_default_timeout(3_600_000)
            page.goto(url + "?ep=wasm" + (f"&threads={threads}" if threads else ""))
            page.wait_for_function("window.cordsnetDemo !== undefined")
            page.evaluate("window.cordsnetDemo.ready")
            backend = page.evaluate("window.cordsnetDemo.info.backend")
            x = image.ravel().tolist()
            page.evaluate("([x, s]) => window.cordsnetDemo.classify(x, {steps: s})", [x, steps])  # warm-up
            ms = page.evaluate("([x, s]) => window.cordsnetDemo.classify(x, {steps: s})", [x, steps])["msPerStep"]
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return ms / 1e3, backend


def executorch(model: Any, pte: Path, image: np.ndarray, steps: int, spont: int) -> tuple[float | str, dict]:
    from cordsnet.export.executorch import executorch_missing

    if executorch_missing():
        return f"not installed ({executorch_missing()})", {}
    from cordsnet.runtime.executorch import PteStepSession

    t0 = time.perf_counter()
    report = export(model, pte, format="executorch", graph="stepwise", batch=1, spontaneous_steps=spont,
                    verify=False)
    lowering = time.perf_counter() - t0
    session = PteStepSession(pte)
    session.run(image, steps=steps)  # warm-up
    session.start(image)
    t0 = time.perf_counter()
    for _ in range(steps):
        session.step()
    d = report.details["delegation"][0]
    return (time.perf_counter() - t0) / steps, {"lowering_s": round(lowering, 1), "pte_mb": round(report.size_bytes / 1e6, 1),
                                                 "delegated_nodes": d["delegated_nodes"],
                                                 "portable_nodes": d["portable_nodes"], "portable_ops": d["portable_ops"]}


def native(client: str, model: Path, image: np.ndarray, steps: int, tmp: Path) -> tuple[float | str, str]:
    """(seconds per step of examples/<client>/build/cordsnet-classify --warmup, its runtime), or why not."""
    build = subprocess.run(["bash", str(ROOT / "examples" / client / "build.sh")], capture_output=True, text=True,
                           env={**os.environ, "PYTHON": sys.executable}, timeout=1800)
    if build.returncode:
        return f"not built ({(build.stderr.strip().splitlines() or ['build.sh failed'])[-1]})", ""
    npy = tmp / "image.npy"
    np.save(npy, image)
    res = subprocess.run([str(ROOT / "examples" / client / "build" / "cordsnet-classify"), str(model), str(npy),
                          "--steps", str(steps), "--warmup"], capture_output=True, text=True, timeout=3600)
    if res.returncode:
        return f"failed: {res.stderr.strip()}", ""
    out = json.loads(res.stdout)
    return out["ms_per_step"] / 1e3, out["runtime"]


def bench(name: str, steps: int, tmp: Path) -> dict[str, Any]:
    model = MODELS[name]()
    cfg = model.config
    spont = cfg.spontaneous_steps if name == "bundled" else 2  # the spontaneous phase is not timed
    onnx = tmp / f"{name}-stepwise.onnx"
    export(model, onnx, format="onnx", graph="stepwise", spontaneous_steps=spont, verify=False)
    image = np.random.default_rng(0).standard_normal((1, *cfg.input_shape)).astype(np.float32)
    row: dict[str, Any] = {"model": name, "depth": cfg.depth, "image_size": cfg.image_size, "steps_timed": steps,
                           "onnx_mb": round(onnx.stat().st_size / 1e6, 1)}
    row["onnxruntime_python_ms"] = ort_python(onnx, image, steps) * 1e3
    node = ort_node(onnx, image, steps, tmp)
    row["onnxruntime_node_ms"] = node * 1e3 if isinstance(node, float) else node
    wasm, backend = ort_web(onnx, image, steps, threads=min(4, os.cpu_count() or 1))
    row["onnxruntime_web_wasm_ms"] = wasm * 1e3 if isinstance(wasm, float) else wasm
    row["web_backend"] = backend
    wasm1, _ = ort_web(onnx, image, steps, threads=1)
    row["onnxruntime_web_wasm_1thread_ms"] = wasm1 * 1e3 if isinstance(wasm1, float) else wasm1
    et, info = executorch(model, tmp / f"{name}-stepwise.pte", image, steps, spont)
    row["executorch_xnnpack_ms"] = et * 1e3 if isinstance(et, float) else et
    row["executorch"] = info
    c, row["c_runtime"] = native("c", onnx, image, steps, tmp)
    row["c_openvino_ms"] = c * 1e3 if isinstance(c, float) else c
    pte = tmp / f"{name}-stepwise.pte"
    cpp, row["cpp_runtime"] = (native("cpp", pte, image, steps, tmp) if pte.is_file()
                               else ("not exported (executorch is not installed)", ""))
    row["cpp_executorch_ms"] = cpp * 1e3 if isinstance(cpp, float) else cpp
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bundled,r8-224", help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--steps", type=int, default=None, help="steps timed per runtime (default: 100 bundled, 3 R8)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            if name not in MODELS:
                ap.error(f"--models: expected names from {sorted(MODELS)}, got {name!r}")
            rows.append(bench(name, args.steps or DEFAULT_STEPS[name], Path(d)))
    cols = [("onnxruntime CPU (Python)", "onnxruntime_python_ms"), ("onnxruntime-node", "onnxruntime_node_ms"),
            ("onnxruntime-web WASM threads", "onnxruntime_web_wasm_ms"),
            ("onnxruntime-web WASM 1 thread", "onnxruntime_web_wasm_1thread_ms"),
            ("ExecuTorch XNNPACK", "executorch_xnnpack_ms"), ("C, OpenVINO C API", "c_openvino_ms"),
            ("C++, ExecuTorch Module", "cpp_executorch_ms")]
    print(f"{'ms per step, batch 1':<28}" + "".join(f"{r['model']:>16}" for r in rows))
    for label, key in cols:
        print(f"{label:<28}" + "".join(f"{r[key]:>16.2f}" if isinstance(r[key], float) else f"{'n/a':>16}"
                                       for r in rows))
    print(json.dumps({"torch": torch.__version__, "results": rows}, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
