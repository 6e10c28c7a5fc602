"""The analysis commands: ``analyze spectrum``, ``record`` and ``reaction-time``.

Area lists have one syntax everywhere: a repeatable option taking comma-separated values
(``--area 2,3`` or ``--area 2 --area 3``), parsed by :func:`cordsnet.validate.areas`.
"""

from __future__ import annotations

import warnings

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..decision import DEFAULT_MARGIN, DEFAULT_THRESHOLD
from ..progress import is_terminal
from ._shared import CheckpointArg, JsonOpt, console, echo_json, load_model, phases
from .dataset import (  # the dataset mode of record
    DataRootOpt,
    DatasetOpt,
    DatasetSplit,
    LimitOpt,
    SplitOpt,
    StoreOpt,
    record_dataset_command,
)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")  # a first path with one of these is the model
RECORD_SUFFIXES = (".npy",)

AnalysisPathsArg = Annotated[list[Path], typer.Argument(
    exists=True, dir_okay=False, metavar="[CHECKPOINT] IMAGE...",
    help="An optional checkpoint (.safetensors/.pth/.pt/.ckpt; default: the bundled model), then image files.")]
AnalysisProtocolOpt = Annotated[Optional[str], typer.Option(
    help="Stimulus protocol instead of a static image, e.g. 'blank:100ms, stimulus:200ms:contrast=0.5:noise=0.1'.")]


def split_model_and_images(paths: list[Path]) -> tuple[Optional[Path], list[Path]]:
    """``[CHECKPOINT] IMAGE...``: the first path is the checkpoint when its suffix says so."""
    if paths and paths[0].suffix.lower() in CHECKPOINT_SUFFIXES:
        checkpoint, images = paths[0], list(paths[1:])
    else:
        checkpoint, images = None, list(paths)
    if not images:
        raise ValueError("IMAGES: expected at least one image file after the optional checkpoint "
                         f"(a checkpoint is recognised by its suffix: {', '.join(CHECKPOINT_SUFFIXES)})")
    return checkpoint, images


def _stimulus(model: Any, paths: list[Path], protocol: Optional[str], seed: int) -> tuple[Any, int]:
    """Images (or the protocol's frame sequence) for `model`, and the stimulus onset index.

    The files go through the one image pipeline (:mod:`cordsnet.runtime.preprocess`, as ``predict``)."""
    from ..analysis import build_stimulus, load_images, protocol_segments

    images = load_images(paths, model.config)
    if protocol is None:
        return images, 0
    segments = protocol_segments(protocol, alpha=model.config.alpha)
    onset = next((s.start for s in segments if s.kind == "stimulus"), 0)
    return build_stimulus(images, protocol, alpha=model.config.alpha, seed=seed), onset


# ------------------------------------------------------------------------------------ spectrum
def spectrum_targets(items: Optional[list[str]], depth: int, names: Any) -> list[int | str]:
    """``--area`` values to spectrum targets: area indices, ``all`` (every area) or a named operator
    (`names`, e.g. ``dynamics``); comma lists allowed; order kept, repeats dropped.

    (Parsing what a user typed is the CLI's job: the library's functions take an int or a name.)
    """
    from .. import validate

    targets: list[int | str] = []
    for item in items or ["all", *names]:
        for token in (t.strip() for t in item.split(",")):
            if token == "all":
                targets += range(depth)
            elif token in names:
                targets.append(token)
            elif token:
                try:
                    targets += validate.areas("--area", token, depth)
                except ValueError:
                    raise ValueError(f"--area: expected area indices in 0..{depth - 1}, 'all' or one of "
                                     f"{sorted(names)}, got {token!r}") from None
    return list(dict.fromkeys(targets))


def spectrum(
    checkpoint: CheckpointArg = None,
    area: Annotated[Optional[list[str]], typer.Option(
        "--area", "-a", help="Area indices, 'all' (every recurrent convolution) or 'dynamics' (the step's Jacobian "
        "at the spontaneous state); comma-separated and/or repeated, e.g. --area 0,dynamics. "
        "Default: all,dynamics.")] = None,
    k: Annotated[int, typer.Option(min=1, help="Eigenvalues of largest modulus per operator.")] = 20,
    krylov_dim: Annotated[Optional[int], typer.Option(min=1, help="Krylov vectors (default 300).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Arnoldi start vector.")] = 0,
    method: Annotated[str, typer.Option(
        help="arnoldi (one Krylov space, as published) or arpack (restarted until converged).")] = "arnoldi",
    plot: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Write the eigenvalues in the complex plane (with the unit circle) to this "
        ".png, .svg or .pdf.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Leading eigenvalues and spectral radius of each recurrent convolution and of the dynamics."""
    from .. import validate
    from .._io import check_output
    from ..analysis.plots import PLOT_SUFFIXES, plot_spectra
    from ..analysis.spectra import EIGEN_METHODS, SPECTRUM_TARGETS, recurrent_spectrum
    from ._shared import checkpoint_source

    validate.choice("--method", method, sorted(EIGEN_METHODS))
    if plot is not None:
        check_output(plot, inputs=[checkpoint_source(checkpoint)], suffixes=PLOT_SUFFIXES, name="--plot")
    model = load_model(checkpoint)
    spectra = []
    with phases("computing spectra", quiet=as_json) as say:
        for target in spectrum_targets(area, model.depth, SPECTRUM_TARGETS):
            say(f"spectrum of {target if isinstance(target, str) else f'area {target}'}")
            compute = SPECTRUM_TARGETS[target] if isinstance(target, str) else \
                (lambda m, k_, t=target, **kw: recurrent_spectrum(m, t, k_, **kw))
            spectra.append(compute(model, k, krylov_dim=krylov_dim, seed=seed, method=method))
    if plot is not None:
        plot_spectra(spectra, plot)
    if as_json:
        echo_json([s.to_dict() for s in spectra])
        return
    from rich.table import Table

    table = Table(title=f"spectra (top {k} by modulus)")
    for column in ("operator", "dimension", "krylov", "radius", "converged", "leading eigenvalues", "seconds"):
        table.add_column(column, overflow="fold")
    for s in spectra:
        lead = ", ".join(f"{z.real:.4f}{z.imag:+.4f}j" for z in s.eigenvalues[:3])
        table.add_row(s.name, f"{s.dimension:,}", str(s.krylov_dim), f"{s.radius:.6f}",
                      f"{int(s.converged().sum())}/{len(s.eigenvalues)}", lead, f"{s.seconds:.2f}")
    out = console()
    out.print(table)
    for s in spectra:
        if "stable" in s.info:
            verdict = "stable" if s.info["stable"] else "NOT stable"
            out.print(f"dynamics: radius {s.radius:.6f} -> spontaneous state {verdict} (radius < 1); "
                      f"fixed-point residual {s.info['fixed_point_residual']:.2e}")
    if plot is not None:
        out.print(f"wrote {plot}")


# -------------------------------------------------------------------------------------- record
def record(
    areas: Annotated[list[str], typer.Option(
        "--area", "--areas", "-a", help="Areas to record, comma-separated and/or repeated: --area 2,3.")],
    paths: Annotated[Optional[list[Path]], typer.Argument(
        exists=True, dir_okay=False, metavar="[CHECKPOINT] [IMAGE]...",
        help="An optional checkpoint (.safetensors/.pth/.pt/.ckpt; default: the bundled model), then image files "
             "(none with --dataset).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        dir_okay=False, help="Destination .npy for image files (several areas: <stem>_area<i>.npy).")] = None,
    window: Annotated[Optional[tuple[int, int]], typer.Option(
        help="START STOP global step indices (0..P-1 spontaneous, then stimulus); default: all steps.")] = None,
    spatial_mean: Annotated[bool, typer.Option(help="Average each channel over space: (steps, B, c).")] = False,
    float16: Annotated[bool, typer.Option("--float16", help="Store float16 instead of float32.")] = False,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stimulus steps (default: the config's).")] = None,
    spontaneous_steps: Annotated[Optional[int], typer.Option(min=0, help="Blank steps first.")] = None,
    protocol: AnalysisProtocolOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the protocol's noise.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="Trials simulated at a time (with --dataset: images per store chunk, default 8).")] = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = DatasetSplit.test,
    data_root: DataRootOpt = None,
    limit: LimitOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record the rates of chosen areas at every step: image files into .npy memory maps (--out), or a
    whole dataset split (--dataset) into a Zarr store (--store), sharded under torchrun and resumable."""
    from .. import validate
    from .._io import check_output
    from ..analysis import record_activity
    from ..analysis.recording import area_paths
    from ._shared import checkpoint_source

    paths = paths or []
    if dataset is not None:
        checkpoint = paths[0] if paths and paths[0].suffix.lower() in CHECKPOINT_SUFFIXES else None
        if len(paths) > (checkpoint is not None) or protocol is not None or out is not None:
            raise ValueError("--dataset: takes no image files, --protocol or --out (an optional checkpoint, and "
                             "--store for the output)")
        record_dataset_command(checkpoint, areas, store, dataset, split, data_root, limit, window, spatial_mean,
                               float16, steps, spontaneous_steps, batch_size, as_json=as_json)
        return
    if out is None:
        raise ValueError("--out: expected a destination .npy for image files (or --dataset NAME --store DIR)")
    checkpoint, image_paths = split_model_and_images(paths)
    check_output(out, suffixes=RECORD_SUFFIXES, name="--out")
    bar = not as_json and is_terminal(sys.stderr)  # record_activity's progress bar on a terminal
    with phases("loading the checkpoint and images", quiet=as_json or bar) as say:
        model = load_model(checkpoint)
        chosen = validate.areas("--area", areas, model.depth, allow_empty=False)
        for path in area_paths(out, chosen).values():
            check_output(path, inputs=[checkpoint_source(checkpoint), *image_paths], name="--out")
        stimulus, _ = _stimulus(model, image_paths, protocol, seed)
        say(f"recording area(s) {', '.join(map(str, chosen))} of {len(image_paths)} image(s)")
        rec = record_activity(model, stimulus, list(chosen), out=out, window=window, spatial_mean=spatial_mean,
                              dtype="float16" if float16 else "float32", steps=steps,
                              spontaneous_steps=spontaneous_steps, batch_size=batch_size, progress=bar)
        say(f"recorded {', '.join(str(p) for p in rec.paths.values())}")
    if as_json:
        echo_json(rec.to_dict())
        return
    for a, p in rec.paths.items():
        typer.echo(f"area {a}: {p} {rec.shapes[a]} {rec.dtype}")
    typer.echo(f"window {rec.window[0]}..{rec.window[1]} of {rec.spontaneous_steps} spontaneous + {rec.steps} "
               f"stimulus steps; {rec.dt_ms:g} ms per step")


# ------------------------------------------------------------------------------- reaction time
def reaction_time(
    paths: AnalysisPathsArg,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Top-class probability to reach.")] = \
        DEFAULT_THRESHOLD,
    margin: Annotated[float, typer.Option(
        min=0.0, help="Evidence the image must add (logits) to its class's lead over the strongest rival, "
                      "relative to the no-image baseline at the same step.")] = DEFAULT_MARGIN,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Stimulus steps (default: the config's).")] = None,
    spontaneous_steps: Annotated[Optional[int], typer.Option(min=0, help="Blank steps first.")] = None,
    tau_ms: Annotated[float, typer.Option(min=0.0, help="Time constant in ms (dt = alpha * tau).")] = 10.0,
    protocol: AnalysisProtocolOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the protocol's noise.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """When each image decides: its top class reaches --threshold AND the image (not the resting state)
    put it there (--margin logits of evidence over the no-image baseline). A blank image never reacts."""
    from ..analysis import measure_reaction_times

    checkpoint, image_paths = split_model_and_images(paths)
    with phases("loading the checkpoint and images", quiet=as_json) as say:
        model = load_model(checkpoint)
        stimulus, onset = _stimulus(model, image_paths, protocol, seed)
        say(f"simulating {len(image_paths)} image(s)")
        with warnings.catch_warnings():  # the baseline's warning: said once, as the note below the table
            warnings.filterwarnings("ignore", message="reaction_times: with no image", category=UserWarning)
            rt = measure_reaction_times(model, stimulus, threshold, margin=margin, steps=steps,
                                        spontaneous_steps=spontaneous_steps, tau_ms=tau_ms, onset=onset)
    preset = model.config.preset
    names = preset.class_names if preset is not None else None

    def label(c: int) -> str:
        return "-" if c < 0 else (f"{c} ({names[c]})" if names is not None and c < len(names) else str(c))

    if as_json:
        data = rt.to_dict()
        data["images"] = [str(p) for p in image_paths]
        echo_json(data)
        return
    from rich.table import Table

    table = Table("image", "class", "steps", "ms", "probability", "final class",
                  title=f"reaction times (threshold {threshold:g}, {rt.dt_ms:g} ms per step)")
    for i, p in enumerate(image_paths):
        crossed = rt.steps[i] >= 0
        table.add_row(str(p), label(int(rt.classes[i])), str(rt.steps[i]) if crossed else "never",
                      f"{rt.ms[i]:g}" if crossed else "-", f"{rt.probabilities[i]:.3f}" if crossed else "-",
                      label(int(rt.final_classes[i])))
    console().print(table)
    if rt.baseline_crosses:
        typer.echo(f"note: with no image the model already answers {label(int(rt.baseline_class))} at "
                   f"p = {rt.baseline_probability:.3f} >= {threshold:g}; only evidence beyond that baseline counts.")
