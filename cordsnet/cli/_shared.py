"""What several command sections share: argument types, output helpers, progress, the console."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from ..progress import is_terminal, phases  # noqa: F401 (phases: the commands' one import)
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
    if "COLUMNS" in os.environ or is_terminal(sys.stdout):
        yield
        return
    os.environ["COLUMNS"] = str(PIPED_WIDTH)
    try:
        yield
    finally:
        os.environ.pop("COLUMNS", None)


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
