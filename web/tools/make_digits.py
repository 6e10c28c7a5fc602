"""Write web/digits.json: held-out digits for the browser app (run from the repository root).

    PYTHONPATH=. python web/tools/make_digits.py

Two digits of each class from the held-out test split of ``cordsnet.data.digits_split()``, each with
its 8x8 scan (0..16) and the model's raw input before normalisation (``raw``: (S, S) in [0, 1], the
scan scaled to [0, 1] and upsampled as ``cordsnet.data.digits_to_tensor`` does). The page normalises
``raw`` with the manifest's preset (``(raw - mean) / std``), which gives ``digits_to_tensor``'s input.
"""

from __future__ import annotations

import json
from pathlib import Path

from cordsnet._io import atomic_path
from cordsnet.config import get_preset
from cordsnet.data import DIGITS_IMAGE_SIZE, digits_split, digits_to_tensor

PER_CLASS = 2  # digits of each class in the file
OUT = Path(__file__).resolve().parent.parent / "digits.json"


def held_out_digits(per_class: int = PER_CLASS) -> dict:
    """The JSON document: {"source", "image_size", "digits": [{"index", "label", "scan", "raw"}]}."""
    X, y = digits_split()["test"]
    picked = [i for c in range(10) for i in [j for j in range(len(y)) if y[j] == c][:per_class]]
    preset = get_preset("digits")
    raw = (digits_to_tensor(X[picked], DIGITS_IMAGE_SIZE) * preset.std[0] + preset.mean[0]).numpy()
    digits = [{"index": int(i), "label": int(y[i]), "scan": [int(v) for v in X[i]],
               "raw": [round(float(v), 6) for v in raw[k].ravel()]} for k, i in enumerate(picked)]
    return {"source": "cordsnet.data.digits_split()['test'] (held out from training)",
            "image_size": DIGITS_IMAGE_SIZE, "digits": digits}


if __name__ == "__main__":
    with atomic_path(OUT) as tmp:
        tmp.write_text(json.dumps(held_out_digits(), separators=(",", ":")), encoding="utf-8")
