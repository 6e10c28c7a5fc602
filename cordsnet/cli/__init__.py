"""``cordsnet-cli``: the command line, a thin shell over the library.

One module per section: :mod:`.foundation` (info, convert), :mod:`.export`, :mod:`.runtime` (predict,
verify, bench), :mod:`.train` and :mod:`.analysis` (analyze spectrum, record, reaction-time);
:mod:`._shared` holds what several sections use. This module builds the Typer app from the
:data:`COMMANDS` registry, turns the errors we raise for the user into one line, and is the console
script's entry point (:func:`main`). Heavy imports (torch, onnxruntime) happen inside commands.

Errors: a :class:`ValueError` (our own :class:`~cordsnet.checkpoint.CheckpointError`,
``VerificationError`` and ``ProviderError`` are ValueErrors), an :class:`OSError` (missing or unreadable
files) or a usage error (bad option) ends with exit code 1 and one line ``Error: ...`` on stderr. Any
other exception is a bug and shows its traceback. ``CORDSNET_DEBUG=1`` shows the traceback of user
errors too. ``cordsnet-cli`` or ``cordsnet-cli analyze`` without a command prints the help and exits 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from typing import Any, Callable

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from . import analysis, dataset, export, foundation, runtime, train, web
from ._shared import one_line, wide_console_env

__all__ = ["COMMANDS", "USER_ERRORS", "app", "main"]

# Errors we raise for the user (bad files, bad values): one line, exit code 1. Nothing else: a
# TypeError or KeyError escaping a command is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


class _OneLineErrors(TyperGroup):
    """Usage errors and user errors become one line on stderr and exit code 1."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            with warnings.catch_warnings(), wide_console_env():
                warnings.showwarning = _show_warning
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Error: aborted", err=True)
            sys.exit(1)
        except TyperException as exc:  # usage errors: bad options, missing files (Path(exists=True))
            typer.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(1)
        except USER_ERRORS as exc:
            if os.environ.get("CORDSNET_DEBUG"):
                raise
            typer.echo(f"Error: {one_line(str(exc)) or type(exc).__name__}", err=True)
            sys.exit(1)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    typer.echo(f"warning: {one_line(str(message))}", err=True)


app = typer.Typer(
    cls=_OneLineErrors,
    name="cordsnet-cli",
    help="Run, export, serve, analyse and train CordsNet recurrent vision models.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
analyze_app = typer.Typer(help="Spectra of the recurrent convolutions and of the linearised dynamics.",
                          invoke_without_command=True)


def _help_without_a_command(ctx: typer.Context) -> None:
    """A group called without a command prints its help and exits 2 (a usage error, as click does)."""
    if ctx.invoked_subcommand is None:
        text = ctx.get_help()  # typer's rich help prints itself and returns ""
        if text:
            typer.echo(text)
        raise typer.Exit(2)


app.callback()(_help_without_a_command)
analyze_app.callback()(_help_without_a_command)

# The commands in help order: name -> (Typer app, function). Adding a command is one entry here.
COMMANDS: dict[str, tuple[typer.Typer, Callable[..., Any]]] = {
    "info": (app, foundation.info),
    "convert": (app, foundation.convert),
    "export": (app, export.export_command),
    "predict": (app, runtime.predict),
    "verify": (app, runtime.verify),
    "bench": (app, runtime.bench),
    "train": (app, train.train),
    "record": (app, analysis.record),
    "evaluate": (app, dataset.evaluate_command),
    "reaction-time": (app, analysis.reaction_time),
    "spectrum": (analyze_app, analysis.spectrum),
    "web": (app, web.web_command),
}
for _name, (_group, _function) in COMMANDS.items():
    _group.command(_name)(_function)
app.add_typer(analyze_app, name="analyze")


def main() -> None:
    """Console-script entry point: process-wide set-up, then the app.

    SIGTERM exits through Python (so temporary files are removed), and when stderr is not a terminal
    long work logs one line per phase or epoch there (``logging``, level INFO) instead of a spinner.
    """
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        from .._io import terminate_cleanly

        signal.signal(signal.SIGTERM, terminate_cleanly)
    if not sys.stderr.isatty():
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("cordsnet").setLevel(logging.INFO)
    app()
