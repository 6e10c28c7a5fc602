"""Speed side by side, one run: StepSession per step vs the unrolled twin vs PyTorch, against the machine's peaks.

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
  bfloat16), ``torch.compile`` of the same step (what users would run instead; compiled in the warm-up
  round), and the published-style forward (``benchmarks/published_forward.py``: spontaneous phase
  simulated, weight norm recomputed; `steps` + `steps` steps) per step and per protocol.
* The machine's peaks, measured before and after the rows: GEMM float32 / bfloat16 / int8 (torch
  ``matmul`` and ``_int_mm`` at 4096^3, which reaches them) and memory copy bandwidth; every row gets its
  share of the peak of its precision (multiply-accumulates per step from torch's FLOP counter x 2 x
  batch / time / peak): how far each path is from this CPU's limit. Above 100 % means the path's
  convolution kernels beat that GEMM (oneDNN's direct bfloat16 convolutions, Winograd in float32) or,
  for an unrolled twin, that it skips the dead updates of its last steps (12 of 160 area updates for
  R8 at 20 steps).
* Throughput (``--batches``): image-steps per second of StepSession (OpenVINO bfloat16 and int8,
  onnxruntime int8) and PyTorch eager bfloat16 at each batch size, against the same peaks, and the batch
  where each path saturates (the smallest within 5 % of its best).

All rows run with one thread budget (``--threads``, default: every core) set for every engine by
:mod:`cordsnet.threads`.

BFLOAT16 rows need the CPU to report it (OpenVINO's ``BF16`` capability, torch's
``torch.backends.mkldnn.is_available()`` plus the avx512_bf16/amx_bf16 CPU flag); they are skipped
otherwise. Usage::

    python benchmarks/bench_stepwise.py                               # R8, 224 px (minutes: exports first)
    python benchmarks/bench_stepwise.py --depth 2 --size 32 --steps 4 --rounds 2 --batches 1,4 --gemm 512  # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import cpu_flags, gemm_peaks, step_macs  # noqa: E402
from published_forward import published_forward  # noqa: E402

from cordsnet.config import CordsNetConfig
from cordsnet.export import export
from cordsnet.model import CordsNet
from cordsnet.runtime import Session, StepSession
from cordsnet.threads import set_num_threads


def torch_has_bf16() -> bool:
    """bfloat16 matmul units on this CPU (never assumed: the CPU flag decides)."""
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """GB/s of a numpy copy of `mib` MiB (bytes read + bytes written), best of `repeats`."""
    a = np.ones(mib << 18, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(repeats))
    return 2 * a.nbytes / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def numpy_gemm(n: int, threads: int, repeats: int = 3) -> float:
    """GFLOP/s of numpy's float32 n^3 matmul on `threads` threads (its BLAS: on AMD CPUs faster than
    torch's MKL path; threadpoolctl, a scikit-learn dependency of the torch extra, sets its threads)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ a
        return 2 * n ** 3 / min(_timed(lambda: a @ a) for _ in range(repeats)) / 1e9


def machine_peaks(n: int, threads: int) -> dict[str, float]:
    """GEMM GOP/s per precision at n^3 (float32: the better of torch and numpy; bfloat16 and int8: torch
    ``matmul`` / ``_int_mm``) and the copy bandwidth (GB/s), with the thread budget in force."""
    peaks = gemm_peaks(n, repeats=3)
    peaks["float32"] = max(peaks["float32"], numpy_gemm(n, threads))
    return {**peaks, "copy_GBps": copy_bandwidth()}


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


def torch_timer(model: CordsNet, image: torch.Tensor, steps: int, bf16: bool,
                compiled: bool = False) -> Callable[[], float]:
    """The model's own ``step``, `steps` times, optionally under bfloat16 autocast, eager or under
    ``torch.compile`` (compiled by the first call, the warm-up round)."""
    step = torch.compile(model.step, dynamic=False) if compiled else model.step

    def run() -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            state = model.spontaneous_state(image.shape[0])
            drive = model.drive_terms(model.drive(image))
            t0 = time.perf_counter()
            for _ in range(steps):
                state = step(state, drive)
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


# A row's precision (which peak it is read against), by the words its label starts with.
ROW_PRECISION: dict[str, str] = {"int8": "int8", "bfloat16": "bfloat16", "float32": "float32"}


def row_precision(name: str) -> str:
    """The precision whose GEMM peak a row is read against: the first precision word in its label
    (an int8 graph's float parts do not change that its convolutions run int8)."""
    return next((ROW_PRECISION[w] for w in name.replace("(", " ").split() if w in ROW_PRECISION), "float32")


def openvino_configs(caps: list[str], int8: bool) -> list[tuple[str, str, str | None]]:
    """(backend, graph dtype, precision hint) of every OpenVINO row; None: the session's default."""
    out: list[tuple[str, str, str | None]] = [("openvino", "float32", "f32")]
    if "BF16" in caps:
        out.append(("openvino", "float32", "bf16"))
    if int8:
        out.append(("openvino", "int8", None))  # the default: bf16 float parts where the CPU has them
        if "BF16" in caps:
            out.append(("openvino", "int8", "f32"))  # the f32 float parts, for comparison
    return out


def label_of(backend: str, dtype: str, precision: str | None) -> str:
    if dtype == "int8" and backend == "openvino":
        return f"{backend} int8 ({'bfloat16' if precision == 'bf16' else 'float32'} float parts)"
    return f"{backend} {'bfloat16' if precision == 'bf16' else dtype}"


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i] (paired: the same round, the same load)."""
    return float(np.median(np.asarray(a) / np.asarray(b)))


def run_rounds(timers: dict[str, Callable[[], float]], rounds: int, what: str) -> dict[str, list[float]]:
    """Every timer once per round, in the same order; round 0 warms up (and compiles) and is dropped."""
    samples: dict[str, list[float]] = {k: [] for k in timers}
    for r in range(rounds + 1):
        for name, fn in timers.items():
            t = fn()
            if r:
                samples[name].append(t)
        print(f"{what}: round {r}/{rounds} done", flush=True)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run (and of the unrolled twin)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=None, help="thread budget of every engine (default: every core)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 exports (calibration takes minutes)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (compiling takes minutes)")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64",
                    help="throughput section: batch sizes ('' to skip)")
    ap.add_argument("--batch-steps", type=int, default=4, help="throughput section: steps per timed run")
    ap.add_argument("--batch-rounds", type=int, default=3, help="throughput section: timed rounds")
    ap.add_argument("--gemm", type=int, default=4096, help="GEMM size of the peaks (n x n x n)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--dir", type=Path, default=None,
                    help="keep the exported graphs here and reuse them on the next run (default: a temporary folder)")
    args = ap.parse_args()

    threads = args.threads or os.cpu_count() or 1
    set_num_threads(threads)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # torch.compile: "No CUDA runtime"
    torch.manual_seed(0)
    model = CordsNet(CordsNetConfig(depth=args.depth, num_classes=args.classes, image_size=args.size,
                                    dataset=None, steps=args.steps, spontaneous_steps=10)).eval()
    with torch.no_grad():
        for b in model.conv_bias:  # non-zero biases so the states are not all zero
            b.normal_(0.05, 0.2)
    load0 = os.getloadavg()
    caps = openvino_caps()
    bf16_torch = torch_has_bf16()
    gflop_step = 2 * step_macs(model) / 1e9  # per image
    peaks0 = machine_peaks(args.gemm, threads)
    print(f"peaks before: {json.dumps({k: round(v, 1) for k, v in peaks0.items()})}", flush=True)
    gen = torch.Generator().manual_seed(0)
    image_t = torch.randn(1, *model.config.input_shape, generator=gen)
    image = image_t.numpy()
    timers: dict[str, Callable[[], float]] = {}
    pairs: list[tuple[str, str]] = []  # (StepSession row, its unrolled twin)
    sessions: dict[str, StepSession] = {}
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
        configs: list[tuple[str, str, str | None]] = [("onnxruntime", d, None) for d in dtypes]
        if caps:
            configs += openvino_configs(caps, "int8" in dtypes)
        for backend, dtype, hint in configs:
            kw = {"backend": backend, "precision": hint} if backend == "openvino" else {}
            twin_session = Session(files["unrolled", dtype], "cpu", **kw)
            label = label_of(backend, dtype, twin_session.precision)
            twin = f"unrolled {label}"
            timers[twin] = unrolled_timer(twin_session, image, args.steps)
            modes = [("stateful", True), ("stateless", False)] if backend == "openvino" else [("", None)]
            for mode, stateful in modes:
                name = f"StepSession {label}" + (f" {mode}" if mode else "")
                session = StepSession(files["stepwise-drive", dtype], "cpu", stateful=stateful, **kw)
                sessions[name] = session
                timers[name] = step_timer(session, image, args.steps)
                pairs.append((name, twin))
            if backend == "onnxruntime":
                name = f"onnxruntime {dtype} step graph, numpy round trip"
                timers[name] = round_trip_timer(files["stepwise-drive", dtype], image, args.steps)
                pairs.append((name, twin))
        torch_kinds = [("float32", False)] + ([("bfloat16 autocast", True)] if bf16_torch else [])
        for word, bf16 in torch_kinds:
            timers[f"PyTorch eager {word} step"] = torch_timer(model, image_t, args.steps, bf16)
        if not args.no_compile:
            for word, bf16 in torch_kinds:
                timers[f"PyTorch torch.compile {word} step"] = torch_timer(model, image_t, args.steps, bf16, True)
        timers["published-style forward float32 (per step)"] = published_timer(model, image_t, args.steps)
        samples = run_rounds(timers, args.rounds, "per step, batch 1")

        # Throughput: image-steps per second against the batch.
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        throughput: dict[str, dict[int, float]] = {}
        if batches:
            best_ov = [n for n in sessions if n.startswith("StepSession openvino") and "stateless" not in n
                       and ("bfloat16" in n.split("(")[0] or "(bfloat16 float parts)" in n)]
            paths = best_ov + [n for n in sessions if n == "StepSession onnxruntime int8"]
            rng = np.random.default_rng(0)
            for b in batches:
                imgs = rng.standard_normal((b, *model.config.input_shape)).astype(np.float32)
                bt: dict[str, Callable[[], float]] = {n: step_timer(sessions[n], imgs, args.batch_steps) for n in paths}
                if bf16_torch:
                    bt["PyTorch eager bfloat16 autocast step"] = torch_timer(model, torch.from_numpy(imgs),
                                                                             args.batch_steps, True)
                for n, v in run_rounds(bt, args.batch_rounds, f"throughput, batch {b}").items():
                    throughput.setdefault(n, {})[b] = b / float(np.median(v))  # image-steps per second
    peaks1 = machine_peaks(args.gemm, threads)
    load1 = os.getloadavg()
    peaks = {k: max(peaks0[k], peaks1[k]) for k in peaks0}  # the machine's, at the better of the two loads

    med = {k: float(np.median(v)) for k, v in samples.items()}
    torch_rows = [k for k in med if k.startswith("PyTorch")]
    best_torch = min(torch_rows, key=lambda k: med[k])
    published = "published-style forward float32 (per step)"
    twin_of = dict(pairs)
    rows = []
    print(f"\nCordsNet-R{args.depth} at {args.size} px, batch 1, {args.steps} steps per run, median of {args.rounds} "
          f"rounds, {threads} thread(s); {gflop_step:.2f} GFLOP per image-step")
    print(f"{'path':<58}{'ms/step':>9}{'x twin':>8}  {'vs best PyTorch':>16}{'vs published':>14}{'% of peak':>11}")
    for name in med:
        ratio_twin = median_ratio(samples[name], samples[twin_of[name]]) if name in twin_of else None
        vs_torch = median_ratio(samples[best_torch], samples[name])
        vs_pub = median_ratio(samples[published], samples[name])
        prec = row_precision(name)
        share = gflop_step / med[name] / peaks[prec]
        rows.append({"path": name, "ms_per_step": med[name] * 1e3, "x_unrolled_twin": ratio_twin,
                     "speedup_vs_best_pytorch_step": vs_torch, "speedup_vs_published": vs_pub,
                     "peak_precision": prec, "share_of_peak": share})
        twin_text = f"{ratio_twin:.2f}x" if ratio_twin is not None else "-"
        print(f"{name:<58}{med[name] * 1e3:>9.2f}{twin_text:>8}  {vs_torch:>15.2f}x{vs_pub:>13.1f}x{100 * share:>10.0f}%")
    print(f"best PyTorch step: {best_torch} ({med[best_torch] * 1e3:.2f} ms)")
    tp_rows = []
    if throughput:
        print(f"\nThroughput: image-steps per second ({args.batch_steps} steps per run, median of {args.batch_rounds} "
              f"rounds), and the share of the peak of the path's precision")
        print(f"{'path':<58}" + "".join(f"{'b' + str(b):>14}" for b in batches) + f"{'saturates at':>14}")
        for name, by_batch in throughput.items():
            best = max(by_batch.values())
            sat = min(b for b, v in by_batch.items() if v >= 0.95 * best)
            prec = row_precision(name)
            cells = "".join(f"{v:>8.0f} {100 * v * gflop_step / peaks[prec]:>3.0f}%" for v in by_batch.values())
            print(f"{name:<58}{cells}{'b' + str(sat):>14}")
            tp_rows.append({"path": name, "image_steps_per_s": {str(b): v for b, v in by_batch.items()},
                            "share_of_peak": {str(b): v * gflop_step / peaks[prec] for b, v in by_batch.items()},
                            "saturates_at_batch": sat, "peak_precision": prec})
    print(f"\npeaks (GEMM {args.gemm}^3, GOP/s; copy GB/s), before: "
          f"{json.dumps({k: round(v, 1) for k, v in peaks0.items()})}, after: "
          f"{json.dumps({k: round(v, 1) for k, v in peaks1.items()})}")
    print("limit per image-step at the peaks: " + ", ".join(f"{p} {gflop_step / peaks[p] * 1e3:.2f} ms"
                                                             for p in ("float32", "bfloat16", "int8")))
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}; cpus {os.cpu_count()}; CPU flags "
          f"{cpu_flags()}; OpenVINO CPU capabilities {caps}; torch bfloat16 rows: "
          f"{'yes' if bf16_torch else 'no (no bfloat16 CPU flag)'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"depth": args.depth, "size": args.size, "steps": args.steps,
                                         "rounds": args.rounds, "threads": threads, "gflop_per_image_step": gflop_step,
                                         "load_average": [load0[0], load1[0]], "peaks_before": peaks0,
                                         "peaks_after": peaks1, "cpu_flags": cpu_flags(),
                                         "openvino_capabilities": caps, "rows": rows, "throughput": tp_rows},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
