"""``cordsnet-cli``: the command line. Heavy imports (torch, onnxruntime) happen inside commands.

User errors (bad files, bad shapes, unknown names) end with exit code 1 and one line on stderr, never
a traceback; set ``CORDSNET_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.exceptions import TyperException
from typer.core import TyperGroup

# Errors that are the user's (a bad file, a bad value) rather than the program's.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, KeyError)


class _OneLineErrors(TyperGroup):
    """Turn usage errors and user errors into one line on stderr and exit code 1."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Error: aborted", err=True)
            sys.exit(1)
        except TyperException as exc:  # usage errors: bad options, missing files (Path(exists=True))
            typer.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            sys.exit(1)
        except USER_ERRORS as exc:
            if os.environ.get("CORDSNET_DEBUG"):
                raise
            typer.echo(f"Error: {_one_line(str(exc)) or type(exc).__name__}", err=True)
            sys.exit(1)
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _one_line(text: str) -> str:
    text = str(text).strip()
    if text.startswith(("'", '"')) and text.endswith(("'", '"')) and len(text) > 1:
        text = text[1:-1]  # KeyError quotes its message
    return " ".join(text.split())


app = typer.Typer(
    cls=_OneLineErrors,
    name="cordsnet-cli",
    help="Run, export, serve, analyse and train CordsNet recurrent vision models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CheckpointArg = Annotated[
    Optional[Path],
    typer.Argument(exists=True, dir_okay=False, help="Checkpoint (.pth published layout or .safetensors); "
                   "default: the bundled digits model."),
]


def _load_model(checkpoint: Optional[Path]) -> Any:
    from .checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


# ------------------------------------------------------------------------------ foundation
@app.command()
def info(
    path: Annotated[Optional[Path], typer.Argument(
        exists=True, dir_okay=False,
        help="A checkpoint (.pth, .safetensors) or an exported model (.onnx, .pt, .pt2); "
             "default: the bundled model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Describe a checkpoint (architecture, parameters, spontaneous state) or an exported model."""
    if path is not None and path.suffix.lower() in ARTIFACT_SUFFIXES:
        from .export import describe_artifact

        data = describe_artifact(path)
    else:
        from .checkpoint import describe_state

        data = describe_state(_load_model(path))
        data["source"] = str(path) if path is not None else "bundled default model"
    if as_json:
        _echo_json(data)
        return
    _print_info(data)


ARTIFACT_SUFFIXES = (".onnx", ".pt", ".pt2", ".ts")


def _print_info(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "areas" in data and "config" in data:
        c = data["config"]
        console.print(f"[bold]CordsNet-R{c['depth']}[/bold]  source: {data.get('source', '?')}")
        console.print(f"classes {c['num_classes']}, input ({c['in_channels']}, {c['image_size']}, "
                      f"{c['image_size']}), dataset {c['dataset']}, alpha {c['alpha']}, "
                      f"protocol {c['spontaneous_steps']} spontaneous + {c['steps']} stimulus steps")
        console.print(f"parameters: {data['parameters']:,}")
        table = Table("area", "rates shape", "spont. mean", "spont. max", "active fraction",
                      title="spontaneous state")
        for a in data["areas"]:
            table.add_row(str(a["area"]), "x".join(map(str, a["shape"])), f"{a['spontaneous_mean']:.4g}",
                          f"{a['spontaneous_max']:.4g}", f"{a['spontaneous_active_fraction']:.3f}")
        console.print(table)
        return
    table = Table("key", "value")
    for k, v in data.items():
        text = json.dumps(v) if not isinstance(v, str) else v
        table.add_row(str(k), text if len(text) < 300 else text[:297] + "...")
    console.print(table)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                           help="A published checkpoint (cordsnetr8.pth layout).")],
    output: Annotated[Path, typer.Argument(dir_okay=False, help="Destination .safetensors file.")],
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset preset to record (default: guessed from classes and channels).")] = None,
) -> None:
    """Convert a published checkpoint to the project's safetensors format (config included)."""
    from .checkpoint import load_checkpoint, save_checkpoint

    if dataset is not None:
        from .config import get_preset

        get_preset(dataset)
    model = load_checkpoint(source, dataset=dataset)
    save_checkpoint(model, output)
    c = model.config
    typer.echo(f"wrote {output}: CordsNet-R{c.depth}, {c.num_classes} classes, {c.in_channels} channel(s), "
               f"{c.image_size} px, dataset {c.dataset}")


# Commands of the other modules are registered below, one section each.
# ---------------------------------------------------------------------------------- export


# --------------------------------------------------------------------------------- runtime


# -------------------------------------------------------------------------------- training


# -------------------------------------------------------------------------------- analysis


def main() -> None:  # console-script entry point
    app()


