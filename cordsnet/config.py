"""Model configuration and dataset presets.

This module imports no torch: the runtime (numpy + onnxruntime) reads presets and configs too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from . import validate

__all__ = [
    "AREA_CHANNELS",
    "AREA_FF_CHANNELS",
    "AREA_STRIDES",
    "DRIVE_CHANNELS",
    "SKIP_CHANNELS",
    "VALID_DEPTHS",
    "MAX_IMAGE_SIZE",
    "MAX_STEPS",
    "CordsNetConfig",
    "DatasetPreset",
    "PRESETS",
    "get_preset",
]

# Architecture of the published CordsNet (docs/specification.md §1). Area i of a depth-D model uses entry i.
AREA_CHANNELS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 512, 512)
AREA_FF_CHANNELS: tuple[int, ...] = (64, 64, 64, 128, 128, 256, 256, 512)
AREA_STRIDES: tuple[int, ...] = (1, 1, 2, 1, 2, 1, 2, 1)
DRIVE_CHANNELS: int = 64  # channels of the drive u = avgpool(inp_conv(x))
SKIP_CHANNELS: tuple[tuple[int, int], ...] = ((64, 128), (128, 256), (256, 512))  # skip_area.k in -> out
VALID_DEPTHS: tuple[int, ...] = (2, 4, 6, 8)

# Bounds on what a config (typed by a user or read from a file) may claim, so that a bad value is an
# error before anything is allocated or simulated, never an out-of-memory crash or a hang.
# image_size: the published models use 224; R8 at 1024 px already holds 64 x 256 x 256 floats (16 MB)
# per image in each of its first areas and takes seconds per step on a CPU.
MAX_IMAGE_SIZE: int = 1024
# steps / spontaneous_steps: the published protocol uses 100 each (200 ms of model time at alpha 0.2);
# 10,000 steps are 20 s of model time, 100 times the protocol. Longer runs step the model yourself
# (CordsNet.step, runtime.StepSession), which has no bound.
MAX_STEPS: int = 10_000
_STEPS_WHY = ("the published protocol uses 100; for longer simulations step the model yourself "
              "(CordsNet.step or cordsnet.runtime.StepSession)")
MAX_CLASSES: int = 1_000_000  # ImageNet-21k has ~21,841; a million is far past any real head
MAX_IN_CHANNELS: int = 64  # 1 (grey) or 3 (RGB) in practice; generous for multispectral data


@dataclass(frozen=True)
class CordsNetConfig:
    """Everything that fixes a CordsNet: architecture, input and the default protocol.

    The checkpoint format stores this as JSON, so a checkpoint describes itself.
    """

    depth: int = 8  # number of areas, one of 2, 4, 6, 8 (CordsNet-R{depth})
    num_classes: int = 1000  # classes of the out_fc head
    in_channels: int = 3  # image channels (3 for RGB, 1 for MNIST-like data)
    image_size: int = 224  # square input side S in pixels; any multiple of 32
    alpha: float = 0.2  # dt / tau of the forward Euler step (2 ms steps, 10 ms time constant)
    steps: int = 100  # stimulus steps of the published protocol
    spontaneous_steps: int = 100  # blank steps before the stimulus (0 = start from the zero state)
    dataset: str | None = "imagenet"  # dataset preset (normalisation, class names); None if unknown

    def __post_init__(self) -> None:
        # Each value is validated and normalised to a plain Python number (numpy scalars read from a
        # file become int/float), so the config always serialises to JSON.
        checked = {
            "depth": validate.choice("depth", validate.integer("depth", self.depth), VALID_DEPTHS),
            "num_classes": validate.positive_int("num_classes", self.num_classes, max=MAX_CLASSES,
                                                 why=f"a head of more than {MAX_CLASSES:,} classes is not a "
                                                     "CordsNet checkpoint; check the file"),
            "in_channels": validate.positive_int("in_channels", self.in_channels, max=MAX_IN_CHANNELS,
                                                 why="images have 1 (grey) or 3 (RGB) channels"),
            "image_size": validate.positive_int("image_size", self.image_size, max=MAX_IMAGE_SIZE,
                                                why=f"larger inputs allocate (S/4)^2 x 64 floats per image and "
                                                    f"area; resize images to {MAX_IMAGE_SIZE} px or less"),
            "alpha": validate.fraction("alpha", self.alpha),
            "steps": validate.positive_int("steps", self.steps, max=MAX_STEPS, why=_STEPS_WHY),
            "spontaneous_steps": validate.integer("spontaneous_steps", self.spontaneous_steps, min=0,
                                                  max=MAX_STEPS, why=_STEPS_WHY),
        }
        if checked["image_size"] % 32:
            raise ValueError(f"image_size: expected a positive multiple of 32, got {self.image_size!r}")
        validate.choice("dataset", self.dataset, [*sorted(PRESETS), None])
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    # ----------------------------------------------------------------------------------- geometry
    @property
    def channels(self) -> tuple[int, ...]:
        """Channels c_i of each area."""
        return AREA_CHANNELS[: self.depth]

    @property
    def spatial_sizes(self) -> tuple[int, ...]:
        """Side H_i = W_i of each area: S/4, S/4, S/8, S/8, S/16, ..."""
        sizes, side = [], self.image_size // 4
        for stride in AREA_STRIDES[: self.depth]:
            side //= stride
            sizes.append(side)
        return tuple(sizes)

    @property
    def state_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """(c_i, H_i, W_i) of each area's rates, without the batch dimension."""
        return tuple((c, s, s) for c, s in zip(self.channels, self.spatial_sizes))

    @property
    def drive_shape(self) -> tuple[int, int, int]:
        """(64, S/4, S/4): shape of the image drive u without the batch dimension."""
        return (DRIVE_CHANNELS, self.image_size // 4, self.image_size // 4)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, S, S): one input image."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def preset(self) -> "DatasetPreset | None":
        """The dataset preset named by `dataset`, or None."""
        return PRESETS[self.dataset] if self.dataset is not None else None

    # ------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CordsNetConfig":
        """Build a config from a mapping; unknown keys are refused with the list of valid ones."""
        validate.mapping("config", data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; valid keys are {sorted(names)}")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "CordsNetConfig":
        """Parse the JSON a checkpoint or artifact stores; anything else is a ValueError.

        Raises:
            ValueError: not JSON, nested too deep to parse (a hostile file), not an object, unknown
                keys or invalid values.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config: not valid JSON ({exc})") from None
        except RecursionError:
            raise ValueError("config: expected a flat JSON object, got JSON nested too deeply to parse") from None
        return cls.from_dict(validate.mapping("config", data))

    def replace(self, **changes: Any) -> "CordsNetConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class DatasetPreset:
    """What a dataset fixes for a model trained on it: head size, channels, test transform.

    The test transform is torchvision's ``Resize(round(S * resize_ratio)) -> CenterCrop(S) ->
    ToTensor -> Normalize(mean, std)`` for a model of input side S.
    """

    name: str  # registry key
    num_classes: int  # size of the classifier head
    in_channels: int  # 3 (RGB) or 1 (grayscale)
    mean: tuple[float, ...]  # per-channel normalisation mean, after scaling pixels to [0, 1]
    std: tuple[float, ...]  # per-channel normalisation standard deviation
    native_size: int  # side of the dataset's own images (the "dense" variant keeps it)
    default_image_size: int = 224  # side the published models use
    resize_ratio: float = 1.0  # test transform resizes the shorter side to round(S * ratio)
    class_names_file: str | None = None  # JSON list in cordsnet/assets, if the names are long
    inline_class_names: tuple[str, ...] | None = field(default=None, repr=False)  # short lists

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Names of the classes in label order, where known."""
        if self.inline_class_names is not None:
            return self.inline_class_names
        if self.class_names_file is not None:
            return _asset_names(self.class_names_file)
        return None

    def resize_size(self, image_size: int) -> int:
        """Shorter-side size of the test-time resize for a model of input side `image_size`."""
        return int(round(image_size * self.resize_ratio))

    def to_dict(self) -> dict[str, Any]:
        """Everything an application needs to preprocess images and name classes (JSON-ready)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_ratio": self.resize_ratio,
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }


@lru_cache(maxsize=None)
def _asset_names(filename: str) -> tuple[str, ...]:
    text = resources.files("cordsnet.assets").joinpath(filename).read_text(encoding="utf-8")
    return tuple(json.loads(text))


_DIGITS = tuple(str(d) for d in range(10))
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
            "Ankle boot")
_CIFAR100 = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray "
    "road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle "
    "wardrobe whale willow_tree wolf woman worm".split()
)

PRESETS: dict[str, DatasetPreset] = {
    "imagenet": DatasetPreset(
        "imagenet", 1000, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), native_size=224,
        resize_ratio=256 / 224, class_names_file="imagenet_classes.json",
    ),
    "cifar10": DatasetPreset(
        "cifar10", 10, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), native_size=32,
        inline_class_names=_CIFAR10,
    ),
    "cifar100": DatasetPreset(
        "cifar100", 100, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), native_size=32,
        inline_class_names=_CIFAR100,
    ),
    "mnist": DatasetPreset(
        "mnist", 10, 1, (0.1307,), (0.3081,), native_size=28, inline_class_names=_DIGITS,
    ),
    "fashionmnist": DatasetPreset(
        "fashionmnist", 10, 1, (0.2860,), (0.3530,), native_size=28, inline_class_names=_FASHION,
    ),
    # scikit-learn's 8x8 digits (pixel values 0..16), upsampled; the bundled default model's data.
    # mean/std: statistics of the training part of cordsnet.data.digits_split() after the transform
    # of cordsnet.data.digits_to_tensor (pixels / 16, bilinear upsampling to 32 px).
    "digits": DatasetPreset(
        "digits", 10, 1, (0.3051,), (0.3234,), native_size=8, default_image_size=32,
        inline_class_names=_DIGITS,
    ),
}


def get_preset(name: str) -> DatasetPreset:
    """Look up a dataset preset by name.

    Raises:
        ValueError: `name` is not a registered preset (the message lists the valid ones).
    """
    return PRESETS[validate.choice("dataset", name, sorted(PRESETS))]
