"""Small file helpers shared by every module (torch-free): atomic writes, output checks, hashing.

Every file the project writes goes through :class:`atomic_path` (an existing file is never
half-written) and every command that writes checks its destination with :func:`check_output` first
(never over one of its own inputs, a suffix that fits the format).

Temporary files are named ``.<name>.cordsnet-tmp-<pid>-<random>`` beside their destination and are
removed on every exit Python sees (success, exception, Ctrl-C, SIGTERM). Only a process killed with
SIGKILL (or a power cut) can leave one behind; :func:`stale_temporaries` lists those whose process is
gone, and ``find DIR -name '.*.cordsnet-tmp-*' -delete`` removes them when no cordsnet is running.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Iterable, Sequence

from . import validate

__all__ = ["TEMPORARY_MARK", "atomic_path", "cache_dir", "check_output", "file_sha256", "output_mode",
           "stale_temporaries", "temporary_name", "terminate_cleanly"]

TEMPORARY_MARK = ".cordsnet-tmp-"  # in the name of every temporary file: `.<name>.cordsnet-tmp-<pid>-<hex>`
_NAME_KEEP = 100  # characters of the destination's name kept in a temporary's name (NAME_MAX is 255 bytes)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (recorded in exported artifacts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """The project's cache folder: ``$CORDSNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/cordsnet``, else
    ``~/.cache/cordsnet`` (not created here; each user makes its own subfolder on use)."""
    if os.environ.get("CORDSNET_CACHE_DIR"):
        return Path(os.environ["CORDSNET_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cordsnet"


# ------------------------------------------------------------------------------------ output checks
def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 suffixes: Sequence[str] | None = None, name: str = "output") -> Path:
    """Refuse a destination that would destroy an input or does not fit the format; return it as a Path.

    Call it before any long work, so that a bad destination costs nothing.

    Args:
        path: the file the command is about to write.
        inputs: files the command reads (None entries are ignored). The destination may not be one of
            them, by path or by identity (a symlink or hard link to an input is the input).
        suffixes: accepted suffixes (case-insensitive), e.g. ``(".onnx",)``; None: any.
        name: the option's name in messages (e.g. ``"--output"``).

    Raises:
        ValueError: the destination is an input, a directory, or has another suffix.
        FileNotFoundError: its directory does not exist.
    """
    out = Path(path)
    if suffixes is not None:
        validate.suffix(name, out, suffixes)
    if out.is_dir():
        raise ValueError(f"{name}: expected a file path, got the directory {str(out)!r}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{name}: directory {str(parent)!r} does not exist")
    for source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise ValueError(f"{name}: {str(out)!r} is an input of this command ({str(source)!r}); writing it "
                             "would destroy the input, choose another destination")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # same inode: also catches symlinks and hard links
    except OSError:
        pass
    return a.resolve() == b.resolve()


# ------------------------------------------------------------------------------------- atomic writes
def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh, recognisable temporary path beside `path`: ``.<name>.cordsnet-tmp-<pid>-<random>``."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    return parent / f".{p.name[:_NAME_KEEP]}{TEMPORARY_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Temporaries in `directory` whose writing process no longer exists (left by SIGKILL or a crash)."""
    stale = []
    for entry in Path(directory).iterdir():
        if not entry.name.startswith(".") or TEMPORARY_MARK not in entry.name:
            continue
        pid_text = entry.name.rsplit(TEMPORARY_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            stale.append(entry)
    return sorted(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def output_mode() -> int:
    """The mode every output gets: ``0o666 & ~umask`` (what ``open()`` would give a new file)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it (os.umask is process-wide, not thread-safe)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class atomic_path:
    """Context manager giving a temporary path next to `path`, renamed onto it only on success.

    The writer may write the temporary path any way it likes (even replace it). On success the file
    gets the ordinary mode ``0o666 & ~umask``, is flushed to disk and renamed onto `path` (atomic on one
    filesystem). On any exit Python sees — an exception, Ctrl-C, SIGTERM (turned into a clean exit with
    status 143 while a write is in progress, when the process has no SIGTERM handler of its own) — the
    temporary is removed and an existing file at `path` is untouched. Write errors name `path`, not
    the temporary.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            raise FileNotFoundError(f"output: directory {str(parent)!r} does not exist")
        tmp = temporary_name(self.path)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as exc:
            raise _naming(exc, self.path) from None
        self.tmp = tmp
        _guard_sigterm(+1)
        return tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        try:
            if exc_type is None:
                try:
                    os.chmod(self.tmp, output_mode())  # also when the writer replaced our file by its own
                    with open(self.tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(self.tmp, self.path)
                except OSError as error:
                    raise _naming(error, self.path) from None
            elif isinstance(exc, OSError) and (exc.filename in (None, str(self.tmp), self.tmp)
                                               or str(self.tmp) in str(exc)):
                raise _naming(exc, self.path) from None
        finally:
            self.tmp.unlink(missing_ok=True)
            _guard_sigterm(-1)


def _naming(exc: OSError, path: Path) -> OSError:
    """The same error, naming the destination instead of a temporary file."""
    reason = exc.strerror or str(exc)
    error = type(exc)(exc.errno, f"output {str(path)!r}: could not write it ({reason})") \
        if exc.errno is not None else OSError(f"output {str(path)!r}: could not write it ({reason})")
    return error


# ---------------------------------------------------------------------------------------- SIGTERM
_guard_lock = threading.Lock()
_guard_depth = 0
_guard_previous: object = None


def terminate_cleanly(signum: int, frame: object) -> None:
    """SIGTERM handler: exit through Python (status 128 + signal) so that cleanups run."""
    raise SystemExit(128 + signum)


def _guard_sigterm(delta: int) -> None:
    """While any atomic write is open in the main thread, SIGTERM exits cleanly (default: killed)."""
    global _guard_depth, _guard_previous
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return
    with _guard_lock:
        _guard_depth += delta
        if delta > 0 and _guard_depth == 1:
            _guard_previous = signal.getsignal(signal.SIGTERM)
            if _guard_previous is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, terminate_cleanly)
        elif delta < 0 and _guard_depth == 0:
            if _guard_previous is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is terminate_cleanly:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _guard_previous = None
