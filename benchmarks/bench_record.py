"""Throughput of dataset-scale recording into a Zarr store: images/s with 1 and 2 processes, bytes per image.

Cases (short protocols, so the figures measure the recording path, not the published 100 + 100 steps):

* ``digits``: the bundled CordsNet-R4 on the digits test split (32 px), areas 0-3, every step;
* ``r8``: CordsNet-R8 at 224 px with random weights of the published layout on torchvision's FakeData,
  areas 6 and 7 (the areas compared with IT), every step.

Each case runs ``torchrun --nproc-per-node P`` of this file in worker mode (the library calls the
CLI's ``record --dataset`` makes), one thread per process (``--threads``; on a shared CPU several
threads per process oversubscribe the cores), so P processes use P cores. Images/s is the whole
job's: images / wall-clock time of the recording (store creation, barriers and writing included, model
loading and torch start-up excluded); bytes per image is the store's size on disk / images.

    python benchmarks/bench_record.py            # both cases, 1 and 2 processes
    python benchmarks/bench_record.py --quick    # fewer images
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    # name: (images, quick images, chunk, steps, spontaneous steps, areas)
    "digits": (192, 32, 8, 20, 10, [0, 1, 2, 3]),
    "r8": (32, 8, 4, 4, 2, [6, 7]),
}


def worker(case: str, store: str, images: int) -> None:
    import torch

    from cordsnet.analysis.recording import make_plan
    from cordsnet.analysis.store import dist_context, record_dataset

    _, _, chunk, steps, spont, areas = CASES[case]
    with dist_context() as ctx:
        if case == "digits":
            from cordsnet.analysis.evaluation import evaluation_dataset as dataset_for
            from cordsnet.checkpoint import load_checkpoint

            model = load_checkpoint(None)
            ds, source = dataset_for(model, "digits", "test", None)
        else:
            from cordsnet.data import build_dataset
            from cordsnet.model import CordsNet

            torch.manual_seed(0)
            model = CordsNet(depth=8, image_size=224, num_classes=1000, in_channels=3)  # random, published layout
            ds = build_dataset("fake", "test", image_size=224, in_channels=3, num_classes=1000, fake_size=4 * images)
            source = {"dataset": "fake", "split": "test"}
        from cordsnet.cli.dataset import _device

        model = model.to(_device(None)).eval()  # as the CLI: CUDA device LOCAL_RANK where present, else the CPU
        plan = make_plan(model, areas, steps=steps, spontaneous_steps=spont)
        start = time.perf_counter()
        report = record_dataset(model, ds, store, plan, source=source, limit=images, chunk_images=chunk,
                                context=ctx, progress=False)
        wall = time.perf_counter() - start
        total = ctx.total(report.written)
    raw = sum(math.prod(shape) for shape in plan.shapes.values()) * plan.length * plan.np_dtype.itemsize
    if ctx.rank == 0:
        print(json.dumps({"images": total, "seconds": wall, "raw_bytes_per_image": raw}))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer images")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--worker", nargs=3, metavar=("CASE", "STORE", "IMAGES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]))
        return
    rows = []
    for case in args.cases:
        images = CASES[case][1 if args.quick else 0]
        for procs in args.procs:
            with tempfile.TemporaryDirectory() as tmp:
                store = Path(tmp) / "s.zarr"
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                       __file__, "--worker", case, str(store), str(images)]
                run = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if run.returncode != 0:
                    sys.exit(run.stderr[-3000:])
                result = json.loads(run.stdout.strip().splitlines()[-1])
                size = _du(store)
            row = {"case": case, "processes": procs, "threads_per_process": args.threads,
                   "images": result["images"], "seconds": round(result["seconds"], 2),
                   "images_per_second": round(result["images"] / result["seconds"], 2),
                   "bytes_per_image": int(size / result["images"]),
                   "raw_bytes_per_image": result["raw_bytes_per_image"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\ndevice: {'CUDA' if _cuda() else 'CPU'}")
    print("| case | processes | images | seconds | images/s | MB per image on disk (uncompressed) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['processes']} | {r['images']} | {r['seconds']} | {r['images_per_second']} | "
              f"{r['bytes_per_image'] / 1e6:.3f} ({r['raw_bytes_per_image'] / 1e6:.3f}) |")


if __name__ == "__main__":
    main()
