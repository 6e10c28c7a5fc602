"""Held-out accuracy of the bundled digits model exported at every precision (ONNX, onnxruntime CPU).

For each (graph, dtype, calibration) it exports with verification (top-1 agreement >= 99% with float32
over the full protocol on the 360 held-out digits; a failing export is reported, not kept), then runs
the artifact on the held-out digits and reports top-1 against the labels, agreement with float32 and
the per-step error. Usage:

    PYTHONPATH=$PWD python benchmarks/precision_accuracy.py [--graph stepwise-drive] [--out results.json]
    # the quantisation-aware model, exported from its learned ranges (also: its post-training calibrations)
    PYTHONPATH=$PWD python benchmarks/precision_accuracy.py --checkpoint digits-qat --dtypes float32,int8 \
        --calibrations checkpoint,minmax

Every row also gives the agreement with the bundled float32 model (``digits``), the reference of a
model fine-tuned from it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", default="stepwise-drive")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16,int8")
    ap.add_argument("--calibrations", default="minmax,percentile,entropy")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quantize-recurrent", default="yes", help="int8: 'no', 'yes' (default) or 'both'")
    ap.add_argument("--checkpoint", default="digits", help="a bundled model's name or a checkpoint path")
    args = ap.parse_args()

    import torch

    from cordsnet.checkpoint import BUNDLED, bundled_checkpoint_path, load_checkpoint
    from cordsnet.quantization import read_activation_ranges
    from cordsnet.data import digits_split
    from cordsnet.export import VerificationError, export

    from cordsnet.export.precision import preset_images

    source = bundled_checkpoint_path(args.checkpoint) if args.checkpoint in BUNDLED else Path(args.checkpoint)
    model = load_checkpoint(source)
    ranges = read_activation_ranges(source)
    labels = digits_split()["test"][1]
    heldout, _ = preset_images(model, "test")
    with torch.no_grad():
        bundled = load_checkpoint(None).run(torch.from_numpy(heldout)).argmax(1).numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            variants = {"no": [False], "yes": [True], "both": [False, True]}[args.quantize_recurrent]
            for calib, qr in ([(c, q) for c in args.calibrations.split(",") for q in variants] if dtype == "int8"
                              else [("-", False)]):
                out = Path(tmp) / f"{dtype}-{calib}.onnx"
                t0 = time.perf_counter()
                row = {"checkpoint": args.checkpoint, "graph": args.graph, "dtype": dtype, "calibration": calib,
                       "quantize_recurrent": qr}
                kw = {"calibration": calib, "quantize_recurrent": qr} if dtype == "int8" else {}
                if calib == "checkpoint":
                    kw["activation_ranges"] = ranges
                try:
                    rep = export(model, out, graph=args.graph, dtype=dtype, verify_images=heldout, **kw)
                    v = rep.verification
                except VerificationError as exc:
                    v = exc.report
                    row["failed"] = str(exc)[:200]
                row["seconds"] = round(time.perf_counter() - t0, 1)
                if v is not None:
                    row.update(top1_agreement=v.top1_agreement, passed=v.passed, images=v.images,
                               max_abs=v.max_abs)
                    if v.per_step:
                        pick = [p for p in v.per_step if p["step"] in (1, 10, 25, 50, 75, 100)]
                        row["per_step"] = [{k: (round(x, 4) if isinstance(x, float) else x) for k, x in p.items()}
                                           for p in pick]
                    if getattr(v, "predictions", None) is not None:
                        row["heldout_top1"] = float(np.mean(np.asarray(v.predictions) == labels))
                        row["agreement_with_bundled_float32"] = float(np.mean(np.asarray(v.predictions) == bundled))
                        row["reference"] = v.reference_model
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
