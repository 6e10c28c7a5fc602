"""cordsnet.validate: the one validation layer (torch-free)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cordsnet import validate as v


@pytest.mark.parametrize("bad", [True, False, 1.0, "3", None, [1], np.float32(2.0), np.bool_(True)])
def test_integer_refuses_bools_floats_and_text(bad):
    with pytest.raises(ValueError, match=r"^steps: expected an int >= 1, got "):
        v.integer("steps", bad, min=1)


@pytest.mark.parametrize("good", [np.int8(3), np.int64(3), np.uint16(3), 3])
def test_integer_accepts_numpy_ints_and_returns_a_plain_int(good):
    out = v.integer("n", good, min=0, max=3)
    assert out == 3 and type(out) is int


def test_integer_bounds_are_inclusive_and_the_message_has_the_why():
    assert v.integer("n", 0, min=0) == 0 and v.integer("n", 10, max=10) == 10
    with pytest.raises(ValueError) as info:
        v.integer("image_size", 2048, min=1, max=1024, why="resize images")
    assert str(info.value) == "image_size: expected an int in [1, 1024], got 2048; resize images"
    # The why is for out-of-range values only: a value of the wrong kind gets the plain message.
    with pytest.raises(ValueError) as info:
        v.integer("image_size", "big", min=1, max=1024, why="resize images")
    assert "resize" not in str(info.value)
    assert v.positive_int("k", 1) == 1
    with pytest.raises(ValueError, match="k: expected an int >= 1, got 0"):
        v.positive_int("k", 0)
    assert v.optional_integer("k", None, 7) == 7 and v.optional_integer("k", 2, 7, min=1) == 2


@pytest.mark.parametrize("bad", [math.nan, np.float64("nan"), math.inf, -math.inf, True, "0.5", None])
def test_number_refuses_nan_inf_bool_and_text(bad):
    with pytest.raises(ValueError, match=r"^alpha: expected a finite number"):
        v.number("alpha", bad, low=0.0)


def test_number_open_and_closed_bounds():
    assert v.number("x", 0.0, low=0.0) == 0.0
    with pytest.raises(ValueError, match=r"x: expected a finite number > 0, got 0.0"):
        v.number("x", 0.0, low=0.0, low_open=True)
    assert v.number("x", 1, high=1.0) == 1.0
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        v.number("x", 1.0, low=0.0, high=1.0, high_open=True)
    assert v.number("x", math.inf, low=0.0, finite=False) == math.inf
    with pytest.raises(ValueError):  # NaN fits no bound, even when infinities are allowed
        v.number("x", math.nan, finite=False)
    assert type(v.number("x", np.float32(0.5))) is float
    with pytest.raises(ValueError, match="x: expected a finite number <= 2, got 3; too big"):
        v.number("x", 3, high=2, why="too big")


def test_fraction():
    assert v.fraction("alpha", 1.0) == 1.0
    with pytest.raises(ValueError, match=r"alpha: expected a finite number in \(0, 1\], got 0"):
        v.fraction("alpha", 0)
    assert v.fraction("p", 0, allow_zero=True) == 0.0
    with pytest.raises(ValueError):
        v.fraction("alpha", True)


def test_choice_lists_the_valid_names():
    assert v.choice("graph", "loop", ("loop", "unrolled")) == "loop"
    with pytest.raises(ValueError, match=r"graph: expected one of \['loop', 'unrolled'\], got 'sideways'"):
        v.choice("graph", "sideways", ("loop", "unrolled"))
    with pytest.raises(ValueError):  # unhashable against a dict's keys is a plain refusal, not a TypeError
        v.choice("graph", ["loop"], {"loop": 1}.keys())


def test_areas_in_every_form_a_user_or_a_caller_gives():
    assert v.areas("record", "6,7", 8) == (6, 7)
    assert v.areas("record", ["6,7", "5"], 8) == (6, 7, 5)  # a repeatable option with comma lists
    assert v.areas("record", [1, np.int64(1), 0], 4) == (1, 0)  # order kept, repeats dropped
    assert v.areas("record", 3, 4) == (3,) and v.areas("record", None, 4) == ()
    assert v.areas("record", " 0 , 1 ,", 2) == (0, 1)
    with pytest.raises(ValueError, match=r"record: expected area indices in 0..3, got 6"):
        v.areas("record", "6,7", 4)
    with pytest.raises(ValueError, match=r"record: expected comma-separated area indices like '0,1'"):
        v.areas("record", "six", 4)
    with pytest.raises(ValueError, match="record: expected comma-separated"):
        v.areas("record", ["-1"], 4)
    with pytest.raises(ValueError, match="got True"):
        v.areas("record", [True], 4)
    with pytest.raises(ValueError, match="at least one area"):
        v.areas("record", [], 4, allow_empty=False)


def test_mapping_and_suffix():
    assert v.mapping("config", {"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="config: expected a JSON object \\(mapping\\), got list"):
        v.mapping("config", [1])
    assert v.suffix("--plot", "a/b.PNG", (".png", ".pdf")) == Path("a/b.PNG")
    with pytest.raises(ValueError, match=r"--plot: expected a path ending in \.png, \.pdf, got 'b.jpg'"):
        v.suffix("--plot", "b.jpg", (".png", ".pdf"))
    with pytest.raises(ValueError):
        v.suffix("-o", "noext", (".onnx",))
