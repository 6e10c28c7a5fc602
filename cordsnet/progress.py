"""Progress of long work, one mechanism for every command and library loop (torch-free).

* :class:`Progress`: counted work (batches, images, bytes). Style ``"bar"``: a rich bar on stderr;
  ``"log"``: a ``logging`` line when it starts, at least every :data:`EVERY_S` seconds while it runs, and
  when it ends (what a log reader sees when stderr is not a terminal); ``"none"``. The default is a bar on
  a terminal and log lines otherwise.
* :func:`phases`: work in named phases (a spinner on a terminal; else a log line per phase and a
  "<phase> (N s so far)" line every :data:`EVERY_S` while a phase lasts).

No silent stretch longer than :data:`EVERY_S` reaches a log reader, whatever the work.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterator

__all__ = ["EVERY_S", "STYLES", "Progress", "default_style", "is_terminal", "phases"]

EVERY_S = 10.0  # the longest silence a log reader sees
STYLES = ("bar", "log", "none")


def is_terminal(stream: Any) -> bool:
    """Whether `stream` is a terminal (False for a closed, redirected or fake stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def default_style() -> str:
    """``"bar"`` when stderr is a terminal, else ``"log"``."""
    return "bar" if is_terminal(sys.stderr) else "log"


class Progress:
    """Counted work shown as a bar or as log lines (a context manager).

    Args:
        label: what is counted, e.g. ``"qat 2/6"`` or a file name.
        total: the units to do (None: unknown).
        style: a :data:`STYLES` name; default :func:`default_style`.
        unit: ``"bytes"`` shows sizes and speed; anything else counts units.
        logger: where log lines go (default ``cordsnet``).
        every_s: the longest gap between log lines.
        transient: the bar disappears when done.
        ends: log a line when the work starts and ends (off where the caller logs its own, e.g. per epoch).
        every: also log whenever this many more units are done (e.g. ``--log-every`` images); the time
            bound `every_s` holds regardless.

    Example::

        with Progress("epoch 1/3", total=len(loader)) as bar:
            for batch in loader:
                ...
                bar.advance(loss=0.25)
    """

    def __init__(self, label: str, total: int | None = None, *, style: str | None = None, unit: str = "",
                 logger: logging.Logger | None = None, every_s: float = EVERY_S, transient: bool = True,
                 ends: bool = True, every: int | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.style = style if style is not None else default_style()
        if self.style not in STYLES:
            raise ValueError(f"style: expected one of {', '.join(STYLES)}, got {self.style!r}")
        self.log = logger or logging.getLogger("cordsnet")
        self.every_s, self.transient, self.ends = every_s, transient, ends
        self.every = every
        self._logged = 0  # units done at the last log line
        self.done = 0
        self.fields: dict[str, float] = {}
        self._bar: Any = None
        self._last = 0.0
        self._start = 0.0

    def __enter__(self) -> "Progress":
        self._start = self._last = time.monotonic()
        if self.style == "bar":
            from rich.console import Console
            from rich import progress as rp

            counts = (rp.DownloadColumn(), rp.TransferSpeedColumn()) if self.unit == "bytes" else \
                (rp.MofNCompleteColumn(),)
            self._bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), *counts,
                                    rp.TextColumn("{task.fields[extra]}"), rp.TimeElapsedColumn(),
                                    rp.TimeRemainingColumn(), console=Console(stderr=True), transient=self.transient)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, extra="")
        elif self.style == "log" and self.ends:
            self.log.info("%s: started%s", self.label, f" ({self._amount(self.total)})" if self.total else "")
        return self

    def set_total(self, total: int | None, done: int = 0) -> None:
        """The total became known (a download's size), `done` already done (a resumed one)."""
        self.total, self.done = total, done
        if self._bar is not None:
            self._bar.update(self._task, total=total, completed=done)

    def advance(self, n: int = 1, **fields: float) -> None:
        """`n` more units done; `fields` (e.g. ``loss=0.25``) are shown beside the count."""
        self.update(self.done + n, **fields)

    def update(self, done: int, **fields: float) -> None:
        """`done` units done so far."""
        self.done = done
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, extra=self._fields())
        elif self.style == "log" and (time.monotonic() - self._last >= self.every_s
                                      or (self.every is not None and done - self._logged >= self.every)):
            self._line()

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.style == "log" and exc[0] is None and self.ends:
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        self._last, self._logged = time.monotonic(), self.done
        of = f"/{self._amount(self.total)} ({100 * self.done // self.total}%)" if self.total else ""
        rate = self.done / max(self._last - self._start, 1e-9)
        speed = f", {self._amount(int(rate))}/s" if self.unit == "bytes" else f", {rate:.2f}/s"
        extra = f", {self._fields()}" if self.fields else ""
        self.log.info("%s: %s%s%s%s%s", self.label, self._amount(self.done), of, speed, extra, " (done)" if final else "")

    def _amount(self, n: int | None) -> str:
        if self.unit == "bytes":
            return f"{(n or 0) / (1 << 20):.1f} MiB"
        return str(n)

    def _fields(self) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in self.fields.items())


@contextlib.contextmanager
def phases(first: str, *, quiet: bool = False, every_s: float = EVERY_S,
           logger: logging.Logger | None = None) -> Iterator[Callable[[str], None]]:
    """Report the phases of long work: a spinner on a terminal, else one log line per phase and a
    "<phase> (N s so far)" line every `every_s` while a phase lasts.

    Yields ``say(message)``; call it when a new phase starts. With ``quiet`` (e.g. ``--json``) nothing is
    shown on a terminal, and the log lines stay at INFO (shown when the CLI configured logging, i.e. when
    stderr is not a terminal).
    """
    log = logger or logging.getLogger("cordsnet.cli")
    if is_terminal(sys.stderr) and not quiet:
        from rich.console import Console

        with Console(stderr=True).status(first) as status:
            yield lambda message: status.update(message)
        return
    current = {"message": first, "since": time.monotonic()}
    lock = threading.Lock()
    done = threading.Event()

    def say(message: str) -> None:
        with lock:
            current.update(message=message, since=time.monotonic())
        log.info(message)

    def beat() -> None:
        while not done.wait(every_s):
            with lock:
                message, since = current["message"], current["since"]
            log.info("%s (%.0f s so far)", message, time.monotonic() - since)

    log.info(first)
    thread = threading.Thread(target=beat, name="cordsnet-heartbeat", daemon=True)
    thread.start()
    try:
        yield say
    finally:
        done.set()
        thread.join()
