"""The Hugging Face Hub: ``load_checkpoint("hf-hub:ORG/NAME[@REVISION]")`` and :func:`save_pretrained`.

A CordsNet on the Hub is a model repository holding

* ``model.safetensors`` — the project's own checkpoint format (:func:`cordsnet.checkpoint.save_checkpoint`:
  the tensors under their published names, the :class:`~cordsnet.config.CordsNetConfig` as JSON in the
  file's metadata). This file alone defines the model; it is what ``hf-hub:`` loads.
* ``config.json`` — the same config, readable by the Hub and by tools that do not open safetensors.
* ``README.md`` — a model card for the Hub page (YAML front matter, then the facts read off the model).

:func:`save_pretrained` writes the three files into a folder (atomically each); upload it with
``huggingface_hub.upload_folder`` or ``hf upload ORG/NAME FOLDER``. :func:`hub_checkpoint` resolves
``ORG/NAME[@REVISION]`` to the local ``model.safetensors`` through ``huggingface_hub.hf_hub_download``:
its cache (``HF_HUB_CACHE``, ``HF_HOME``), its authentication and ``HF_HUB_OFFLINE=1`` (only the cache is
read) all apply as for any Hub model.

``huggingface_hub`` is an optional dependency (``pip install 'cordsnet[hub]'``), imported only by
:func:`hub_checkpoint`. This module imports torch only inside :func:`save_pretrained`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ._io import atomic_path
from .extras import require

if TYPE_CHECKING:
    from .model import CordsNet

__all__ = ["CARD_FILE", "CONFIG_FILE", "WEIGHTS_FILE", "hub_checkpoint", "model_card", "parse_hub_name",
           "save_pretrained"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"

# A Hub repository id (ORG/NAME: letters, digits, "-", "_", ".") and an optional revision (a branch, a tag or a
# commit hash; anything without whitespace).
_NAME = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>\S+))?$")


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"ORG/NAME[@REVISION]"`` -> (repo id, revision or None).

    Raises:
        ValueError: not of that form.
    """
    match = _NAME.match(str(name))
    if not match:
        raise ValueError(f"checkpoint: expected 'hf-hub:ORG/NAME' or 'hf-hub:ORG/NAME@REVISION', got "
                         f"'hf-hub:{name}'")
    return match.group("repo"), match.group("revision")


def hub_checkpoint(name: str) -> Path:
    """The local ``model.safetensors`` of a Hub model, downloaded into the Hub's cache on first use.

    Args:
        name: ``"ORG/NAME"`` or ``"ORG/NAME@REVISION"`` (what follows ``hf-hub:``).

    Returns:
        Path of the file in the Hub's cache.

    Raises:
        cordsnet.extras.MissingExtraError: huggingface_hub is not installed (the ``hub`` extra).
        ValueError: a malformed name.
        OSError: the Hub cannot be reached and the file is not cached (or ``HF_HUB_OFFLINE=1`` and it is
            not cached), or the repository, revision or file does not exist.
    """
    repo, revision = parse_hub_name(name)
    require("hub", "checkpoint 'hf-hub:' names")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError  # not an OSError in every version
    try:
        return Path(hf_hub_download(repo_id=repo, filename=WEIGHTS_FILE, revision=revision))
    except (OSError, ValueError, EntryNotFoundError) as exc:  # offline and not cached, no such repo/revision/file
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        hint = " (HF_HUB_OFFLINE is set: only the cache is read)" if offline else ""
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise OSError(f"checkpoint: cannot get {WEIGHTS_FILE} of hf-hub:{name}{hint}: {type(exc).__name__}: "
                      f"{reason}") from None


# ------------------------------------------------------------------------------------------ writing
def save_pretrained(model: "CordsNet", directory: str | os.PathLike, *, description: str | None = None,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model` as a Hub model folder: ``model.safetensors``, ``config.json`` and ``README.md``.

    Args:
        model: the model.
        directory: the folder (created if missing; these three files in it are replaced, atomically each).
        description: a paragraph for the model card (what the model was trained on, by whom).
        metadata: extra string metadata stored in ``model.safetensors`` (as for ``save_checkpoint``).

    Returns:
        The folder.
    """
    from . import __version__
    from .checkpoint import save_checkpoint
    from .model import CordsNet

    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"directory: expected a folder, got the file {str(folder)!r}")
    folder.mkdir(parents=True, exist_ok=True)
    parameters = sum(p.numel() for p in model.parameters())
    save_checkpoint(model, folder / WEIGHTS_FILE, metadata=metadata)
    config = {"library_name": "cordsnet", "model_type": "cordsnet", "cordsnet_version": __version__,
              "weights": WEIGHTS_FILE, "parameters": parameters, **model.config.to_dict()}
    _write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=False) + "\n")
    _write_text(folder / CARD_FILE, model_card(model.config, parameters, description=description))
    return folder


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def model_card(config: Any, parameters: int, *, description: str | None = None, repo: str = "ORG/NAME") -> str:
    """The Hub model card (``README.md``) of a model with `config` (a :class:`CordsNetConfig`).

    Args:
        config: the model's config.
        parameters: its parameter count.
        description: a paragraph about the model (default: a sentence naming the architecture).
        repo: the repository id shown in the loading example.
    """
    preset = config.preset
    dt_ms = config.alpha * 10.0  # tau = 10 ms (docs/specification.md §3)
    data = preset.name if preset is not None else "unknown"
    tags = ["cordsnet", "recurrent-neural-network", "dynamical-system", "computational-neuroscience",
            "image-classification"]
    front = "\n".join(["---", "library_name: cordsnet", "pipeline_tag: image-classification", "tags:",
                       *[f"- {t}" for t in tags], "---"])
    normalisation = (f"resize the shorter side to {preset.resize_size(config.image_size)} px, centre-crop "
                     f"{config.image_size} px, scale to [0, 1], normalise with mean {list(preset.mean)} and std "
                     f"{list(preset.std)}" if preset is not None else "no dataset preset recorded")
    text = description or (f"A CordsNet-R{config.depth} (the convolutional recurrent dynamical system of Soo et al., "
                           f"NeurIPS 2024) with a {config.num_classes}-class head ({data}).")
    return f"""{front}

# CordsNet-R{config.depth} ({data})

{text}

| | |
|---|---|
| Architecture | CordsNet-R{config.depth}: {config.depth} recurrent convolutional areas, {parameters:,} parameters |
| Input | ({config.in_channels}, {config.image_size}, {config.image_size}) images: {normalisation} |
| Output | {config.num_classes} logits |
| Dynamics | forward Euler, alpha = {config.alpha:g} (one step = {dt_ms:g} ms at tau = 10 ms) |
| Protocol | {config.spontaneous_steps} blank (spontaneous) steps, then {config.steps} steps with the image ({config.steps * dt_ms:g} ms); readout after the last step |
| Format | `{WEIGHTS_FILE}`: the published tensor names, the config as JSON metadata (`cordsnet` format); `{CONFIG_FILE}`: the same config |

## Use

```python
# pip install 'cordsnet[hub]'
from cordsnet import load_checkpoint

model = load_checkpoint("hf-hub:{repo}")       # or "hf-hub:{repo}@REVISION"
```

`HF_HUB_OFFLINE=1` reads the local Hugging Face cache only. The model runs any protocol
(`model.run(x, steps=..., spontaneous_steps=...)`), exports to ONNX (`cordsnet-cli export`), and is scored
on Brain-Score through `cordsnet.brainscore.CordsNetBrainModel`.

## Citation

Soo, Battista, Radmard & Wang, *Recurrent neural network dynamical systems for biological vision*, NeurIPS 2024.
"""
