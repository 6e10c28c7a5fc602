"""CordsNetConfig and the dataset presets registry."""

from __future__ import annotations

import dataclasses

import pytest

from cordsnet.config import PRESETS, CordsNetConfig, get_preset


def test_defaults_are_the_published_r8():
    c = CordsNetConfig()
    assert (c.depth, c.num_classes, c.in_channels, c.image_size) == (8, 1000, 3, 224)
    assert (c.alpha, c.steps, c.spontaneous_steps) == (0.2, 100, 100)
    assert c.spatial_sizes == (56, 56, 28, 28, 14, 14, 7, 7)
    assert c.state_shapes[-1] == (512, 7, 7)
    assert c.drive_shape == (64, 56, 56)


def test_any_multiple_of_32_and_round_trip():
    c = CordsNetConfig(depth=4, image_size=96, num_classes=10, dataset="cifar10")
    assert c.spatial_sizes == (24, 24, 12, 12)
    assert CordsNetConfig.from_json(c.to_json()) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.depth = 2  # type: ignore[misc]


@pytest.mark.parametrize("field, value, match", [
    ("depth", 5, "depth: expected one of"), ("image_size", 48, "multiple of 32"), ("alpha", 0.0, "alpha"),
    ("steps", 0, "steps"), ("spontaneous_steps", -1, "spontaneous_steps"), ("num_classes", 0, "num_classes"),
    ("dataset", "svhn", "dataset: expected one of"),
])
def test_invalid_values_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        CordsNetConfig(**{field: value})


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown keys \\['width'\\]; valid keys are"):
        CordsNetConfig.from_dict({"depth": 2, "width": 3})


def test_presets():
    assert set(PRESETS) == {"imagenet", "cifar10", "cifar100", "mnist", "fashionmnist", "digits"}
    assert len(get_preset("imagenet").class_names) == 1000
    assert get_preset("imagenet").class_names[1] == "goldfish"
    assert len(get_preset("cifar100").class_names) == 100
    assert len(set(get_preset("cifar100").class_names)) == 100
    assert get_preset("fashionmnist").class_names[9] == "Ankle boot"
    for p in PRESETS.values():
        assert len(p.mean) == len(p.std) == p.in_channels
        assert p.class_names is None or len(p.class_names) == p.num_classes
    assert get_preset("imagenet").resize_size(224) == 256
    with pytest.raises(ValueError, match="expected one of"):
        get_preset("svhn")


@pytest.mark.parametrize("field, value, match", [
    ("image_size", 8192, "image_size: expected an int in \\[1, 1024\\], got 8192; larger inputs"),
    ("image_size", 10**9, "image_size: expected an int in \\[1, 1024\\]"),
    ("steps", 10**12, "steps: expected an int in \\[1, 10000\\], got 1000000000000; the published protocol"),
    ("spontaneous_steps", 10**9, "spontaneous_steps: expected an int in \\[0, 10000\\]"),
    ("num_classes", 10**9, "num_classes"), ("in_channels", 4096, "in_channels"),
    ("depth", True, "depth: expected an int"), ("depth", 4.0, "depth: expected an int"),
    ("alpha", True, "alpha"), ("alpha", float("nan"), "alpha"), ("steps", 1.5, "steps"),
])
def test_values_that_would_exhaust_memory_or_hang_are_refused_with_a_why(field, value, match):
    with pytest.raises(ValueError, match=match):
        CordsNetConfig(**{field: value})


def test_the_bounds_admit_the_published_and_bundled_models():
    from cordsnet.config import MAX_IMAGE_SIZE, MAX_STEPS

    CordsNetConfig(image_size=MAX_IMAGE_SIZE, steps=MAX_STEPS, spontaneous_steps=MAX_STEPS)
    CordsNetConfig(depth=4, num_classes=10, in_channels=1, image_size=32, dataset="digits")


def test_numpy_values_are_stored_as_plain_numbers():
    import numpy as np

    c = CordsNetConfig(depth=np.int64(4), steps=np.int32(7), alpha=np.float32(0.5), image_size=np.int64(64))
    assert type(c.depth) is int and type(c.steps) is int and type(c.alpha) is float
    assert CordsNetConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "config: "), ('{"a": ' * 100_000 + "1" + "}" * 100_000, "config: "),
    ("[1, 2]", "config: expected a JSON object"), ("nope", "config: not valid JSON"),
    ('{"steps": 1e12}', "steps: expected an int"),
])
def test_hostile_config_json_is_a_value_error(text, match):
    with pytest.raises(ValueError, match=match):
        CordsNetConfig.from_json(text)
