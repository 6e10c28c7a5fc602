"""The foundation commands: ``info`` (describe a checkpoint or an exported model) and ``convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ._shared import JsonOpt, checkpoint_path, console, echo_json, load_model

CHECKPOINT_OUTPUT_SUFFIXES = (".safetensors",)


def info(
    path: Annotated[Optional[Path], typer.Argument(
        callback=checkpoint_path,
        help="A checkpoint (.pth, .safetensors), a bundled model's name (digits, digits-qat) or an exported "
             "model (.onnx, .pt, .pt2); default: the bundled model.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe a checkpoint (architecture, parameters, spontaneous state) or an exported model."""
    if path is not None and is_artifact(path):
        from ..export import describe_artifact

        data = describe_artifact(path)
    else:
        from ..checkpoint import describe_state

        data = describe_state(load_model(path))
        data["source"] = str(path) if path is not None else "bundled default model"
    if as_json:
        echo_json(data)
        return
    _print_info(data)


def is_artifact(path: Path) -> bool:
    """An exported model rather than a checkpoint, by the artifact contract's format suffixes.

    A ``.pt``/``.ts`` file is an artifact only when it is a zip carrying ``cordsnet.json`` (a checkpoint
    saved with ``torch.save`` may also be called ``.pt``).
    """
    import zipfile

    from ..artifact import EXTRA_FILE, FORMATS, artifact_format

    try:
        fmt = FORMATS[artifact_format(path)]
    except ValueError:  # no artifact suffix
        return False
    if fmt.metadata != "zip-extra":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("extra/" + EXTRA_FILE) for name in archive.namelist())


def _print_info(data: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    if "areas" in data and "config" in data:
        c = data["config"]
        out.print(f"[bold]CordsNet-R{c['depth']}[/bold]  source: {data.get('source', '?')}")
        out.print(f"classes {c['num_classes']}, input ({c['in_channels']}, {c['image_size']}, "
                  f"{c['image_size']}), dataset {c['dataset']}, alpha {c['alpha']}, "
                  f"protocol {c['spontaneous_steps']} spontaneous + {c['steps']} stimulus steps")
        out.print(f"parameters: {data['parameters']:,}")
        table = Table("area", "rates shape", "spont. mean", "spont. max", "active fraction",
                      title="spontaneous state")
        for a in data["areas"]:
            table.add_row(str(a["area"]), "x".join(map(str, a["shape"])), f"{a['spontaneous_mean']:.4g}",
                          f"{a['spontaneous_max']:.4g}", f"{a['spontaneous_active_fraction']:.3f}")
        out.print(table)
        return
    table = Table("key", "value")
    for k, v in data.items():
        text = json.dumps(v) if not isinstance(v, str) else v
        table.add_row(str(k), text if len(text) < 300 else text[:297] + "...")
    out.print(table)


def convert(
    source: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                           help="A published checkpoint (cordsnetr8.pth layout).")],
    output: Annotated[Path, typer.Argument(dir_okay=False, help="Destination .safetensors file.")],
    dataset: Annotated[Optional[str], typer.Option(
        help="Dataset preset to record (default: guessed from classes and channels).")] = None,
) -> None:
    """Convert a published checkpoint to the project's safetensors format (config included)."""
    from .._io import check_output
    from ..checkpoint import load_checkpoint, save_checkpoint

    check_output(output, inputs=[source], suffixes=CHECKPOINT_OUTPUT_SUFFIXES, name="OUTPUT")
    if dataset is not None:  # a misspelt option fails before the file is read
        from ..config import get_preset

        get_preset(dataset)
    model = load_checkpoint(source, dataset=dataset)
    save_checkpoint(model, output)
    c = model.config
    typer.echo(f"wrote {output}: CordsNet-R{c.depth}, {c.num_classes} classes, {c.in_channels} channel(s), "
               f"{c.image_size} px, dataset {c.dataset}")
