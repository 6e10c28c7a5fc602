"""CordsNet.run against the published forward pass (R8, 224 px, batch 1, CPU, published protocol).

    python benchmarks/bench_model.py [--depth 8] [--size 224] [--batch 1] [--repeats 2]

Prints wall-clock seconds per inference for both, their ratio, and the largest logit difference.

    python benchmarks/bench_model.py --early-exit [--thresholds 0.5 0.7 0.9 0.95 0.99]

Anytime inference on the bundled digits model: held-out top-1 accuracy against mean stimulus steps of
``CordsNet.run_until`` for each threshold (all 360 held-out digits), and its wall time against ``run``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_forward import published_forward  # noqa: E402

from cordsnet.config import CordsNetConfig  # noqa: E402
from cordsnet.model import CordsNet  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def early_exit(thresholds: list[float]) -> dict:
    """run_until on the bundled model over the held-out digits, per threshold."""
    from cordsnet.checkpoint import load_checkpoint
    from cordsnet.data import digits_split, digits_to_tensor

    model = load_checkpoint(None)
    X, y = digits_split()["test"]
    images, labels = digits_to_tensor(X), torch.as_tensor(y)
    rows = []
    with torch.no_grad():
        start = time.perf_counter()
        full = torch.cat([model.run(images[i:i + 120]) for i in range(0, len(y), 120)])
        t_full = time.perf_counter() - start
        for threshold in thresholds:
            start = time.perf_counter()
            outs = [model.run_until(images[i:i + 120], threshold) for i in range(0, len(y), 120)]
            seconds = time.perf_counter() - start
            logits = torch.cat([o.logits for o in outs])
            steps = torch.cat([o.steps for o in outs]).float()
            decided = torch.cat([o.decided for o in outs])
            rows.append({"threshold": threshold, "top1": round(float((logits.argmax(1) == labels).float().mean()), 4),
                         "mean_steps": round(float(steps.mean()), 1), "decided": int(decided.sum()),
                         "seconds": round(seconds, 2)})
    return {"images": len(y), "full_protocol_top1": round(float((full.argmax(1) == labels).float().mean()), 4),
            "full_protocol_seconds": round(t_full, 2), "threads": torch.get_num_threads(), "run_until": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--early-exit", action="store_true", help="anytime inference on the bundled model")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95, 0.99])
    args = parser.parse_args()
    if args.early_exit:
        print(json.dumps(early_exit(args.thresholds), indent=2))
        return

    torch.manual_seed(0)
    model = CordsNet(CordsNetConfig(depth=args.depth, image_size=args.size)).eval()
    with torch.no_grad():  # non-zero biases, as in a trained model
        for b in model.conv_bias:
            b.normal_(0.05, 0.2)
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        ours = model.run(x)  # warm-up; also fills the spontaneous-state cache
        theirs = published_forward(model, x)
        t_ours = best_of(lambda: model.run(x), args.repeats)
        t_theirs = best_of(lambda: published_forward(model, x), args.repeats)
        model.clear_caches()
        t_cold = best_of(lambda: (model.clear_caches(), model.run(x)), 1)
    result = {
        "model": f"R{args.depth}", "image_size": args.size, "batch": args.batch, "threads": torch.get_num_threads(),
        "published_forward_s": round(t_theirs, 3),
        "cordsnet_run_s": round(t_ours, 3),
        "cordsnet_run_cold_cache_s": round(t_cold, 3),
        "speedup": round(t_theirs / t_ours, 2),
        "max_abs_logit_diff": float((ours - theirs).abs().max()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
