"""Dataset-scale recording into Zarr stores: contents vs CordsNet.run, xarray, resume, refusal, evaluate, torchrun."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

if sys.version_info < (3, 11):  # zarr v3 needs Python >= 3.11 (the test extra installs it from there on)
    pytest.skip("Zarr v3 stores need Python >= 3.11", allow_module_level=True)

import xarray as xr  # noqa: E402
import zarr  # noqa: E402

from cordsnet.analysis.evaluation import evaluation_dataset as dataset_for  # noqa: E402
from cordsnet.analysis.recording import make_plan  # noqa: E402
from cordsnet.analysis.evaluation import accuracy_report, plot_accuracy  # noqa: E402
from cordsnet.analysis.store import open_store, record_dataset  # noqa: E402
from cordsnet.checkpoint import load_checkpoint  # noqa: E402

STEPS, SPONT, CHUNK, N = 4, 3, 8, 20  # short protocol; 20 images = chunks of 8, 8 and 4


@pytest.fixture(scope="module")
def bundled():
    return load_checkpoint(None).eval()


@pytest.fixture(scope="module")
def digits(bundled):
    ds, source = dataset_for(bundled, "digits", "test", None)
    return ds, source


def _record(model, digits, store, **kw):
    ds, source = digits
    plan = make_plan(model, kw.pop("areas", [1, 3]), steps=kw.pop("steps", STEPS), spontaneous_steps=SPONT,
                     spatial_mean=kw.pop("spatial_mean", False))
    kw.setdefault("progress", False)
    return record_dataset(model, ds, store, plan, source=source, limit=kw.pop("limit", N), chunk_images=CHUNK, **kw)


def _arrays(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in group.array_keys()}


def _assert_same_store(a, b) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)  # exact (NaN == NaN for unwritten)
    attrs_a = zarr.open_group(str(a), mode="r").attrs["cordsnet"]
    assert attrs_a == zarr.open_group(str(b), mode="r").attrs["cordsnet"]


def test_store_equals_run_and_reads_with_zarr_and_xarray(bundled, digits, tmp_path, caplog):
    ds, _ = digits
    with caplog.at_level(logging.INFO, logger="cordsnet.record"):
        report = _record(bundled, digits, tmp_path / "s.zarr", log_every=8)
    assert (report.written, report.skipped, report.images) == (N, 0, N)
    assert any("images/s" in r.getMessage() for r in caplog.records)  # a log line per 8 images (no TTY)
    group = open_store(tmp_path / "s.zarr")
    attrs = group.attrs["cordsnet"]
    assert attrs["source"] == {"dataset": "digits", "split": "test", "split_size": 360, "images": N}
    assert attrs["protocol"]["steps"] == STEPS and attrs["window"] == [0, SPONT + STEPS]
    assert attrs["sharding"]["scheme"] == "strided-chunks" and attrs["chunk_images"] == CHUNK
    assert group["area_1"].shape == (N, SPONT + STEPS, 64, 8, 8) and group["area_1"].chunks[0] == CHUNK
    assert group["done"][:].all() and list(group["index"][:]) == list(range(N))
    # Sampled images against CordsNet.run on their chunk (the batch the store simulated).
    for chunk in (0, 2):
        rows = list(range(chunk * CHUNK, min(N, (chunk + 1) * CHUNK)))
        x = torch.stack([ds[i][0] for i in rows])
        with torch.no_grad():
            _, rates = bundled.run(x, steps=STEPS, spontaneous_steps=SPONT, record=[1, 3])
        for a in (1, 3):
            stored = group[f"area_{a}"][rows[0]:rows[-1] + 1, SPONT:]
            np.testing.assert_array_equal(stored, rates[a].transpose(0, 1).numpy())
        assert list(group["label"][rows[0]:rows[-1] + 1]) == [ds[i][1] for i in rows]
    spont = bundled.spontaneous_state(1, steps=SPONT)[3][0].numpy()
    np.testing.assert_array_equal(group["area_3"][5, SPONT - 1], spont)  # the blank phase, same for all

    data = xr.open_zarr(str(tmp_path / "s.zarr"), consolidated=False)
    assert data["area_3"].dims == ("image", "time", "channel_3", "y_3", "x_3")  # areas 1 and 3 differ in shape
    assert data.sizes["channel_1"] == 64 and data.sizes["y_3"] == 4
    assert {"index", "label", "time_ms"} <= set(data.coords)
    np.testing.assert_allclose(data["time_ms"].values, (np.arange(SPONT + STEPS) + 1 - SPONT) * 2.0)
    assert float(data["area_1"].isel(image=3, time=-1).mean()) == pytest.approx(
        float(group["area_1"][3, -1].mean()), rel=1e-6)


def test_kill_and_resume_equals_an_uninterrupted_run(bundled, digits, tmp_path):
    whole = tmp_path / "whole.zarr"
    _record(bundled, digits, whole, spatial_mean=True, areas=[0, 1])
    # areas of one shape share the plain dimension names
    assert zarr.open_group(str(whole), mode="r")["area_1"].metadata.dimension_names == ("image", "time", "channel")
    part = tmp_path / "part.zarr"
    first = _record(bundled, digits, part, spatial_mean=True, areas=[0, 1], stop_after=1)  # "killed" after a chunk
    assert first.written == CHUNK
    group = zarr.open_group(str(part), mode="r+")
    assert group["done"][:].sum() == CHUNK
    group["area_1"][CHUNK:2 * CHUNK] = 123.0  # a chunk half-written when the job died: not marked done
    again = _record(bundled, digits, part, spatial_mean=True, areas=[0, 1])
    assert (again.written, again.skipped) == (N - CHUNK, CHUNK)
    _assert_same_store(whole, part)
    assert _record(bundled, digits, part, spatial_mean=True, areas=[0, 1]).written == 0  # complete: nothing to do


def test_a_store_of_another_model_protocol_or_dataset_is_refused(bundled, digits, tmp_path):
    path = tmp_path / "s.zarr"
    _record(bundled, digits, path, limit=CHUNK, progress=True)  # the TTY bar's code path
    other = load_checkpoint(None)
    with torch.no_grad():
        other.conv_bias[0].add_(1e-3)
    with pytest.raises(ValueError, match="another model"):
        _record(other, digits, path, limit=CHUNK)
    with pytest.raises(ValueError, match="another protocol"):
        _record(bundled, digits, path, limit=CHUNK, steps=STEPS + 1)
    with pytest.raises(ValueError, match="another dataset"):
        _record(bundled, digits, path, limit=CHUNK + 1)
    ds, source = digits
    with pytest.raises(ValueError, match="another dataset"):
        record_dataset(bundled, ds, path, make_plan(bundled, [1, 3], steps=STEPS, spontaneous_steps=SPONT),
                       source={**source, "split": "val"}, limit=CHUNK, chunk_images=CHUNK, progress=False)
    with pytest.raises(ValueError, match="another variables"):
        _record(bundled, digits, path, limit=CHUNK, areas=[1])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a Zarr store"):
        _record(bundled, digits, tmp_path / "junk", limit=CHUNK)
    assert zarr.open_group(str(path), mode="r")["done"][:].all()  # the refused runs changed nothing


def test_evaluate_report_per_step_and_class(bundled, digits, tmp_path):
    ds, source = digits
    steps = 6
    plan = make_plan(bundled, (), window=(SPONT, SPONT + steps), logits=True, steps=steps, spontaneous_steps=SPONT)
    record_dataset(bundled, ds, tmp_path / "e.zarr", plan, source=source, readout="all", limit=N,
                   chunk_images=CHUNK, progress=False)
    report = accuracy_report(tmp_path / "e.zarr")
    x = torch.stack([ds[i][0] for i in range(N)])
    y = np.array([ds[i][1] for i in range(N)])
    with torch.no_grad():
        logits = torch.cat([bundled.run(x[i:i + CHUNK], steps=steps, spontaneous_steps=SPONT, readout="all")
                            for i in range(0, N, CHUNK)], dim=1).numpy()
    expected = (logits.argmax(-1) == y[None]).mean(1)
    np.testing.assert_allclose(report["top1"], expected, rtol=0, atol=0)
    last = logits[-1].argmax(-1) == y
    for entry in report["per_class"]:
        assert entry["top1"] == pytest.approx(last[y == entry["class"]].mean())
        assert entry["images"] == int((y == entry["class"]).sum())
    assert report["images"] == N and report["time_ms"] == [2.0 * (t + 1) for t in range(steps)]
    plot_accuracy(report, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    last_plan = make_plan(bundled, (), window=(SPONT + steps - 1, SPONT + steps), logits=True, steps=steps,
                          spontaneous_steps=SPONT)
    record_dataset(bundled, ds, tmp_path / "l.zarr", last_plan, source=source, readout="last", limit=N,
                   chunk_images=CHUNK, progress=False)
    assert zarr.open_group(str(tmp_path / "l.zarr"), mode="r")["logits"].shape == (N, 10)
    assert zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["logits"].metadata.dimension_names == (
        "image", "time", "class")
    assert accuracy_report(tmp_path / "l.zarr")["top1"] == [report["top1"][-1]]
    partial = tmp_path / "p.zarr"
    record_dataset(bundled, ds, partial, plan, source=source, readout="all", limit=N, chunk_images=CHUNK,
                   progress=False, stop_after=1)
    with pytest.raises(ValueError, match="12 of 20 images .* are not written yet"):
        accuracy_report(partial)


def test_cli_record_and_evaluate_errors(tmp_path):
    from cordsnet.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["record", "--dataset", "digits", "--areas", "1"])
    assert res.exit_code == 1 and "--store" in res.output
    res = runner.invoke(app, ["record", "--dataset", "digits", "--areas", "1", "--out", str(tmp_path / "x.npy")])
    assert res.exit_code == 1 and "takes no image files, --protocol or --out" in res.output
    res = runner.invoke(app, ["evaluate", "--dataset", "nope", "--store", str(tmp_path / "e.zarr")])
    assert res.exit_code == 1 and "dataset: expected one of" in res.output
    res = runner.invoke(app, ["record", "--areas", "1", "--out", str(tmp_path / "x.npy")])
    assert res.exit_code == 1 and "IMAGES" in res.output
    common = ["--limit", "4", "--spontaneous-steps", "1", "--batch-size", "4", "--store", str(tmp_path / "e.zarr")]
    res = runner.invoke(app, ["evaluate", "--steps", "2", "--json", *common])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 4
    res = runner.invoke(app, ["evaluate", "--steps", "3", *common])  # the store was made with 2 steps
    assert res.exit_code == 1 and "another protocol" in res.output and "Traceback" not in res.output


@pytest.mark.distributed
def test_torchrun_two_processes_equal_one_process(tmp_path):
    """record and evaluate under torchrun (2 gloo processes) write the same stores as one process."""
    common = ["--dataset", "digits", "--split", "test", "--limit", "24", "--steps", "3", "--spontaneous-steps", "2",
              "--batch-size", "8"]
    script = tmp_path / "both.py"  # one launch for both commands (saves a torchrun start-up on a busy CPU)
    script.write_text(textwrap.dedent("""
        import json, sys
        from cordsnet.cli import app
        out = sys.argv[1]
        common = json.loads(sys.argv[2])
        for args in (["record", "--area", "1,3", "--store", out + "/rec.zarr", "--json", *common],
                     ["evaluate", "--store", out + "/ev.zarr", "--report", out + "/report.json", *common]):
            code = app(args, standalone_mode=False)
            assert code == 0, (args, code)
    """))
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(tmp_path / "ddp"), json.dumps(common)], env=env, timeout=300,
                         capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "rank 1/2: wrote 8 images" in ddp.stderr and "rank 0/2: wrote 16 images" in ddp.stderr
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), json.dumps(common)], env=env,
                         timeout=300, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    for name in ("rec.zarr", "ev.zarr"):
        _assert_same_store(tmp_path / "ddp" / name, tmp_path / "one" / name)
    a = json.loads((tmp_path / "ddp" / "report.json").read_text())
    b = json.loads((tmp_path / "one" / "report.json").read_text())
    assert a["top1"] == b["top1"] and a["per_class"] == b["per_class"] and a["run"]["world"] == 2


def test_record_dataset_argument_errors(bundled, digits, tmp_path):
    ds, source = digits
    areas_plan = make_plan(bundled, [1], steps=STEPS, spontaneous_steps=SPONT)
    with pytest.raises(ValueError, match="readout: expected one of"):
        record_dataset(bundled, ds, tmp_path / "a.zarr", areas_plan, source=source, readout="first", limit=4)
    with pytest.raises(ValueError, match="needs a plan with logits=True"):
        record_dataset(bundled, ds, tmp_path / "a.zarr", areas_plan, source=source, readout="all", limit=4)
    full = make_plan(bundled, (), logits=True, steps=STEPS, spontaneous_steps=SPONT)
    with pytest.raises(ValueError, match="readout 'last' records the last index only"):
        record_dataset(bundled, ds, tmp_path / "a.zarr", full, source=source, readout="last", limit=4)
    with pytest.raises(ValueError, match="chunk_images: expected"):
        record_dataset(bundled, ds, tmp_path / "a.zarr", areas_plan, source=source, chunk_images=0, limit=4)
    with pytest.raises(ValueError, match="holds no logits"):
        _record(bundled, digits, tmp_path / "r.zarr", limit=4)
        accuracy_report(tmp_path / "r.zarr")
    assert not (tmp_path / "a.zarr").exists()  # nothing was created by the refused calls


# ------------------------------------------------------------------------ stores tell the truth
def _eval_store(bundled, digits, path, **kw):
    ds, source = digits
    plan = make_plan(bundled, (), window=(SPONT, SPONT + 2), logits=True, steps=2, spontaneous_steps=SPONT)
    return record_dataset(bundled, ds, path, plan, source=source, readout="all", limit=N, chunk_images=CHUNK,
                          progress=False, **kw)


def _chunk_files(path: Path, name: str, k: int) -> list[Path]:
    chunk = path / name / "c" / str(k)  # a file for a 1-d array, a folder of time blocks otherwise
    return [chunk] if chunk.is_file() else sorted(f for f in chunk.rglob("*") if f.is_file())


@pytest.mark.parametrize("damage, match", [
    ("delete", "missing or not finite"),
    ("truncate", "cannot be decoded"),
    ("random", "cannot be decoded"),
    ("label", "no valid label"),  # a lying completion mask: a chunk's labels never written
])
def test_damaged_chunks_are_never_counted_and_resume_rewrites_them(bundled, digits, tmp_path, damage, match):
    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    good = accuracy_report(path)
    name = "label" if damage == "label" else "logits"
    for f in _chunk_files(path, name, 1):
        {"delete": f.unlink, "truncate": lambda f=f: f.write_bytes(f.read_bytes()[:7]),
         "random": lambda f=f: f.write_bytes(os.urandom(f.stat().st_size)),
         "label": f.unlink}[damage]()
    with pytest.raises(ValueError, match=match):
        accuracy_report(path)
    report = _eval_store(bundled, digits, path)  # the same call again rewrites what is damaged
    assert report.written == CHUNK
    assert accuracy_report(path)["top1"] == good["top1"]


def test_a_done_mask_that_claims_unwritten_images_is_caught(bundled, digits, tmp_path):
    path = tmp_path / "p.zarr"
    _eval_store(bundled, digits, path, stop_after=1)
    zarr.open_group(str(path), mode="r+")["done"][:] = True  # lie: every image complete
    with pytest.raises(ValueError, match="no valid label|missing or not finite"):
        accuracy_report(path)
    assert _eval_store(bundled, digits, path).written == N - CHUNK


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.update(chunk_images="8"), "cordsnet.chunk_images"),
    (lambda a: a.update(source=[1, 2]), "cordsnet.source"),
    (lambda a: a.update(config=None), "cordsnet.config"),
    (lambda a: a.update(variables={"logits": [10], "area_9": [1]}), r"lacks the array\(s\) \['area_9'\]"),
    (lambda a: a["source"].update(images=10 ** 30), "attributes say 10+ images"),
])
def test_edited_attributes_and_missing_arrays_are_one_line(bundled, digits, tmp_path, edit, match):
    from cordsnet.cli import app

    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    meta = path / "zarr.json"
    data = json.loads(meta.read_text())
    edit(data["attributes"]["cordsnet"])
    meta.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        accuracy_report(path)
    res = CliRunner().invoke(app, ["evaluate", "--limit", str(N), "--steps", "2", "--spontaneous-steps", str(SPONT),
                                   "--batch-size", str(CHUNK), "--store", str(path)])
    assert res.exit_code == 1 and res.output.startswith("Error: store:") and res.output.count("\n") == 1


def test_a_store_missing_an_array_or_with_hostile_metadata_is_refused(bundled, digits, tmp_path):
    import shutil

    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    shutil.rmtree(path / "label")
    with pytest.raises(ValueError, match=r"lacks the array\(s\) \['label'\]"):
        open_store(path)
    (path / "zarr.json").write_text('{"attributes": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(ValueError, match="nested too deeply"):
        open_store(path)
    (path / "zarr.json").write_text('{"a": 1e999}')
    with pytest.raises(ValueError, match="out of the float range"):
        open_store(path)


def test_an_interrupted_creation_is_resumed(bundled, digits, tmp_path):
    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    whole = accuracy_report(path)
    meta = path / "zarr.json"
    data = json.loads(meta.read_text())
    del data["attributes"]["cordsnet"]  # the attributes are written last: a creation stopped before them
    zarr.open_group(str(path), mode="r+")["done"][:] = False
    meta.write_text(json.dumps(data))
    assert _eval_store(bundled, digits, path).written == N
    assert accuracy_report(path)["top1"] == whole["top1"]
    # Someone else's Zarr group at the path is refused, naming it, not replaced.
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_array("mine", shape=(2,), dtype="f4")
    with pytest.raises(ValueError, match="other.zarr.*not a cordsnet recording"):
        _eval_store(bundled, digits, other)
    assert "mine" in zarr.open_group(str(other), mode="r")


def test_evaluate_never_writes_over_its_inputs(tmp_path):
    from cordsnet.checkpoint import default_checkpoint_path
    from cordsnet.cli import app

    runner = CliRunner()
    store = tmp_path / "e.zarr"
    common = ["--limit", "4", "--steps", "1", "--spontaneous-steps", "1", "--batch-size", "4", "--store", str(store)]
    assert runner.invoke(app, ["evaluate", *common]).exit_code == 0
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(default_checkpoint_path().read_bytes())
    link = tmp_path / "link.json"
    link.symlink_to(store / "zarr.json")
    before = (store / "zarr.json").read_bytes()
    for option, target in (("--report", store / "zarr.json"), ("--report", link), ("--report", ckpt),
                           ("--report", store / "logits" / "zarr.json"), ("--plot", store / "new.png"),
                           ("--report", store / "label" / "new.json")):
        res = runner.invoke(app, ["evaluate", str(ckpt), *common, option, str(target)])
        assert res.exit_code == 1 and "is an input of this command" in res.output, (option, target, res.output)
    assert (store / "zarr.json").read_bytes() == before
    res = runner.invoke(app, ["evaluate", *common[:-2], "--store", str(ckpt)])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_a_recording_missing_a_chunk_file_is_rewritten_on_resume(bundled, digits, tmp_path):
    path = tmp_path / "r.zarr"
    _record(bundled, digits, path)
    before = _arrays(path)
    files = _chunk_files(path, "area_1", 2)
    files[0].unlink()
    report = _record(bundled, digits, path)
    assert report.written == N - 2 * CHUNK  # only the damaged chunk (images 16..19) again
    np.testing.assert_array_equal(_arrays(path)["area_1"], before["area_1"])


def test_a_store_whose_metadata_write_was_cut_short_is_refused_naming_it(bundled, digits, tmp_path):
    from cordsnet.cli import app

    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    meta = path / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])  # the disk filled up while zarr.json was written
    res = CliRunner().invoke(app, ["evaluate", "--limit", str(N), "--steps", "2", "--spontaneous-steps", str(SPONT),
                                   "--batch-size", str(CHUNK), "--store", str(path)])
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert str(path) in res.output and "creation was interrupted" in res.output


@pytest.mark.parametrize("damage, match", [
    ("fifo", "not a regular file"),  # used to block the reader forever
    ("device", "not a regular file"),  # /dev/zero: read without end
    ("dir", "is a directory"),  # used to fail the rewrite with a bare "[Errno 21]"
])
def test_a_chunk_that_is_not_a_regular_file_is_refused_unread(bundled, digits, tmp_path, damage, match):
    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    chunk = _chunk_files(path, "logits", 1)[0]
    chunk.unlink()
    {"fifo": lambda: os.mkfifo(chunk), "device": lambda: chunk.symlink_to("/dev/zero"), "dir": chunk.mkdir}[damage]()
    with pytest.raises(ValueError, match=match):
        accuracy_report(path)
    with pytest.raises(ValueError, match=match):
        _eval_store(bundled, digits, path)


@pytest.mark.parametrize("array, old, new", [("done", '"bool"', '"float64"'), ("logits", '"float32"', '"float16"'),
                                             ("logits", "10\n", "1000\n")])
def test_an_array_whose_dtype_or_shape_was_edited_is_refused(bundled, digits, tmp_path, array, old, new):
    path = tmp_path / "e.zarr"
    _eval_store(bundled, digits, path)
    meta = path / array / "zarr.json"
    text = meta.read_text()
    assert old in text
    meta.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=f"array '{array}' is .* but the attributes say"):
        accuracy_report(path)


def test_a_store_being_created_by_another_process_is_refused_not_recreated(bundled, digits, tmp_path):
    """Two commands on one new store: the second used to see a half-created store and create it again (mode "w")
    under the first one's writes; now the check-or-create step holds the store's lock."""
    import subprocess
    import sys

    from cordsnet import _io

    path = tmp_path / "e.zarr"
    hold = ("import sys; from cordsnet._io import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="another process is writing"):
            _eval_store(bundled, digits, path)
        assert not path.exists()
    finally:
        holder.communicate("", timeout=30)
    assert _eval_store(bundled, digits, path).written == N  # the lock went with its holder
    assert not [p for p in tmp_path.iterdir() if _io.LOCK_MARK in p.name]
