"""Make a stored reference (:mod:`cordsnet.runtime.reference`) of an exported graph: PyTorch's float64
logits on deterministic images after the artifact's protocol, for checking the graph where torch is not."""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from .. import validate
from ..artifact import read_info
from ..checkpoint import state_dict_sha256
from ..model import CordsNet
from ..runtime.reference import ATOL, MIN_AGREEMENT, RTOL, Reference

__all__ = ["make_reference"]

# Images per reference: a float32 graph is judged elementwise (a few images show any wiring error); a
# reduced precision by top-1 agreement, a share that needs enough images to mean something.
IMAGES = {"float32": 8, "reduced": 100}


def make_reference(model: CordsNet, artifact: str | os.PathLike, *, images: np.ndarray | None = None,
                   seed: int = 0, atol: float = ATOL, rtol: float = RTOL,
                   min_agreement: float = MIN_AGREEMENT) -> Reference:
    """The reference of `artifact`: `model`'s float64 logits on `images` after the artifact's protocol.

    Args:
        model: the model the artifact was exported from (other weights are refused).
        artifact: the exported graph (its metadata gives the protocol and precision).
        images: (N, C, S, S) normalised images; default: standard-normal images (`seed`), 8 for float32
            graphs and 100 for reduced precisions.
        atol, rtol, min_agreement: the criterion stored with it (the exporter's defaults).

    Raises:
        ValueError: the artifact holds other weights than `model`, or `images` do not fit the model.
    """
    info = read_info(artifact)
    sha = state_dict_sha256(model.state_dict())
    if info.state_dict_sha256 != sha:
        raise ValueError(f"reference: {os.fspath(artifact)!r} holds other weights than this model "
                         f"(state-dict sha256 {info.state_dict_sha256[:12]} vs {sha[:12]})")
    if images is None:
        n = IMAGES["float32" if info.dtype == "float32" else "reduced"]
        gen = torch.Generator().manual_seed(validate.integer("seed", seed))
        x = torch.randn(n, *model.config.input_shape, generator=gen)
        source = f"{n} standard-normal images (seed {seed})"
    else:
        x = model.validate_images(torch.as_tensor(np.asarray(images, dtype=np.float32)))
        source = f"{len(x)} given images"
    reference = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = reference.run(x.double(), steps=info.steps, spontaneous_steps=info.spontaneous_steps,
                               alpha=info.alpha)
    return Reference(images=x.numpy().astype(np.float32), logits=logits.numpy(), state_dict_sha256=sha,
                     dtype=info.dtype, steps=info.steps, spontaneous_steps=info.spontaneous_steps, alpha=info.alpha,
                     atol=atol, rtol=rtol, min_agreement=min_agreement, source=source)
