"""Checkpoints: the published layout (``cordsnetr8.pth``), the project's own format, the bundled model.

* The published layout is a ``torch.save`` of the state dict (docs/specification.md §2), possibly with a
  ``module.`` prefix (DataParallel / DDP) or the legacy ``weight_g`` / ``weight_v`` names. It is read
  with ``torch.load(weights_only=True)`` only: a pickle that carries code is refused unexecuted.
* The project's own format is safetensors with the :class:`~cordsnet.config.CordsNetConfig` as JSON
  metadata, so a checkpoint describes itself. Writes are atomic.
* ``load_checkpoint(None)`` loads the bundled default model shipped inside the package.
"""

from __future__ import annotations

from .extras import require

require("torch", "cordsnet.checkpoint")

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from . import validate
from ._io import atomic_path, check_regular, file_sha256, load_json, open_regular
from .config import PRESETS, CordsNetConfig, get_preset
from .model import CordsNet
from .weights import BUNDLED, DEFAULT_CHECKPOINT

__all__ = [
    "CheckpointError",
    "BUNDLED",
    "DEFAULT_CHECKPOINT",
    "bundled_checkpoint_path",
    "check_preset",
    "default_checkpoint_path",
    "file_sha256",
    "infer_config",
    "load_checkpoint",
    "normalize_state_dict",
    "read_checkpoint",
    "save_checkpoint",
]

FORMAT_NAME = "cordsnet"
FORMAT_VERSION = "1"

Source = Union[str, os.PathLike, Mapping[str, Tensor], None]



class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not have the CordsNet layout."""


# ------------------------------------------------------------------------------------ public API
def load_checkpoint(source: Source = None, *, config: CordsNetConfig | None = None,
                    dataset: str | None = None, map_location: str | torch.device = "cpu") -> CordsNet:
    """Build a :class:`CordsNet` from a checkpoint, exactly (never a partial load).

    The config (stored, given or inferred) is checked against the tensors' shapes *before* anything is
    built: ``area_conv.*`` fix the depth, ``out_fc`` the classes, ``inp_conv`` the input channels and
    ``conv_bias.0`` the image size, so a file cannot make this allocate more than its own tensors.

    Args:
        source: a path (published ``.pth`` or own ``.safetensors``), a state dict, None for the
            bundled default model, a registered download (``"cordsnet-r8"``, the published checkpoint,
            fetched into the cache on first use: :mod:`cordsnet.fetch`) or ``"hf-hub:ORG/NAME[@REVISION]"``
            (a model on the Hugging Face Hub: :mod:`cordsnet.pretrained`).
        config: use this config instead of the stored or inferred one (its geometry must match).
        dataset: the dataset preset to record in the config (normalisation, class names); its classes
            and channels must match the checkpoint's. By default the stored one, else a guess from
            (classes, channels).
        map_location: device the tensors are loaded to.

    Raises:
        CheckpointError: unreadable or hostile file, refused pickle, missing / unexpected / mis-shaped
            keys, a config that contradicts the tensors, or a preset that does not fit them.
        FileNotFoundError: the path does not exist.
    """
    state, stored = read_checkpoint(source, map_location=map_location)
    inferred = infer_config(state, dataset=dataset)
    if dataset is not None:
        check_preset(dataset, inferred.num_classes, inferred.in_channels)
    if config is None:
        config = stored if stored is not None else inferred
        if dataset is not None and config.dataset != dataset:
            config = config.replace(dataset=dataset)
        origin = "the stored config" if stored is not None else "the inferred config"
    else:
        if not isinstance(config, CordsNetConfig):
            raise TypeError(f"config: expected a CordsNetConfig, got {type(config).__name__}")
        origin = "config"
    _check_geometry(config, inferred, origin)
    model = CordsNet(config)
    _check_layout(model, state)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def check_preset(dataset: str, num_classes: int, in_channels: int) -> None:
    """Refuse a dataset preset whose head size or channel count differs from a model's.

    Raises:
        CheckpointError: naming both, e.g. the ``imagenet`` preset (1000 classes) on a 10-class model.
    """
    preset = get_preset(dataset)
    if (preset.num_classes, preset.in_channels) != (num_classes, in_channels):
        raise CheckpointError(
            f"dataset: the {dataset!r} preset is for {preset.num_classes} classes and {preset.in_channels} "
            f"channel(s), the checkpoint has {num_classes} classes and {in_channels} channel(s); its class "
            f"names and normalisation would be wrong. Matching presets: "
            f"{[p.name for p in PRESETS.values() if (p.num_classes, p.in_channels) == (num_classes, in_channels)]}")


def read_checkpoint(source: Source = None, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Tensor], CordsNetConfig | None]:
    """Read a checkpoint's tensors (normalised to the current key names) and stored config, if any."""
    if source is None:
        source = default_checkpoint_path()
    if isinstance(source, Mapping):
        return normalize_state_dict(source), None
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: expected a path, a state dict or None, got {type(source).__name__}")
    if isinstance(source, str) and not os.path.exists(source):
        from .fetch import resolve_name

        source = resolve_name(source)  # "cordsnet-r8", "hf-hub:ORG/NAME[@REV]": the cached file; else as is
    path = Path(source)
    _check_file(path)
    if _is_safetensors(path):
        return _read_safetensors(path, map_location)
    return normalize_state_dict(_torch_load(path, map_location)), None


def save_checkpoint(model: CordsNet, path: str | os.PathLike, *,
                    metadata: Mapping[str, str] | None = None,
                    extra_tensors: Mapping[str, Tensor] | None = None) -> Path:
    """Write `model` in the project's format: safetensors, config as JSON metadata. Atomic.

    Args:
        model: the model to save.
        path: destination (conventionally ``*.safetensors``).
        metadata: extra string metadata (e.g. training stage, metrics as JSON).
        extra_tensors: extra tensors stored under an ``extra.`` prefix (ignored by
            :func:`load_checkpoint`, read back with :func:`read_extra_tensors`).

    Returns:
        The path written.
    """
    from safetensors.torch import save

    if not isinstance(model, CordsNet):
        raise TypeError(f"model: expected a CordsNet, got {type(model).__name__}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().to("cpu").contiguous().clone()
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    for k, v in (metadata or {}).items():
        if k in meta:
            raise ValueError(f"metadata: key {k!r} is reserved")
        if not isinstance(v, str):
            raise TypeError(f"metadata[{k!r}]: expected a str, got {type(v).__name__}")
        meta[k] = v
    path = Path(path)
    data = save(tensors, metadata=meta)
    with atomic_path(path) as tmp:
        # Written into the temporary file atomic_path made (not replaced by a new file, which
        # safetensors' save_file does), so the checkpoint gets the mode of every other output.
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a checkpoint in the project's format.

    Raises:
        CheckpointError: not a readable safetensors file.
    """
    with _open_safetensors(Path(path)) as f:
        return dict(f.metadata() or {})


def read_extra_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors saved with ``save_checkpoint(..., extra_tensors=...)``, without their ``extra.`` prefix.

    Raises:
        CheckpointError: not a readable safetensors file.
    """
    with _open_safetensors(Path(path)) as f:
        return {k[len("extra."):]: f.get_tensor(k) for k in f.keys() if k.startswith("extra.")}


def default_checkpoint_path() -> Path:
    """Path of the bundled default model (a CordsNet trained on scikit-learn's digits)."""
    return bundled_checkpoint_path("digits")


def bundled_checkpoint_path(name: str = "digits") -> Path:
    """Path of a model installed with the package, by its :data:`BUNDLED` name (e.g. "digits-qat").

    Raises:
        ValueError: an unknown name (the message lists the bundled ones).
        FileNotFoundError: the file is not installed.
    """
    validate.choice("checkpoint", name, BUNDLED)
    ref = resources.files("cordsnet").joinpath("weights", BUNDLED[name])
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint: the bundled model {name!r} ({BUNDLED[name]}) is not installed in {path.parent}; "
            "pass a checkpoint path explicitly")
    return path


def state_dict_sha256(state: Mapping[str, Tensor]) -> str:
    """sha256 over a state dict's names, shapes, dtypes and bytes (for in-memory models)."""
    digest = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        digest.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# ---------------------------------------------------------------------------- layout handling
_LEGACY = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))
_PREFIXES = ("module.", "_orig_mod.")


def normalize_state_dict(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Strip ``module.`` prefixes and rename legacy ``weight_g``/``weight_v`` to the current names.

    Raises:
        CheckpointError: a value is not a tensor, or two keys collapse onto one name.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint: expected a state dict (mapping of names to tensors), "
                              f"got {type(state).__name__}")
    # Common wrappers: {"state_dict": {...}} or {"model": {...}}.
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping) and not isinstance(state[wrapper], Tensor):
            state = state[wrapper]
            break
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint: expected string keys, got {key!r}")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"checkpoint: {key!r} is a {type(value).__name__}, expected a tensor")
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix):], True
        for old, new in _LEGACY:
            if name.endswith("." + old):
                name = name[: -len(old)] + new
        if name in out:
            raise CheckpointError(f"checkpoint: keys collide after normalisation: {name!r}")
        out[name] = value
    return out


_AREA_KEY = re.compile(r"^area_conv\.(\d+)\.parametrizations\.weight\.original1$")


def infer_config(state: Mapping[str, Tensor], *, dataset: str | None = None) -> CordsNetConfig:
    """Read depth, classes, input channels and image size off a (normalised) state dict's shapes.

    Raises:
        CheckpointError: the tensors needed to infer the geometry are missing or malformed.
    """
    areas = sorted(int(m.group(1)) for k in state if (m := _AREA_KEY.match(k)))
    depth = len(areas)
    if depth == 0 or areas != list(range(depth)) or depth not in (2, 4, 6, 8):
        raise CheckpointError(
            f"checkpoint: expected area_conv.0..D-1 with D in (2, 4, 6, 8), found areas {areas} "
            f"(keys like 'area_conv.0.parametrizations.weight.original1')")
    need = {
        "inp_conv.parametrizations.weight.original1": 4,
        "out_fc.bias": 1,
        "conv_bias.0": 3,
    }
    for key, rank in need.items():
        if key not in state:
            raise CheckpointError(f"checkpoint: missing key {key!r} (needed to infer the architecture)")
        if state[key].dim() != rank:
            raise CheckpointError(f"checkpoint: {key!r} has shape {tuple(state[key].shape)}, expected rank {rank}")
    in_channels = int(state["inp_conv.parametrizations.weight.original1"].shape[1])
    num_classes = int(state["out_fc.bias"].shape[0])
    bias = tuple(state["conv_bias.0"].shape)
    image_size = bias[-1] * 4
    if bias[-1] != bias[-2] or image_size % 32 or image_size <= 0:
        raise CheckpointError(f"checkpoint: conv_bias.0 has shape {bias}, implying image size {image_size}; "
                              "expected square maps of a multiple of 32 px / 4")
    if dataset is None:
        dataset = _guess_dataset(num_classes, in_channels, image_size)
    try:
        return CordsNetConfig(depth=depth, num_classes=num_classes, in_channels=in_channels,
                              image_size=image_size, dataset=dataset)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint: inferred an invalid config: {exc}") from None


_GEOMETRY = ("depth", "num_classes", "in_channels", "image_size")


def _check_geometry(config: CordsNetConfig, inferred: CordsNetConfig, origin: str) -> None:
    """The config's geometry must be the tensors' (checked before a model is built).

    A stored protocol is bounded by CordsNetConfig itself (``config.MAX_STEPS``) when it is parsed.
    """
    wrong = [f"{k}={getattr(config, k)!r} (the tensors say {getattr(inferred, k)!r})" for k in _GEOMETRY
             if getattr(config, k) != getattr(inferred, k)]
    if wrong:
        raise CheckpointError(f"checkpoint: {origin} contradicts the checkpoint's tensors: {', '.join(wrong)}")


def _guess_dataset(num_classes: int, in_channels: int, image_size: int) -> str | None:
    matches = [p.name for p in PRESETS.values()
               if p.num_classes == num_classes and p.in_channels == in_channels]
    if not matches:
        return None
    # Prefer the preset whose default size matches (digits at 32 px over mnist at 224).
    sized = [m for m in matches if PRESETS[m].default_image_size == image_size]
    return (sized or matches)[0]


def _check_layout(model: CordsNet, state: Mapping[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k}: expected {tuple(v.shape)}, got {tuple(state[k].shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    nonfloat = [f"{k}: {state[k].dtype}" for k in expected if k in state and not state[k].is_floating_point()]
    nonfinite = [k for k in expected if k in state and state[k].is_floating_point()
                 and not bool(torch.isfinite(state[k]).all())]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped tensors [{'; '.join(misshaped)}]")
    if nonfloat:
        problems.append(f"non-floating tensors {nonfloat}")
    if nonfinite:
        problems.append(f"non-finite values in {nonfinite}")
    if problems:
        c = model.config
        raise CheckpointError(
            f"checkpoint does not match CordsNet-R{c.depth} ({c.num_classes} classes, {c.in_channels} channels, "
            f"{c.image_size} px): " + "; ".join(problems))


# ----------------------------------------------------------------------------------- file I/O
# The largest checkpoint any layout implies: CordsNet-R8 at ImageNet scale with a training run's extras
# (optimiser moments, the best epoch's copy, BatchNorms) is well under 2 GiB; 4 GiB leaves room.
MAX_CHECKPOINT_BYTES = 4 << 30
MAX_PICKLE_BYTES = 64 << 20  # a state dict's pickle (names and storage references, no tensor data)


def _check_file(path: Path) -> int:
    """A regular file of a plausible size (refused in one line before a byte is read); its size."""
    try:
        return check_regular(path, "checkpoint", MAX_CHECKPOINT_BYTES)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length followed by a JSON object."""
    size = _check_file(path)
    try:
        with open_regular(path, "checkpoint", MAX_CHECKPOINT_BYTES) as f:
            head = f.read(9)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint: cannot read {str(path)!r}: {exc}") from None
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < size


def _check_zip_sizes(path: Path) -> None:
    """A PyTorch zip checkpoint whose members inflate beyond any layout is refused before unpickling."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: cannot read {str(path)!r}: not a valid PyTorch zip archive ({exc})") from None
    total = sum(m.file_size for m in members)
    pickles = [m for m in members if m.filename.endswith(".pkl") and m.file_size > MAX_PICKLE_BYTES]
    if total > MAX_CHECKPOINT_BYTES or pickles:
        raise CheckpointError(f"checkpoint: {str(path)!r} inflates to {total} bytes"
                              + (f" (its {pickles[0].filename} alone {pickles[0].file_size})" if pickles else "")
                              + ", more than any CordsNet checkpoint; refused unread")


class _open_safetensors:
    """``safe_open`` of a file sniffed as safetensors; every failure is one CheckpointError."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.path, self.device, self.handle = path, device, None

    def __enter__(self) -> Any:
        from safetensors import SafetensorError, safe_open

        _check_file(self.path)
        if not _is_safetensors(self.path):
            raise CheckpointError(f"checkpoint: {str(self.path)!r} is not in the cordsnet safetensors format "
                                  "(a PyTorch .pth renamed, or another format?)")
        try:
            self.handle = safe_open(str(self.path), framework="pt", device=self.device)
            return self.handle.__enter__()
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint: {str(self.path)!r} is not a readable safetensors file "
                                  f"({exc})") from None

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.__exit__(*exc)


def _read_safetensors(path: Path, map_location: str | torch.device
                      ) -> tuple[dict[str, Tensor], CordsNetConfig | None]:
    from safetensors import SafetensorError

    with _open_safetensors(path, str(map_location)) as f:
        meta = f.metadata() or {}
        try:
            tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("extra.")}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint: {str(path)!r} is not a readable safetensors file ({exc})") from None
    config = None
    if "config" in meta:
        try:
            config = CordsNetConfig.from_dict(load_json(meta["config"], "stored config", max_bytes=1 << 20))
        except RecursionError:
            raise CheckpointError(f"checkpoint: {str(path)!r} has an invalid stored config: JSON nested too "
                                  "deeply to parse (expected a flat object)") from None
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint: {str(path)!r} has an invalid stored config: {exc}") from None
    return normalize_state_dict(tensors), config


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    _check_file(path)
    if not zipfile.is_zipfile(path):
        with open_regular(path, "checkpoint", MAX_CHECKPOINT_BYTES) as f:
            first = f.read(2)
        if not first or first[:1] != b"\x80":
            raise CheckpointError(f"checkpoint: {str(path)!r} is neither a PyTorch checkpoint nor a "
                                  "safetensors file (truncated or another format?)")
    else:
        _check_zip_sizes(path)
    try:
        # A file object, not the path: torch.load picks a reader from a path's suffix (a .pth renamed
        # .safetensors would go to safetensors); the content decides here.
        with open_regular(path, "checkpoint", MAX_CHECKPOINT_BYTES) as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise on corrupt files
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if "global" in reason.lower():
            raise CheckpointError(
                f"checkpoint: refused to load {str(path)!r}: it holds objects other than tensors (code to run "
                f"on load: {reason}); only tensors are read. If it is yours, re-save its state_dict() "
                "with torch.save or convert it to safetensors") from None
        raise CheckpointError(f"checkpoint: cannot read {str(path)!r}: not a valid PyTorch checkpoint "
                              f"(corrupt, truncated or another format: {reason})") from None
    except Exception as exc:  # noqa: BLE001 - torch's readers raise many types; each is "unreadable"
        raise CheckpointError(f"checkpoint: cannot read {str(path)!r} (truncated or corrupt?): "
                              f"{type(exc).__name__}: {_unpickler_reason(str(exc))}") from None


def _unpickler_reason(message: str) -> str:
    """The unpickler's own reason, without torch's advice (which suggests running the file's code)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line[len("WeightsUnpickler error:"):].strip()
    keep = [line for line in lines if "weights_only" not in line and "arbitrary code" not in line]
    return (keep[0] if keep else "unsupported content")[:200]


def describe_state(model: CordsNet) -> dict[str, Any]:
    """A JSON-ready summary of a model: geometry, parameter count, the spontaneous state."""
    c = model.config
    with torch.no_grad():
        spont = model.spontaneous_state(1)
    return {
        "config": c.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "areas": [
            {
                "area": i,
                "shape": list(shape),
                "spontaneous_mean": float(r.mean()),
                "spontaneous_max": float(r.max()),
                "spontaneous_active_fraction": float((r > 0).float().mean()),
            }
            for i, (shape, r) in enumerate(zip(c.state_shapes, spont))
        ],
    }

