#!/usr/bin/env bash
# Check cordsnet.brainscore.CordsNetBrainModel against the real brainscore_vision, in an isolated venv.
#
# brainscore_vision pins numpy<2, pandas<3, scikit-learn<1.6 and (through brainscore_core) xarray 2022.3, which
# conflict with cordsnet's zarr extra (xarray>=2024.10), so it gets a plain venv of its own (no system site
# packages) with cordsnet's torch extra (torch, torchvision, onnxscript, safetensors) and onnxruntime beside it; cordsnet is used from this checkout (PYTHONPATH).
#
# What runs (no network besides the package index; Brain-Score's data sets live on S3 and are not fetched):
#   1. CordsNetBrainModel passes as a brainscore_vision BrainModel (the interface's methods, Task, RecordingTarget).
#   2. The images brainscore_vision ships (model_helpers/check_submission/images) become a StimulusSet, are placed
#      on screen by Brain-Score's own place_on_screen (grey background, the model's visual degrees), and the steps
#      of its submission check's mock benchmark run on them: start_recording("IT", bins) -> look_at ->
#      NeuroidAssembly; start_task("probabilities", stimuli with image_label) -> look_at.
#   3. Brain-Score's temporal machinery on those recordings, data-free: assembly_time_align to coarser bins,
#      PerTime over time bins with its 'ridge_cv' regression metric against a synthetic target assembly.
#   4. The label task's ImageNet domains ("imagenet" synsets, Brain-Score's 16 categories) on a 1000-class model
#      of the published layout with random weights (the published checkpoint itself needs the network).
# The real benchmarks (MajajHong2015 etc.) need their data from S3: not run here.
#
# Usage: bash tools/brainscore-check.sh            (venv: $BRAINSCORE_VENV, default ~/.cache/cordsnet/venv-brainscore)
#        BRAINSCORE_VENV=/work/venv-bs bash tools/brainscore-check.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BRAINSCORE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cordsnet/venv-brainscore}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating the isolated venv $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import brainscore_vision, onnxruntime, onnxscript, safetensors, torch" 2>/dev/null; then
    # torch first (brainscore_vision requires torch>=2.6; this pins the build the project is tested with)
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q $TORCH_SPEC
    "$VENV/bin/pip" install -q brainscore_vision onnxruntime onnxscript safetensors  # + the rest of cordsnet[torch]
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT" BRAINSCORE_HOME="$WORK/brainscore" RESULTCACHING_HOME="$WORK/resultcaching" \
    RESULTCACHING_DISABLE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
cd "$WORK"
"$VENV/bin/python" - <<'EOF'
import inspect
import warnings
from importlib import metadata, resources
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)
from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly
from brainscore_core.supported_data_standards.brainio.stimuli import StimulusSet
from brainscore_vision.benchmark_helpers.screen import place_on_screen
from brainscore_vision.metric_helpers.temporal import PerTime
from brainscore_vision.model_helpers.brain_transformation.temporal import assembly_time_align
from brainscore_vision.model_interface import BrainModel
from brainscore_vision import load_metric

from cordsnet.brainscore import CordsNetBrainModel

print(f"brainscore_vision {metadata.version('brainscore_vision')}, brainscore_core "
      f"{metadata.version('brainscore_core')}, xarray {metadata.version('xarray')}, numpy {np.__version__}")

# 1. the interface
for name in ("identifier", "visual_degrees", "start_task", "start_recording", "look_at"):
    assert hasattr(CordsNetBrainModel, name), name
for method in ("start_task", "start_recording", "look_at"):
    ours = list(inspect.signature(getattr(CordsNetBrainModel, method)).parameters)
    theirs = list(inspect.signature(getattr(BrainModel, method)).parameters)
    assert len(ours) >= len(theirs), (method, ours, theirs)


class Submission(CordsNetBrainModel, BrainModel):
    """What a Brain-Score plugin's get_model returns."""


model = Submission(None, identifier="cordsnet-r4-digits")
assert isinstance(model, BrainModel)
print("1. interface: ok;", model.identifier, "visual degrees", model.visual_degrees(),
      "regions", model.region_layer_map)

# 2. the shipped images through Brain-Score's own screen placement
folder = Path(str(resources.files("brainscore_vision.model_helpers.check_submission").joinpath("images")))
files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
assert len(files) >= 10, files
ids = [f"image{p.stem}" for p in files]
stimuli = StimulusSet({"stimulus_id": ids, "image_label": ["even" if int(p.stem) % 2 == 0 else "odd" for p in files],
                       "degrees": [8.0] * len(files)})
stimuli.stimulus_paths = dict(zip(ids, map(str, files)))
stimuli.identifier = "cordsnet-check-submission-images"
screen = place_on_screen(stimuli, target_visual_degrees=10)  # 8 deg images on a 10 deg screen: grey border
grey = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(screen.get_stimulus(ids[0])))[0, 0]
assert tuple(grey) == (128, 128, 128), grey

bins = [(t, t + 10) for t in range(70, 250, 10)]  # 10 ms bins from 70 to 250 ms, past the 200 ms protocol
model.start_recording("IT", bins)
recording = model.look_at(screen)
assert isinstance(recording, NeuroidAssembly), type(recording)
assert recording.dims == ("presentation", "neuroid", "time_bin"), recording.dims
assert list(recording["stimulus_id"].values) == ids
assert list(recording["image_label"].values) == list(stimuli["image_label"])  # the StimulusSet's columns
assert set(recording["degrees"].values) == {10}
early = recording.sel(time_bin_start=70).values
late = recording.sel(time_bin_start=240).values
assert np.abs(early - late).mean() > 0, "IT does not change"
print(f"2. recording: {dict(recording.sizes)}, a NeuroidAssembly; IT 70-80 vs 240-250 ms: mean |diff| "
      f"{np.abs(early - late).mean():.4f}")

model.start_task(BrainModel.Task.probabilities, stimuli)
probabilities = model.look_at(screen)
assert probabilities.dims == ("presentation", "choice") and np.allclose(probabilities.values.sum(1), 1)
model.start_task(BrainModel.Task.label, ["3", "8"])
labels = model.look_at(screen)
assert set(np.asarray(labels.values).ravel()) <= {"3", "8"}
print(f"   probabilities: {dict(probabilities.sizes)}; label: {dict(labels.sizes)}")

# 3. Brain-Score's temporal machinery, data-free
coarse = assembly_time_align(recording, [(70, 170), (170, 250)])
assert list(coarse["time_bin_start"].values) == [70, 170]
direct = model
direct.start_recording("IT", [(70, 170), (170, 250)])
again = direct.look_at(screen)
np.testing.assert_allclose(coarse.values, again.transpose(*coarse.dims).values, rtol=1e-4, atol=1e-6)
print("3. assembly_time_align of 10 ms bins to 70-170/170-250 ms equals recording those bins directly")

rng = np.random.default_rng(0)
flat = again.isel(time_bin=0).values  # (presentation, neuroid)
mix = rng.standard_normal((flat.shape[1], 20)) / np.sqrt(flat.shape[1])
target = NeuroidAssembly(
    (flat @ mix + 0.01 * rng.standard_normal((flat.shape[0], 20)))[:, :, None].repeat(2, axis=2),
    coords={"stimulus_id": ("presentation", ids), "image_label": ("presentation", list(stimuli["image_label"])),
            "neuroid_id": ("neuroid", [f"n{i}" for i in range(20)]), "region": ("neuroid", ["IT"] * 20),
            "time_bin_start": ("time_bin", [70, 170]), "time_bin_end": ("time_bin", [170, 250])},
    dims=["presentation", "neuroid", "time_bin"])
active = again.isel(neuroid=np.flatnonzero(again.values.std(axis=(0, 2)) > 0))  # units that vary
metric = load_metric("ridge_cv", crossvalidation_kwargs=dict(splits=2, stratification_coord=None))
score = PerTime(metric)(active, target)
print(f"   'ridge_cv' per time bin against a synthetic IT target: {np.asarray(score.values).round(3).tolist()}")

# 4. the label task's ImageNet domains on a 1000-class ImageNet model (random weights of the published layout, 32 px)
import sys
import torch
sys.path.insert(0, str(Path(__import__("cordsnet").__file__).parents[1] / "tests"))
from helpers import make_published_state_dict
from cordsnet import CordsNetConfig, load_checkpoint

state = make_published_state_dict(depth=2, num_classes=1000, in_channels=3, image_size=32)
imagenet = Submission(load_checkpoint(state, config=CordsNetConfig(depth=2, num_classes=1000, image_size=32,
                                                                   steps=10, spontaneous_steps=5)))
imagenet.start_task(BrainModel.Task.label, "imagenet")
synsets = imagenet.look_at(screen)
assert all(str(v).startswith("n") and len(str(v)) == 9 for v in np.asarray(synsets.values).ravel())
assert list(synsets["logit"].values) == [int(v) for v in synsets["logit"].values]
categories = ["airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock", "dog",
              "elephant", "keyboard", "knife", "oven", "truck"]  # the 16 categories of Brain-Score's Geirhos benchmarks
imagenet.start_task(BrainModel.Task.label, categories)
chosen = imagenet.look_at(screen)
assert set(np.asarray(chosen.values).ravel()) <= set(categories)
print(f"4. label 'imagenet': synsets {list(np.asarray(synsets.values).ravel()[:3])} ...; "
      f"16 categories: {list(np.asarray(chosen.values).ravel()[:3])} ...")
print("brainscore_vision check: passed")
EOF
