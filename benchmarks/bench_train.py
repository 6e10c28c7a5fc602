"""Time per epoch of every training stage, CordsNet-R2 and R4 on scikit-learn's digits at 32 px.

Each trained stage runs a few batches (``--batches``) of the real digits training set with the
published protocol (100 stimulus steps; 100 spontaneous and 100 recovery steps where the stage uses
them) and reports the measured seconds per batch and the time of one full epoch
(``ceil(1293 / batch)`` batches) extrapolated from it, plus the validation pass of the stage.

    python benchmarks/bench_train.py --depth 2 4 --batch-size 64 --batches 3 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time

import torch

from cordsnet.train import TrainOptions, Trainer

STAGE_ORDER = ("compat", "fold", "inverse", "linear", "anneal", "finetune")


def bench(depth: int, batch: int, batches: int, recovery: int) -> dict:
    lines: list[dict] = []
    with tempfile.TemporaryDirectory() as out:
        opts = TrainOptions(dataset="digits", depth=depth, image_size=32, stages="all", out=out, batch_size=batch,
                            epochs=1, max_batches=batches, recovery_steps=recovery,
                            stage_overrides={"compat": {"warmup_iters": 1}})
        trainer = Trainer(opts, on_epoch=lines.append)
        t0 = time.perf_counter()
        trainer.run()
        total = time.perf_counter() - t0
        n_train = len(trainer.train_set)
    full = math.ceil(n_train / batch)
    rows = {}
    for m in lines:
        if m["stage"] == "fold":
            rows["fold"] = {"fold_and_eval_s": m.get("eval_time_s")}
            continue
        per_batch = m["time_s"] / batches
        rows[m["stage"]] = {"s_per_batch": round(per_batch, 3), "epoch_s_estimate": round(per_batch * full, 1),
                            "val_pass_s": m.get("eval_time_s")}
    return {"depth": depth, "batch_size": batch, "batches_per_epoch": full, "measured_batches": batches,
            "recovery_steps": recovery, "stages": rows, "wall_s": round(total, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, nargs="+", default=[2, 4])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=3, help="batches measured per stage")
    p.add_argument("--recovery-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
               platform.machine(), "load_avg_start": os.getloadavg(), "runs": []}
    for depth in args.depth:
        r = bench(depth, args.batch_size, args.batches, args.recovery_steps)
        results["runs"].append(r)
        print(f"CordsNet-R{depth}, digits 32 px, batch {args.batch_size} ({r['batches_per_epoch']} batches/epoch):")
        for stage in STAGE_ORDER:
            if stage in r["stages"]:
                print(f"  {stage:9s} {json.dumps(r['stages'][stage])}")
    results["load_avg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
