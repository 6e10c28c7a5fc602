"""The Brain-Score BrainModel contract of cordsnet.brainscore.CordsNetBrainModel, on our own images, with the
bundled model (brainscore_vision is not needed; tools/brainscore-check.sh tests against it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cordsnet.brainscore import DEFAULT_REGION_AREAS, CordsNetBrainModel
from cordsnet.runtime.preprocess import Preprocessor

pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory):
    """Eight scikit-learn digits as 32-px greyscale PNG files, with their labels."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i in range(8):
        img = Image.fromarray((X[i].reshape(8, 8) * 255 / 16).round().astype(np.uint8), "L")
        path = folder / f"digit{i}.png"
        img.resize((32, 32), Image.BILINEAR).save(path)
        paths.append(str(path))
    return paths, [str(v) for v in y[:8]]


@pytest.fixture(scope="module")
def brain(bundled_model):
    return CordsNetBrainModel(bundled_model)


class _StimulusSet(pd.DataFrame):
    """What Brain-Score's StimulusSet offers the model: columns (stimulus_id, ...) and get_stimulus(id)."""

    _metadata = ["stimulus_paths"]

    def get_stimulus(self, stimulus_id):
        return self.stimulus_paths[stimulus_id]


def _stimulus_set(paths, labels):
    s = _StimulusSet({"stimulus_id": [f"s{i}" for i in range(len(paths))], "image_label": labels,
                      "size_deg": [8.0] * len(paths)})
    s.stimulus_paths = {f"s{i}": p for i, p in enumerate(paths)}
    return s


def test_recording_contract_and_time_bins(brain, bundled_model, digit_files):
    paths, _ = digit_files
    bins = [(70, 170), (170, 250), (250, 300)]  # the last one is past the default 200 ms protocol
    brain.start_recording("IT", bins)
    rec = brain.look_at(paths)
    assert rec.dims == ("presentation", "neuroid", "time_bin")
    c, h, w = bundled_model.config.state_shapes[3]  # IT = area_3 for R4
    assert rec.shape == (len(paths), c * h * w, 3)
    assert list(rec["stimulus_id"].values) == paths
    assert set(rec["region"].values) == {"IT"} and set(rec["layer"].values) == {"area_3"}
    assert len(set(rec["neuroid_id"].values)) == c * h * w
    assert list(rec["time_bin_start"].values) == [70, 170, 250] and list(rec["time_bin_end"].values) == [170, 250, 300]
    early, late = rec.isel(time_bin=0).values, rec.isel(time_bin=1).values
    assert np.abs(early - late).mean() > 0.01 * np.abs(early).mean()  # IT changes between 70-170 and 170-250 ms

    # Each bin is the mean of the states after steps k with start < 2k <= end (2 ms steps), as model.run records.
    x = torch.from_numpy(Preprocessor.from_preset(bundled_model.config.preset, 32).batch(paths))
    with torch.no_grad():
        _, rates = bundled_model.run(x, steps=150, record=[3])
    for j, (start, end) in enumerate(bins):
        expected = rates[3][start // 2:end // 2].mean(0).flatten(1).numpy()  # steps start/2+1 .. end/2
        np.testing.assert_allclose(rec.isel(time_bin=j).values, expected, rtol=1e-5, atol=1e-6)


def test_stimulus_set_columns_regions_and_blank_bins(bundled_model, digit_files):
    paths, labels = digit_files
    brain = CordsNetBrainModel(bundled_model, region_layer_map={"V4": ["area_2", "area_3"]})
    stimuli = _stimulus_set(paths[:3], labels[:3])
    brain.start_recording("V4", [(-20, 0), (0, 10)])
    rec = brain.look_at(stimuli, number_of_trials=2)
    assert list(rec["stimulus_id"].values) == ["s0", "s1", "s2"]
    assert list(rec["image_label"].values) == labels[:3] and list(rec["size_deg"].values) == [8.0] * 3
    shapes = bundled_model.config.state_shapes
    assert rec.sizes["neuroid"] == sum(int(np.prod(shapes[a])) for a in (2, 3))
    assert set(rec["layer"].values) == {"area_2", "area_3"}
    blank = rec.isel(time_bin=0).values  # before onset: the blank phase, the same for every image
    assert np.array_equal(blank[0], blank[1]) and not np.array_equal(rec.isel(time_bin=1).values[0],
                                                                     rec.isel(time_bin=1).values[1])


def test_label_task_agrees_with_predict(brain, bundled_model, digit_files, tmp_path):
    from cordsnet.export import export

    paths, labels = digit_files
    graph = tmp_path / "digits-loop.onnx"
    export(bundled_model, graph, format="onnx", graph="loop")
    from cordsnet.runtime import open_session

    # what `cordsnet-cli predict GRAPH FILES...` runs: the graph's session, its preprocessing, top-1
    predicted = [top[0]["name"] for top in open_session(graph, "cpu").predict(paths, 1).to_list()]
    brain.start_task("label")
    answer = brain.look_at(paths)
    assert answer.dims == ("presentation", "choice") and answer.shape == (len(paths), 1)
    assert list(answer.values[:, 0]) == predicted
    assert sum(p == t for p, t in zip(predicted, labels)) >= 6  # and they are mostly right
    brain.start_task("label", ["3", "7"])  # a restricted domain: the better of the two
    restricted = brain.look_at(paths).values[:, 0]
    assert set(restricted) <= {"3", "7"} and restricted[3] == "3"


def test_probabilities_and_passive(brain, digit_files):
    paths, labels = digit_files
    brain.start_task("probabilities", _stimulus_set(paths, ["even" if int(v) % 2 == 0 else "odd" for v in labels]))
    probs = brain.look_at(paths[:4])
    assert probs.dims == ("presentation", "choice") and list(probs["choice"].values) == ["even", "odd"]
    np.testing.assert_allclose(probs.values.sum(1), 1.0, rtol=1e-6)
    brain.start_task("passive")
    assert brain.look_at(paths[:1]) is None


def test_defaults_and_errors(brain, bundled_model):
    assert brain.identifier == "cordsnet-r4-digits" and brain.visual_degrees() == 8
    assert brain.dt_ms == pytest.approx(2.0)
    assert {d: sorted(m) for d, m in DEFAULT_REGION_AREAS.items()} == {d: sorted(["V1", "V2", "V4", "IT"])
                                                                      for d in (2, 4, 6, 8)}
    with pytest.raises(ValueError, match="recording_target: expected one of"):
        brain.start_recording("MT", [(70, 170)])
    with pytest.raises(ValueError, match=r"time_bins\[0\]: \(70, 71\) ms holds no model step"):
        brain.start_recording("IT", [(70, 71)])
    with pytest.raises(ValueError, match="start < end"):
        brain.start_recording("IT", [(170, 70)])
    with pytest.raises(ValueError, match="before the blank phase"):
        brain.start_recording("IT", [(-500, 0)])
    with pytest.raises(ValueError, match="task: expected one of"):
        brain.start_task("odd_one_out")
    with pytest.raises(ValueError, match="not classes of the model"):
        brain.start_task("label", ["dog"])
    with pytest.raises(ValueError, match="region_layer_map\\['IT'\\]: expected one of"):
        CordsNetBrainModel(bundled_model, region_layer_map={"IT": "area_9"})
    with pytest.raises(ValueError, match="preprocessing: expected one of"):
        CordsNetBrainModel(bundled_model, preprocessing="stretch")
