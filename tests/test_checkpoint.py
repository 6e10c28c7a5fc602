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
    read_checkpoint_metadata,
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
    assert read_checkpoint_metadata(path)["note"] == "hello"
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
    with pytest.raises(CheckpointError, match=r"config contradicts .* image_size=64 \(the tensors say 32\)"):
        load_checkpoint(sd, config=CordsNetConfig(depth=2, num_classes=10, image_size=64))


def test_normalize_refuses_collisions():
    sd = make_published_state_dict(depth=2)
    both = dict(sd, **{f"module.{k}": v for k, v in sd.items()})
    with pytest.raises(CheckpointError, match="collide"):
        normalize_state_dict(both)


def test_failed_save_keeps_the_existing_file(tmp_path, file_size_limit):
    model = load_checkpoint(make_published_state_dict(depth=2))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    file_size_limit(len(before) // 2)  # the write dies half-way
    try:
        with pytest.raises(OSError):
            save_checkpoint(model, path)
    finally:
        file_size_limit(2**62)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary file left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoints_follow_the_umask_like_every_output(tmp_path, umask, mode):
    """A checkpoint gets 0o666 & ~umask, as open() gives any new file (safetensors' own writer made 0600)."""
    model = load_checkpoint(make_published_state_dict(depth=2))
    old = os.umask(umask)
    try:
        path = save_checkpoint(model, tmp_path / "m.safetensors")
        text = tmp_path / "reference.txt"
        text.write_text("x")
        replaced = save_checkpoint(model, path)  # replacing an existing checkpoint too
    finally:
        os.umask(old)
    assert replaced.stat().st_mode & 0o777 == mode
    assert text.stat().st_mode & 0o777 == mode  # what the umask gives an ordinary file


# ------------------------------------------------------------------ hostile and corrupt files
def _with_config(tmp_path, name: str, sd: dict, config_json: str):
    """A safetensors file holding `sd` and a stored config of our choosing (as a hostile file would)."""
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"format": "cordsnet", "format_version": "1", "config": config_json})
    return path


@pytest.mark.parametrize("claim", [
    {"image_size": 8192},  # ~3.7 GB of state if it were built
    {"image_size": 1_000_000_000},  # torch overflow if it were built
    {"image_size": 64},  # plausible, but not what the tensors are
    {"num_classes": 1000},
    {"in_channels": 1},
    {"depth": 4},
])
def test_stored_config_contradicting_the_tensors_is_refused_before_building(tmp_path, claim):
    import json
    import tracemalloc

    sd = make_published_state_dict(depth=2, num_classes=10, in_channels=3, image_size=32)
    config = dict(depth=2, num_classes=10, in_channels=3, image_size=32, dataset=None, **{})
    config.update(claim)
    path = _with_config(tmp_path, "lying.safetensors", sd, json.dumps(config))
    key = next(iter(claim))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"{key}"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing of the claimed size was allocated (the file holds ~1 MB of tensors)


@pytest.mark.parametrize("key, value", [("spontaneous_steps", 1_000_000_000), ("steps", 10**12)])
def test_stored_protocol_is_bounded(tmp_path, key, value):
    """A file may not make `info` (spontaneous phase) or `export` (unrolled steps) run for hours."""
    import json
    import time

    sd = make_published_state_dict(depth=2, num_classes=10, in_channels=3, image_size=32)
    config = dict(depth=2, num_classes=10, in_channels=3, image_size=32, dataset=None, **{key: value})
    path = _with_config(tmp_path, "long.safetensors", sd, json.dumps(config))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"{key}.*10,?000"):
        load_checkpoint(path)
    assert time.perf_counter() - t0 < 30  # refused, not simulated
    # The caller may still ask for a long protocol explicitly.
    model = load_checkpoint(sd, config=CordsNetConfig(depth=2, num_classes=10, image_size=32, dataset=None,
                                                      spontaneous_steps=5))
    assert model.config.spontaneous_steps == 5


def test_deeply_nested_config_json_is_one_clear_error(tmp_path):
    sd = make_published_state_dict(depth=2)
    path = _with_config(tmp_path, "nested.safetensors", sd, "[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="stored config") as info:
        load_checkpoint(path)
    assert "Recursion" not in str(info.value) or "nested" in str(info.value)


def test_pth_renamed_safetensors_and_safetensors_renamed_pth(tmp_path):
    """The content decides the reader, never the suffix; the metadata readers refuse a .pth cleanly."""
    from cordsnet.checkpoint import read_extra_tensors

    sd = make_published_state_dict(depth=2)
    reference = _logits(load_checkpoint(sd))
    pth = tmp_path / "really_a_pth.safetensors"
    torch.save(sd, pth)
    assert torch.equal(_logits(load_checkpoint(pth)), reference)
    for reader in (read_checkpoint_metadata, read_extra_tensors):
        with pytest.raises(CheckpointError, match="not in the cordsnet safetensors format"):
            reader(pth)
    own = save_checkpoint(load_checkpoint(sd), tmp_path / "own.safetensors")
    renamed = tmp_path / "really_safetensors.pth"
    renamed.write_bytes(own.read_bytes())
    assert torch.equal(_logits(load_checkpoint(renamed)), reference)


@pytest.mark.parametrize("head", [b"\x80\x02", b"\x80\x04", b"PK\x03\x04", b"\x08" + b"\x00" * 7 + b"{", b""])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_random_bytes_are_one_clear_error_that_never_suggests_running_code(tmp_path, head, suffix):
    import numpy as np

    path = tmp_path / f"random{suffix}"
    path.write_bytes(head + np.random.default_rng(len(head)).bytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith("checkpoint:") and "\n" not in message
    assert "weights_only" not in message and "arbitrary code" not in message
    assert "objects other than tensors" not in message  # random bytes are corrupt, not hostile


def test_hostile_pickle_message_never_suggests_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"x": _Hostile(str(marker))}, path)
    with pytest.raises(CheckpointError, match="objects other than tensors") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value) and "weights_only` set to `False" not in str(info.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("classes, channels, preset, ok", [
    (10, 3, "imagenet", False),  # 1000-class names on a 10-class head
    (10, 3, "mnist", False),  # 1-channel normalisation on an RGB model
    (10, 1, "cifar10", False),
    (1000, 3, "imagenet", True),
    (10, 3, "cifar10", True),
    (10, 1, "mnist", True),
    (10, 1, "digits", True),
])
def test_a_preset_must_fit_the_checkpoint(tmp_path, classes, channels, preset, ok):
    sd = make_published_state_dict(depth=2, num_classes=classes, in_channels=channels, image_size=32)
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    for source in (sd, path):
        if ok:
            assert load_checkpoint(source, dataset=preset).config.dataset == preset
        else:
            with pytest.raises(CheckpointError, match=f"dataset: the '{preset}' preset is for"):
                load_checkpoint(source, dataset=preset)
    with pytest.raises(ValueError, match="dataset"):
        load_checkpoint(sd, dataset="no-such-preset")


def test_bundled_default_is_named_when_missing_or_loads():
    from cordsnet.checkpoint import default_checkpoint_path

    try:
        path = default_checkpoint_path()
    except FileNotFoundError as exc:
        assert "bundled model 'digits'" in str(exc)
        with pytest.raises(FileNotFoundError, match="bundled"):
            load_checkpoint(None)
    else:
        assert load_checkpoint(None).config == load_checkpoint(path).config


def test_bundled_models_by_name_in_the_library_and_the_cli():
    from typer.testing import CliRunner

    from cordsnet.checkpoint import BUNDLED, bundled_checkpoint_path
    from cordsnet.cli import app
    from cordsnet.cli import _shared
    from cordsnet.quantization import read_activation_ranges

    assert _shared.BUNDLED is BUNDLED  # the CLI reads the registry itself (torch-free: cordsnet.weights)
    with pytest.raises(ValueError, match=r"checkpoint: expected one of .*'digits-qat'.*, got 'nope'"):
        bundled_checkpoint_path("nope")
    qat = bundled_checkpoint_path("digits-qat")
    model = load_checkpoint(qat)
    assert model.config == load_checkpoint(None).config  # same architecture and protocol, other weights
    ranges = read_activation_ranges(qat)
    assert ranges is not None
    ranges.check(model)  # the int8 model carries its learned activation ranges
    assert read_activation_ranges(bundled_checkpoint_path("digits")) is None
    result = CliRunner().invoke(app, ["info", "digits-qat", "--json"])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(app, ["info", "digits-nope"])
    assert bad.exit_code == 1 and "nor is it a bundled model: digits, digits-qat" in bad.output


# ------------------------------------------------------------------- bounded before a byte is parsed
def test_a_zip_checkpoint_whose_pickle_inflates_beyond_any_layout_is_refused_unread(tmp_path):
    import zipfile

    from cordsnet.checkpoint import MAX_PICKLE_BYTES, CheckpointError, read_checkpoint

    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w") as f:  # streamed: never held in memory here either
            for _ in range(MAX_PICKLE_BYTES // (1 << 20) + 1):
                f.write(b"\0" * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"inflates to \d+ bytes \(its archive/data.pkl"):
        read_checkpoint(bomb)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "empty", "sparse"])
def test_only_a_regular_file_of_plausible_size_is_read_as_a_checkpoint(tmp_path, kind):
    import os

    from cordsnet.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, read_checkpoint

    path = tmp_path / "m.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        with open(path, "wb") as f:
            f.truncate(MAX_CHECKPOINT_BYTES + 1)
    with pytest.raises(CheckpointError, match="regular file|empty|more than the"):
        read_checkpoint(path)
