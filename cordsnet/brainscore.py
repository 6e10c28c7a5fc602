"""Brain-Score vision's ``BrainModel`` interface for CordsNet: a temporal model with a real time axis.

:class:`CordsNetBrainModel` implements ``brainscore_vision.model_interface.BrainModel`` (identifier,
``visual_degrees()``, ``start_task``, ``start_recording``, ``look_at``) with numpy, torch and xarray only:
``brainscore_vision`` is not needed to import or run it. When Brain-Score itself is running it (its
``brainscore_core`` or ``brainio`` is imported), the outputs are its ``NeuroidAssembly`` /
``BehavioralAssembly`` classes; otherwise plain ``xarray.DataArray`` objects of the same layout.

**Time.** One Euler step is ``dt = alpha * tau`` (tau = 10 ms; 2 ms for the published alpha 0.2). The
stimulus appears at t = 0 ms, after the model's blank (spontaneous) phase, and stays on: the state after
stimulus step k is the response at t = k * dt, the state after spontaneous step m at t = (m - P) * dt
(P spontaneous steps; t = 0 is the end of the blank phase). A time bin (start, end) averages the rates
of the states with start < t <= end. As many steps are simulated as the latest bin needs: a bin past
the default protocol (200 ms) runs a longer one, up to :data:`cordsnet.config.MAX_STEPS` steps.

**Regions.** ``region_layer_map`` maps a region to one area or a list of areas (``"IT": "area_7"``;
several areas are concatenated along ``neuroid``). The defaults (:data:`DEFAULT_REGION_AREAS`) follow
the architecture (docs/specification.md §1): the areas come in stages of one spatial resolution (S/4,
S/8, S/16, S/32), each stage halving the resolution and doubling the channels, as receptive fields grow
along the ventral stream V1 -> V2 -> V4 -> IT. A region gets the *last* area of a stage (the stage's
output, after its recurrence):

* R8 (four stages): V1 = area_1 (S/4), V2 = area_3 (S/8), V4 = area_5 (S/16), IT = area_7 (S/32, the
  deepest area; the paper analyses areas 6 and 7 and the readout reads both).
* R6 (three stages): V1 = area_1 (S/4), V2 = area_2 (first S/8 area), V4 = area_3 (S/8), IT = area_5.
* R4 (two stages): one area per region in order, V1 = area_0 ... IT = area_3.
* R2 (one stage): V1 = V2 = area_0, V4 = IT = area_1.

These are a structural default, not a fitted commitment: Brain-Score's layer-selection procedure (fit
each region's public data on every area) may pick others; pass them in ``region_layer_map``.

**Images.** Brain-Score places each stimulus on a screen of :meth:`visual_degrees` degrees (default 8),
padding smaller stimuli with grey (128, 128, 128) and cropping larger ones, before ``look_at`` sees the
file. The adapter then applies the project's one image pipeline (:class:`cordsnet.runtime.Preprocessor`)
as the model's dataset preset says, chosen by ``preprocessing`` (:data:`PREPROCESSING`):

* ``"test"`` (default): the preset's test transform, exactly what ``cordsnet-cli predict`` does, so the
  ``label`` task agrees with ``predict``. For ImageNet it resizes to 256 and centre-crops 224: the model
  sees the central 224/256 of the screen (7 of 8 degrees).
* ``"full"``: the shorter side resized straight to S (no crop): the model sees the whole screen.

Grey on screen is not the model's blank: the blank of the spontaneous phase is the preset's mean image
(zero drive); grey (0.502 in [0, 1]) is close to the ImageNet mean (0.485, 0.456, 0.406) and so a weak
drive. Stimuli are shown as they are; the blank before onset is always the model's own.

``number_of_trials``: CordsNet is deterministic, so repeated trials are identical and not simulated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .extras import require

require("torch", "cordsnet.brainscore")
require("brainscore", "cordsnet.brainscore")
import torch  # noqa: E402 (after the extras' checks: one line, not a traceback)

from . import validate  # noqa: E402
from .analysis.protocols import TAU_MS  # noqa: E402
from .config import MAX_STEPS, CordsNetConfig  # noqa: E402
from .model import CordsNet  # noqa: E402
from .runtime.preprocess import Preprocessor  # noqa: E402
from . import functional as CF

__all__ = ["DEFAULT_REGION_AREAS", "DEFAULT_VISUAL_DEGREES", "PREPROCESSING", "REGIONS", "TASKS", "CordsNetBrainModel",
           "default_region_map"]

REGIONS: tuple[str, ...] = ("V1", "V2", "V4", "IT")  # BrainModel.RecordingTarget
TASKS: tuple[str, ...] = ("passive", "label", "probabilities")  # the BrainModel.Task values implemented
DEFAULT_VISUAL_DEGREES = 8  # Brain-Score's usual commitment for ImageNet models

# Depth -> region -> area (see the module docstring for the reasons).
DEFAULT_REGION_AREAS: dict[int, dict[str, str]] = {
    8: {"V1": "area_1", "V2": "area_3", "V4": "area_5", "IT": "area_7"},
    6: {"V1": "area_1", "V2": "area_2", "V4": "area_3", "IT": "area_5"},
    4: {"V1": "area_0", "V2": "area_1", "V4": "area_2", "IT": "area_3"},
    2: {"V1": "area_0", "V2": "area_0", "V4": "area_1", "IT": "area_1"},
}


def _test_transform(config: CordsNetConfig) -> Preprocessor:
    return Preprocessor.from_preset(config.preset, config.image_size)


def _full_field(config: CordsNetConfig) -> Preprocessor:
    return dataclasses.replace(_test_transform(config), resize_size=config.image_size)


# How stimuli become model inputs: name -> config -> Preprocessor (see the module docstring).
PREPROCESSING: dict[str, Callable[[CordsNetConfig], Preprocessor]] = {"test": _test_transform, "full": _full_field}


def default_region_map(depth: int) -> dict[str, tuple[str, ...]]:
    """The default region -> areas map of a depth-`depth` model (:data:`DEFAULT_REGION_AREAS`)."""
    areas = DEFAULT_REGION_AREAS[validate.choice("depth", depth, DEFAULT_REGION_AREAS)]
    return {region: (area,) for region, area in areas.items()}


class CordsNetBrainModel:
    """A CordsNet as a Brain-Score ``BrainModel`` (module docstring: time, regions, images).

    Args:
        checkpoint: anything :func:`cordsnet.load_checkpoint` takes (None: the bundled model; a path;
            ``"cordsnet-r8"``; ``"hf-hub:ORG/NAME"``) or a :class:`CordsNet`.
        identifier: the model's Brain-Score identifier (default ``cordsnet-r<depth>-<dataset>``, or the
            checkpoint's name when it is a registered one).
        region_layer_map: region -> area name or list of area names (``"area_<i>"``); missing regions
            keep their default.
        visual_degrees: the field of view Brain-Score places stimuli in.
        preprocessing: a :data:`PREPROCESSING` name.
        batch_size: images simulated together.
        device: torch device of the simulation.
    """

    def __init__(self, checkpoint: Any = None, *, identifier: str | None = None,
                 region_layer_map: Mapping[str, str | Sequence[str]] | None = None,
                 visual_degrees: float = DEFAULT_VISUAL_DEGREES, preprocessing: str = "test",
                 batch_size: int = 16, device: str | torch.device = "cpu") -> None:
        from .checkpoint import load_checkpoint

        model = checkpoint if isinstance(checkpoint, CordsNet) else load_checkpoint(checkpoint)
        self.model = model.to(device).eval()
        config = self.model.config
        if config.preset is None:
            raise ValueError("checkpoint: the model's config names no dataset preset, so its image normalisation is "
                             "unknown; load it with load_checkpoint(..., dataset=NAME)")
        self.preprocess = PREPROCESSING[validate.choice("preprocessing", preprocessing, PREPROCESSING)](config)
        self._visual_degrees = validate.number("visual_degrees", visual_degrees, low=0, low_open=True)
        self.batch_size = validate.positive_int("batch_size", batch_size)
        if identifier is None:
            named = isinstance(checkpoint, str) and not os.path.exists(checkpoint)
            identifier = checkpoint if named else f"cordsnet-r{config.depth}-{config.dataset}"
        self._identifier = str(identifier)
        self.region_layer_map = self._region_map(region_layer_map or {})
        self.dt_ms = float(config.alpha) * TAU_MS
        self._task: str | None = None
        self._recording: tuple[str, list[tuple[float, float]]] | None = None
        self._labels: Any = None
        self._classifier: Any = None

    # ------------------------------------------------------------------------------ interface
    @property
    def identifier(self) -> str:
        return self._identifier

    def visual_degrees(self) -> float:
        """The field of view, in degrees, of the images ``look_at`` receives."""
        return _ms(self._visual_degrees)

    def start_task(self, task: str, fitting_stimuli: Any = None) -> None:
        """Switch to a task: "passive" (look_at returns None), "label" or "probabilities".

        Args:
            task: one of :data:`TASKS`.
            fitting_stimuli: "label": the labelling domain, ``"imagenet"`` (synsets; an ImageNet model and
                brainscore_vision's synset list) or a list of labels, each one of the model's class names or,
                for an ImageNet model with brainscore_vision installed, one of Brain-Score's categories
                ("dog", "airplane", ...: the mean probability of its ImageNet classes) (default: every
                class); "probabilities": a StimulusSet with an ``image_label`` column, on
                whose readout features a logistic regression is fitted.
        """
        task = validate.choice("task", str(task), TASKS)
        self._recording = None
        if task == "label":
            self._labels = self._label_domain(fitting_stimuli)
        elif task == "probabilities":
            self._classifier = self._fit_probabilities(fitting_stimuli)
        self._task = task

    def start_recording(self, recording_target: str, time_bins: Iterable[Sequence[float]]) -> None:
        """Record a region in time bins from now on.

        Args:
            recording_target: one of the regions of :attr:`region_layer_map` (V1, V2, V4, IT).
            time_bins: (start, end) pairs in ms after stimulus onset, e.g. ``[(70, 170), (170, 250)]``.

        Raises:
            ValueError: an unknown region, a malformed bin, a bin holding no step (narrower than dt), a
                bin before the blank phase or past the longest simulation.
        """
        region = validate.choice("recording_target", str(recording_target), self.region_layer_map)
        bins = [self._check_bin(i, b) for i, b in enumerate(list(time_bins))]
        if not bins:
            raise ValueError("time_bins: expected at least one (start, end) pair, got none")
        self._recording = (region, bins)
        self._task = None

    def look_at(self, stimuli: Any, number_of_trials: int = 1) -> Any:
        """Show the stimuli; return the recording or the task's answers (None for the passive task).

        Args:
            stimuli: a list of image paths or a Brain-Score StimulusSet (``stimulus_id`` column and
                ``get_stimulus``).
            number_of_trials: repetitions to average (the model is deterministic: ignored).

        Returns:
            Recording: presentation x neuroid x time_bin. Label: presentation x choice (labels).
            Probabilities: presentation x choice (one column per fitted label).
        """
        validate.positive_int("number_of_trials", number_of_trials)
        if self._recording is None and self._task is None:
            raise ValueError("look_at: call start_recording(region, time_bins) or start_task(task) first")
        paths, presentation = _stimuli(stimuli)
        if self._recording is not None:
            return self._record(paths, presentation, *self._recording)
        if self._task == "passive":
            return None
        if self._task == "label":
            return self._label(paths, presentation)
        return self._probabilities(paths, presentation)

    # ------------------------------------------------------------------------------- regions
    def _region_map(self, overrides: Mapping[str, str | Sequence[str]]) -> dict[str, tuple[str, ...]]:
        validate.mapping("region_layer_map", overrides)
        valid = [f"area_{i}" for i in range(self.model.config.depth)]
        regions = default_region_map(self.model.config.depth)
        for region, areas in overrides.items():
            names = (areas,) if isinstance(areas, str) else tuple(areas)
            if not names:
                raise ValueError(f"region_layer_map[{region!r}]: expected an area name or a list of them, got none")
            for name in names:
                validate.choice(f"region_layer_map[{region!r}]", name, valid)
            regions[str(region)] = names
        return regions

    def _check_bin(self, i: int, item: Sequence[float]) -> tuple[float, float]:
        try:
            start, end = (float(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"time_bins[{i}]: expected a (start, end) pair of milliseconds, got {item!r}") from None
        earliest = -self.model.config.spontaneous_steps * self.dt_ms
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise ValueError(f"time_bins[{i}]: expected start < end, got ({start:g}, {end:g})")
        if start < earliest:
            raise ValueError(f"time_bins[{i}]: starts at {start:g} ms, before the blank phase begins "
                             f"({earliest:g} ms: {self.model.config.spontaneous_steps} steps of {self.dt_ms:g} ms)")
        if _steps_in(start, end, self.dt_ms) == (0, -1):
            raise ValueError(f"time_bins[{i}]: ({start:g}, {end:g}) ms holds no model step (one step every "
                             f"{self.dt_ms:g} ms); widen it")
        if _steps_in(start, end, self.dt_ms)[1] > MAX_STEPS:
            raise ValueError(f"time_bins[{i}]: ends at {end:g} ms, past {MAX_STEPS} steps of {self.dt_ms:g} ms")
        return start, end

    # ----------------------------------------------------------------------------- simulation
    def _inputs(self, paths: Sequence[str]) -> Iterable[torch.Tensor]:
        for i in range(0, len(paths), self.batch_size):
            batch = self.preprocess.batch(paths[i:i + self.batch_size])
            yield torch.from_numpy(batch).to(self.model.device, self.model.dtype)

    @torch.no_grad()
    def _record(self, paths: Sequence[str], presentation: dict[str, list], region: str,
                bins: list[tuple[float, float]]) -> Any:
        model, config, dt = self.model, self.model.config, self.dt_ms
        areas = [int(name.split("_")[1]) for name in self.region_layer_map[region]]
        spans = [_steps_in(s, e, dt) for s, e in bins]  # inclusive step ranges (negative: blank phase)
        counts = np.array([hi - lo + 1 for lo, hi in spans], dtype=np.float64)
        last = max(hi for _, hi in spans)
        first = min(lo for lo, _ in spans)
        blank: dict[int, list[torch.Tensor]] = {}
        if first <= 0:  # states of the blank phase, the same for every image
            p = config.spontaneous_steps
            sums = [[torch.zeros(config.state_shapes[a]) for a in areas] for _ in bins]
            state = model.initial_state(1)
            for m, state in enumerate(CF.trajectory(model.dynamics, model.effective_weights(), state, None, p,
                                                                 config.alpha), 1):
                for j, (lo, hi) in enumerate(spans):
                    if lo <= m - p <= hi:
                        for s, a in zip(sums[j], areas):
                            s += state[a][0].float().cpu()
            blank = {j: [s.flatten() for s in sums[j]] for j in range(len(bins))}
        out = []
        for x in self._inputs(paths):
            acc = [[torch.zeros(x.shape[0], math.prod(config.state_shapes[a])) for a in areas] for _ in bins]
            if last >= 1:
                for k, state in enumerate(model.trajectory(x, steps=last), 1):
                    for j, (lo, hi) in enumerate(spans):
                        if lo <= k <= hi:
                            for s, a in zip(acc[j], areas):
                                s += state[a].flatten(1).float().cpu()
            for j in blank:
                for s, b in zip(acc[j], blank[j]):
                    s += b
            out.append(np.stack([torch.cat(acc[j], 1).numpy() / counts[j] for j in range(len(bins))], axis=-1))
        values = np.concatenate(out).astype(np.float32)  # (presentation, neuroid, time_bin)
        neuroid = _neuroid_coords(region, self.region_layer_map[region], config)
        return _assembly(values, presentation, neuroid, bins)

    @torch.no_grad()
    def _final(self, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, K) and readout features (N, c) after the model's own protocol."""
        logits, features = [], []
        model = self.model
        for x in self._inputs(paths):
            for state in model.trajectory(x):
                pass
            logits.append(model.readout(state).float().cpu().numpy())
            features.append((torch.relu(state[-1]) + torch.relu(state[-2])).mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(logits), np.concatenate(features)

    # ----------------------------------------------------------------------------------- tasks
    def _label_domain(self, labels: Any) -> Any:
        """``"imagenet"``, or [(label, class indices)] for a list of labels (default: every class)."""
        config = self.model.config
        names = list(config.preset.class_names)
        if labels is None:
            return [(name, [i]) for i, name in enumerate(names)]
        if isinstance(labels, str):
            if labels != "imagenet":
                raise ValueError(f"fitting_stimuli: expected 'imagenet' or a list of labels, got {labels!r}")
            if config.num_classes != 1000:
                raise ValueError(f"fitting_stimuli: 'imagenet' labels need a 1000-class ImageNet model, this one has "
                                 f"{config.num_classes} classes; pass a list of its labels")
            return labels
        domain, unknown = [], []
        for label in (str(v) for v in labels):
            indices = [names.index(label)] if label in names else _imagenet_label_indices(label, config)
            if indices:
                domain.append((label, indices))
            else:
                unknown.append(label)
        if unknown or not domain:
            more = (" or Brain-Score's ImageNet categories (with brainscore_vision installed)"
                    if config.dataset == "imagenet" else "")
            raise ValueError(f"fitting_stimuli: labels {unknown or '[]'} are not classes of the model; expected some "
                             f"of {names[:20]}{' ...' if len(names) > 20 else ''}{more}")
        return domain

    def _label(self, paths: Sequence[str], presentation: dict[str, list]) -> Any:
        logits, _ = self._final(paths)
        extra: dict[str, list] = {}
        if isinstance(self._labels, str):  # "imagenet": the synset of the top class
            index = logits.argmax(1)
            synsets = _imagenet_synsets()
            choices = [synsets[i] for i in index]
            extra = {"synset": choices, "logit": index.tolist()}
        else:  # the label whose classes have the highest mean probability (Brain-Score's rule; one class: its logit)
            shifted = np.exp(logits - logits.max(1, keepdims=True))
            probabilities = shifted / shifted.sum(1, keepdims=True)
            scores = np.stack([probabilities[:, idx].mean(1) for _, idx in self._labels], axis=1)
            choices = [self._labels[i][0] for i in scores.argmax(1)]
        return _behaviour(np.array(choices, dtype=object)[:, None], {**presentation, "label": choices, **extra},
                          None)

    def _fit_probabilities(self, stimuli: Any) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if stimuli is None or not hasattr(stimuli, "columns") or "image_label" not in stimuli.columns:
            raise ValueError("fitting_stimuli: the probabilities task needs a StimulusSet with an 'image_label' "
                             "column")
        paths, _ = _stimuli(stimuli)
        labels = [str(v) for v in stimuli["image_label"]]
        if len(set(labels)) < 2:
            raise ValueError(f"fitting_stimuli: expected at least 2 distinct image_label values, got {sorted(set(labels))}")
        _, features = self._final(paths)
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(features, labels)

    def _probabilities(self, paths: Sequence[str], presentation: dict[str, list]) -> Any:
        _, features = self._final(paths)
        values = self._classifier.predict_proba(features)
        return _behaviour(values, presentation, [str(c) for c in self._classifier.classes_])


# --------------------------------------------------------------------------------------- helpers
def _steps_in(start: float, end: float, dt: float) -> tuple[int, int]:
    """The steps k with start < k * dt <= end (inclusive range; (0, -1) when none)."""
    lo = math.floor(round(start / dt, 9)) + 1
    hi = math.floor(round(end / dt, 9))
    return (lo, hi) if hi >= lo else (0, -1)


def _stimuli(stimuli: Any) -> tuple[list[str], dict[str, list]]:
    """Paths and presentation coordinates of a list of paths or a StimulusSet (every column kept)."""
    if hasattr(stimuli, "get_stimulus") and hasattr(stimuli, "columns"):
        if "stimulus_id" not in stimuli.columns:
            raise ValueError("stimuli: a StimulusSet needs a 'stimulus_id' column")
        ids = list(stimuli["stimulus_id"])
        paths = [str(stimuli.get_stimulus(i)) for i in ids]
        coords = {str(c): list(stimuli[c]) for c in stimuli.columns}
        coords.setdefault("stimulus_path", paths)
        return paths, coords
    if isinstance(stimuli, (str, os.PathLike)):
        stimuli = [stimuli]
    paths = [str(p) for p in stimuli]
    if not paths:
        raise ValueError("stimuli: expected at least one image path, got none")
    return paths, {"stimulus_id": paths, "stimulus_path": [str(Path(p).resolve()) for p in paths]}


def _neuroid_coords(region: str, areas: Sequence[str], config: CordsNetConfig) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("neuroid_id", "region", "layer", "channel", "channel_y",
                                                         "channel_x", "neuroid_num")}
    for name in areas:
        c, h, w = config.state_shapes[int(name.split("_")[1])]
        ch, y, x = (a.ravel() for a in np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij"))
        parts["neuroid_id"].append(np.char.add(f"{name}.", np.char.add(np.char.add(ch.astype(str), "."),
                                                                       np.char.add(np.char.add(y.astype(str), "."),
                                                                                   x.astype(str)))))
        parts["region"].append(np.full(ch.size, region, dtype=object))
        parts["layer"].append(np.full(ch.size, name, dtype=object))
        parts["channel"].append(ch)
        parts["channel_y"].append(y)
        parts["channel_x"].append(x)
        parts["neuroid_num"].append(np.arange(ch.size))
    coords = {k: np.concatenate(v) for k, v in parts.items()}
    coords["neuroid_id"] = coords["neuroid_id"].astype(object)
    return coords


def _brainio(name: str) -> Any:
    """Brain-Score's assembly class `name` when Brain-Score is running (its modules imported), else None."""
    for module in ("brainscore_core.supported_data_standards.brainio.assemblies", "brainio.assemblies"):
        if module.split(".")[0] in sys.modules:
            try:
                import importlib

                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
    return None


def _assembly(values: np.ndarray, presentation: dict[str, list], neuroid: Mapping[str, np.ndarray],
              bins: Sequence[tuple[float, float]]) -> Any:
    import xarray as xr

    coords: dict[str, Any] = {k: ("presentation", list(v)) for k, v in presentation.items()}
    coords.update({k: ("neuroid", v) for k, v in neuroid.items()})
    coords["time_bin_start"] = ("time_bin", [_ms(s) for s, _ in bins])
    coords["time_bin_end"] = ("time_bin", [_ms(e) for _, e in bins])
    array = xr.DataArray(values, dims=("presentation", "neuroid", "time_bin"), coords=coords)
    array = array.set_index(presentation=list(presentation), neuroid=list(neuroid),
                            time_bin=["time_bin_start", "time_bin_end"])
    wrapper = _brainio("NeuroidAssembly")
    return wrapper(array) if wrapper is not None else array


def _behaviour(values: np.ndarray, presentation: dict[str, list], choices: list[str] | None) -> Any:
    import xarray as xr

    coords: dict[str, Any] = {k: ("presentation", list(v)) for k, v in presentation.items()}
    if choices is not None:
        coords["choice"] = choices
    array = xr.DataArray(values, dims=("presentation", "choice"), coords=coords)
    array = array.set_index(presentation=list(presentation))
    wrapper = _brainio("BehavioralAssembly")
    return wrapper(array) if wrapper is not None else array


def _ms(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _imagenet_label_indices(label: str, config: CordsNetConfig) -> list[int] | None:
    """ImageNet class indices of one of Brain-Score's categories ("dog", "airplane", ...), for an ImageNet model
    with brainscore_vision installed (its ``LabelToImagenetIndices``); else None."""
    if config.dataset != "imagenet" or config.num_classes != 1000:
        return None
    try:
        from brainscore_vision.model_helpers.brain_transformation.behavior import LabelToImagenetIndices

        return [int(i) for i in LabelToImagenetIndices.label_to_indices(label)]
    except (ImportError, AttributeError):
        return None


def _imagenet_synsets() -> list[str]:
    """The 1000 ImageNet synsets in class-index order, from brainscore_vision's own list."""
    try:
        from importlib import resources

        text = resources.files("brainscore_vision.model_helpers.brain_transformation").joinpath(
            "imagenet_classes.txt").read_text()
    except (ImportError, FileNotFoundError, OSError):
        raise ValueError("fitting_stimuli: 'imagenet' labels are WordNet synsets, read from brainscore_vision's list; "
                         "install brainscore_vision or pass a list of the model's class names") from None
    return text.split()
