"""Export benchmark: export time per graph kind and onnxruntime CPU time per step, both ONNX exporters.

    python benchmarks/bench_export.py                      # R8 at 224 px, 100 steps (the issue's setting)
    python benchmarks/bench_export.py --depth 2 --size 32 --steps 10   # a quick smoke run

For each exporter (legacy TorchScript-based, dynamo) and graph kind (unrolled, loop, stepwise,
stepwise-drive) it reports the export time (without verification) and the onnxruntime CPU time per
step at batch 1, next to the PyTorch ``model.run`` time per step. Weights: the model's own random
initialisation with non-zero biases (timings do not depend on the values). Prints a table and JSON.

``--traced-unrolled`` also times the alternative the exporter does not use: the unrolled graph traced
as one module (all steps traced) instead of stitched from one traced step; this script builds it itself.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cordsnet.artifact import encode_path, read_info
from cordsnet.config import CordsNetConfig
from cordsnet.export import export
from cordsnet.model import CordsNet

GRAPHS = ("unrolled", "loop", "stepwise", "stepwise-drive")


def time_onnx(path: Path, graph: str, steps: int, image: np.ndarray, depth: int, repeats: int,
              threads: int | None = None) -> float:
    """Median seconds per step of one image through the graph (onnxruntime, CPU).

    `steps` is the number of steps timed for the loop and stepwise graphs (per-step cost does not
    depend on it); the unrolled graph always runs the steps it was exported with.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    spont = read_info(path).spontaneous_state()
    enc = None
    if graph == "stepwise-drive":
        enc = ort.InferenceSession(str(encode_path(path)), opts, providers=["CPUExecutionProvider"])

    def once() -> None:
        if graph == "unrolled":
            sess.run(None, {"image": image})
        elif graph == "loop":
            sess.run(None, {"image": image, "steps": np.array(steps, dtype=np.int64)})
        else:
            drive = {"image": image}
            if enc is not None:
                skip, ff0 = enc.run(None, {"image": image})
                drive = {"skip": skip, "ff0": ff0}
            state = list(spont)
            names = [o.name for o in sess.get_outputs()]
            for _ in range(steps):
                feeds = dict(drive)
                feeds.update({f"state_{i}": s for i, s in enumerate(state)})
                out = dict(zip(names, sess.run(None, feeds)))
                state = [out[f"next_state_{i}"] for i in range(depth)]

    once()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / steps


def export_traced_unrolled(model: CordsNet, path: Path, *, steps: int, exporter: str, **_: object):  # noqa: ANN201
    """The unrolled graph traced as one module (the exporter stitches one traced step instead)."""
    import types

    import onnx

    from cordsnet.export import wrappers as W
    from cordsnet.export.api import build_metadata
    from cordsnet.export.onnx import export_piece
    from cordsnet.export.spec import make_spec

    spec = make_spec(model, format="onnx", graph="unrolled", steps=steps, spontaneous_steps=None, alpha=None,
                     batch=None, readout="last", record=None, opset=None, dtype="float32", exporter=exporter)
    t0 = time.perf_counter()
    g = W.traced_graph(model, spec, "unrolled")
    proto = export_piece(g.module, g.args, g.input_names, g.output_names, spec)
    onnx.helper.set_model_props(proto, build_metadata(model, spec, checkpoint_sha256=None, exporter=exporter))
    onnx.save(proto, str(path))
    return types.SimpleNamespace(export_seconds=time.perf_counter() - t0, spontaneous_seconds=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--time-steps", type=int, default=20,
                    help="Steps timed per run for the loop and stepwise graphs (unrolled: --steps).")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--threads", type=int, default=None,
                    help="Threads for torch and onnxruntime (default: their own defaults). On a shared, "
                         "oversubscribed machine 1 thread gives far steadier (and faster) numbers.")
    ap.add_argument("--traced-unrolled", action="store_true",
                    help="Also export the unrolled graph by tracing all steps (the alternative to stitching).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CordsNet(CordsNetConfig(depth=args.depth, num_classes=args.classes, image_size=args.size,
                                    dataset=None)).eval()
    with torch.no_grad():  # non-zero biases so the spontaneous phase does real work
        for b in model.conv_bias:
            b.normal_(0.05, 0.2)
    image_t = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    image = image_t.numpy()
    model.run(image_t, steps=1)  # caches the spontaneous state and the effective weights
    torch_steps = min(args.time_steps, args.steps)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.run(image_t, steps=torch_steps)
        times.append(time.perf_counter() - t0)
    torch_step = float(np.median(times)) / torch_steps
    print(f"CordsNet-R{args.depth} at {args.size} px, {args.steps} steps, batch 1, torch threads "
          f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"PyTorch model.run: {torch_step * 1e3:.2f} ms/step", flush=True)

    results = {"depth": args.depth, "size": args.size, "steps": args.steps, "threads": args.threads,
               "torch_ms_per_step": torch_step * 1e3,
               "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        variants = [(e, g, "stitch") for e in args.exporters.split(",") for g in args.graphs.split(",")]
        if args.traced_unrolled:
            variants += [(e, "unrolled", "trace") for e in args.exporters.split(",")]
        for exporter, graph, method in variants:
            label = graph if method == "stitch" else "unrolled-traced"
            path = Path(tmp) / f"{exporter}-{label}.onnx"
            t0 = time.perf_counter()
            try:
                build = export if method == "stitch" else export_traced_unrolled
                rep = build(model, path, graph=graph, steps=args.steps, exporter=exporter, verify=False)
            except Exception as exc:  # report and continue with the other kinds
                print(f"{exporter:7s} {label:15s} export FAILED: {exc}", flush=True)
                results["rows"].append({"exporter": exporter, "graph": label, "error": str(exc)})
                continue
            export_s = time.perf_counter() - t0
            timed = args.steps if graph == "unrolled" else min(args.time_steps, args.steps)
            per_step = time_onnx(path, graph, timed, image, args.depth, args.repeats, args.threads)
            size = path.stat().st_size
            row = {"exporter": exporter, "graph": label, "export_s": export_s,
                   "graph_s": rep.export_seconds, "spontaneous_s": rep.spontaneous_seconds, "ort_ms_per_step": per_step * 1e3,
                   "vs_torch": per_step / torch_step, "size_mb": size / 1e6}
            results["rows"].append(row)
            print(f"{exporter:7s} {label:15s} export {export_s:6.1f} s (graph {rep.export_seconds:5.1f} s, "
                  f"spontaneous state {rep.spontaneous_seconds:5.1f} s)   onnxruntime CPU {per_step * 1e3:7.2f} "
                  f"ms/step ({per_step / torch_step:.2f}x PyTorch)   {size / 1e6:.1f} MB", flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
