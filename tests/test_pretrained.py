"""save_pretrained and load_checkpoint("hf-hub:...") through a Hub-layout cache, offline (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import cordsnet
from cordsnet.checkpoint import load_checkpoint, read_checkpoint_metadata
from cordsnet.pretrained import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, parse_hub_name
from helpers import make_images, published_model

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _place_in_hub_cache(folder: Path, cache: Path, repo: str, commit: str = COMMIT, ref: str = "main") -> None:
    """Lay out `folder`'s files as huggingface_hub's cache does after a download: blobs by hash, a snapshot
    of symlinks per commit, refs/<branch> naming the commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs" / ref).write_text(commit)


def test_save_pretrained_writes_the_three_files(tmp_path):
    _, model = published_model(depth=2, size=32, classes=10, channels=3)
    out = cordsnet.save_pretrained(model, tmp_path / "hub", description="A test model.")
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE, CARD_FILE])
    meta = read_checkpoint_metadata(out / WEIGHTS_FILE)
    assert meta["format"] == "cordsnet" and json.loads(meta["config"]) == model.config.to_dict()
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["depth"] == 2 and config["library_name"] == "cordsnet"
    assert config["parameters"] == sum(p.numel() for p in model.parameters())
    card = (out / CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: cordsnet\n") and "A test model." in card
    assert "CordsNet-R2" in card and 'load_checkpoint("hf-hub:' in card
    reloaded = load_checkpoint(out / WEIGHTS_FILE)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())
    with pytest.raises(TypeError, match="model: expected a CordsNet"):
        cordsnet.save_pretrained({"a": 1}, tmp_path / "x")


def test_hub_names():
    assert parse_hub_name("org/name") == ("org/name", None)
    assert parse_hub_name("org/cordsnet-r8.v1@v1.0") == ("org/cordsnet-r8.v1", "v1.0")
    for bad in ("name", "org/", "/name", "org/name@"):
        with pytest.raises(ValueError, match="hf-hub:ORG/NAME"):
            parse_hub_name(bad)
    with pytest.raises(ValueError, match="hf-hub:ORG/NAME"):
        load_checkpoint("hf-hub:not a name")


def test_hf_hub_offline_loads_identical_logits(tmp_path):
    pytest.importorskip("huggingface_hub")
    _, model = published_model(depth=2, size=32, classes=10, channels=3, seed=5)
    x = make_images(2, 3, 32, seed=7)
    with torch.no_grad():
        expected = model.run(x, steps=6, spontaneous_steps=3).numpy()
    cordsnet.save_pretrained(model, tmp_path / "folder")
    cache = tmp_path / "hf-cache"
    _place_in_hub_cache(tmp_path / "folder", cache, "cordsnet-test/r2")
    np.save(tmp_path / "x.npy", x.numpy())
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from cordsnet import load_checkpoint
        x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
        for i, name in enumerate(("hf-hub:cordsnet-test/r2", "hf-hub:cordsnet-test/r2@{COMMIT}")):
            with torch.no_grad():
                np.save({str(tmp_path)!r} + f"/out{{i}}.npy",
                        load_checkpoint(name).run(x, steps=6, spontaneous_steps=3).numpy())
        try:
            load_checkpoint("hf-hub:cordsnet-test/absent")
        except OSError as exc:
            print("ERROR", exc)
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    for i in range(2):  # the branch (refs/main) and the commit: the same bytes, identical logits
        assert np.array_equal(np.load(tmp_path / f"out{i}.npy"), expected)
    error = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert error and "hf-hub:cordsnet-test/absent" in error[0] and "HF_HUB_OFFLINE" in error[0]


def test_cli_checkpoint_arguments_take_hub_names(tmp_path):
    """`cordsnet-cli info hf-hub:ORG/NAME` reads the model from the Hub cache offline (the resolver of
    load_checkpoint, cordsnet.fetch.resolve_name); an absent one is one line."""
    pytest.importorskip("huggingface_hub")
    _, model = published_model(depth=2, size=32, classes=10, channels=3, seed=5)
    cordsnet.save_pretrained(model, tmp_path / "folder")
    cache = tmp_path / "hf-cache"
    _place_in_hub_cache(tmp_path / "folder", cache, "cordsnet-test/r2")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "cordsnet.cli", "info"]
    done = subprocess.run([*cli, "hf-hub:cordsnet-test/r2", "--json"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["config"]["depth"] == 2
    absent = subprocess.run([*cli, "hf-hub:cordsnet-test/absent"], env=env, capture_output=True, text=True, timeout=180)
    assert absent.returncode == 1 and len(absent.stderr.strip().splitlines()) == 1
    assert "hf-hub:cordsnet-test/absent" in absent.stderr
