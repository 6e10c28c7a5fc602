"""What several command sections share: argument types, output helpers, progress, the console."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from ..fetch import REMOTES, is_remote_name
from ..weights import BUNDLED

log = logging.getLogger("cordsnet.cli")

# Width of help and tables when stdout is not a terminal (piped, redirected): wide enough that no
# option name or table column is cut; rich would otherwise assume 80 columns.
PIPED_WIDTH = 160

def checkpoint_path(value: Optional[Path]) -> Optional[Path]:
    """A checkpoint argument: an existing file, or the name of a bundled model (``digits-qat``)."""
    if value is None:
        return None
    if not value.exists() and str(value) in BUNDLED:
        from ..checkpoint import bundled_checkpoint_path

        return bundled_checkpoint_path(str(value))
    if not value.exists() and is_remote_name(str(value)):  # cordsnet-r8, hf-hub:ORG/NAME: fetched on first use
        from ..fetch import resolve_name

        return Path(resolve_name(str(value)))
    if not value.exists():
        raise typer.BadParameter(f"File '{value}' does not exist (nor is it a bundled model: "
                                 f"{', '.join(BUNDLED)}, a download: {', '.join(REMOTES)}, or hf-hub:ORG/NAME).")
    if value.is_dir():
        raise typer.BadParameter(f"File '{value}' is a directory.")
    return value


CheckpointArg = Annotated[
    Optional[Path],
    typer.Argument(callback=checkpoint_path, help="Checkpoint (.pth published layout or .safetensors), or "
                   "a bundled model's name (digits, digits-qat), cordsnet-r8 (the published checkpoint, fetched once), "
                   "hf-hub:ORG/NAME[@REVISION]; "
                   "default: the bundled digits model."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def one_line(text: str) -> str:
    """`text` on one line (an error message for stderr)."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def wide_console_env() -> Iterator[None]:
    """While a command runs with stdout not a terminal, rich consoles (help, tables) are PIPED_WIDTH wide."""
    if "COLUMNS" in os.environ or _isatty(sys.stdout):
        yield
        return
    os.environ["COLUMNS"] = str(PIPED_WIDTH)
    try:
        yield
    finally:
        os.environ.pop("COLUMNS", None)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def console(stderr: bool = False) -> Any:
    """A rich console for tables and text (its width follows :func:`wide_console_env`)."""
    from rich.console import Console

    return Console(stderr=stderr)


def load_model(checkpoint: Optional[Path]) -> Any:
    """The checkpoint's model, or the bundled default model for None."""
    from ..checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def checkpoint_source(checkpoint: Optional[Path]) -> Path:
    """The file a model is read from (the bundled model's path for None)."""
    if checkpoint is not None:
        return checkpoint
    from ..checkpoint import default_checkpoint_path

    return Path(default_checkpoint_path())


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


HEARTBEAT_S = 10.0  # when stderr is not a terminal, a phase that lasts longer logs "<phase> (N s so far)" this often


@contextlib.contextmanager
def phases(first: str, *, quiet: bool = False, heartbeat_s: float = HEARTBEAT_S) -> Iterator[Callable[[str], None]]:
    """Report the phases of long work: a spinner on a terminal, else one log line per phase and a
    "<phase> (N s so far)" line every `heartbeat_s` while a phase lasts (a log reader never sees a silent
    stretch longer than that).

    Yields ``say(message)``; call it when a new phase starts. With ``quiet`` (e.g. ``--json``) nothing is
    shown on a terminal, and the log lines stay at INFO (shown when :func:`cordsnet.cli.main` configured
    logging, i.e. when stderr is not a terminal).
    """
    if _isatty(sys.stderr) and not quiet:
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
        while not done.wait(heartbeat_s):
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


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A bar of `total` units on a terminal, else a log line at least every :data:`HEARTBEAT_S`.

    Yields ``advance(done)``: the units done so far.
    """
    if _isatty(sys.stderr) and not quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda done: bar.update(task, completed=done)
        return
    state = {"done": 0}
    with phases(f"{label}: 0/{total}") as say:
        last = [time.monotonic()]

        def advance(done: int) -> None:
            state["done"] = done
            if time.monotonic() - last[0] >= HEARTBEAT_S or done == total:
                last[0] = time.monotonic()
                say(f"{label}: {done}/{total}")

        yield advance


class Stopwatch:
    """Wall time of named parts of a command: ``with watch("loading"): ...``; ``watch.total``."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


_LABELS = {"max_abs": "max abs diff", "max_rel": "max rel diff", "within_tolerance": "within tolerance"}


def verification_lines(report: Any) -> list[str]:
    """What a verification report means, for people: the verdict, then the per-output differences."""
    lines = []
    # A reduced-precision graph passes on top-1 agreement: its elementwise tolerance verdict is not the
    # verdict, so it is not shown (a passing export would show "within tolerance False").
    hidden = {"name"} if report.dtype == "float32" else {"name", "within_tolerance"}
    for check in report.checks:
        rest = {k: v for k, v in check.items() if k not in hidden}
        lines.append(f"  {check['name']}: " + ", ".join(
            f"{_LABELS.get(k, k)} {v:.3g}" if isinstance(v, float) else f"{_LABELS.get(k, k)} {v}"
            for k, v in rest.items()))
    if report.dtype != "float32":
        lines.append(f"  ({report.dtype} passes on top-1 agreement with {report.reference_model}; its relative differences "
                     "are large where a logit is near zero and are shown for information only)")
    return lines
