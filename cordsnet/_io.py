"""Small file helpers shared by every module (torch-free): atomic writes and hashing."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (recorded in exported artifacts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class atomic_path:
    """Context manager giving a temporary path next to `path`, renamed onto it only on success.

    A failure (exception, crash, kill) leaves any existing file at `path` untouched and no
    temporary file behind (on exceptions).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise FileNotFoundError(f"output: directory {str(parent)!r} does not exist")
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
