"""Evaluation of a recorded store: top-1 accuracy after every step and per class, its curve, and the
dataset split an evaluation runs on. The store itself (layout, recording, resume) is :mod:`.store`."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from .store import _attributes, open_store

__all__ = ["accuracy_report", "evaluation_dataset", "plot_accuracy"]


def accuracy_report(store: str | os.PathLike, *, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Top-1 accuracy per step and per class from a store's ``logits`` and ``label``.

    Args:
        store: a complete evaluation store (every ``done`` entry True).
        class_names: names of the classes (default: the model config's preset's).

    Returns:
        {"store", "images", "time_ms", "top1" (per recorded step), "top1_last", "first_step_above_90",
        "per_class": [{"class", "name", "images", "top1"}] at the last step, ...}.
    """
    group = open_store(store, "r")
    attrs = _attributes(group, str(store))
    if "logits" not in group or attrs["kind"] != "evaluate":
        raise ValueError(f"store: {str(store)!r} holds no logits (made by record, not evaluate)")
    done = np.asarray(group["done"][:], dtype=bool)
    if not done.all():
        raise ValueError(f"store: {int((~done).sum())} of {done.size} images of {str(store)!r} are not written yet; "
                         "rerun the same command to finish it")
    labels = np.asarray(group["label"][:])
    logits = group["logits"]
    num_classes = logits.shape[-1]
    unwritten = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if unwritten.size:
        raise ValueError(f"store: {unwritten.size} image(s) of {str(store)!r} marked done have no valid label "
                         f"(first: image {int(unwritten[0])}); the store is damaged: rerun the same command to "
                         "rewrite them")
    # Chunk by chunk along the image axis: a store may hold far more logits than memory.
    step = logits.chunks[0]
    correct_per_step = np.zeros(logits.shape[1] if logits.ndim == 3 else 1, dtype=np.int64)
    correct_last = np.zeros(labels.size, dtype=bool)
    for i0 in range(0, labels.size, step):
        try:
            block = np.asarray(logits[i0:i0 + step])
        except Exception as exc:  # noqa: BLE001 - the codec's error on a truncated or random chunk
            raise ValueError(f"store: {str(store)!r}: the logits of images {i0}..{min(labels.size, i0 + step) - 1} "
                             f"cannot be decoded ({type(exc).__name__}); rerun the same command to rewrite "
                             "them") from None
        if not np.isfinite(block).all():
            raise ValueError(f"store: {str(store)!r}: images {i0}..{min(labels.size, i0 + step) - 1} are marked done "
                             "but their logits are missing or not finite (a lost or damaged chunk); rerun the same "
                             "command to rewrite them")
        if block.ndim == 2:
            block = block[:, None]
        hit = block.argmax(-1) == labels[i0:i0 + step, None]  # (n, T)
        correct_per_step += hit.sum(0)
        correct_last[i0:i0 + step] = hit[:, -1]
    top1 = correct_per_step / labels.size
    times = np.asarray(group["time_ms"][:]) if "time_ms" in group else None
    if class_names is None:
        from ..config import CordsNetConfig

        preset = CordsNetConfig.from_dict(attrs["config"]).preset
        class_names = preset.class_names if preset is not None else None
    per_class = []
    for k in np.unique(labels):
        rows = labels == k
        name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(int(k))
        per_class.append({"class": int(k), "name": name, "images": int(rows.sum()),
                          "top1": float(correct_last[rows].mean())})
    above = np.flatnonzero(top1 >= 0.9)
    return {"store": str(store), "model_state_dict_sha256": attrs["state_dict_sha256"],
            "checkpoint_sha256": attrs["checkpoint_sha256"], "source": attrs["source"], "protocol": attrs["protocol"],
            "readout": attrs["readout"], "images": int(labels.size), "steps": int(top1.size),
            "time_ms": None if times is None else [float(v) for v in times],
            "top1": [float(v) for v in top1], "top1_last": float(top1[-1]),
            "first_step_above_90": int(above[0]) + 1 if above.size else -1, "per_class": per_class}


def plot_accuracy(report: Mapping[str, Any], png: str | os.PathLike) -> None:
    """The time-resolved accuracy curve of :func:`accuracy_report` (matplotlib, Agg) into `png`."""
    from .plots import plot_accuracy_curve

    protocol, source = report["protocol"], report["source"]
    plot_accuracy_curve(report["top1"], png, dt_ms=protocol["dt_ms"], spontaneous_steps=protocol["spontaneous_steps"],
                        num_classes=len(report["per_class"]),
                        ylabel=f"{source.get('split', '')} top-1 accuracy (%)".strip(),
                        title=f"{source.get('dataset', '?')} {source.get('split', '')}, {report['images']} images: "
                              f"{report['top1_last']:.2%} at the last step")


def evaluation_dataset(model: Any, name: str, split: str, data_root: str | os.PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """Split `split` of the registered dataset `name` with its evaluation transform at the model's input size.

    Returns:
        (dataset, source): the torch dataset of (image, label) pairs and the ``source`` description a
        store records ({"dataset", "split", "split_size"}).

    Raises:
        ValueError: the dataset's channels differ from the model's.
    """
    from ..data import build_dataset, get_dataset_spec

    spec = get_dataset_spec(name)
    if spec.in_channels != model.config.in_channels:
        raise ValueError(f"dataset: {name} has {spec.in_channels} channel(s) but the model takes "
                         f"{model.config.in_channels}")
    ds = build_dataset(name, split, root=data_root, image_size=model.config.image_size, augment=False)
    return ds, {"dataset": name, "split": split, "split_size": len(ds)}
