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

import dataclasses
import functools
import inspect
import logging
import os
import signal
import sys
import typing
import warnings
from typing import Annotated, Any, Callable, Optional

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from .._io import input_scope
from ..extras import MissingExtraError, require
from ..progress import is_terminal
from ..threads import set_num_threads
from . import analysis, dataset, export, foundation, hub, runtime, train, web
from ._shared import one_line, wide_console_env

__all__ = ["COMMANDS", "Command", "USER_ERRORS", "app", "main"]

# Errors we raise for the user (bad files, bad values): one line, exit code 1. Nothing else: a
# TypeError or KeyError escaping a command is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MissingExtraError)
# Libraries that parse or run the user's files raise their own exception types for a file they refuse
# (onnxruntime's InvalidGraph/Fail, protobuf's DecodeError, OpenVINO's, ExecuTorch's RuntimeError...):
# those are the file's fault, one line too.
NATIVE_READERS: tuple[str, ...] = ("onnxruntime", "openvino", "google.protobuf", "onnx", "executorch", "safetensors")


def _from_a_native_reader(exc: BaseException) -> bool:
    """Raised by a library reading the user's file (its type's module, or the frame it was raised in)."""
    module = type(exc).__module__ or ""
    if module.split(".")[0] in {m.split(".")[0] for m in NATIVE_READERS} or module.startswith(NATIVE_READERS):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return isinstance(exc, RuntimeError) and raised_in.startswith(NATIVE_READERS)


class _OneLineErrors(TyperGroup):
    """Usage errors and user errors become one line on stderr and exit code 1."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            with warnings.catch_warnings(), wide_console_env(), input_scope():  # no output over an input
                warnings.showwarning = _show_warning
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Error: aborted", err=True)
            sys.exit(1)
        except TyperException as exc:  # usage errors: bad options, missing files (Path(exists=True))
            typer.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(1)
        except Exception as exc:  # noqa: BLE001 - sorted below: user errors become one line, bugs stay tracebacks
            if os.environ.get("CORDSNET_DEBUG") or not (isinstance(exc, USER_ERRORS) or _from_a_native_reader(exc)):
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

@dataclasses.dataclass(frozen=True)
class Command:
    """One command of the CLI.

    Attributes:
        group: the Typer app it belongs to.
        function: the command (its signature is the command's arguments and options).
        extras: the optional extras it always needs, checked before it does anything (one line naming
            the extra). A command that needs an extra only in some modes (info on a checkpoint, predict on
            OpenVINO, export to ExecuTorch) checks it where the mode is known, still before any work.
        threads: it computes: it gets a ``--threads`` option (:mod:`cordsnet.threads`) unless its function
            has its own ``threads`` parameter (train passes it on to its options).
    """

    group: typer.Typer
    function: Callable[..., Any]
    extras: tuple[str, ...] = ()
    threads: bool = True


# The commands in help order. Adding a command is one entry here.
COMMANDS: dict[str, Command] = {
    "info": Command(app, foundation.info, threads=False),
    "convert": Command(app, foundation.convert, ("torch",), threads=False),
    "export": Command(app, export.export_command, ("torch",)),
    "predict": Command(app, runtime.predict),
    "verify": Command(app, runtime.verify),
    "bench": Command(app, runtime.bench),
    "train": Command(app, train.train, ("torch",)),
    "record": Command(app, analysis.record, ("torch",)),
    "evaluate": Command(app, dataset.evaluate_command, ("torch", "zarr")),
    "reaction-time": Command(app, analysis.reaction_time, ("torch",)),
    "spectrum": Command(analyze_app, analysis.spectrum, ("torch",)),
    "web": Command(app, web.web_command, threads=False),
    "fetch": Command(app, hub.fetch_command, threads=False),
}

THREADS_HELP = ("CPU threads for PyTorch, onnxruntime and OpenVINO (default: $CORDSNET_NUM_THREADS, else one per "
                "core); fewer when other work shares the machine.")


def _wrapped(name: str, command: Command) -> Callable[..., Any]:
    """The command as Typer sees it: its extras checked first, and a ``--threads`` option where it computes.

    The wrapper's signature carries the function's resolved annotations (its module's ``Annotated`` option
    types: this module's globals cannot resolve them) plus the ``threads`` option.
    """
    function = command.function
    hints = typing.get_type_hints(function, include_extras=True)
    signature = inspect.signature(function)
    add_threads = command.threads and "threads" not in signature.parameters
    parameters = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    if add_threads:
        parameters.append(inspect.Parameter(
            "threads", inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[Optional[int], typer.Option("--threads", min=1, help=THREADS_HELP)]))

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        for extra in command.extras:
            require(extra, f"`cordsnet-cli {name}`")
        if add_threads:
            set_num_threads(kwargs.pop("threads"))
        return function(*args, **kwargs)

    run.__signature__ = signature.replace(parameters=parameters, return_annotation=None)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    del run.__wrapped__  # Typer reads the signature above, not the function's
    return run


for _name, _command in COMMANDS.items():
    _command.group.command(_name)(_wrapped(_name, _command))
app.add_typer(analyze_app, name="analyze")


def main() -> None:
    """Console-script entry point: process-wide set-up, then the app.

    SIGTERM exits through Python (so temporary files are removed), and when stderr is not a terminal
    long work logs one line per phase or epoch there (``logging``, level INFO) instead of a spinner.
    """
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        from .._io import terminate_cleanly

        signal.signal(signal.SIGTERM, terminate_cleanly)
    if not is_terminal(sys.stderr):
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                            format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        logging.getLogger("cordsnet").setLevel(logging.INFO)
    app()
