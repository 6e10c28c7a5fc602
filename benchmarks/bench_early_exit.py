"""Early exit end to end: the published protocol per image, measured on the bundled digits model.

Each held-out digit is served alone (batch 1), the way an application answers one request at a time,
and every path runs it in turn (interleaved image by image, so the ratios are paired under the same
load):

* ``published``: ``benchmarks/published_forward.py`` (PyTorch eager, no grad): 100 spontaneous + 100
  stimulus steps, the spontaneous phase simulated on every call, the drive recomputed for every area at
  every step, weight norm re-derived at every use. The baseline.
* ``<backend> full protocol``: :meth:`cordsnet.runtime.StepSession.run` over the 100 stimulus steps
  (the spontaneous state is baked into the graph at export, as the toolkit always does).
* ``<backend> early exit``: :meth:`cordsnet.runtime.StepSession.run_until` at `--threshold`
  (:func:`cordsnet.decision.decide`: top-class probability and evidence over the no-image baseline):
  the image stops at the step where it has decided, decision checks and logits reads included in the time.

Backends: onnxruntime float32, OpenVINO bfloat16 (where the CPU reports it) and OpenVINO int8 (the
graph's default precision: bf16 float parts where the CPU has them), on the ``stepwise-drive`` graph.
Reported per path: seconds per image (mean), the speed-up against ``published`` (total time, and the
median of the per-image ratios), held-out top-1, top-1 agreement with the float32 model over the full
protocol, and the mean stimulus steps. Nothing is projected: every row is timed end to end.

Usage::

    python benchmarks/bench_early_exit.py                       # 120 held-out digits
    python benchmarks/bench_early_exit.py --images 360 --json early_exit.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_forward import published_forward  # noqa: E402

from cordsnet.checkpoint import load_checkpoint
from cordsnet.data import digits_split, digits_to_tensor
from cordsnet.export import export
from cordsnet.runtime import StepSession
from cordsnet.runtime.openvino_backend import available_precisions
from cordsnet.threads import set_num_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=120, help="held-out digits served (each alone, batch 1)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None, help="thread budget of every engine (default: every core)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    threads = args.threads or os.cpu_count() or 1
    set_num_threads(threads)
    model = load_checkpoint(None)
    c = model.config
    X, y = digits_split()["test"]
    x = digits_to_tensor(X[:args.images], c.image_size).numpy()
    y = np.asarray(y[:args.images])
    with torch.no_grad():
        reference = model.run(torch.from_numpy(x)).argmax(1).numpy()  # the float32 model, full protocol
    load0 = os.getloadavg()
    paths: dict[str, Callable[[np.ndarray], tuple[np.ndarray, int]]] = {}

    def published(img: np.ndarray) -> tuple[np.ndarray, int]:
        with torch.no_grad():
            out = published_forward(model, torch.from_numpy(img), steps=c.steps,
                                    spontaneous_steps=c.spontaneous_steps, alpha=c.alpha)
        return out.numpy(), c.steps

    paths["published (PyTorch eager float32)"] = published
    with tempfile.TemporaryDirectory(prefix="bench-early-exit-") as tmp:
        graphs = {}
        for dtype in ("float32", "int8"):
            p = Path(tmp) / f"digits-{dtype}.onnx"
            t0 = time.perf_counter()
            export(model, p, graph="stepwise-drive", dtype=dtype, verify=False)
            print(f"exported stepwise-drive {dtype} in {time.perf_counter() - t0:.0f} s", flush=True)
            graphs[dtype] = p
        backends = [("onnxruntime float32", graphs["float32"], {})]
        if "bf16" in available_precisions():
            backends.append(("OpenVINO bfloat16", graphs["float32"], {"backend": "openvino", "precision": "bf16"}))
        backends.append(("OpenVINO int8", graphs["int8"], {"backend": "openvino"}))
        for label, path, kw in backends:
            session = StepSession(path, "cpu", **kw)
            if kw:
                label = f"{label} ({session.providers[0]})"

            def full(img: np.ndarray, s: StepSession = session) -> tuple[np.ndarray, int]:
                return s.run(img), c.steps

            def early(img: np.ndarray, s: StepSession = session) -> tuple[np.ndarray, int]:
                r = s.run_until(img, args.threshold)
                return r.logits, int(r.steps[0])

            paths[f"{label}, full protocol"] = full
            paths[f"{label}, early exit at {args.threshold}"] = early
        for fn in paths.values():  # warm-up, not timed
            fn(x[:1])
        times = {k: np.zeros(len(x)) for k in paths}
        preds = {k: np.zeros(len(x), int) for k in paths}
        steps = {k: np.zeros(len(x), int) for k in paths}
        t_start = time.perf_counter()
        for i in range(len(x)):
            img = x[i:i + 1]
            for name, fn in paths.items():
                t0 = time.perf_counter()
                logits, n = fn(img)
                times[name][i] = time.perf_counter() - t0
                preds[name][i], steps[name][i] = int(np.argmax(logits[0])), n
            if time.perf_counter() - t_start > 10 and i % 20 == 19:
                print(f"{i + 1}/{len(x)} images", flush=True)
    load1 = os.getloadavg()
    base = "published (PyTorch eager float32)"
    rows = []
    print(f"\nBundled digits model (CordsNet-R{c.depth}, {c.image_size} px), {len(x)} held-out digits served one "
          f"at a time, {c.spontaneous_steps} + {c.steps} steps, {threads} thread(s)")
    print(f"{'path':<72}{'ms/image':>10}{'vs published':>14}{'(median/img)':>14}{'top-1':>8}{'agree':>8}{'steps':>7}")
    for name in paths:
        total = float(times[base].sum() / times[name].sum())
        per_image = float(np.median(times[base] / times[name]))
        row = {"path": name, "ms_per_image": 1e3 * float(times[name].mean()), "speedup_vs_published": total,
               "speedup_median_per_image": per_image, "top1": float((preds[name] == y).mean()),
               "agreement_with_float32": float((preds[name] == reference).mean()),
               "mean_stimulus_steps": float(steps[name].mean())}
        rows.append(row)
        print(f"{name:<72}{row['ms_per_image']:>10.2f}{total:>13.1f}x{per_image:>13.1f}x{100 * row['top1']:>7.1f}%"
              f"{100 * row['agreement_with_float32']:>7.1f}%{row['mean_stimulus_steps']:>7.1f}")
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}; cpus {os.cpu_count()}")
    if args.json is not None:
        args.json.write_text(json.dumps({"images": len(x), "threshold": args.threshold, "threads": threads,
                                         "load_average": [load0[0], load1[0]], "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
