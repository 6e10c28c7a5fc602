"""Stepwise inference side by side: StepSession per step vs the unrolled twin graph vs PyTorch (one run).

Model: a CordsNet-R{depth} at {size} px with random weights (non-zero biases), batch 1. Every row is
the time of ONE Euler step, the median over interleaved rounds (the order of the paths is the same
every round; ratios are paired round by round):

* ``StepSession``: the ``stepwise-drive`` graph stepped by :class:`cordsnet.runtime.StepSession` (the
  image encoded once, then `steps` calls; logits fetched after the last), on onnxruntime float32 /
  int8 and OpenVINO float32 / bfloat16 / int8, OpenVINO both *stateful* (the default for float32 graphs: the state kept
  inside the runtime, ReadValue/Assign) and *stateless* (``stateful=False``: the state double-buffered
  in OpenVINO tensors, in and out of every call).
* ``unrolled``: the twin ``unrolled`` graph of `steps` steps under :class:`cordsnet.runtime.Session`,
  same backend and precision, one call / `steps` (it includes the image drive, once per call, and
  leaves out the updates the last steps' readout never reads: the prune of docs/export.md).
* PyTorch eager: the model's own ``step`` in float32 and under bfloat16 autocast (where the CPU has
  bfloat16), and the published-style forward (``benchmarks/published_forward.py``: spontaneous phase
  simulated, weight norm recomputed; `steps` + `steps` steps) per step and per protocol.

BFLOAT16 rows need the CPU to report it (OpenVINO's ``BF16`` capability, torch's
``torch.backends.mkldnn.is_available()`` plus the avx512_bf16/amx_bf16 CPU flag); they are skipped
otherwise. Usage::

    python benchmarks/bench_stepwise.py                               # R8, 224 px (minutes: exports first)
    python benchmarks/bench_stepwise.py --depth 2 --size 32 --steps 4 --rounds 2     # a quick check
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

from cordsnet.config import CordsNetConfig
from cordsnet.export import export
from cordsnet.model import CordsNet
from cordsnet.runtime import Session, StepSession


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def torch_has_bf16() -> bool:
    """bfloat16 matmul units on this CPU (never assumed: the CPU flag decides)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def openvino_caps() -> list[str]:
    try:
        import openvino as ov
    except ImportError:
        return []
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def step_timer(session: StepSession, image: np.ndarray, steps: int) -> Callable[[], float]:
    """Seconds per step: reset + image shown (not timed), then `steps` calls, the logits read after the last."""
    def run() -> float:
        session.reset(image.shape[0])
        session.set_image(image)
        t0 = time.perf_counter()
        for _ in range(steps - 1):
            session.step(fetch=False)
        session.step()
        return (time.perf_counter() - t0) / steps
    return run


def round_trip_timer(path: Path, image: np.ndarray, steps: int) -> Callable[[], float]:
    """What IO binding saves: the same step graph under ``InferenceSession.run``, the state in and out as numpy."""
    import onnxruntime as ort

    from cordsnet.artifact import companion_path, read_info

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as StepSession
    step = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    encode = ort.InferenceSession(str(companion_path(path, "encode")), options, providers=["CPUExecutionProvider"])
    spont = read_info(path, "onnx").spontaneous_state()
    names = [o.name for o in step.get_outputs()]

    def run() -> float:
        skip, ff0 = encode.run(["skip", "ff0"], {"image": image})
        state = [np.ascontiguousarray(np.broadcast_to(s, (image.shape[0], *s.shape[1:]))) for s in spont]
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step.run(names, {"skip": skip, "ff0": ff0, **{f"state_{i}": s for i, s in enumerate(state)}})
            state = out[1:]
        return (time.perf_counter() - t0) / steps
    return run


def unrolled_timer(session: Session, image: np.ndarray, steps: int) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        session.run(image)
        return (time.perf_counter() - t0) / steps
    return run


def torch_timer(model: CordsNet, image: torch.Tensor, steps: int, bf16: bool) -> Callable[[], float]:
    """The model's own ``step`` (eager), `steps` times, optionally under bfloat16 autocast."""
    def run() -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            state = model.spontaneous_state(image.shape[0])
            drive = model.drive_terms(model.drive(image))
            t0 = time.perf_counter()
            for _ in range(steps):
                state = model.step(state, drive)
            model.readout(state)
            return (time.perf_counter() - t0) / steps
    return run


def published_timer(model: CordsNet, image: torch.Tensor, steps: int) -> Callable[[], float]:
    """The published-style forward, `steps` blank + `steps` stimulus steps, per step (of 2 x steps)."""
    def run() -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            published_forward(model, image, steps=steps, spontaneous_steps=steps, alpha=model.config.alpha)
            return (time.perf_counter() - t0) / (2 * steps)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run (and of the unrolled twin)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 exports (calibration takes minutes)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--dir", type=Path, default=None,
                    help="keep the exported graphs here and reuse them on the next run (default: a temporary folder)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = CordsNet(CordsNetConfig(depth=args.depth, num_classes=args.classes, image_size=args.size,
                                    dataset=None, steps=args.steps, spontaneous_steps=10)).eval()
    with torch.no_grad():
        for b in model.conv_bias:  # non-zero biases so the states are not all zero
            b.normal_(0.05, 0.2)
    load0 = os.getloadavg()
    caps = openvino_caps()
    bf16_torch = torch_has_bf16()
    gen = torch.Generator().manual_seed(0)
    image_t = torch.randn(1, *model.config.input_shape, generator=gen)
    image = image_t.numpy()
    timers: dict[str, Callable[[], float]] = {}
    pairs: list[tuple[str, str]] = []  # (StepSession row, its unrolled twin)
    with tempfile.TemporaryDirectory(prefix="bench-stepwise-") as scratch:
        tmp = args.dir if args.dir is not None else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        files: dict[tuple[str, str], Path] = {}
        dtypes = ["float32"] + ([] if args.no_int8 else ["int8"])
        calib = torch.randn(4, *model.config.input_shape, generator=gen).numpy()
        for dtype in dtypes:
            for graph in ("stepwise-drive", "unrolled"):
                p = Path(tmp) / f"r{args.depth}-{args.size}-{args.steps}-{graph}-{dtype}.onnx"
                files[graph, dtype] = p
                if p.exists():
                    continue
                t0 = time.perf_counter()
                export(model, p, graph=graph, dtype=dtype, steps=args.steps, spontaneous_steps=10, verify=False,
                       **({"calibration_images": calib} if dtype == "int8" else {}))
                print(f"exported {graph} {dtype} in {time.perf_counter() - t0:.0f} s", flush=True)
        configs: list[tuple[str, str, str | None]] = [("onnxruntime", "float32", None)]
        if "int8" in dtypes:
            configs.append(("onnxruntime", "int8", None))
        if caps:
            configs.append(("openvino", "float32", "f32"))
            if "BF16" in caps:
                configs.append(("openvino", "float32", "bf16"))
            if "int8" in dtypes:
                configs.append(("openvino", "int8", "f32"))
        for backend, dtype, hint in configs:
            label = f"{backend} {dtype if hint in (None, 'f32') else 'bfloat16'}"
            kw = {"backend": backend, "precision": hint} if backend == "openvino" else {}
            providers = "cpu"
            twin = f"unrolled {label}"
            timers[twin] = unrolled_timer(Session(files["unrolled", dtype], providers, **kw), image, args.steps)
            modes = [("stateful", True), ("stateless", False)] if backend == "openvino" else [("", None)]
            for mode, stateful in modes:
                name = f"StepSession {label}" + (f" {mode}" if mode else "")
                session = StepSession(files["stepwise-drive", dtype], providers, stateful=stateful, **kw)
                timers[name] = step_timer(session, image, args.steps)
                pairs.append((name, twin))
            if backend == "onnxruntime":
                name = f"onnxruntime {dtype} step graph, numpy round trip"
                timers[name] = round_trip_timer(files["stepwise-drive", dtype], image, args.steps)
                pairs.append((name, twin))
        timers["PyTorch eager float32 step"] = torch_timer(model, image_t, args.steps, False)
        if bf16_torch:
            timers["PyTorch eager bfloat16 autocast step"] = torch_timer(model, image_t, args.steps, True)
        timers["published-style forward (per step)"] = published_timer(model, image_t, args.steps)

        samples: dict[str, list[float]] = {k: [] for k in timers}
        for r in range(args.rounds + 1):
            for name, fn in timers.items():
                t = fn()
                if r:  # round 0 warms up
                    samples[name].append(t)
            print(f"round {r}/{args.rounds} done", flush=True)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    torch_rows = [k for k in med if k.startswith("PyTorch")]
    best_torch = min(torch_rows, key=lambda k: med[k])
    published = "published-style forward (per step)"
    rows = []
    print(f"\nCordsNet-R{args.depth} at {args.size} px, batch 1, {args.steps} steps per run, median of {args.rounds} "
          f"rounds; ms per step; load average before {load0[0]:.2f}")
    print(f"{'path':<46}{'ms/step':>9}{'x unrolled twin':>17}{'speed-up vs ' + best_torch.split(' step')[0]:>44}"
          f"{'vs published':>14}")
    twin_of = dict(pairs)
    for name in med:
        ratio_twin = None
        if name in twin_of:  # paired per round
            ratio_twin = float(np.median(np.asarray(samples[name]) / np.asarray(samples[twin_of[name]])))
        vs_torch = float(np.median(np.asarray(samples[best_torch]) / np.asarray(samples[name])))
        vs_pub = float(np.median(np.asarray(samples[published]) / np.asarray(samples[name])))
        rows.append({"path": name, "ms_per_step": med[name] * 1e3, "x_unrolled_twin": ratio_twin,
                     "speedup_vs_best_pytorch_step": vs_torch, "speedup_vs_published": vs_pub})
        twin_text = f"{ratio_twin:.2f}x" if ratio_twin is not None else "-"
        print(f"{name:<46}{med[name] * 1e3:>9.2f}{twin_text:>17}{vs_torch:>43.2f}x{vs_pub:>13.1f}x")
    load1 = os.getloadavg()
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}; cpus {os.cpu_count()}; OpenVINO CPU "
          f"capabilities {caps}; torch bfloat16 rows: {'yes' if bf16_torch else 'no (no bfloat16 CPU flag)'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"depth": args.depth, "size": args.size, "steps": args.steps,
                                         "rounds": args.rounds, "load_average": [load0[0], load1[0]],
                                         "openvino_capabilities": caps, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
