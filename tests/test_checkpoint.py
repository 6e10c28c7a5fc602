"""Checkpoints: the published layout and its variants, the project's format, hostile and broken files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from helpers import make_published_state_dict
from cordsnet.checkpoint import (
    CheckpointError,
    infer_config,
    load_checkpoint,
    normalize_state_dict,
    read_metadata,
    save_checkpoint,
)
from cordsnet.config import CordsNetConfig


def _logits(model, size=32, channels=3):
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.run(x, steps=3, spontaneous_steps=2)


@pytest.mark.parametrize("depth, classes, channels, size", [(2, 10, 3, 32), (4, 100, 3, 64), (6, 10, 1, 32),
                                                            (8, 1000, 3, 224)])
def test_infer_config_from_tensor_shapes(depth, classes, channels, size):
    sd = make_published_state_dict(depth=depth, num_classes=classes, in_channels=channels, image_size=size)
    cfg = infer_config(sd)
    assert (cfg.depth, cfg.num_classes, cfg.in_channels, cfg.image_size) == (depth, classes, channels, size)
    if (classes, channels) == (1000, 3):
        assert cfg.dataset == "imagenet"


def test_published_file_with_module_prefix_and_legacy_names(tmp_path):
    sd = make_published_state_dict(depth=4)
    reference = _logits(load_checkpoint(sd))
    plain = tmp_path / "plain.pth"
    torch.save(sd, plain)
    ddp = {f"module.{k}": v for k, v in sd.items()}
    torch.save(ddp, tmp_path / "ddp.pth")
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
    assert any(k.endswith("weight_g") for k in legacy)
    torch.save({f"module.{k}": v for k, v in legacy.items()}, tmp_path / "legacy.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    for name in ("plain.pth", "ddp.pth", "legacy.pth", "wrapped.pth"):
        assert torch.equal(_logits(load_checkpoint(tmp_path / name)), reference), name


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = load_checkpoint(make_published_state_dict(depth=4, num_classes=10, in_channels=1), dataset="mnist")
    path = save_checkpoint(model, tmp_path / "m.safetensors", metadata={"note": "hello"})
    back = load_checkpoint(path)
    assert back.config == model.config and back.config.dataset == "mnist"
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and v1.dtype == v2.dtype and torch.equal(v1, v2)
    assert read_metadata(path)["note"] == "hello"
    assert torch.equal(_logits(back, channels=1), _logits(model, channels=1))


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating this file would prove code ran


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    sd = make_published_state_dict(depth=2)
    sd["evil"] = _Hostile(str(marker))
    path = tmp_path / "hostile.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"  # a plain (non-zip) pickle too
    with open(raw, "wb") as f:
        pickle.dump(_Hostile(str(marker)), f, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_gives_clear_error(tmp_path, suffix):
    model = load_checkpoint(make_published_state_dict(depth=2))
    path = tmp_path / f"m{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        save_checkpoint(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt|readable|neither"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a checkpoint")
    with pytest.raises(CheckpointError, match="neither"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def test_layout_errors_name_the_keys():
    sd = make_published_state_dict(depth=4)
    bad = dict(sd)
    bad["area_area.2.parametrizations.weight.original1"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(CheckpointError, match=r"area_area\.2.*expected \(128, 64, 3, 3\), got \(128, 64, 5, 5\)"):
        load_checkpoint(bad)
    missing = {k: v for k, v in sd.items() if not k.startswith("skip_area.0")}
    with pytest.raises(CheckpointError, match=r"missing keys \['skip_area\.0"):
        load_checkpoint(missing)
    extra = dict(sd, **{"area_bias.0": torch.zeros(64, 8, 8)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \['area_bias\.0'\]"):
        load_checkpoint(extra)
    nan = dict(sd, **{"conv_bias.1": torch.full_like(sd["conv_bias.1"], float("nan"))})
    with pytest.raises(CheckpointError, match=r"non-finite values in \['conv_bias\.1'\]"):
        load_checkpoint(nan)
    with pytest.raises(CheckpointError, match="is a str"):
        load_checkpoint(dict(sd, note="text"))
    with pytest.raises(CheckpointError, match="area_conv"):
        load_checkpoint({"out_fc.bias": torch.zeros(3)})


def test_explicit_config_must_match_the_tensors():
    sd = make_published_state_dict(depth=2, image_size=32)
    with pytest.raises(CheckpointError, match="conv_bias.0"):
        load_checkpoint(sd, config=CordsNetConfig(depth=2, num_classes=10, image_size=64))


def test_normalize_refuses_collisions():
    sd = make_published_state_dict(depth=2)
    both = dict(sd, **{f"module.{k}": v for k, v in sd.items()})
    with pytest.raises(CheckpointError, match="collide"):
        normalize_state_dict(both)


def test_failed_save_keeps_the_existing_file(tmp_path, monkeypatch):
    import safetensors.torch

    model = load_checkpoint(make_published_state_dict(depth=2))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary file left behind


def test_bundled_default_is_named_when_missing_or_loads():
    from cordsnet.checkpoint import default_checkpoint_path

    try:
        path = default_checkpoint_path()
    except FileNotFoundError as exc:
        assert "bundled default model" in str(exc)
        with pytest.raises(FileNotFoundError, match="bundled"):
            load_checkpoint(None)
    else:
        assert load_checkpoint(None).config == load_checkpoint(path).config
