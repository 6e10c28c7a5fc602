"""Maintainer script: the facts of the bundled model's card, from a finished digits training run.

``python tools/model_card.py RUN_DIR [RUN_DIR ...]`` (from a source checkout) evaluates a finished digits
run (the directory a ``cordsnet-cli train --dataset digits`` wrote) on the held-out split under the
published protocol, measures the held-out accuracy of every stage's checkpoint, draws the time-resolved
accuracy curve (``--png``) and prints the facts as JSON (``--json`` also writes them to a file). With
``--bundle DIR`` it also writes the final model as ``DIR/digits_r4.safetensors`` (``--name``: another
file name, e.g. ``digits_r4_qat.safetensors`` for a quantisation-aware run, whose int8 activation ranges
are kept) with its provenance in the metadata. The card itself (``docs/model_card.md``, ``cordsnet/weights/MODEL_CARD.md``) is written by
hand from these facts.

This is not part of the installed package: it writes into a source tree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cordsnet._io import atomic_path
from cordsnet.analysis.plots import plot_accuracy_curve
from cordsnet.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, read_extra_tensors, read_checkpoint_metadata, save_checkpoint
from cordsnet.data import digits_split, digits_to_tensor
from cordsnet.model import CordsNet
from cordsnet.quantization import ActivationRanges, read_activation_ranges
from cordsnet.train import BatchNormSet, EVALUATORS, FoldedCNN, StageContext, parse_train_state, unpack_extras
from cordsnet.train.forwards import TrainProtocol

__all__ = ["heldout_accuracy", "heldout_data", "stage_heldout_accuracy", "time_resolved_accuracy"]


def heldout_data(image_size: int = 32) -> tuple[Tensor, Tensor]:
    """The held-out digits: images (360, 1, S, S) as the model sees them, labels (360,)."""
    X, y = digits_split()["test"]
    return digits_to_tensor(X, image_size), torch.as_tensor(y, dtype=torch.long)


@torch.no_grad()
def time_resolved_accuracy(model: CordsNet, images: Tensor, labels: Tensor, *, steps: int = 100,
                           spontaneous_steps: int = 100, alpha: float = 0.2, batch: int = 120) -> Tensor:
    """Top-1 accuracy after every stimulus step under the published protocol.

    Returns:
        (steps,) accuracies; the last entry is the protocol's accuracy.
    """
    correct = torch.zeros(steps)
    for i in range(0, len(labels), batch):
        logits = model.run(images[i:i + batch], steps=steps, spontaneous_steps=spontaneous_steps, alpha=alpha,
                           readout="all")
        correct += (logits.argmax(-1) == labels[i:i + batch]).sum(1).float()
    return correct / len(labels)


def heldout_accuracy(model: CordsNet, **protocol: Any) -> float:
    """Held-out digits accuracy of `model` at the last step of the protocol (alpha 0.2, 100 + 100)."""
    images, labels = heldout_data(model.config.image_size)
    return float(time_resolved_accuracy(model, images, labels, **protocol)[-1])


@torch.no_grad()
def stage_heldout_accuracy(path: Path, *, steps: int = 100, spontaneous_steps: int = 100, alpha: float = 0.2,
                           batch: int = 120) -> float:
    """Held-out accuracy of one stage checkpoint, evaluated the way the trainer evaluates that stage
    (:data:`cordsnet.train.EVALUATORS`: compat CNN, folded CNN, linear RNN, RNN, or the quantisation-aware RNN)."""
    meta = read_checkpoint_metadata(path)
    spec = json.loads(meta["train.stage_spec"])
    model = load_checkpoint(path)
    model.update_slope = parse_train_state(meta, str(path)).update_slope
    extras = unpack_extras(read_extra_tensors(path))
    bn = BatchNormSet(model)
    if extras.bn:
        bn.load_state_dict(extras.bn)
    folded = None
    if extras.folded:
        folded = FoldedCNN(model)
        folded.load_state_dict(extras.folded)
    protocol = TrainProtocol(steps=steps, spontaneous_steps=spontaneous_steps, alpha=alpha, recovery_steps=0,
                        penalty_window=0, ce_window=1)
    ranges = ActivationRanges.from_tensors(extras.ranges) if extras.ranges else None
    ctx = StageContext(model, bn.eval(), folded, protocol, ranges)
    evaluate = EVALUATORS[spec["eval"]]
    images, labels = heldout_data(model.config.image_size)
    logits = torch.cat([evaluate(ctx, images[i:i + batch]) for i in range(0, len(labels), batch)])
    return float((logits.argmax(1) == labels).float().mean())


def build_card(runs: list[Path], *, png: Path, bundle: Path | None, reproduce: str,
               bundle_name: str = DEFAULT_CHECKPOINT) -> dict[str, Any]:
    """Evaluate a finished digits training (one run directory, or several that continue each other via
    ``--init``), draw the curve, optionally write the bundled model; returns the facts."""
    final = runs[-1] / "final.safetensors"
    model = load_checkpoint(final)
    images, labels = heldout_data(model.config.image_size)
    c = model.config  # the model's own protocol, for the curve and its axis
    curve = time_resolved_accuracy(model, images, labels, steps=c.steps, spontaneous_steps=c.spontaneous_steps,
                                   alpha=c.alpha)
    stages: dict[str, dict[str, Any]] = {}
    for r, run in enumerate(runs):
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        summary = json.loads(read_checkpoint_metadata(run / "final.safetensors").get("train.summary", "{}"))
        names = list(dict.fromkeys(m["stage"] for m in history))
        for k, name in enumerate(names):
            label = name if name not in stages else f"{name} (run {r + 1})"
            s = stages.setdefault(label, {"epochs": 0, "train_s": 0.0, "eval_s": 0.0})
            for m in (m for m in history if m["stage"] == name):
                s["epochs"] = max(s["epochs"], m["epoch"])
                s["train_s"] += m.get("time_s") or 0.0
                s["eval_s"] += m.get("eval_time_s") or 0.0
                if m.get("val_acc") is not None:
                    s["val_acc_last"] = m["val_acc"]
                    s["val_acc_best"] = max(s.get("val_acc_best", 0.0), m["val_acc"])
            if name in summary:
                s["val_acc_stage_end"] = summary[name].get("val_acc")
            ckpt = run / f"{k}-{name}.safetensors"
            if ckpt.is_file():
                s["heldout_acc"] = stage_heldout_accuracy(ckpt)
    facts = {
        "heldout_acc": float(curve[-1]),
        "heldout_n": int(len(labels)),
        "first_step_above_90": int(next((i + 1 for i, a in enumerate(curve.tolist()) if a >= 0.9), -1)),
        "stages": stages,
        "train_s_total": sum(s["train_s"] + s["eval_s"] for s in stages.values()),
        "config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "reproduce": reproduce,
        "curve": [round(float(a), 4) for a in curve],
    }
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_accuracy_curve(curve.tolist(), png, dt_ms=c.alpha * 10.0, spontaneous_steps=c.spontaneous_steps,
                        num_classes=c.num_classes, ylabel="held-out top-1 accuracy (%)",
                        title=f"CordsNet-R{model.depth} on held-out digits: {100 * facts['heldout_acc']:.2f}% at step "
                              f"{len(curve)}")
    if bundle is not None:
        meta = read_checkpoint_metadata(final)
        ranges = read_activation_ranges(final)
        save_checkpoint(model, bundle / bundle_name, extra_tensors=ranges.to_tensors() if ranges is not None else None,
                        metadata={
            "description": f"CordsNet-R{model.depth} trained on scikit-learn digits ({model.config.image_size} px) "
                           "by cordsnet.train; see MODEL_CARD.md",
            "heldout_accuracy": f"{facts['heldout_acc']:.4f}",
            "train.summary": meta.get("train.summary", "{}"),
            "train.options": meta.get("train.options", "{}"),
            "reproduce": reproduce,
        })
        facts["bundle_bytes"] = (bundle / bundle_name).stat().st_size
    return facts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", type=Path, nargs="+", help="output directories of a finished digits training "
                   "(several when later runs continue earlier ones with --init), in order")
    p.add_argument("--png", type=Path, default=Path("docs/digits_time_resolved_accuracy.png"))
    p.add_argument("--bundle", type=Path, default=None, help="write the bundled model into this directory")
    p.add_argument("--name", default=DEFAULT_CHECKPOINT, help="file name of the bundled model")
    p.add_argument("--reproduce", default="", help="the command that produced the run (recorded)")
    p.add_argument("--json", type=Path, default=None, help="write the facts as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    facts = build_card(args.runs, png=args.png, bundle=args.bundle, reproduce=args.reproduce,
                       bundle_name=args.name)
    text = json.dumps(facts, indent=2)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
