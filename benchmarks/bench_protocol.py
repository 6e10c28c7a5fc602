"""The published protocol per image: a re-statement of the published forward pass against the fast paths.

One image (batch 1) through the whole published protocol (100 spontaneous + 100 stimulus steps), R8 at
224 px by default, timed in paired rounds (every path once per round; ratios are taken per round, then
the median and range over rounds are reported):

* ``published``: ``benchmarks/published_forward.py`` (PyTorch eager, no grad): the spontaneous phase
  simulated on every call, the drive recomputed for every area at every step, weight norm re-derived
  at every use. The baseline.
* ``onnxruntime float32, unrolled``: :class:`cordsnet.runtime.Session` on the unrolled graph.
* ``OpenVINO bfloat16`` / ``OpenVINO int8`` (every convolution int8, post-training calibrated on the
  states of every step) / ``OpenVINO int8 multistep K``: :class:`cordsnet.runtime.StepSession`
  running all 100 stimulus steps (``run``), the state kept in the backend. Where the CPU has no BF16,
  that row is left out.

Then the anytime rows: the same fast paths stopped where the network has decided. The R8 ImageNet
checkpoint is not available here (random weights never decide), so these rows are projected:
per-stimulus-step time x the mean stimulus steps measured on the bundled digits model at threshold 0.9
(``--mean-steps``, from ``benchmarks/bench_anytime.py``: 42.3 with the held-out accuracy of the full
protocol kept; a K-step graph decides only every K steps, so (K - 1) / 2 more on average), plus the
per-image cost outside the steps (the encode/drive call).

Which paths are exact enough (>= 99 % top-1 agreement with float32 over the full protocol) is measured
on the bundled digits model by ``benchmarks/precision_accuracy.py`` and the export's verification
(docs/precision.md); timings do not depend on the weights' values.

Usage::

    PYTHONPATH=$PWD python benchmarks/bench_protocol.py                      # R8, 224 px, 2 rounds
    PYTHONPATH=$PWD python benchmarks/bench_protocol.py --depth 2 --size 32 --rounds 1   # a smoke run
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

from cordsnet.config import CordsNetConfig
from cordsnet.export import export
from cordsnet.model import CordsNet
from cordsnet.runtime import Session, StepSession

try:  # run as a script from the repository root
    from published_forward import add_protocol_arguments, published_forward  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - imported as benchmarks.bench_protocol
    from benchmarks.published_forward import add_protocol_arguments, published_forward  # type: ignore[no-redef]


def _openvino_bf16() -> bool:
    from cordsnet.runtime.openvino_backend import available_precisions

    return "bf16" in available_precisions()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(ap)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps-per-call", type=int, default=10, help="K of the int8 multistep graph")
    ap.add_argument("--mean-steps", type=float, default=42.3,
                    help="mean stimulus steps of early exit (bundled digits model, threshold 0.9)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = CordsNetConfig(depth=args.depth, image_size=args.size, num_classes=1000, in_channels=3,
                         steps=args.steps, spontaneous_steps=args.spontaneous)
    model = CordsNet(cfg).eval()
    with torch.no_grad():
        for b in model.conv_bias:
            b.normal_(0.0, 0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    calib = rng.standard_normal((8, 3, args.size, args.size)).astype(np.float32)
    bf16 = _openvino_bf16()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        unrolled = export(model, t / "u.onnx", graph="unrolled", verify=False).path
        drive = export(model, t / "d.onnx", graph="stepwise-drive", verify=False).path
        int8 = export(model, t / "q.onnx", graph="stepwise-drive", dtype="int8", verify=False,
                      calibration_images=calib).path
        k = args.steps_per_call
        int8_k = export(model, t / "qk.onnx", graph="multistep", steps_per_call=k, dtype="int8", verify=False,
                        calibration_images=calib).path
        paths = {"onnxruntime float32, unrolled": Session(unrolled, providers="cpu")}
        if bf16:
            paths["OpenVINO bfloat16"] = StepSession(drive, backend="openvino", precision="bf16")
        paths["OpenVINO int8"] = StepSession(int8, backend="openvino")
        paths[f"OpenVINO int8 multistep K={k}"] = StepSession(int8_k, backend="openvino")
        for s in paths.values():  # warm-up (first-call compilation)
            s.run(x)
        per_round: dict[str, list[float]] = {"published": [], **{name: [] for name in paths}}
        encode: dict[str, list[float]] = {name: [] for name in paths if name != "onnxruntime float32, unrolled"}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            with torch.no_grad():
                published_forward(model, torch.from_numpy(x), args.steps, args.spontaneous)
            per_round["published"].append(time.perf_counter() - t0)
            for name, s in paths.items():
                t0 = time.perf_counter()
                s.run(x)
                per_round[name].append(time.perf_counter() - t0)
                if name in encode:  # the per-image cost outside the steps: reset + encode the image
                    t0 = time.perf_counter()
                    s.run(x, steps=s.info.steps_per_call)
                    one_call = time.perf_counter() - t0
                    encode[name].append(max(0.0, one_call - per_round[name][-1] * s.info.steps_per_call / args.steps))

    pub = np.asarray(per_round["published"])
    rows = []
    for name, times in per_round.items():
        arr = np.asarray(times)
        ratio = pub / arr
        rows.append({"path": name, "s_per_image": float(np.median(arr)), "vs_published": float(np.median(ratio)),
                     "range": [float(ratio.min()), float(ratio.max())]})
        if name in encode:  # early exit, projected with the digits model's mean stopping step
            fixed = float(np.median(encode[name]))
            steps_s = arr - fixed
            per_call = paths[name].info.steps_per_call  # a K-step graph decides every K steps: on average
            mean = min(args.steps, args.mean_steps + (per_call - 1) / 2)  # (K - 1) / 2 steps later
            anytime = fixed + steps_s * mean / args.steps
            r = pub / anytime
            rows.append({"path": f"{name} + early exit (projected, {mean:g} of {args.steps} steps)",
                         "s_per_image": float(np.median(anytime)), "vs_published": float(np.median(r)),
                         "range": [float(r.min()), float(r.max())]})
    result = {"model": f"CordsNet-R{args.depth}", "image_size": args.size, "batch": 1,
              "protocol": f"{args.spontaneous} spontaneous + {args.steps} stimulus steps", "rounds": args.rounds,
              "rows": rows, "cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}
    for r in rows:
        print(f"{r['path']:<70} {r['s_per_image']:9.3f} s/image  x{r['vs_published']:7.1f} "
              f"({r['range'][0]:.1f}-{r['range'][1]:.1f}) vs published")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
