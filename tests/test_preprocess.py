"""The one image pipeline (cordsnet.runtime.preprocess): torchvision parity, every Pillow mode, the
guards, and the same pixels and answers from every command (predict, predict --until, reaction-time,
record, the ImageNet folder loader)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from cordsnet.config import get_preset
from cordsnet.runtime import Preprocessor, load_image

SIZE = 32


# ---------------------------------------------------------------------------- torchvision parity
def _torchvision_transform(preset_name: str, size: int):
    from torchvision import transforms

    p = get_preset(preset_name)
    mode = "RGB" if p.in_channels == 3 else "L"
    t = transforms.Compose([transforms.Resize(p.resize_size(size)), transforms.CenterCrop(size),
                            transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])
    return lambda img: t(img.convert(mode)).numpy()


def _sample_images():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427x640 RGB photographs
    rng = np.random.default_rng(11)
    synthetic = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
                 for shape in [(37, 53, 3), (53, 37, 3), (20, 15, 3), (32, 32, 3), (300, 301, 3), (45, 45)]]
    gradient = np.tile(np.linspace(0, 255, 97, dtype=np.float64), (61, 1)).astype(np.uint8)
    synthetic.append(Image.fromarray(np.stack([gradient, gradient.T[:61, :61].repeat(2, 1)[:, :97], gradient], -1)))
    return photos + synthetic


@pytest.mark.parametrize("preset,size", [("imagenet", 224), ("imagenet", 64), ("cifar10", 32), ("cifar100", 64),
                                         ("mnist", 32), ("fashionmnist", 64), ("digits", 32)])
def test_preprocessing_matches_torchvision(preset, size):
    ours = Preprocessor.from_preset(get_preset(preset), size)
    theirs = _torchvision_transform(preset, size)
    for img in _sample_images():
        a, b = ours(img), theirs(img)
        assert a.shape == b.shape == (get_preset(preset).in_channels, size, size) and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        # The same image as a uint8 array gives the same result.
        np.testing.assert_allclose(ours(np.asarray(img)), a, atol=0)


def _gradient(h: int = 40, w: int = 36) -> np.ndarray:
    return np.add.outer(np.linspace(0, 0.7, h), np.linspace(0, 0.3, w))  # values in [0, 1]


@pytest.mark.parametrize("preset", ["digits", "cifar10"])
def test_wide_pillow_modes_are_scaled_like_8_bit_images(preset):
    from PIL import Image

    pre = Preprocessor.from_preset(get_preset(preset), SIZE)
    g = _gradient()
    ref = pre(Image.fromarray(np.round(g * 255).astype(np.uint8), "L"))
    wide = {
        "F in [0, 1]": Image.fromarray(g.astype(np.float32), "F"),
        "16-bit PNG (I;16)": Image.fromarray(np.round(g * 65535).astype(np.uint16)),
        "I (32-bit, 16-bit values)": Image.fromarray(np.round(g * 65535).astype(np.int32), "I"),
        "uint16 array": np.round(g * 65535).astype(np.uint16),
    }
    # Re-quantising to 8 bits may land one level away where a value sits on a rounding boundary
    # (float32 vs float64 products, 16-bit steps): allow one level, and require almost all pixels exact.
    level = 1.0 / 255.0 / min(pre.std) * 1.01
    for name, img in wide.items():
        out = pre(img)
        assert out.shape == ref.shape, name
        np.testing.assert_allclose(out, ref, atol=level, err_msg=name)
        assert np.mean(np.abs(out - ref) < 1e-6) > 0.99, name
        assert out.std() > 0.1  # not a constant image
    flat = pre(Image.fromarray(np.full((40, 36), 0.5, np.float32), "F"))
    np.testing.assert_allclose(flat, pre(Image.fromarray(np.full((40, 36), 128, np.uint8), "L")), atol=1e-6)


def test_16_bit_png_files_into_rgb_and_grey_models(tmp_path):
    from PIL import Image

    g = _gradient()
    Image.fromarray(np.round(g * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.round(g * 255).astype(np.uint8)).save(tmp_path / "flat.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    for preset in ("mnist", "imagenet"):
        pre = Preprocessor.from_preset(get_preset(preset), SIZE)
        np.testing.assert_allclose(pre(tmp_path / "deep.png"), pre(tmp_path / "flat.png"), atol=1e-6)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBX",
                                  "RGBa", "I;16B"])
def test_every_8_bit_mode_converts_like_pillow(mode):
    from PIL import Image

    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 34, 3), dtype=np.uint8))
    big_endian = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(">u2")  # 8-bit values as 16-bit
    img = rgb.convert(mode) if mode != "I;16B" else Image.frombytes("I;16B", rgb.size, big_endian.tobytes())
    for preset in ("cifar10", "mnist"):
        pre = Preprocessor.from_preset(get_preset(preset), SIZE)
        out = pre(img)
        assert out.shape == (pre.channels, SIZE, SIZE) and np.isfinite(out).all()
        if mode == "I;16B":  # v * 257 / 65535 * 255 = v: exactly the 8-bit image
            np.testing.assert_allclose(out, pre(rgb.convert("L")), atol=0)
        elif mode != "LAB":  # the rest: exactly what Pillow's own conversion gives
            direct = img.convert(pre.mode) if mode != "RGBa" else img.convert("RGB").convert(pre.mode)
            np.testing.assert_allclose(out, pre(direct), atol=0)


def test_unscalable_images_are_refused(tmp_path):
    from PIL import Image

    pre = Preprocessor.from_preset(get_preset("cifar10"), SIZE)
    cases = {
        "F outside [0, 1]": (Image.fromarray(np.full((8, 8), 200.0, np.float32), "F"), r"values in \[200, 200\]"),
        "F with NaN": (Image.fromarray(np.full((8, 8), np.nan, np.float32), "F"), "NaN or infinite"),
        "I beyond 16 bit": (Image.fromarray(np.full((8, 8), 1 << 20, np.int32), "I"), "16-bit values"),
        "I negative": (Image.fromarray(np.full((8, 8), -5, np.int32), "I"), "16-bit values"),
        "La": (Image.new("La", (8, 8)), "cannot convert a mode 'La' image"),
    }
    for name, (img, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            pre(img)


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2 x the limit: Pillow's bomb error
    with pytest.raises(ValueError, match="too large to decode safely") as err:
        load_image(tmp_path / "bomb.png")
    assert "\n" not in str(err.value)

def test_only_regular_files_are_opened(tmp_path):
    with pytest.raises(ValueError, match="the directory"):
        load_image(tmp_path)
    if hasattr(os, "mkfifo"):  # a FIFO would block a reader forever
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(ValueError, match="not a regular file"):
            load_image(tmp_path / "pipe.png")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_decompression_bomb_below_twice_the_limit_is_refused_too(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: Pillow alone would only warn
    with pytest.raises(ValueError, match="too large to decode safely"):
        load_image(tmp_path / "big.png")
    with pytest.raises(ValueError, match="too large"):  # the same guard behind the analysis adapter
        from cordsnet.analysis import load_images
        from cordsnet.config import CordsNetConfig

        load_images([tmp_path / "big.png"], CordsNetConfig(depth=2, in_channels=1, image_size=32, dataset="digits"))


def test_no_preset_scales_to_unit_range_with_a_warning():
    from cordsnet.config import CordsNetConfig

    cfg = CordsNetConfig(depth=2, in_channels=3, image_size=32, dataset=None)
    with pytest.warns(RuntimeWarning, match="no dataset preset"):
        pre = Preprocessor.for_config(cfg)
    out = pre(np.full((40, 40, 3), 255, np.uint8))
    assert out.shape == (3, 32, 32) and np.allclose(out, 1.0)


# ------------------------------------------------------------------- the same file everywhere
def _digit_files(tmp_path, count: int = 2):
    """Held-out digits as 16-bit greyscale PNGs and their 8-bit twins (the same pictures rounded)."""
    from PIL import Image

    from cordsnet.data import _digits_raw, digits_split

    X, y = digits_split()["test"]
    idx = [int(np.flatnonzero(y == c)[0]) for c in (0, 3, 6, 7)[:count]]
    raw = _digits_raw(X[idx], SIZE).numpy()[:, 0]  # (N, 32, 32) in [0, 1]
    deep, flat = [], []
    for i, r in enumerate(raw):
        v16 = np.round(r * 65535).astype(np.uint16)
        deep.append(tmp_path / f"digit{i}-16.png")
        flat.append(tmp_path / f"digit{i}-8.png")
        Image.fromarray(v16).save(deep[-1])
        Image.fromarray(np.round(v16 / 257.0).astype(np.uint8)).save(flat[-1])
        assert Image.open(deep[-1]).mode.startswith("I") and Image.open(flat[-1]).mode == "L"
    return deep, flat, raw, [int(c) for c in y[idx]]


def test_analysis_and_data_read_files_through_the_one_pipeline(tmp_path):
    from cordsnet.analysis import load_images
    from cordsnet.checkpoint import load_checkpoint
    from cordsnet.data import build_dataset

    deep, flat, raw, _ = _digit_files(tmp_path)
    cfg = load_checkpoint(None).config
    a, b = load_images(deep, cfg).numpy(), load_images(flat, cfg).numpy()
    np.testing.assert_array_equal(a, b)  # 16-bit -> 8-bit rounding is the twin's rounding: the same pixels
    np.testing.assert_array_equal(a, Preprocessor.for_config(cfg).batch([str(p) for p in deep]))
    preset = get_preset("digits")
    np.testing.assert_allclose(a[:, 0], (raw - preset.mean[0]) / preset.std[0], atol=0.51 / 255 / preset.std[0])
    # ImageNet folders: the loader opens files through the pipeline (a 16-bit PNG is not clipped to white)
    for split in ("val",):
        (tmp_path / split / "x").mkdir(parents=True)
        deep[0].rename(tmp_path / split / "x" / "a.png")
    ds = build_dataset("imagenet", "test", root=tmp_path, image_size=SIZE)
    want = Preprocessor.from_preset(get_preset("imagenet"), SIZE)(tmp_path / "val" / "x" / "a.png")
    np.testing.assert_array_equal(ds[0][0].numpy(), want)
    assert want.std() > 0.3  # a real picture, not a saturated one


@pytest.fixture(scope="module")
def stepwise(tmp_path_factory):
    """The bundled model's stepwise graph (shared with tests/test_web.py and tests/test_node.py)."""
    from cordsnet.cli import web

    return web.default_artifact(tmp_path_factory.getbasetemp() / "web-cache")


def _cli(*args):
    from cordsnet.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # stdout only: warnings go to stderr


def test_16_bit_png_and_its_8_bit_twin_get_the_same_answers_from_every_command(stepwise, tmp_path):
    deep, flat, _, labels = _digit_files(tmp_path)
    answers = {}
    for name, files in (("16-bit", deep), ("8-bit", flat)):
        pred = _cli("predict", stepwise, *files, "--provider", "cpu", "--json")["predictions"]
        until = _cli("predict", stepwise, *files, "--provider", "cpu", "--until", "0.9", "--json")["predictions"]
        rt = _cli("reaction-time", *files, "--threshold", "0.9", "--json")
        answers[name] = (
            [p["top"][0]["index"] for p in pred],
            [(u["top"][0]["index"], u["steps"], u["decided"]) for u in until],
            (rt["classes"], rt["steps"], rt["final_classes"]),
        )
        classes = answers[name][0]
        assert classes == labels  # the held-out digits are read correctly
        assert rt["final_classes"] == classes  # reaction-time's final class is predict's
        # predict --until decides where reaction-time does (one decision rule, same pixels)
        assert [u[1] if u[2] else -1 for u in answers[name][1]] == rt["steps"]
        assert [u[0] for u, s in zip(answers[name][1], rt["steps"]) if s > 0] == \
            [c for c, s in zip(rt["classes"], rt["steps"]) if s > 0]
        assert all(s > 0 for s in rt["steps"])  # clear digits decide
    assert answers["16-bit"] == answers["8-bit"]
