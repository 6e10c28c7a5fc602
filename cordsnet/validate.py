"""One validation layer for every entry point (library, runtime, CLI). Torch-free.

Every check takes the argument's *name* first and raises :class:`ValueError` (or :class:`TypeError` for
a value of the wrong kind where that is clearer) with one message shape::

    <name>: expected <what was expected>, got <value received>

``bool`` is never accepted as a number (``True`` is an ``int`` in Python, never a step count here);
numpy scalars are accepted and returned as plain Python numbers.

Example:
    >>> from cordsnet import validate as v
    >>> v.integer("steps", 100, min=1)
    100
    >>> v.number("alpha", 0.2, low=0.0, high=1.0, low_open=True)
    0.2
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping, TypeVar

__all__ = [
    "areas",
    "boolean",
    "is_int",
    "choice",
    "fraction",
    "integer",
    "mapping",
    "number",
    "optional_integer",
    "positive_int",
    "suffix",
]

T = TypeVar("T")


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), never a bool (``True`` is an int to Python, never a count to us)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_is_int = is_int


def boolean(name: str, value: Any) -> bool:
    """A real bool (not 0/1, not a string), else ValueError naming `name` and what came."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ""


def integer(name: str, value: Any, *, min: int | None = None, max: int | None = None, why: str = "") -> int:
    """An int (numpy integers too, never bool) within ``[min, max]``.

    Args:
        name: the argument's name, as the user knows it (e.g. ``"steps"`` or ``"--steps"``).
        value: what was received.
        min, max: inclusive bounds (None: unbounded).
        why: appended to the message when the value is out of range (e.g. what to do instead).

    Raises:
        ValueError: not an int, or out of range.
    """
    bounds = _range_text(min, max)
    expected = f"an int {bounds}".rstrip()
    if not _is_int(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name}: expected {expected}, got {value!r}{'; ' + why if why else ''}")
    return value


def positive_int(name: str, value: Any, *, max: int | None = None, why: str = "") -> int:
    """An int >= 1 (see :func:`integer`)."""
    return integer(name, value, min=1, max=max, why=why)


def optional_integer(name: str, value: Any, default: int, *, min: int | None = None, max: int | None = None,
                     why: str = "") -> int:
    """``default`` when `value` is None, else :func:`integer` of it."""
    if value is None:
        return default
    return integer(name, value, min=min, max=max, why=why)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, finite: bool = True, why: str = "") -> float:
    """A real number (int or float, numpy scalars too, never bool) within the given bounds.

    Args:
        low, high: bounds (None: unbounded); ``low_open``/``high_open`` exclude them.
        finite: refuse infinities (default True). NaN is always refused: it fits no bound.
        why: appended to the message when the value is out of range.

    Raises:
        ValueError: not a real number, not finite, or out of range.
    """
    expected = f"a {'finite ' if finite else ''}number {_range_text(low, high, low_open, high_open)}".rstrip()
    if not _is_real(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    if (low is not None and (v < low or (low_open and v == low))) or \
            (high is not None and (v > high or (high_open and v == high))):
        raise ValueError(f"{name}: expected {expected}, got {value!r}{'; ' + why if why else ''}")
    return v


def fraction(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A number in (0, 1] (or [0, 1] with ``allow_zero``), e.g. alpha = dt / tau or a threshold."""
    return number(name, value, low=0.0, high=1.0, low_open=not allow_zero)


def choice(name: str, value: Any, valid: Iterable[T]) -> T:
    """`value` if it is one of `valid` (a registry's keys, a tuple of names), else ValueError listing them."""
    options = list(valid)
    try:
        ok = value in options
    except TypeError:  # unhashable against a dict view, etc.
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def areas(name: str, value: Any, depth: int, *, allow_empty: bool = True) -> tuple[int, ...]:
    """Area indices in ``0..depth-1``; order kept, repeats dropped.

    Accepts an int, a sequence of ints, ``"6,7"`` text, or a sequence mixing them (what a repeatable
    command-line option gives: ``--record 6,7 --record 5`` -> ``["6,7", "5"]``).

    Raises:
        ValueError: an index out of range or not an int, or none when ``allow_empty`` is False.
    """
    if value is None:
        items: list[Any] = []
    elif isinstance(value, (str, bytes)) or _is_int(value):
        items = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            raise ValueError(f"{name}: expected area indices in 0..{depth - 1}, got {value!r}") from None
    flat: list[Any] = []
    for item in items:
        if isinstance(item, str):
            for t in item.replace(" ", "").split(","):
                if not t:
                    continue
                if not t.isdigit():
                    raise ValueError(f"{name}: expected comma-separated area indices like '0,1' "
                                     f"(0..{depth - 1}), got {item!r}")
                flat.append(int(t))
        else:
            flat.append(item)
    items = flat
    out: list[int] = []
    for a in items:
        if not _is_int(a) or not 0 <= int(a) < depth:
            raise ValueError(f"{name}: expected area indices in 0..{depth - 1}, got {a!r}")
        if int(a) not in out:
            out.append(int(a))
    if not out and not allow_empty:
        raise ValueError(f"{name}: expected at least one area index in 0..{depth - 1}, got none")
    return tuple(out)


def mapping(name: str, value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping (e.g. parsed JSON), else ValueError naming its type."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}: expected a JSON object (mapping), got {type(value).__name__}")
    return value


def suffix(name: str, path: Any, suffixes: Iterable[str]) -> Path:
    """`path` as a :class:`~pathlib.Path` if its (case-insensitive) suffix is one of `suffixes`.

    Example: ``suffix("--plot", "s.png", (".png", ".svg", ".pdf"))``.

    Raises:
        ValueError: another suffix (the message lists the accepted ones).
    """
    options = tuple(suffixes)
    p = Path(path)
    if p.suffix.lower() not in {s.lower() for s in options}:
        raise ValueError(f"{name}: expected a path ending in {', '.join(options)}, got {str(p)!r}")
    return p
