"""Download checkpoints into the cache, verified before they are used (torch-free).

``fetch("cordsnet-r8")`` gets the paper's published checkpoint (``cordsnetr8.pth``, CordsNet-R8 on
ImageNet) from the published repository at a fixed commit; ``fetch(url, git_blob=...)`` or
``fetch(url, sha256=...)`` gets any other file. :data:`REMOTES` is the registry of named downloads;
``load_checkpoint("cordsnet-r8")`` resolves the name through it.

* **Cache.** Files go to ``cache_dir() / "checkpoints" / <first 16 digits of the hash> / <file name>``
  (:func:`cordsnet._io.cache_dir`: ``$CORDSNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/cordsnet``, else
  ``~/.cache/cordsnet``). A file that is already there is checked against its hash and returned with
  no network call; one that does not match is refused, never used.
* **Verified before use.** The hash is either a git blob id (what ``git ls-tree`` shows for a file in a
  repository: the sha1 of ``b"blob <size>\\0"`` followed by the bytes) or a sha256. The download is
  written to a temporary file beside its destination (:class:`cordsnet._io.atomic_path`) and renamed
  onto it only when the hash matches: a wrong hash, an interrupted or a stalled download leaves nothing
  in the cache.
* **Bounded.** Connecting and every read wait at most `timeout` seconds (:data:`DEFAULT_TIMEOUT`,
  ``$CORDSNET_FETCH_TIMEOUT``). A transfer that breaks off after making progress is resumed where it
  stopped with an HTTP ``Range`` request (up to `retries` times; a server without ranges sends the file
  again); a host that cannot be reached fails at once, in one line that names the URL and where to
  put the file by hand.
* **Progress.** A rich progress bar when stderr is a terminal, else a log line (``logging``, logger
  ``cordsnet.fetch``) at the start, every 10 % and at the end.

Only ``urllib`` from the standard library is used (proxies from the usual ``*_proxy`` variables).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable, Mapping

from . import validate
from ._io import atomic_path, cache_dir, file_sha256

__all__ = ["DEFAULT_TIMEOUT", "DIGESTS", "PROGRESS", "REMOTES", "FetchError", "Remote", "cached_path", "fetch",
           "SCHEMES", "file_digest", "git_blob_id", "is_remote_name", "remote_table", "resolve_name"]

logger = logging.getLogger("cordsnet.fetch")

DEFAULT_TIMEOUT = 30.0  # seconds for connecting and for each read (``$CORDSNET_FETCH_TIMEOUT`` overrides)
DEFAULT_RETRIES = 2  # resumptions of a transfer that broke off after making progress
_CHUNK = 1 << 20  # bytes per read


class FetchError(OSError):
    """A download that failed (unreachable host, HTTP error, stall) or a file whose hash does not match."""


class _Abort(Exception):
    """Carries a FetchError out of an atomic write (which removes the temporary file)."""

    def __init__(self, error: FetchError) -> None:
        super().__init__(str(error))
        self.error = error


# ------------------------------------------------------------------------------------------ hashes
def git_blob_id(path: str | os.PathLike) -> str:
    """The git blob id of a file: hex sha1 of ``b"blob <size>\\0"`` followed by its bytes."""
    p = Path(path)
    digest = hashlib.sha1(f"blob {p.stat().st_size}\0".encode())
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# Hash kind -> (function of a file, hex digits). The CLI option of each kind is ``--<kind>``.
DIGESTS: dict[str, tuple[Callable[[Path], str], int]] = {
    "git-blob": (git_blob_id, 40),
    "sha256": (file_sha256, 64),
}


def file_digest(path: str | os.PathLike, kind: str) -> str:
    """The hex digest of a file by one of the :data:`DIGESTS` kinds ("git-blob", "sha256")."""
    function, _ = DIGESTS[validate.choice("kind", kind, DIGESTS)]
    return function(Path(path))


def _check_hex(kind: str, value: str) -> str:
    digits = DIGESTS[kind][1]
    text = str(value).strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{{digits}}}", text):
        raise ValueError(f"--{kind}: expected {digits} hexadecimal digits, got {value!r}")
    return text


# ---------------------------------------------------------------------------------------- registry
def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"source: expected a registered name ({', '.join(REMOTES)}) or an http(s) URL, "
                         f"got {str(url)!r}")
    return str(url)


@dataclass(frozen=True)
class Remote:
    """A named download: where it is served and the hash that identifies its bytes.

    Attributes:
        url: the file's URL (a raw file URL, not a web page about it).
        kind: a :data:`DIGESTS` kind.
        digest: the expected hex digest.
        description: what the file is, for ``cordsnet-cli fetch --list``.
    """

    url: str
    kind: str
    digest: str
    description: str = ""

    def __post_init__(self) -> None:
        validate.choice("kind", self.kind, DIGESTS)
        object.__setattr__(self, "digest", _check_hex(self.kind, self.digest))
        _check_url(self.url)

    @property
    def filename(self) -> str:
        """The file's name: the last part of the URL's path."""
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])
        return name or "download"


_PUBLISHED_COMMIT = "99d37dd718082e76e37f7f9eb13e087d92df1238"  # wmws2/cordsnet, the published code's HEAD

# Named downloads (``fetch NAME``, ``load_checkpoint(NAME)``). Adding one is one entry here.
REMOTES: dict[str, Remote] = {
    "cordsnet-r8": Remote(
        url=f"https://raw.githubusercontent.com/wmws2/cordsnet/{_PUBLISHED_COMMIT}/cordsnetr8.pth",
        kind="git-blob",
        digest="94ed91f2c3eaefb1666ee12dc3cab01513f69143",
        description="CordsNet-R8 trained on ImageNet: the paper's published checkpoint (cordsnetr8.pth of "
                    "wmws2/cordsnet at 99d37dd; 12,475,280 float32 parameters, 224 px RGB, 1000 classes)",
    ),
}


def is_remote_name(source: object) -> bool:
    """Whether `source` names a checkpoint elsewhere: a :data:`REMOTES` entry or a :data:`SCHEMES` prefix."""
    return isinstance(source, str) and (source in REMOTES or source.startswith(tuple(SCHEMES)))


def _resolve(source: str, git_blob: str | None, sha256: str | None) -> Remote:
    """The :class:`Remote` a name or a URL with its hash stands for."""
    given = {k: v for k, v in (("git-blob", git_blob), ("sha256", sha256)) if v is not None}
    if source in REMOTES:
        if given:
            raise ValueError(f"--{next(iter(given))}: {source!r} is a registered name with its own hash; "
                             "a hash is given with a URL only")
        return REMOTES[source]
    url = _check_url(source)
    if len(given) != 1:
        raise ValueError(f"source: a URL needs exactly one hash to verify it before use, --git-blob SHA1 or "
                         f"--sha256 HEX; got {len(given)}")
    kind, value = next(iter(given.items()))
    return Remote(url=url, kind=kind, digest=_check_hex(kind, value))


def cached_path(remote: Remote, cache: str | os.PathLike | None = None) -> Path:
    """Where `remote` lives in the cache (whether or not it is there yet)."""
    root = Path(cache) if cache is not None else cache_dir()
    return root / "checkpoints" / remote.digest[:16] / remote.filename


# ------------------------------------------------------------------------------------------- fetch
def fetch(source: str, *, git_blob: str | None = None, sha256: str | None = None,
          cache: str | os.PathLike | None = None, timeout: float | None = None, retries: int = DEFAULT_RETRIES,
          progress: str | None = None) -> Path:
    """The cached, verified copy of a named download or of a URL; downloaded on first use.

    Args:
        source: a :data:`REMOTES` name (e.g. "cordsnet-r8") or an http(s) URL.
        git_blob: with a URL: the file's git blob id (40 hex digits).
        sha256: with a URL: the file's sha256 (64 hex digits). Give exactly one hash with a URL.
        cache: cache folder; default :func:`cordsnet._io.cache_dir`.
        timeout: seconds to wait for the connection and for each read (default
            ``$CORDSNET_FETCH_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`).
        retries: resumptions of a transfer that broke off after making progress.
        progress: a :data:`PROGRESS` style ("bar", "log", "none"); default "bar" when stderr is a
            terminal, else "log".

    Returns:
        The file's path in the cache.

    Raises:
        ValueError: an unknown name, a URL without exactly one hash, a malformed hash, a bad option.
        FetchError: the download failed (one line naming the URL and where to place the file by hand),
            or the downloaded or cached file does not match its hash.
    """
    remote = _resolve(str(source), git_blob, sha256)
    timeout = _timeout(timeout)
    retries = validate.integer("retries", retries, min=0)
    style = validate.choice("progress", progress if progress is not None else _default_progress(), PROGRESS)
    path = cached_path(remote, cache)
    if path.is_file():
        _verify(path, remote, cached=True)
        logger.debug("using the cached %s", path)
        return path
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:  # renamed onto `path` only when the hash matched, else removed
            try:
                _download(remote.url, tmp, path, timeout, retries, PROGRESS[style])
                _verify(tmp, remote, cached=False, shown=path)
            except FetchError as exc:
                raise _Abort(exc) from None  # not an OSError: atomic_path would re-word it as a write error
    except BaseException as exc:
        for folder in made:  # a failure leaves the cache as it was
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, _Abort):
            raise exc.error from None
        raise
    logger.info("verified %s (%s %s)", path, remote.kind, remote.digest)
    return path


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        text = os.environ.get("CORDSNET_FETCH_TIMEOUT")
        if not text:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise ValueError(f"CORDSNET_FETCH_TIMEOUT: expected seconds, got {text!r}") from None
    if not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _verify(file: Path, remote: Remote, *, cached: bool, shown: Path | None = None) -> None:
    actual = file_digest(file, remote.kind)
    if actual == remote.digest:
        return
    if cached:
        raise FetchError(f"fetch: the cached {str(file)!r} does not match its {remote.kind} {remote.digest} (it has "
                         f"{actual}); delete it and fetch again, or place the right file there")
    raise FetchError(f"fetch: {remote.url} sent a file whose {remote.kind} is {actual}, expected {remote.digest}; "
                     f"nothing was written to {str(shown or file)!r}")


def _by_hand(url: str, path: Path) -> str:
    return f"without network, download it elsewhere and place it at {str(path)!r} (it is verified before use)"


def _download(url: str, tmp: Path, shown: Path, timeout: float, retries: int,
              make_progress: Callable[[str, Path], "_Progress"]) -> None:
    """Stream `url` into `tmp`, resuming with a Range request when a transfer breaks off after progress."""
    from . import __version__

    have, total, attempt = 0, None, 0
    with open(tmp, "wb") as out, make_progress(url, shown) as bar:
        while True:
            headers = {"User-Agent": f"cordsnet/{__version__}", "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            start = have
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                    if have and resp.status != 206 or _range_start(resp) not in (None, have):
                        out.seek(0)  # the server sent the whole file again
                        out.truncate()
                        have = 0
                    total = _total(resp, have, total)
                    bar.start(have, total)
                    while True:
                        block = resp.read1(_CHUNK)  # what has arrived: a stall keeps the bytes before it
                        if not block:
                            break
                        out.write(block)
                        have += len(block)
                        bar.update(have)
                if total is not None and have < total:
                    raise HTTPException(f"the connection closed after {have} of {total} bytes")
                return
            except urllib.error.HTTPError as exc:
                raise FetchError(f"fetch: {url} answered HTTP {exc.code} {exc.reason}; "
                                 f"{_by_hand(url, shown)}") from None
            except (urllib.error.URLError, OSError, HTTPException) as exc:
                reason = _reason(exc, timeout)
                if have > start and attempt < retries:
                    attempt += 1
                    logger.warning("fetch: %s stopped after %d bytes (%s); resuming (%d of %d)", url, have, reason,
                                   attempt, retries)
                    continue
                raise FetchError(f"fetch: cannot download {url} ({reason}); {_by_hand(url, shown)}") from None


def _range_start(resp: Any) -> int | None:
    match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range") or "")
    return int(match.group(1)) if match else None


def _total(resp: Any, have: int, previous: int | None) -> int | None:
    match = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range") or "")
    if match:
        return int(match.group(1))
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else previous


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        exc = exc.reason
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no data for {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# ----------------------------------------------------------------------------------------- progress
class _Progress:
    """No progress shown (the base of the styles of :data:`PROGRESS`)."""

    def __init__(self, url: str, path: Path) -> None:
        self.url, self.path = url, path

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def start(self, have: int, total: int | None) -> None:
        pass

    def update(self, have: int) -> None:
        pass


class _LogLines(_Progress):
    """A log line at the start, every 10 % (or 10 MiB when the size is unknown) and at the end."""

    def start(self, have: int, total: int | None) -> None:
        self.total, self.next = total, have
        size = f" ({_mib(total)})" if total else ""
        logger.info("downloading %s%s to %s%s", self.url, size, self.path, f", from byte {have}" if have else "")
        self._advance(have)

    def update(self, have: int) -> None:
        if have >= self.next or have == self.total:
            if self.total:
                logger.info("%s: %d%% (%s of %s)", self.path.name, 100 * have // self.total, _mib(have),
                            _mib(self.total))
            else:
                logger.info("%s: %s", self.path.name, _mib(have))
            self._advance(have)

    def _advance(self, have: int) -> None:
        step = self.total // 10 if self.total else 10 << 20
        self.next = have + max(step, 1)


class _RichBar(_Progress):
    """A rich progress bar on stderr (size, speed, time left)."""

    def __enter__(self) -> "_RichBar":
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, \
            TransferSpeedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task(self.path.name, total=None)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def start(self, have: int, total: int | None) -> None:
        self.bar.update(self.task, total=total, completed=have)

    def update(self, have: int) -> None:
        self.bar.update(self.task, completed=have)


def _mib(n: int | None) -> str:
    return f"{(n or 0) / (1 << 20):.1f} MiB"


# Progress styles: name -> class.
PROGRESS: dict[str, Callable[[str, Path], _Progress]] = {"bar": _RichBar, "log": _LogLines, "none": _Progress}


def _default_progress() -> str:
    try:
        return "bar" if sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):
        return "log"


# Prefixes of names that stand for a checkpoint elsewhere: prefix -> module.function(name) -> local path.
SCHEMES: dict[str, str] = {"hf-hub:": "cordsnet.pretrained.hub_checkpoint"}


def resolve_name(source: str) -> str | Path:
    """The local file a checkpoint name stands for, fetched or downloaded on first use; else `source`.

    A :data:`REMOTES` name ("cordsnet-r8") is :func:`fetch`-ed; a name with a :data:`SCHEMES` prefix
    ("hf-hub:ORG/NAME[@REVISION]") goes to its module. Anything else (a path) is returned unchanged.
    """
    if source in REMOTES:
        return fetch(source)
    for prefix, target in SCHEMES.items():
        if source.startswith(prefix):
            import importlib

            module, function = target.rsplit(".", 1)
            return getattr(importlib.import_module(module), function)(source[len(prefix):])
    return source


def remote_table(cache: str | os.PathLike | None = None) -> list[Mapping[str, Any]]:
    """The registered downloads, JSON-ready: name, url, hash kind and digest, description, cached path."""
    rows = []
    for name, remote in REMOTES.items():
        path = cached_path(remote, cache)
        rows.append({"name": name, "url": remote.url, "kind": remote.kind, "digest": remote.digest,
                     "description": remote.description, "path": str(path), "cached": path.is_file()})
    return rows
