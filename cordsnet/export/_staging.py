"""Staged writes that keep the destination's file name (for ONNX external data and ``.pt2`` archives)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .._io import refuse_inputs

__all__ = ["staged"]


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A temporary path with `target`'s file name inside a private directory beside it.

    On success the file (and its ``.data`` external-data file, if any) is renamed onto `target`
    (``os.replace``: atomic on one filesystem); on failure nothing at `target` changes. A private
    directory rather than a sibling temp name, because external data is referenced by file name.
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output: directory {str(parent)!r} does not exist")
    for path in (target, target.with_name(target.name + ".data")):  # never over an input of the command
        refuse_inputs(path, (), "output")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        tmp = tmpdir / target.name
        yield tmp
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            _fsync(data)
            os.replace(data, target.with_name(target.name + ".data"))
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


