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

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import signal
import stat
import threading
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

from . import validate

__all__ = ["JSON_LIMITS", "LOCK_MARK", "TEMPORARY_MARK", "atomic_path", "cache_dir", "check_output", "check_regular",
           "file_sha256", "forget_input", "input_scope", "load_json", "open_regular", "output_lock", "output_mode",
           "read_arrays", "read_json_file", "refuse_inputs", "register_input", "stale_temporaries", "temporary_name",
           "terminate_cleanly"]

TEMPORARY_MARK = ".cordsnet-tmp-"  # in the name of every temporary file: `.<name>.cordsnet-tmp-<pid>-<hex>`
_NAME_KEEP = 100  # characters of the destination's name kept in a temporary's name (NAME_MAX is 255 bytes)
LOCK_MARK = ".cordsnet-lock"  # `.<name>.cordsnet-lock`: held (flock) by the one process writing <name>


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a regular file (recorded in exported artifacts); a FIFO or device is refused unread.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file.
    """
    digest = hashlib.sha256()
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"file: expected a regular file, got {_KINDS.get(stat.S_IFMT(mode), 'something else')} "
                         f"{str(path)!r}")
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
    refuse_inputs(out, inputs, name)
    return out


def refuse_inputs(out: Path, inputs: Iterable[str | os.PathLike | None], name: str) -> None:
    """`out` may not be (or, for a folder input, lie inside) an explicit or a registered input."""
    for source in [*inputs, *_registered()]:
        if source is not None and _overlaps(out, Path(source)):
            raise ValueError(f"{name}: {str(out)!r} is an input of this command ({str(source)!r}); writing it "
                             "would destroy the input, choose another destination")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # same inode: also catches symlinks and hard links
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _overlaps(out: Path, source: Path) -> bool:
    """`out` is the input `source`, or (a directory input: a store, a dataset root) lies inside it."""
    if _same_file(out, source):
        return True
    try:
        if source.is_dir():
            parent = (out.parent if str(out.parent) else Path(".")).resolve()
            root = source.resolve()
            return parent == root or root in parent.parents
    except OSError:
        pass
    return False


# -------------------------------------------------------------------------------- input registry
# Inside a command (input_scope, entered by the CLI for every command) every file or folder a reader opens
# through open_regular/check_regular/register_input is recorded; check_output and atomic_path then refuse
# to write over any of them, by any name. Outside a scope (library use) nothing is recorded.
_scope_lock = threading.Lock()
_scope_inputs: list[Path] | None = None


@contextlib.contextmanager
def input_scope() -> Iterator[None]:
    """Record the inputs read from here on; no output written inside may replace one of them."""
    global _scope_inputs
    with _scope_lock:
        previous, _scope_inputs = _scope_inputs, []
    try:
        yield
    finally:
        with _scope_lock:
            _scope_inputs = previous


def register_input(path: str | os.PathLike) -> None:
    """Record `path` (a file, or a folder read as a whole) as an input of the running command."""
    with _scope_lock:
        if _scope_inputs is not None and len(_scope_inputs) < 100_000:
            p = Path(path)
            if p not in _scope_inputs:
                _scope_inputs.append(p)


def forget_input(path: str | os.PathLike) -> None:
    """A file the command reads and then rewrites by design (a run's own ``last.safetensors``, a stale cache)."""
    with _scope_lock:
        if _scope_inputs is not None:
            _scope_inputs[:] = [p for p in _scope_inputs if not _same_file(p, Path(path))]


def _registered() -> list[Path]:
    with _scope_lock:
        return list(_scope_inputs or ())


# ------------------------------------------------------------------------------- regular files
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFLNK: "a symbolic link"}


def _refuse_kind(mode: int, path: Path, name: str, max_bytes: int | None, size: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ValueError(f"{name}: expected a regular file, got {kind} {str(path)!r}")
    if size == 0:  # nothing any reader here accepts; also procfs/sysfs files, which stream past their size 0
        raise ValueError(f"{name}: {str(path)!r} is empty (or a kernel pseudo-file), not a {name}")
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{name}: {str(path)!r} is {size} bytes, more than the {max_bytes} bytes a {name} can be")


def check_regular(path: str | os.PathLike, name: str, max_bytes: int | None = None) -> int:
    """Refuse, without opening it, anything but a regular file of at most `max_bytes`; returns its size.

    For readers that take a path (onnx, safetensors, Pillow): ``stat`` never blocks on a FIFO or reads a
    device. The file is recorded as an input of the running command (:func:`input_scope`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a directory, device, FIFO or socket, or larger than `max_bytes`.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file {str(p)!r}") from None
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {str(p)!r} ({exc.strerror or exc})") from None
    _refuse_kind(st.st_mode, p, name, max_bytes, st.st_size)
    register_input(p)
    return st.st_size


def open_regular(path: str | os.PathLike, name: str, max_bytes: int | None = None) -> IO[bytes]:
    """Open a regular file for reading, refusing anything else before a byte is read.

    Opened non-blocking (a FIFO without a writer does not block the open), checked with ``fstat`` on the
    descriptor itself (no race with a rename), then switched back to blocking reads.

    Args:
        path: the file.
        name: what it is, in messages ("checkpoint", "manifest", ...).
        max_bytes: the largest size such a file can legitimately have (None: any).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a directory, device, FIFO or socket, or larger than `max_bytes`.
    """
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file {str(p)!r}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket
            raise ValueError(f"{name}: expected a regular file, got a socket {str(p)!r}") from None
        raise ValueError(f"{name}: cannot read {str(p)!r} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        _refuse_kind(st.st_mode, p, name, max_bytes, st.st_size)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    register_input(p)
    return os.fdopen(fd, "rb")


# ---------------------------------------------------------------------------------- bounded JSON
JSON_LIMITS = {"max_bytes": 64 << 20, "max_depth": 32, "max_containers": 1_000_000, "max_digits": 40}
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class _JSONLimit(ValueError):
    pass


def _number(text: str, max_digits: int) -> float:
    if len(text) > max_digits + 8:
        raise _JSONLimit(f"the number {text[:20]}... has more digits than any value here")
    value = float(text)
    if not math.isfinite(value):
        raise _JSONLimit(f"the number {text[:20]} is out of the float range")
    return value


def _integer(text: str, max_digits: int) -> int:
    if len(text.lstrip("-")) > max_digits:
        raise _JSONLimit(f"the integer {text[:20]}... has more than {max_digits} digits")
    return int(text)


def _constant(text: str) -> Any:
    raise _JSONLimit(f"{text} is not a JSON number")


def load_json(data: str | bytes, name: str, *, max_bytes: int | None = None, max_depth: int | None = None,
              max_containers: int | None = None, max_digits: int | None = None, allow_nan: bool = False) -> Any:
    """Parse JSON text within bounds: size, nesting depth, number of lists/objects, digits of a number.

    The bounds are checked before the parse where they can be (size, depth and container count are
    counted on the raw bytes, strings blanked), so a hostile text costs at most a scan of `max_bytes`.
    NaN, Infinity and numbers beyond the float range are refused (no OverflowError later).

    Args:
        data: the text.
        name: what it is, in messages.
        max_bytes, max_depth, max_containers, max_digits: default :data:`JSON_LIMITS`.
        allow_nan: accept the constants NaN, Infinity and -Infinity (what ``json.dumps`` writes for a
            non-finite float, e.g. a diverged loss in a metric history); literals beyond the float
            range are refused all the same.

    Raises:
        ValueError: not valid JSON, or beyond a bound (one line naming `name`).
    """
    limits = {**JSON_LIMITS, **{k: v for k, v in (("max_bytes", max_bytes), ("max_depth", max_depth),
                                                     ("max_containers", max_containers),
                                                     ("max_digits", max_digits)) if v is not None}}
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > limits["max_bytes"]:
        raise ValueError(f"{name}: {len(raw)} bytes of JSON, more than the {limits['max_bytes']} it can be")
    import numpy as np

    bare = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    opens = (bare == ord("[")) | (bare == ord("{"))
    closes = (bare == ord("]")) | (bare == ord("}"))
    if int(opens.sum()) > limits["max_containers"]:
        raise ValueError(f"{name}: more than {limits['max_containers']} JSON lists/objects")
    depth = np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
    if depth.size and int(depth.max()) > limits["max_depth"]:
        raise ValueError(f"{name}: not valid JSON here: JSON nested too deeply ({int(depth.max())} levels, more "
                         f"than {limits['max_depth']})")
    digits = limits["max_digits"]
    try:
        return json.loads(raw.decode("utf-8"), parse_float=lambda t: _number(t, digits),
                          parse_int=lambda t: _integer(t, digits),
                          parse_constant=float if allow_nan else _constant)
    except _JSONLimit as exc:
        raise ValueError(f"{name}: {exc}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{name}: not valid JSON ({' '.join(str(exc).split())[:160]})") from None


def read_json_file(path: str | os.PathLike, name: str, **limits: int) -> Any:
    """:func:`load_json` of a regular file, its size checked before a byte is read (:func:`open_regular`)."""
    max_bytes = limits.get("max_bytes") or JSON_LIMITS["max_bytes"]
    with open_regular(path, name, max_bytes) as f:  # read(n) allocates n bytes first: ask for what the file holds
        data = f.read(min(os.fstat(f.fileno()).st_size, max_bytes) + 1)
    return load_json(data, f"{name} {str(path)!r}", **limits)


# ------------------------------------------------------------------------------ bounded numpy files
def _array_header(f: IO[bytes], what: str) -> tuple[tuple[int, ...], Any, int]:
    """(shape, dtype, bytes its data takes) from a .npy header; a pickled (object) array is refused."""
    import numpy as np

    fmt = np.lib.format
    version = fmt.read_magic(f)
    reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if reader is None:
        raise ValueError(f"{what} has .npy format version {version}, not one numpy writes for plain arrays")
    shape, _, dtype = reader(f)
    if dtype.hasobject:
        raise ValueError(f"{what} holds Python objects (a pickle), never loaded")
    return shape, dtype, math.prod(shape) * dtype.itemsize


def read_arrays(path: str | os.PathLike, name: str, max_bytes: int) -> Any:
    """The array in a ``.npy`` file, or ``{name: array}`` of a ``.npz`` archive, never more than the file holds.

    A regular file of at most `max_bytes` (:func:`open_regular`); each array's header is checked against the
    bytes that really follow it (a header may not claim more than its file or archive member holds), and an
    archive's members may not inflate beyond `max_bytes` in all, so a lying header or a zip bomb costs
    nothing. Pickled (object) arrays are refused.

    Args:
        path: the ``.npy`` or ``.npz`` file.
        name: what it is, in messages (``"--verify-images"``, ``"reference"``).
        max_bytes: the largest file, and the most an archive may inflate to.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, too large, not a numpy file, or a header that lies (one line).
    """
    import zipfile

    import numpy as np

    what = f"{name}: {str(path)!r}"
    with open_regular(path, name, max_bytes) as f:
        try:
            if zipfile.is_zipfile(f):
                f.seek(0)
                with zipfile.ZipFile(f) as archive:
                    members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
                    total = sum(m.file_size for m in archive.infolist())
                    if total > max_bytes:
                        raise ValueError(f"{what} inflates to {total} bytes, more than the {max_bytes} "
                                         f"a {name} can hold")
                    arrays = {}
                    for member in members:
                        with archive.open(member) as m:
                            _, _, nbytes = _array_header(m, what)
                            if nbytes > member.file_size:
                                raise ValueError(f"{what} is damaged or hostile: {member.filename} claims {nbytes} "
                                                 f"bytes of data, more than the {member.file_size} it holds")
                        with archive.open(member) as m:
                            arrays[member.filename[:-4]] = np.lib.format.read_array(m, allow_pickle=False)
                    return arrays
            f.seek(0)
            _, _, nbytes = _array_header(f, what)
            size = os.fstat(f.fileno()).st_size
            if nbytes > size - f.tell():
                raise ValueError(f"{what} is damaged or hostile: its header claims {nbytes} bytes of data, more "
                                 f"than the {size - f.tell()} the file holds")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise ValueError(f"{what} is not a readable numpy file ({' '.join(str(exc).split())[:120]})") from None
        except ValueError as exc:
            if str(exc).startswith(what):
                raise
            raise ValueError(f"{what} is not a readable numpy file ({' '.join(str(exc).split())[:120]})") from None


# ---------------------------------------------------------------------------------- write locks
class output_lock:
    """Exclusive right to write `path` (and its companions) among cordsnet processes; the later one refuses.

    A lock file ``.<name>.cordsnet-lock`` beside `path`, held with ``flock`` (released by the kernel when
    the process ends, however it ends) and removed on exit.

    Raises:
        ValueError: on enter, when another process holds the lock.
    """

    def __init__(self, path: str | os.PathLike, name: str = "output") -> None:
        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        self.lock = parent / f".{self.path.name[:_NAME_KEEP]}{LOCK_MARK}"
        self.name = name
        self.fd: int | None = None

    def __enter__(self) -> "output_lock":
        import fcntl

        while True:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise _naming(exc, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ValueError(f"{self.name}: another process is writing {str(self.path)!r} right now (lock "
                                 f"{str(self.lock)!r}); wait for it to finish or choose another path") from None
            try:  # the file we locked may have been removed by its previous holder: lock the current one
                if os.stat(self.lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock)
            os.close(self.fd)
            self.fd = None


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
        refuse_inputs(self.path, (), "output")  # never over an input of the running command (input_scope)
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
