"""Training and evaluation data: the reference datasets and transforms (docs/specification.md §5).

Every dataset is built through one registry, :data:`DATASETS`, keyed by name:

* ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``: torchvision datasets, downloaded into
  `root` when the network allows (an absent dataset that cannot be downloaded raises
  :class:`FileNotFoundError` with the path and the reason);
* ``imagenet``: :class:`torchvision.datasets.ImageFolder` over ``root/train`` and ``root/val``; its
  files are opened by the one image pipeline (:func:`cordsnet.runtime.preprocess.to_mode`: every
  Pillow mode, the decompression-bomb guard) and the evaluation splits get exactly ``predict``'s
  pixels (:class:`~cordsnet.runtime.preprocess.Preprocessor`);
* ``digits``: scikit-learn's 1,797 8x8 digit scans (shipped with scikit-learn, always offline),
  upsampled to ``image_size`` (32 px by default); the bundled default model's data;
* ``fake``: :class:`torchvision.datasets.FakeData`, for tests.

``dense=True`` keeps the dataset's native resolution instead of resizing to the model size (CIFAR
stays 32 px; MNIST-like 28-px images are zero-padded to 32 px, since CordsNet needs a multiple of 32).

Splits are ``train`` (used for gradient steps), ``val`` (model selection) and ``test`` (held out).
Datasets without an official validation split take it from the end of a fixed permutation of the
training set (``val_fraction``); digits hold out the test part of
``train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)`` and never train or select on it.
"""

from __future__ import annotations

from .extras import require

require("torch", "cordsnet.data")

import functools
import os
import pickle
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from . import validate
from .config import MAX_IMAGE_SIZE, get_preset

__all__ = [
    "DATASETS",
    "DIGITS_IMAGE_SIZE",
    "DatasetSpec",
    "SPLITS",
    "batch_augment",
    "build_dataset",
    "digits_split",
    "digits_to_tensor",
    "get_dataset_spec",
]

from .names import SPLITS  # noqa: E402 (the one list: cordsnet.names)
DIGITS_IMAGE_SIZE = 32
_DIGITS_HOLDOUT = dict(test_size=0.2, random_state=0)  # + stratify=y: the published held-out split


# ------------------------------------------------------------------------------------ digits
def digits_to_tensor(X: np.ndarray | Tensor, image_size: int = DIGITS_IMAGE_SIZE) -> Tensor:
    """scikit-learn digits rows to the model's input batch, exactly as training saw them.

    Pixels (0..16) are scaled to [0, 1], the 8x8 image is upsampled bilinearly (antialiased,
    torchvision's ``resize``) to ``image_size`` and normalised with the ``digits`` preset's mean/std.

    Args:
        X: (N, 64) or (64,) pixel values 0..16 (``sklearn.datasets.load_digits().data``).
        image_size: output side S (the bundled model uses 32).

    Returns:
        (N, 1, S, S) float32.
    """
    preset = get_preset("digits")
    raw = _digits_raw(X, image_size)
    return (raw - preset.mean[0]) / preset.std[0]


def _digits_raw(X: np.ndarray | Tensor, image_size: int) -> Tensor:
    """(N, 64) 0..16 -> (N, 1, S, S) in [0, 1] (upsampled, not normalised)."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[1] != 64:
        raise ValueError(f"X: expected digits rows of shape (N, 64), got {tuple(x.shape)}")
    image_size = validate.integer("image_size", image_size, min=8, max=MAX_IMAGE_SIZE)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    x = TF.resize(x, [image_size, image_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return x.contiguous()


def digits_split(val_fraction: float = 0.1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits splits: {"train": (X, y), "val": (X, y), "test": (X, y)}.

    ``test`` is the test part of ``train_test_split(X, y, test_size=0.2, random_state=0,
    stratify=y)`` (360 images, held out); ``val`` is a stratified `val_fraction` of the rest
    (random_state=0), used for model selection; ``train`` is what remains.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    val_fraction = validate.number("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    X, y = load_digits(return_X_y=True)
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, stratify=y, **_DIGITS_HOLDOUT)
    X_tr, X_val, y_tr, y_val = train_test_split(X_rest, y_rest, test_size=val_fraction, random_state=0,
                                                stratify=y_rest)
    return {"train": (X_tr, y_tr), "val": (X_val, y_val), "test": (X_test, y_test)}


class _TensorImages(Dataset):
    """In-memory images (N, C, S, S) in [0, 1] with labels; a per-sample transform, then normalisation."""

    def __init__(self, images: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float],
                 transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return (x - self.mean) / self.std, int(self.labels[index])


def _build_digits(split: str, *, image_size: int, augment: bool, val_fraction: float, **_: Any) -> Dataset:
    from torchvision.transforms import v2

    X, y = digits_split(val_fraction)[split]
    preset = get_preset("digits")
    transform = None
    if augment and split == "train":
        # Small geometric jitter of the upsampled scan (before normalisation, so the fill is background).
        transform = v2.RandomAffine(degrees=8, translate=(0.08, 0.08), scale=(0.9, 1.1))
    return _TensorImages(_digits_raw(X, image_size), torch.as_tensor(y, dtype=torch.long),
                         preset.mean, preset.std, transform)


# -------------------------------------------------------------------------- torchvision data
def _to_tensor_normalise(mean: Sequence[float], std: Sequence[float]) -> list:
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _mnist_like_transforms(name: str, size: int, dense: bool, train: bool, flip: bool) -> Callable:
    from torchvision.transforms import v2

    preset = get_preset(name)
    ops: list = [v2.Pad(2) if dense else v2.Resize(size)]  # dense: 28 -> 32 (a multiple of 32)
    if train:
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        ops += [v2.RandomAffine(degrees=5, translate=(0.05, 0.05), scale=(0.95, 1.05), shear=5),
                v2.ColorJitter(brightness=0.1, contrast=0.1)]
        if not flip:  # mnist only: elastic deformation
            ops.append(v2.ElasticTransform(alpha=20.0, sigma=5.0))
    return v2.Compose(ops + _to_tensor_normalise(preset.mean, preset.std))


def _cifar_transforms(name: str, size: int, dense: bool, train: bool) -> Callable:
    from torchvision.transforms import v2

    preset = get_preset(name)
    ops: list = [] if dense else [v2.Resize(size)]
    if train:
        ops += [v2.RandomHorizontalFlip(), v2.RandAugment()]
    return v2.Compose(ops + _to_tensor_normalise(preset.mean, preset.std))


def _imagenet_transforms(size: int, train: bool) -> Callable:
    from torchvision.transforms import v2

    from .runtime.preprocess import Preprocessor

    preset = get_preset("imagenet")
    if not train:  # the one pipeline: the same pixels as the runtime's predict
        return functools.partial(_preprocessed, Preprocessor.from_preset(preset, size))  # picklable for workers
    ops = [v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), v2.RandAugment()]
    return v2.Compose(ops + _to_tensor_normalise(preset.mean, preset.std))


def _preprocessed(pre: Any, img: Any) -> Tensor:
    """(C, S, S) float32 tensor of `img` through the runtime's :class:`Preprocessor` `pre`."""
    return torch.from_numpy(pre(img))


def _rgb_file(path: str) -> Any:
    """ImageFolder's loader: the one pipeline's file reader and mode conversion (an RGB PIL image)."""
    from .runtime.preprocess import to_mode

    return to_mode(path, "RGB")


MAX_SCANNED_FILES = 100_000  # a torchvision dataset folder holds a handful of files; more is not one
MAX_DATASET_FILE_BYTES = 1 << 30  # the largest file of a registered torchvision dataset is CIFAR's ~170 MB archive


def _refuse_special_files(folder: Path, dataset: str) -> None:
    """Refuse, in one line naming it, a FIFO, device or socket anywhere under a dataset folder (reading one
    would block forever or never end), or a file larger than any dataset's (torchvision reads files whole);
    nothing is opened. The folder becomes an input of the command."""
    from ._io import register_input

    if not folder.is_dir():
        return
    register_input(folder)
    seen = 0
    for parent, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(parent, d))]:
            path = os.path.join(parent, name)
            seen += 1
            if seen > MAX_SCANNED_FILES:
                raise ValueError(f"dataset: {str(folder)!r} holds more than {MAX_SCANNED_FILES} files; not a "
                                 f"{dataset} folder (check --data-root)")
            try:
                st = os.stat(path)
            except OSError:  # a dangling link: torchvision reports what it misses
                continue
            mode = st.st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ValueError(f"dataset: {path!r} under the {dataset} folder is not a regular file (a FIFO, "
                                 "device or socket); remove it")
            size = st.st_size
            if stat.S_ISREG(mode) and size > MAX_DATASET_FILE_BYTES:  # torchvision reads each file whole
                raise ValueError(f"dataset: {path!r} under the {dataset} folder is {size} bytes, more than any "
                                 f"{dataset} file ({MAX_DATASET_FILE_BYTES}); damaged or not {dataset}'s: delete it")


def _refuse_folder_loops(folder: Path, dataset: str) -> None:
    """Refuse a folder tree that reaches one folder twice (a symlink loop, or a second link to a folder):
    ImageFolder follows links, so a loop is walked until the path is too long, and two loops multiply
    (hours, gigabytes). Only folders are visited (a stat each); nothing is opened."""
    seen: set[tuple[int, int]] = set()
    pending = [str(folder)]
    while pending:
        directory = pending.pop()
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            raise ValueError(f"dataset: {directory!r} under the {dataset} folder {str(folder)!r} is a folder "
                             "reached twice (a symlink loop or a second link to one folder); remove the link")
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as entries:
            pending += [e.path for e in entries if e.is_dir()]  # follows links, as ImageFolder does


def _image_file(path: str) -> bool:
    """ImageFolder's filter: a regular file with an image suffix. Anything else (a FIFO, a device, a socket,
    a folder named like an image) is skipped, with one warning per dataset (see :func:`_build_imagenet`)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not path.lower().endswith(IMG_EXTENSIONS):
        return False
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return True
    except OSError:
        pass
    _SKIPPED.append(path)
    return False


_SKIPPED: list[str] = []  # non-regular "images" the last ImageFolder scan skipped


def _torchvision_dataset(cls_name: str, root: Path, train: bool, download: bool, transform: Callable) -> Dataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    _refuse_special_files(root, cls_name)
    try:
        return cls(str(root), train=train, download=False, transform=transform)
    except FileNotFoundError as missing_file:
        if not download:
            raise FileNotFoundError(f"dataset: {cls_name} not found under {str(root)!r} and download is off "
                                    f"({missing_file})") from None
    except (ValueError, EOFError, OSError, IndexError, TypeError, AssertionError, KeyError,
            pickle.UnpicklingError) as exc:  # present, but garbage
        raise ValueError(f"dataset: the {cls_name} files under {str(root)!r} are damaged or not {cls_name}'s "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); delete them to download "
                         "again") from None
    except RuntimeError as missing:
        if not download:
            raise FileNotFoundError(f"dataset: {cls_name} not found under {str(root)!r} and download is off "
                                    f"({missing})") from None
    try:
        return cls(str(root), train=train, download=True, transform=transform)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError, ...)
        raise FileNotFoundError(
            f"dataset: {cls_name} is not under {str(root)!r} and could not be downloaded "
            f"({type(exc).__name__}: {exc}); download it on a machine with network access and pass "
            f"--data-root") from None


def _split_official_train(ds: Dataset, split: str, val_fraction: float, seed: int = 0) -> Dataset:
    """Carve a fixed validation part out of an official training set."""
    n = len(ds)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(n * val_fraction)))
    return Subset(ds, perm[n - n_val:] if split == "val" else perm[: n - n_val])


def _build_torchvision(name: str, cls_name: str, family: str) -> Callable[..., Dataset]:
    def build(split: str, *, root: Path, image_size: int, augment: bool, dense: bool, download: bool,
              val_fraction: float, **_: Any) -> Dataset:
        train_part = split != "test"
        train_tf = augment and split == "train"
        if family == "cifar":
            tf = _cifar_transforms(name, image_size, dense, train_tf)
        else:
            tf = _mnist_like_transforms(name, image_size, dense, train_tf, flip=(name == "fashionmnist"))
        ds = _torchvision_dataset(cls_name, root / name, train_part, download, tf)
        return ds if split == "test" else _split_official_train(ds, split, val_fraction)
    return build


def _build_imagenet(split: str, *, root: Path, image_size: int, augment: bool, val_fraction: float,
                    **_: Any) -> Dataset:
    from torchvision.datasets import ImageFolder

    from ._io import register_input

    folder = root / ("val" if split == "test" else "train")
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset: imagenet expects ImageFolder directories {str(root / 'train')!r} and "
                                f"{str(root / 'val')!r}; {str(folder)!r} does not exist (no download: "
                                "ImageNet needs a licence)")
    _SKIPPED.clear()
    register_input(folder)  # no output of the running command is written inside the dataset
    _refuse_folder_loops(folder, "imagenet")
    try:
        ds = ImageFolder(str(folder), transform=_imagenet_transforms(image_size, augment and split == "train"),
                         loader=_rgb_file, is_valid_file=_image_file)
    except FileNotFoundError as exc:  # no class folder or no image in one
        raise FileNotFoundError(f"dataset: {str(folder)!r} is not an ImageFolder tree ({exc})") from None
    if _SKIPPED:
        warnings.warn(f"dataset: skipped {len(_SKIPPED)} file(s) under {str(folder)!r} that are not regular files "
                      f"(first: {_SKIPPED[0]!r})", stacklevel=2)
    return ds if split == "test" else _split_official_train(ds, split, val_fraction)


def _build_fake(split: str, *, image_size: int, num_classes: int = 10, in_channels: int = 3,
                fake_size: int = 64, **_: Any) -> Dataset:
    from torchvision.datasets import FakeData
    from torchvision.transforms import v2

    offset = {"train": 0, "val": 1_000_000, "test": 2_000_000}[split]
    size = fake_size if split == "train" else max(1, fake_size // 4)
    return FakeData(size=size, image_size=(in_channels, image_size, image_size), num_classes=num_classes,
                    transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                          v2.Normalize([0.5] * in_channels, [0.25] * in_channels)]),
                    random_offset=offset)


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset and what the model trained on it looks like."""

    name: str
    builder: Callable[..., Dataset]
    num_classes: int
    in_channels: int
    native_size: int
    batch_mix: bool = False  # CutMix / MixUp per batch (the reference's choice for this dataset)
    preset: str | None = None  # the config preset the trained model records


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", _build_torchvision("mnist", "MNIST", "mnist"), 10, 1, 28, preset="mnist"),
    "fashionmnist": DatasetSpec("fashionmnist", _build_torchvision("fashionmnist", "FashionMNIST", "mnist"),
                                10, 1, 28, batch_mix=True, preset="fashionmnist"),
    "cifar10": DatasetSpec("cifar10", _build_torchvision("cifar10", "CIFAR10", "cifar"), 10, 3, 32,
                           batch_mix=True, preset="cifar10"),
    "cifar100": DatasetSpec("cifar100", _build_torchvision("cifar100", "CIFAR100", "cifar"), 100, 3, 32,
                            batch_mix=True, preset="cifar100"),
    "imagenet": DatasetSpec("imagenet", _build_imagenet, 1000, 3, 224, preset="imagenet"),
    "digits": DatasetSpec("digits", _build_digits, 10, 1, 8, preset="digits"),
    "fake": DatasetSpec("fake", _build_fake, 10, 3, 32, preset=None),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of `name`; unknown names raise ValueError listing the valid ones."""
    return DATASETS[validate.choice("dataset", name, sorted(DATASETS))]


def build_dataset(name: str, split: str, *, root: str | os.PathLike | None = None, image_size: int | None = None,
                  augment: bool = True, dense: bool = False, download: bool = True, val_fraction: float = 0.1,
                  **extra: Any) -> Dataset:
    """Build one split of a registered dataset with the reference transforms.

    Args:
        name: a key of :data:`DATASETS`.
        split: "train", "val" or "test".
        root: data directory (default ``$CORDSNET_DATA`` or ``~/.cache/cordsnet/data``).
        image_size: model input side S (default: the preset's; the dense variant keeps the native size).
        augment: apply the reference training augmentation to the train split.
        dense: keep the native resolution (CIFAR 32, MNIST 28 padded to 32).
        download: allow torchvision to download a missing dataset.
        val_fraction: share of the training set used for validation.
        **extra: builder-specific options (``fake``: num_classes, in_channels, fake_size).

    Returns:
        A map-style dataset yielding (image (C, S, S) float32 normalised, label int).
    """
    spec = get_dataset_spec(name)
    validate.choice("split", split, SPLITS)
    val_fraction = validate.number("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    if image_size is not None:
        image_size = validate.integer("image_size", image_size, min=8, max=MAX_IMAGE_SIZE)
    if dense:
        image_size = 32 if spec.native_size <= 32 else spec.native_size
    if image_size is None:
        image_size = get_preset(spec.preset).default_image_size if spec.preset else 32
    if root is None:
        root = os.environ.get("CORDSNET_DATA", str(Path.home() / ".cache" / "cordsnet" / "data"))
    return spec.builder(split, root=Path(root), image_size=image_size, augment=augment, dense=dense,
                        download=download, val_fraction=val_fraction, **extra)


def batch_augment(num_classes: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """CutMix or MixUp chosen at random per batch (torchvision v2): (x, y) -> (x, soft targets (B, K))."""
    from torchvision.transforms import v2

    choice = v2.RandomChoice([v2.CutMix(num_classes=num_classes), v2.MixUp(num_classes=num_classes)])

    def apply(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return choice(x, y)
    return apply


def dataset_statistics(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (N, C, S, S) (how the digits preset's values were obtained)."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return [round(float(m), 4) for m in flat.mean(1)], [round(float(s), 4) for s in flat.std(1)]


