"""Per-step time of every backend x precision, paired with onnxruntime float32, and the share of the GEMM peak.

    PYTHONPATH=$PWD python benchmarks/bench_precision.py                 # R8 at 224 px, batch 1 and 8
    PYTHONPATH=$PWD python benchmarks/bench_precision.py --depth 2 --size 32 --rounds 2   # a smoke run

What it measures, in one run on this machine:

* GEMM peaks of each precision (torch ``matmul`` float32 and bfloat16, ``torch._int_mm`` int8), so a
  figure is read against the same machine at the same load.
* For each batch: the stepwise-drive graph (one Euler step per call, the state in and out as numpy
  arrays, as an application runs it) exported at float32, float16 and int8 (static QDQ, calibrated on
  the trajectories of random images: timings do not depend on the values; every convolution int8, the
  default, and a variant with the recurrent convolutions kept float32), then timed on onnxruntime (CPU)
  at float32 / float16 / int8 and on OpenVINO (``pip install openvino``) at float32, bfloat16
  (``INFERENCE_PRECISION_HINT``; only where the CPU reports BF16) and int8 (the QDQ graph). Also the
  multistep graph (``--steps-per-call`` steps per call): float32 on onnxruntime, bfloat16 and int8 on
  OpenVINO.
* Rounds: every configuration and onnxruntime float32 are timed in the same round; the ratio is
  taken per round (the machine is shared), and the median and range over rounds are reported.
* The share of the peak: multiply-accumulates per step (counted by torch's FLOP counter on the
  model's step) x 2 / time per step / the GEMM peak of that precision (float16 on a CPU is
  compared with the float32 peak: onnxruntime's CPU kernels compute it in float32).

Weights: random (a fresh CordsNet with non-zero biases). Prints a table and JSON (``--json``).
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
from cordsnet import functional as CF


# ------------------------------------------------------------------------------------ peaks
def gemm_peaks(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GOP/s of an n x n x n GEMM in float32, bfloat16 (torch.matmul) and int8 (torch._int_mm)."""
    out = {}
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    cases = {"float32": lambda: a @ b}
    ab, bb = a.bfloat16(), b.bfloat16()
    cases["bfloat16"] = lambda: ab @ bb
    ai = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    bi = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    cases["int8"] = lambda: torch._int_mm(ai, bi)
    for name, fn in cases.items():
        try:
            fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name] = 2 * n ** 3 / min(times) / 1e9
        except RuntimeError as exc:  # e.g. no int8 GEMM in this torch build
            out[name] = float("nan")
            print(f"{name} GEMM peak not measured: {exc}")
    return out


def step_macs(model: CordsNet) -> float:
    """Multiply-accumulates of one Euler step at batch 1 (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    w = model.effective_weights()
    state = model.initial_state(1)
    x = torch.zeros(1, *model.config.input_shape)
    terms = CF.drive_terms(model.dynamics, w, CF.drive(w, x))
    with FlopCounterMode(display=False) as fc:
        CF.step(model.dynamics, w, state, terms, 0.2)
    return fc.get_total_flops() / 2


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                                            "amx_int8", "avx512_fp16"})


# ---------------------------------------------------------------------------------- runners
def ort_runner(path: Path, per_call: int):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(encode_path(path)), providers=["CPUExecutionProvider"]) \
        if encode_path(path).exists() else None
    return _stepper(lambda feeds: sess.run(None, feeds), (lambda x: dict(zip(["skip", "ff0"], enc.run(None, {"image": x}))))
                    if enc else None, [i.name for i in sess.get_inputs()], path, per_call)


def ov_runner(path: Path, hint: str, per_call: int, batch: int):
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}

    def compiled(p: Path):  # noqa: ANN202 - the batch made static: OpenVINO plans static shapes best
        m = core.read_model(str(p))
        m.reshape({i.get_any_name(): _static(i, batch) for i in m.inputs})
        return core.compile_model(m, "CPU", cfg)

    req = compiled(path).create_infer_request()
    names = [i.get_any_name() for i in core.read_model(str(path)).inputs]
    enc = None
    if encode_path(path).exists():
        ereq = compiled(encode_path(path)).create_infer_request()

        def enc(x):  # noqa: ANN001, ANN202
            r = ereq.infer({"image": x})
            return {k.get_any_name(): np.array(v) for k, v in r.items()}

    def run(feeds):  # noqa: ANN001, ANN202
        r = req.infer(feeds)
        return [np.array(v) for v in r.values()]

    return _stepper(run, enc, names, path, per_call)


def _static(port, batch: int) -> list[int]:  # noqa: ANN001
    dims = list(port.get_partial_shape())
    return [batch] + [d.get_length() for d in dims[1:]]


def _stepper(run, enc, names, path: Path, per_call: int):  # noqa: ANN001, ANN202
    """A function timing `n` calls of a step graph from the spontaneous state: seconds per Euler step."""
    info = read_info(path)
    dtype = np.float16 if info.dtype == "float16" else np.float32

    def timed(image: np.ndarray, calls: int) -> float:
        x = image.astype(dtype)
        drive = enc(x) if enc else {"image": x}
        state = [np.repeat(s, len(x), axis=0).astype(dtype) for s in info.spontaneous_state()]
        feeds = {n: drive[n] for n in names if not n.startswith("state_")}
        run({**feeds, **{f"state_{i}": s for i, s in enumerate(state)}})  # warm-up
        t0 = time.perf_counter()
        for _ in range(calls):
            out = run({**feeds, **{f"state_{i}": s for i, s in enumerate(state)}})
            state = out[1:]
        return (time.perf_counter() - t0) / (calls * per_call)

    return timed


# ------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=10, help="calls timed per configuration per round")
    ap.add_argument("--steps-per-call", type=int, default=5, help="K of the multistep graph")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    model = CordsNet(CordsNetConfig(depth=args.depth, num_classes=args.classes, image_size=args.size,
                                    dataset=None, steps=args.steps_per_call, spontaneous_steps=10)).eval()
    for b in model.conv_bias:  # non-zero biases so the states are not all zero
        b.normal_(0.05, 0.2)
    load0 = os.getloadavg()
    peaks = gemm_peaks()
    macs = step_macs(model)
    flags = cpu_flags()
    ov_caps: list[str] = []
    if not args.no_openvino:
        try:
            import openvino as ov

            ov_caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except ImportError:
            print("openvino not installed (pip install openvino): its rows are skipped")
    print(f"CordsNet-R{args.depth} at {args.size} px: {macs / 1e9:.3f} GMAC per step; cpus {os.cpu_count()}, "
          f"flags {flags}, OpenVINO CPU capabilities {ov_caps}")
    print("GEMM peaks (GOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    results = {"depth": args.depth, "size": args.size, "gmac_per_step": macs / 1e9, "peaks_gops": peaks,
               "cpu_flags": flags, "openvino_capabilities": ov_caps, "rows": []}
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        calib = torch.randn(4, *model.config.input_shape, generator=gen).numpy()
        paths = {}
        for name, dtype, kw in (("float32", "float32", {}), ("float16", "float16", {}),
                                ("int8", "int8", {"calibration_images": calib}),
                                ("int8 recurrent float32", "int8", {"calibration_images": calib,
                                                                    "quantize_recurrent": False})):
            p = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            t0 = time.perf_counter()
            export(model, p, graph="stepwise-drive", dtype=dtype, verify=False, **kw)
            print(f"exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
            paths[name] = p
        pm = Path(tmp) / "multi.onnx"
        export(model, pm, graph="multistep", steps_per_call=args.steps_per_call, verify=False)
        pq = Path(tmp) / "multi_int8.onnx"
        export(model, pq, graph="multistep", steps_per_call=args.steps_per_call, dtype="int8", verify=False,
               calibration_images=calib)
        for batch in [int(b) for b in args.batches.split(",")]:
            configs = {
                ("onnxruntime", "float32"): ort_runner(paths["float32"], 1),
                ("onnxruntime", "float16"): ort_runner(paths["float16"], 1),
                ("onnxruntime", "int8"): ort_runner(paths["int8"], 1),
                ("onnxruntime", "int8 recurrent float32"): ort_runner(paths["int8 recurrent float32"], 1),
                ("onnxruntime", f"float32 multistep K={args.steps_per_call}"): ort_runner(pm, args.steps_per_call),
            }
            if ov_caps:
                configs[("openvino", "float32")] = ov_runner(paths["float32"], "f32", 1, batch)
                if "BF16" in ov_caps:
                    configs[("openvino", "bfloat16")] = ov_runner(paths["float32"], "bf16", 1, batch)
                configs[("openvino", "int8")] = ov_runner(paths["int8"], "f32", 1, batch)
                configs[("openvino", "int8 recurrent float32")] = ov_runner(paths["int8 recurrent float32"], "f32", 1,
                                                                            batch)
                k = args.steps_per_call
                if "BF16" in ov_caps:
                    configs[("openvino", f"bfloat16 multistep K={k}")] = ov_runner(pm, "bf16", k, batch)
                configs[("openvino", f"int8 multistep K={k}")] = ov_runner(pq, "f32", k, batch)
            image = torch.randn(batch, *model.config.input_shape, generator=gen).numpy()
            times: dict[tuple[str, str], list[float]] = {k: [] for k in configs}
            ratios: dict[tuple[str, str], list[float]] = {k: [] for k in configs}
            base = ("onnxruntime", "float32")
            for _ in range(args.rounds):
                t_base = configs[base](image, args.calls)
                times[base].append(t_base)
                for key, fn in configs.items():
                    if key == base:
                        continue
                    t = fn(image, args.calls)
                    times[key].append(t)
                    ratios[key].append(t_base / t)
                ratios[base].append(1.0)
            for key in configs:
                t = float(np.median(times[key]))
                prec = key[1].split()[0]
                peak_name = {"float16": "float32"}.get(prec, prec)
                peak = peaks.get(peak_name, float("nan"))
                gops = 2 * macs * batch / t / 1e9
                row = {"batch": batch, "backend": key[0], "precision": key[1], "ms_per_step": t * 1e3,
                       "vs_ort_fp32_median": float(np.median(ratios[key])),
                       "vs_ort_fp32_range": [float(min(ratios[key])), float(max(ratios[key]))],
                       "gops": gops, "fraction_of_peak": gops / peak}
                results["rows"].append(row)
                print(f"b{batch:<2} {key[0]:<12} {key[1]:<26} {t * 1e3:8.2f} ms/step  x{row['vs_ort_fp32_median']:.2f} "
                      f"({row['vs_ort_fp32_range'][0]:.2f}-{row['vs_ort_fp32_range'][1]:.2f}) vs ORT fp32  "
                      f"{gops:6.0f} GOP/s = {row['fraction_of_peak']:.0%} of the {peak_name} peak", flush=True)
    results["load_average_before_after"] = [load0[0], os.getloadavg()[0]]
    print(f"load average (1 min) before {load0[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
