"""Figures of analysis results (matplotlib, an optional dependency: ``pip install 'cordsnet[plot]'``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["PLOT_SUFFIXES", "plot_accuracy_curve", "plot_spectra", "pyplot", "save_figure"]

PLOT_SUFFIXES: tuple[str, ...] = (".png", ".svg", ".pdf")  # formats matplotlib writes without extra packages


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend.

    Raises:
        ValueError: matplotlib is not installed (the message names the extra to install).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'cordsnet[plot]'") from None
    return plt


def save_figure(fig: Any, path: Path, **savefig: Any) -> None:
    """Write `fig` atomically to `path` in the format its suffix names (png without one), then close it."""
    from .._io import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lower().lstrip(".") or "png", **savefig)
    finally:
        pyplot().close(fig)


def plot_spectra(spectra: Sequence[Any], path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Eigenvalues of each spectrum in the complex plane, with the unit circle; one panel per spectrum.

    A panel is blue when the spectral radius is below 1 (stable), red otherwise. The file is written
    atomically; its format follows the suffix (.png, .svg or .pdf).

    Args:
        spectra: :class:`~cordsnet.analysis.spectra.Spectrum` results (``name``, ``eigenvalues``, ``radius``).
        path: destination file.
        dpi: resolution of a .png.

    Returns:
        The path written.

    Raises:
        ValueError: no spectra, another suffix, or matplotlib is not installed.
    """
    from .. import validate

    path = validate.suffix("path", path, PLOT_SUFFIXES)
    if len(spectra) == 0:
        raise ValueError("spectra: expected at least one spectrum, got none")
    plt = pyplot()
    import numpy as np

    cols = min(4, len(spectra))
    rows = math.ceil(len(spectra) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    try:
        circle = np.exp(1j * np.linspace(0, 2 * np.pi, 256))
        for ax, s in zip(axes.flat, spectra):
            ax.plot(circle.real, circle.imag, color="0.6", lw=0.8)
            ax.scatter(s.eigenvalues.real, s.eigenvalues.imag, s=12, color="C0" if s.radius < 1 else "C3")
            ax.set_title(f"{s.name}  (radius {s.radius:.3f})", fontsize=9)
            ax.set_aspect("equal")
            ax.axhline(0, color="0.85", lw=0.5)
            ax.axvline(0, color="0.85", lw=0.5)
            ax.set_xlabel("Re")
            ax.set_ylabel("Im")
        for ax in list(axes.flat)[len(spectra):]:
            ax.set_visible(False)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    save_figure(fig, path, dpi=dpi)
    return path


def plot_accuracy_curve(top1: Sequence[float], path: str | os.PathLike, *, dt_ms: float, spontaneous_steps: int,
                        num_classes: int, ylabel: str = "top-1 accuracy (%)", title: str = "") -> Path:
    """The time-resolved accuracy curve: top-1 after every stimulus step, with chance, into `path` (atomic).

    The one accuracy plot of the project (``evaluate --plot``, ``tools/model_card.py``).

    Args:
        top1: accuracy in [0, 1] after steps 1..T.
        path: destination (.png, .svg or .pdf).
        dt_ms: milliseconds per step (alpha x tau).
        spontaneous_steps: blank steps before the stimulus (for the axis label).
        num_classes: K (chance is 1/K).
        ylabel, title: the labels.
    """
    import numpy as np

    plt = pyplot()
    curve = np.asarray(top1, dtype=float) * 100
    steps = np.arange(1, curve.size + 1)
    chance = 100.0 / max(1, num_classes)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.plot(steps, curve, color="tab:blue", marker="o" if curve.size == 1 else None)
    ax.axhline(chance, color="grey", lw=0.8, ls=":", label=f"chance ({chance:.0f}%)")
    ax.set_xlabel(f"stimulus step ({dt_ms:g} ms each; after {spontaneous_steps} spontaneous steps)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 101)
    ax.set_xlim(0, max(1, curve.size))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, Path(path))
    return Path(path)
