"""Benchmark: top-20 eigenvalues of every recurrent convolution of CordsNet-R8 at 224 px (Arnoldi).

Areas 0 and 1 are 64 x 56 x 56 = 200,704-dimensional operators. Random published-layout weights are
used (the published checkpoint cannot be downloaded here); the cost does not depend on the values.

    python benchmarks/bench_analysis.py                    # all 8 areas, float64, 300 Krylov vectors
    python benchmarks/bench_analysis.py --areas 0 7 --dtype float32 --krylov-dim 200
    python benchmarks/bench_analysis.py --dynamics         # also the step Jacobian (752,640 dims)
    python benchmarks/bench_analysis.py --threads 1        # one torch thread (shared machines)
    python benchmarks/bench_analysis.py --method arpack    # restarted until converged (slower)

Prints one line per operator (seconds, dimension, radius, converged eigenvalues) and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from cordsnet.analysis import dynamics_spectrum, recurrent_spectrum
from cordsnet.config import CordsNetConfig
from cordsnet.model import CordsNet

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--areas", type=int, nargs="*", default=list(range(8)))
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--krylov-dim", type=int, default=None, help="default: 300")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    parser.add_argument("--method", choices=["arnoldi", "arpack"], default="arnoldi")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dynamics", action="store_true", help="also the Jacobian of the step map")
    parser.add_argument("--spontaneous-steps", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is far more robust when other jobs share the cores)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = CordsNet(CordsNetConfig(depth=8, image_size=args.image_size)).to(args.device).eval()
    with torch.no_grad():  # contractive-ish recurrent weights, like a trained model (radius ~ 0.5-1)
        for conv in model.area_conv:
            conv.parametrizations.weight.original0.fill_(0.3)
    dtype = DTYPES[args.dtype]
    rows = []
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {cpu}, "
          f"device {args.device}, dtype {args.dtype}, k {args.k}, krylov_dim {args.krylov_dim or 300}, "
          f"method {args.method}")
    for area in args.areas:
        t0 = time.perf_counter()
        spec = recurrent_spectrum(model, area, args.k, krylov_dim=args.krylov_dim, dtype=dtype,
                                  method=args.method)
        seconds = time.perf_counter() - t0
        rows.append({"operator": spec.name, "dimension": spec.dimension, "seconds": round(seconds, 3),
                     "radius": spec.radius, "converged_1e-6": int(spec.converged(1e-6).sum()),
                     "converged_1e-3": int(spec.converged(1e-3).sum())})
        print(f"{spec.name:12s} dim {spec.dimension:>9,d}  {seconds:8.2f} s  radius {spec.radius:.6f}  "
              f"converged {rows[-1]['converged_1e-6']}/{args.k} (1e-6), {rows[-1]['converged_1e-3']}/{args.k} (1e-3)")
    if args.dynamics:
        t0 = time.perf_counter()
        spec = dynamics_spectrum(model, args.k, krylov_dim=args.krylov_dim, dtype=dtype,
                                 spontaneous_steps=args.spontaneous_steps, method=args.method)
        seconds = time.perf_counter() - t0
        rows.append({"operator": "dynamics", "dimension": spec.dimension, "seconds": round(seconds, 3),
                     "radius": spec.radius, "converged_1e-6": int(spec.converged(1e-6).sum()),
                     "stable": spec.info["stable"]})
        print(f"{'dynamics':12s} dim {spec.dimension:>9,d}  {seconds:8.2f} s  radius {spec.radius:.6f}  "
              f"stable {spec.info['stable']}")
    print(json.dumps({"benchmark": "analysis.arnoldi_r8", "image_size": args.image_size, "dtype": args.dtype,
                      "method": args.method, "threads": torch.get_num_threads(), "rows": rows,
                      "total_seconds": round(sum(r["seconds"] for r in rows), 3)}))


if __name__ == "__main__":
    main()
