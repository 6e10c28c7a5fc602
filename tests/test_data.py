"""cordsnet.data: the digits split and transform, the registry, the reference transforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cordsnet.config import get_preset
from cordsnet.data import (
    DATASETS,
    _digits_raw,
    _imagenet_transforms,
    _mnist_like_transforms,
    batch_augment,
    build_dataset,
    dataset_statistics,
    digits_split,
    digits_to_tensor,
)


def test_digits_split_holds_out_the_published_test_part() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    _, X_test, _, y_test = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    split = digits_split()
    assert np.array_equal(split["test"][0], X_test) and np.array_equal(split["test"][1], y_test)
    assert {k: len(v[1]) for k, v in split.items()} == {"train": 1293, "val": 144, "test": 360}
    rows = {k: {r.tobytes() for r in v[0]} for k, v in split.items()}
    # The three parts partition the dataset (duplicate scans aside, which sklearn's digits barely has).
    assert sum(len(v[1]) for v in split.values()) == len(y)
    assert len(rows["train"] & rows["test"]) <= 2 and len(rows["val"] & rows["test"]) <= 2


def test_digits_to_tensor_is_what_training_sees() -> None:
    X_val, y_val = digits_split()["val"]
    batch = digits_to_tensor(X_val)
    assert batch.shape == (144, 1, 32, 32) and batch.dtype == torch.float32
    ds = build_dataset("digits", "val", augment=False)
    for i in (0, 7, 143):
        x, label = ds[i]
        assert torch.equal(x, batch[i]) and label == int(y_val[i])
    one = digits_to_tensor(X_val[0])
    assert one.shape == (1, 1, 32, 32) and torch.equal(one[0], batch[0])
    # blank pixels map to -mean/std; the normalisation is the preset's
    preset = get_preset("digits")
    blank = digits_to_tensor(np.zeros((1, 64)))
    assert torch.allclose(blank, torch.full_like(blank, -preset.mean[0] / preset.std[0]))
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        digits_to_tensor(np.zeros((2, 63)))


def test_digits_preset_has_the_real_statistics() -> None:
    mean, std = dataset_statistics(_digits_raw(digits_split()["train"][0], 32))
    preset = get_preset("digits")
    assert preset.mean == pytest.approx(tuple(mean), abs=1e-4) and preset.std == pytest.approx(tuple(std), abs=1e-4)
    train = build_dataset("digits", "train", augment=False)
    xs = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(float(xs.mean())) < 1e-3 and abs(float(xs.std()) - 1.0) < 1e-3


def test_digits_augmentation_only_on_train() -> None:
    torch.manual_seed(0)
    aug = build_dataset("digits", "train", augment=True)
    plain = build_dataset("digits", "train", augment=False)
    assert not all(torch.equal(aug[i][0], plain[i][0]) for i in range(8))
    val_a, val_b = build_dataset("digits", "val", augment=True), build_dataset("digits", "val", augment=False)
    assert torch.equal(val_a[3][0], val_b[3][0])


def test_fake_data_and_registry() -> None:
    ds = build_dataset("fake", "train", image_size=32, num_classes=5, in_channels=1, fake_size=12)
    x, y = ds[0]
    assert len(ds) == 12 and x.shape == (1, 32, 32) and 0 <= y < 5
    assert torch.equal(ds[3][0], ds[3][0])  # deterministic per index
    assert set(DATASETS) >= {"mnist", "fashionmnist", "cifar10", "cifar100", "imagenet", "digits", "fake"}
    assert [n for n, s in DATASETS.items() if s.batch_mix] == ["fashionmnist", "cifar10", "cifar100"]
    with pytest.raises(ValueError, match="expected one of"):
        build_dataset("svhn", "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("digits", "holdout")


def test_absent_dataset_without_download_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MNIST.*not found"):
        build_dataset("mnist", "train", root=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="imagenet"):
        build_dataset("imagenet", "train", root=tmp_path)


def test_reference_transforms_shapes() -> None:
    from PIL import Image

    gray = Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8))
    torch.manual_seed(0)
    assert _mnist_like_transforms("mnist", 64, dense=False, train=True, flip=False)(gray).shape == (1, 64, 64)
    assert _mnist_like_transforms("fashionmnist", 64, dense=True, train=False, flip=True)(gray).shape == (1, 32, 32)
    rgb = Image.fromarray((np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8))
    assert _imagenet_transforms(32, train=True)(rgb).shape == (3, 32, 32)
    assert _imagenet_transforms(32, train=False)(rgb).shape == (3, 32, 32)


def test_imagenet_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 36), (i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    test = build_dataset("imagenet", "test", root=tmp_path, image_size=32)
    assert len(test) == 6 and test[0][0].shape == (3, 32, 32)
    train, val = (build_dataset("imagenet", s, root=tmp_path, image_size=32, val_fraction=0.34) for s in ("train", "val"))
    assert len(train) + len(val) == 6 and len(val) == 2


def test_cutmix_mixup_soft_targets() -> None:
    torch.manual_seed(0)
    mix = batch_augment(10)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6)
    x2, y2 = mix(x, y)
    assert x2.shape == x.shape and y2.shape == (6, 10)
    assert torch.allclose(y2.sum(1), torch.ones(6))
