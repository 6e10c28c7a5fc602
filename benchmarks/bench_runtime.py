"""CPU benchmark of the runtime against a straightforward re-statement of the published forward pass.

Protocol: CordsNet-R{depth} at {size} px, batch 1, the published protocol (100 spontaneous + 100
stimulus steps by default). Three timings, all in one process:

1. ``published``: the forward pass as the published code computes it, re-stated in
   ``benchmarks/published_forward.py`` (eval, no grad): the weight-normalised weights are re-derived from (g, v) at every use,
   the drive ``avgpool(inp_conv(x))`` is recomputed for every area at every step, and the
   spontaneous phase is simulated on every call.
2. ``session``: the exported ``unrolled`` graph under :class:`cordsnet.runtime.Session` (spontaneous
   end state precomputed, drive once per image, weights folded).
3. ``step``: the exported ``stepwise-drive`` graph under :class:`cordsnet.runtime.StepSession`
   (IO binding, state in onnxruntime buffers), timed per step, compared with the unrolled graph's
   per-step time (its call time / stimulus steps).

Usage::

    python benchmarks/bench_runtime.py                      # R8, 224 px, 100 + 100 steps
    python benchmarks/bench_runtime.py --depth 2 --size 64 --steps 10 --spontaneous 10   # quick check

``--open`` measures instead what a short-lived process (one ``cordsnet-cli predict``) pays before its
first inference: reading the metadata, opening the unrolled graph (as is, with onnxruntime's
optimised graph cached in a file via ``SessionOptions.optimized_model_filepath``, and with
optimisations off) and opening the loop graph, plus one prediction with each::

    python benchmarks/bench_runtime.py --open --bundled     # the bundled digits model (R4, 32 px)
    python benchmarks/bench_runtime.py --open --depth 4 --size 64

``--backends`` times one stimulus step of the ``stepwise-drive`` graph under :class:`StepSession` with
onnxruntime float32 (the reference), OpenVINO float32 and OpenVINO bf16 (``precision="bf16"``, where the
CPU reports BF16), in interleaved rounds (the order rotates every round), and reports each backend's
median per-step time and its ratio to onnxruntime paired round by round (needs ``cordsnet[openvino]``)::

    python benchmarks/bench_runtime.py --backends --steps 20 --repeats 5   # R8, 224 px, batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_forward import add_protocol_arguments, published_forward  # noqa: E402  (shared with bench_model.py)

from cordsnet.config import CordsNetConfig
from cordsnet.export import export
from cordsnet.model import CordsNet
from cordsnet.runtime import Session, StepSession


# ----------------------------------------------------------------------------------- timing
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(ap)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--no-spin", action="store_true",
                    help="both onnxruntime sessions with session.intra_op.allow_spinning=0 (idle threads sleep "
                         "between calls instead of busy-waiting; matters on a shared CPU)")
    ap.add_argument("--skip-published", action="store_true", help="time only the two onnxruntime sessions")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--open", action="store_true", help="measure session-open costs instead (see above)")
    ap.add_argument("--bundled", action="store_true", help="with --open: the bundled model instead of a random one")
    ap.add_argument("--backends", action="store_true",
                    help="per-step time of onnxruntime fp32 vs OpenVINO fp32/bf16 instead (see above)")
    args = ap.parse_args()
    for chosen, measure in ((args.backends, backend_steps), (args.open, open_costs)):
        if chosen:  # another measurement instead of the default one
            text = json.dumps(measure(args), indent=2)
            print(text)
            if args.json is not None:
                args.json.write_text(text + "\n")
            return

    torch.manual_seed(0)
    cfg = CordsNetConfig(depth=args.depth, image_size=args.size, num_classes=1000, steps=args.steps,
                         spontaneous_steps=args.spontaneous, dataset="imagenet")
    model = CordsNet(cfg).eval()
    with torch.no_grad():  # non-zero biases so the spontaneous phase does real work
        for b in model.conv_bias:
            b.normal_(0.05, 0.2)
    x = torch.randn(1, 3, args.size, args.size)
    xn = x.numpy()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        unrolled = export(model, Path(tmp) / "unrolled.onnx", graph="unrolled", verify=False).path
        t_unrolled_export = time.perf_counter() - t0
        drive = export(model, Path(tmp) / "drive.onnx", graph="stepwise-drive", verify=False).path

        options = ort.SessionOptions()
        if args.no_spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        t0 = time.perf_counter()
        session = Session(unrolled, providers="cpu", session_options=options)
        t_load = time.perf_counter() - t0
        steps_session = StepSession(drive, providers="cpu", session_options=options)

        ref = model.run(x).detach().numpy()
        got = session.run(xn)
        parity = {"session_vs_model": float(np.abs(got - ref).max())}
        if not args.skip_published:
            with torch.no_grad():
                naive_out = published_forward(model, x, args.steps, args.spontaneous).numpy()
            parity["published_vs_model"] = float(np.abs(naive_out - ref).max())

        # Interleaved rounds (the first is warm-up), so that a change in machine load hits all three alike.
        t_pub, t_sess, t_steps, per_step = [], [], [], []
        for rnd in range(args.repeats + 1):
            t0 = time.perf_counter()
            if not args.skip_published:
                with torch.no_grad():
                    published_forward(model, x, args.steps, args.spontaneous)
            t1 = time.perf_counter()
            session.run(xn)
            t2 = time.perf_counter()
            steps_session.reset(1)
            steps_session.set_image(xn)
            times = []
            for k in range(args.steps):
                s0 = time.perf_counter()
                steps_session.step(fetch=k == args.steps - 1)
                times.append(time.perf_counter() - s0)
            if rnd > 0:
                t_pub.append(t1 - t0)
                t_sess.append(t2 - t1)
                per_step.extend(times)
                t_steps.append(sum(times))
        step_samples = np.asarray(per_step)

    med = lambda v: float(np.median(v))  # noqa: E731
    result = {
        "command": "python benchmarks/bench_runtime.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
            for k, v in vars(args).items() if v not in (None, False) and k != "json"),
        "model": f"CordsNet-R{args.depth}", "image_size": args.size, "batch": 1,
        "protocol": f"{args.spontaneous} spontaneous + {args.steps} stimulus steps",
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": "default (physical cores)"},
        "onnxruntime": ort.__version__, "torch": torch.__version__,
        "export_unrolled_s": round(t_unrolled_export, 1), "session_load_s": round(t_load, 1),
        "parity_max_abs": parity,
        "published_s": [round(t, 3) for t in t_pub] if not args.skip_published else None,
        "session_s": [round(t, 3) for t in t_sess],
        "speedup_session_vs_published": med(t_pub) / med(t_sess) if not args.skip_published else None,
        "unrolled_per_step_ms": med(t_sess) / args.steps * 1e3,
        "stepsession_protocol_s": [round(t, 3) for t in t_steps],
        "stepsession_per_step_ms": {"per_protocol": med(t_steps) / args.steps * 1e3,
                                    "median": med(step_samples) * 1e3,
                                    "p90": float(np.percentile(step_samples, 90) * 1e3)},
        # Per-step time of the StepSession (its protocol's steps / steps) over the unrolled graph's.
        "stepsession_vs_unrolled_per_step": med(t_steps) / med(t_sess),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


def backend_steps(args: argparse.Namespace) -> dict:
    """Median per-step ms of each backend (stepwise-drive, batch 1) and its per-round ratio to onnxruntime fp32."""
    from cordsnet.runtime.openvino_backend import available_precisions

    torch.manual_seed(0)
    cfg = CordsNetConfig(depth=args.depth, image_size=args.size, num_classes=1000, steps=args.steps,
                         spontaneous_steps=args.spontaneous, dataset="imagenet")
    model = CordsNet(cfg).eval()
    with torch.no_grad():
        for b in model.conv_bias:
            b.normal_(0.05, 0.2)
    xn = np.random.default_rng(0).standard_normal((1, *cfg.input_shape)).astype(np.float32)
    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        drive = export(model, Path(tmp) / "drive.onnx", graph="stepwise-drive", steps=2, spontaneous_steps=2,
                       verify=False).path
        sessions = {"onnxruntime_fp32": StepSession(drive, providers="cpu")}
        sessions["openvino_fp32"] = StepSession(drive, backend="openvino", precision="f32")
        if "bf16" in available_precisions("CPU"):
            sessions["openvino_bf16"] = StepSession(drive, backend="openvino", precision="bf16")
        ref = sessions["onnxruntime_fp32"].run(xn, steps=args.steps)
        parity = {name: float(np.abs(s.run(xn, steps=args.steps) - ref).max()) for name, s in sessions.items()}
        names = list(sessions)
        per_round: dict[str, list[float]] = {n: [] for n in names}
        for rnd in range(args.repeats + 1):  # round 0: warm-up
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                s = sessions[name]
                s.reset(1)
                s.set_image(xn)
                t0 = time.perf_counter()
                for k in range(args.steps):
                    s.step(fetch=k == args.steps - 1)
                if rnd > 0:
                    per_round[name].append((time.perf_counter() - t0) / args.steps)
    ref_times = np.asarray(per_round["onnxruntime_fp32"])
    return {
        "command": f"python benchmarks/bench_runtime.py --backends --depth {args.depth} --size {args.size} "
                   f"--steps {args.steps} --repeats {args.repeats}",
        "model": f"CordsNet-R{args.depth} at {args.size} px (random weights), stepwise-drive, batch 1",
        "openvino_precisions_on_this_cpu": available_precisions("CPU"),
        "max_abs_logits_vs_onnxruntime": parity,
        "per_step_ms_median": {n: round(float(np.median(v)) * 1e3, 2) for n, v in per_round.items()},
        "speedup_vs_onnxruntime_fp32_per_round": {
            n: [round(float(r), 2) for r in ref_times / np.asarray(v)] for n, v in per_round.items()},
        "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def open_costs(args: argparse.Namespace) -> dict:
    """Seconds to read the metadata and open each graph, median of ``--repeats`` rounds, and one prediction."""
    from cordsnet.checkpoint import load_checkpoint
    from cordsnet.artifact import read_info

    if args.bundled:
        model = load_checkpoint(None)
    else:
        torch.manual_seed(0)
        cfg = CordsNetConfig(depth=args.depth, image_size=args.size, num_classes=1000, steps=args.steps,
                             spontaneous_steps=args.spontaneous, dataset="imagenet")
        model = CordsNet(cfg).eval()
    c = model.config
    x = np.random.default_rng(0).standard_normal((1, *c.input_shape)).astype(np.float32)
    timings: dict[str, list[float]] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        out = fn()
        timings.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    def options(level: "ort.GraphOptimizationLevel | None" = None, save: Path | None = None) -> ort.SessionOptions:
        o = ort.SessionOptions()
        if level is not None:
            o.graph_optimization_level = level
        if save is not None:
            o.optimized_model_filepath = str(save)
        return o

    with tempfile.TemporaryDirectory() as tmp:
        unrolled = export(model, Path(tmp) / "unrolled.onnx", graph="unrolled", steps=args.steps, verify=False).path
        loop = export(model, Path(tmp) / "loop.onnx", graph="loop", steps=args.steps, verify=False).path
        cached = Path(tmp) / "unrolled.optimised.onnx"
        ort.InferenceSession(str(unrolled), options(save=cached), providers=["CPUExecutionProvider"])
        for _ in range(args.repeats):
            # Before: a second, unoptimised session only to read the metadata (what open_session did).
            timed("metadata_via_unoptimised_session", lambda: ort.InferenceSession(
                str(unrolled), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                providers=["CPUExecutionProvider"]).get_modelmeta())
            timed("metadata_read_from_file", lambda: read_info(unrolled, "onnx"))
            s = timed("open_unrolled", lambda: Session(unrolled, providers="cpu"))
            timed("predict_unrolled", lambda: s.predict(x))
            timed("open_unrolled_optimisations_off", lambda: Session(
                unrolled, providers="cpu", session_options=options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)))
            timed("open_cached_optimised_graph", lambda: ort.InferenceSession(
                str(cached), options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL), providers=["CPUExecutionProvider"]))
            s = timed("open_loop", lambda: Session(loop, providers="cpu"))
            timed("predict_loop", lambda: s.predict(x))
    med = {k: round(float(np.median(v)), 3) for k, v in timings.items()}
    return {
        "command": "python benchmarks/bench_runtime.py --open " + ("--bundled " if args.bundled else
                                                                   f"--depth {args.depth} --size {args.size} ")
                   + f"--steps {args.steps} --repeats {args.repeats}",
        "model": f"CordsNet-R{c.depth} at {c.image_size} px" + (" (bundled)" if args.bundled else " (random)"),
        "steps": args.steps, "onnxruntime": ort.__version__, "median_seconds": med,
        "predict_before_s": round(med["metadata_via_unoptimised_session"] + med["open_unrolled"]
                                  + med["predict_unrolled"], 2),
        "predict_after_s": round(med["metadata_read_from_file"] + med["open_unrolled"] + med["predict_unrolled"], 2),
        "predict_after_with_loop_graph_s": round(med["metadata_read_from_file"] + med["open_loop"]
                                                 + med["predict_loop"], 2),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }


if __name__ == "__main__":
    main()
