"""The foundation commands of cordsnet-cli (info, convert) and its error handling."""

from __future__ import annotations

import json
import re

import torch
from typer.testing import CliRunner

from helpers import make_published_state_dict, run_without_torch
from cordsnet.checkpoint import load_checkpoint
from cordsnet.cli import app

runner = CliRunner()


def test_convert_then_info(tmp_path):
    sd = make_published_state_dict(depth=4, num_classes=10, in_channels=1, image_size=32)
    published = tmp_path / "cordsnet.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, published)
    out = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["convert", str(published), str(out), "--dataset", "mnist"])
    assert result.exit_code == 0, result.output
    assert "CordsNet-R4" in result.output
    model = load_checkpoint(out)
    assert model.config.dataset == "mnist"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())

    result = runner.invoke(app, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["config"]["depth"] == 4
    assert data["parameters"] == sum(p.numel() for p in model.parameters())
    assert [a["shape"] for a in data["areas"]] == [[64, 8, 8], [64, 8, 8], [128, 4, 4], [128, 4, 4]]
    assert data["areas"][0]["spontaneous_max"] > 0

    result = runner.invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "CordsNet-R4" in result.output and "spontaneous" in result.output


def test_user_errors_are_one_line_with_exit_code_1(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x80\x02garbage")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["info", str(tmp_path / "missing.pth")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1

    result = runner.invoke(app, ["convert", str(bad), str(tmp_path / "x.safetensors"), "--dataset", "svhn"])
    assert result.exit_code == 1 and "svhn" in result.output
    assert not (tmp_path / "x.safetensors").exists()


def test_info_reads_a_checkpoint_named_pt(tmp_path):
    sd = make_published_state_dict(depth=2)
    torch.save(sd, tmp_path / "weights.pt")  # .pt is also an exported-TorchScript suffix
    result = runner.invoke(app, ["info", str(tmp_path / "weights.pt"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["depth"] == 2


def test_verify_refuses_other_weights_and_gpu_for_torch_artifacts(tmp_path):
    from cordsnet.checkpoint import save_checkpoint
    from cordsnet.export import export

    model = load_checkpoint(make_published_state_dict(depth=2, seed=0))
    other = load_checkpoint(make_published_state_dict(depth=2, seed=1))
    save_checkpoint(model, tmp_path / "a.safetensors")
    save_checkpoint(other, tmp_path / "b.safetensors")
    export(model, tmp_path / "a.onnx", steps=3, spontaneous_steps=2)
    export(model, tmp_path / "a.pt", format="torchscript", steps=3, spontaneous_steps=2)
    ok = runner.invoke(app, ["verify", str(tmp_path / "a.onnx"), "--checkpoint", str(tmp_path / "a.safetensors"),
                             "--provider", "cpu"])
    assert ok.exit_code == 0, ok.output
    wrong = runner.invoke(app, ["verify", str(tmp_path / "a.onnx"), "--checkpoint", str(tmp_path / "b.safetensors"),
                                "--provider", "cpu"])
    assert wrong.exit_code == 1 and "other weights" in wrong.output and wrong.output.count("\n") == 1
    gpu = runner.invoke(app, ["verify", str(tmp_path / "a.pt"), "--checkpoint", str(tmp_path / "a.safetensors"),
                              "--provider", "cuda"])
    assert gpu.exit_code == 1 and "ONNX models only" in gpu.output
    info = runner.invoke(app, ["info", str(tmp_path / "a.pt"), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["graph"] == "unrolled"


# ------------------------------------------------------------------------------------- hardening
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cordsnet._io import TEMPORARY_MARK  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def r2_files(tmp_path):
    """A CordsNet-R2 checkpoint (cifar10 preset, 32 px) and two RGB images."""
    from PIL import Image

    from cordsnet.checkpoint import save_checkpoint

    model = load_checkpoint(make_published_state_dict(depth=2, seed=3), dataset="cifar10")
    ckpt = save_checkpoint(model, tmp_path / "run.1.safetensors")
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        images.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(images[-1])
    return Path(ckpt), images


def _one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def _cli_process(*args, cwd=None, timeout=300):
    """The real console script (main(): logging, SIGTERM), with stdout and stderr pipes (not a TTY)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("COLUMNS", None)
    code = "import sys; sys.argv[0] = 'cordsnet-cli'; from cordsnet.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.mark.parametrize("args", [[], ["analyze"]])
def test_no_command_prints_help_without_an_error_line(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "Usage" in result.output and "Error" not in result.output
    assert ("spectrum" if args else "reaction-time") in result.output


def test_help_and_tables_are_not_cut_when_piped(r2_files):
    ckpt, _ = r2_files
    proc = _cli_process("export", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--spontaneous-steps" in proc.stdout and "…" not in proc.stdout
    # Wrapped onto several lines is fine (rich wraps long help in its column); cut is not.
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", proc.stdout).split())
    assert "Blank steps whose end state is baked in (0: start from zero)." in flat
    result = runner.invoke(app, ["analyze", "spectrum", str(ckpt), "--area", "0,1", "--k", "3", "--krylov-dim", "30"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert result.output.count("j, ") >= 4  # three eigenvalues per row, none cut


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import cordsnet.checkpoint

    for error in (TypeError("unsupported operand"), KeyError("x")):
        def broken(model, error=error):
            raise error
        monkeypatch.setattr(cordsnet.checkpoint, "describe_state", broken)
        result = runner.invoke(app, ["info"])
        assert result.exit_code == 1 and isinstance(result.exception, type(error))
        assert not result.output.startswith("Error:")


def test_no_command_overwrites_its_input(r2_files, tmp_path, monkeypatch):
    ckpt, images = r2_files
    monkeypatch.chdir(tmp_path)
    original = ckpt.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(ckpt)
    cases = [
        (["export", ckpt, "-o", ckpt], "--output: expected a path ending in .onnx"),
        (["export", ckpt, "--format", "torchscript", "-o", "x.onnx"], "ending in .pt, .ts"),
        (["export", ckpt, "--format", "exported-program", "-o", "x.pt"], "ending in .pt2"),
        (["convert", ckpt, ckpt], "is an input of this command"),
        (["convert", ckpt, "link.safetensors"], "is an input of this command"),
        (["convert", ckpt, "out.pth"], "OUTPUT: expected a path ending in .safetensors"),
        (["analyze", "spectrum", ckpt, "--plot", ckpt], "--plot: expected a path ending in .png"),
        (["analyze", "spectrum", ckpt, "--plot", "s.jpg"], "--plot: expected"),
        (["record", ckpt, images[0], "--area", "0", "--out", images[0]], "--out: expected a path ending in .npy"),
        (["record", ckpt, images[0], "--area", "0", "--out", "missing/r.npy"], "does not exist"),
    ]
    for args, needle in cases:
        _one_error_line(runner.invoke(app, [str(a) for a in args]), needle)
    assert ckpt.read_bytes() == original and images[0].read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir() if TEMPORARY_MARK in p.name] == []


def test_record_refuses_an_output_that_is_one_of_its_images(r2_files, tmp_path):
    import shutil

    ckpt, images = r2_files
    npy_image = tmp_path / "r.npy"  # an image file whose name the recording would take
    shutil.copy(images[0], npy_image)
    before = npy_image.read_bytes()
    result = runner.invoke(app, ["record", str(ckpt), str(npy_image), "--area", "0", "--out", str(npy_image)])
    _one_error_line(result, "is an input of this command")
    assert npy_image.read_bytes() == before


def test_default_output_uses_the_whole_stem(r2_files, tmp_path, monkeypatch):
    from cordsnet.cli.export import default_output

    assert default_output(Path("run.1.safetensors"), "loop", "float32", "onnx") == Path("run.1-loop.onnx")
    assert default_output(Path("a/run.2.pth"), "unrolled", "float16", "torchscript") == Path("run.2-unrolled-float16.pt")
    ckpt, _ = r2_files
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", str(ckpt), "--graph", "stepwise", "--steps", "2", "--spontaneous-steps",
                                 "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["files"] == ["run.1-stepwise.onnx", "run.1-stepwise.onnx.cordsnet.json"]
    assert (tmp_path / "run.1-stepwise.onnx").is_file() and (tmp_path / "run.1-stepwise.onnx.cordsnet.json").is_file()
    parts = report["seconds"]
    assert set(parts) == {"loading", "spontaneous state", "graph", "verification"} and parts["verification"] > 0
    assert report["total_seconds"] >= parts["graph"] + parts["verification"]


@pytest.mark.parametrize("args, needle", [
    (["verify", "MODEL", "--atol", "-1"], "--atol"),
    (["verify", "MODEL", "--rtol", "-0.5"], "--rtol"),
    (["export", "CKPT", "--atol", "-1"], "--atol"),
    (["export", "CKPT", "--record", "5"], "--record: expected area indices in 0..1, got 5"),
    (["export", "CKPT", "--record", "x"], "--record: expected comma-separated area indices"),
    (["record", "IMG", "--area", "9", "--out", "r.npy"], "--area: expected area indices in 0..3"),
    (["analyze", "spectrum", "CKPT", "--area", "0,sideways"], "'all' or one of ['dynamics']"),
    (["analyze", "spectrum", "CKPT", "--method", "qr"], "--method: expected one of"),
])
def test_bad_values_are_one_line(r2_files, tmp_path, monkeypatch, args, needle):
    ckpt, images = r2_files
    monkeypatch.chdir(tmp_path)
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"not a model")
    subst = {"MODEL": model_file, "CKPT": ckpt, "IMG": images[0]}
    _one_error_line(runner.invoke(app, [str(subst.get(a, a)) for a in args]), needle)


def test_hostile_checkpoint_configs_are_one_line(tmp_path):
    from safetensors.torch import save_file

    sd = make_published_state_dict(depth=2)
    for name, config in [("deep", "[" * 100_000 + "]" * 100_000),
                         ("huge", json.dumps({"depth": 2, "image_size": 8192})),
                         ("long", json.dumps({"depth": 2, "spontaneous_steps": 10**9}))]:
        path = tmp_path / f"{name}.safetensors"
        save_file(sd, str(path), metadata={"config": config})
        result = runner.invoke(app, ["info", str(path)])
        _one_error_line(result)
        assert "Traceback" not in result.output


def test_one_area_syntax_everywhere(r2_files, tmp_path):
    from cordsnet.cli.analysis import spectrum_targets

    names = {"dynamics": None}
    assert spectrum_targets(None, 2, names) == [0, 1, "dynamics"]
    assert spectrum_targets(["1,dynamics", "0", "1"], 2, names) == [1, "dynamics", 0]
    assert spectrum_targets(["all"], 4, names) == [0, 1, 2, 3]
    ckpt, images = r2_files
    shapes = []
    for option in (["--area", "0,1"], ["--area", "0", "--area", "1"], ["--areas", "0,1"]):
        out = tmp_path / f"r{len(shapes)}.npy"
        result = runner.invoke(app, ["record", str(ckpt), str(images[0]), *option, "--out", str(out), "--steps", "2",
                                     "--spontaneous-steps", "1", "--json"])
        assert result.exit_code == 0, result.output
        shapes.append(json.loads(result.output)["shapes"])
    assert shapes[0] == shapes[1] == shapes[2] and set(shapes[0]) == {"0", "1"}


def test_long_work_logs_its_phases_when_stderr_is_not_a_terminal(r2_files, tmp_path):
    ckpt, _ = r2_files
    proc = _cli_process("export", ckpt, "--graph", "stepwise", "--steps", "2", "--spontaneous-steps", "1",
                        "-o", tmp_path / "s.onnx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for phase in ("loading the checkpoint", "computing the spontaneous state", "stepwise graph", "verifying"):
        assert any(phase in line for line in lines), (phase, proc.stderr)
    assert "verification passed" in proc.stdout and " s (loading " in proc.stdout


def test_a_terminated_record_leaves_no_temporary_and_keeps_the_old_output(r2_files, tmp_path):
    import signal
    import time

    ckpt, images = r2_files
    out = tmp_path / "rates.npy"
    out.write_bytes(b"previous recording")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; sys.argv[0] = 'cordsnet-cli'; from cordsnet.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "record", str(ckpt), str(images[0]), "--area", "0",
                             "--out", str(out), "--steps", "10000", "--spontaneous-steps", "10000",
                             "--spatial-mean"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.iterdir() if TEMPORARY_MARK in p.name]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    assert [p.name for p in tmp_path.iterdir() if TEMPORARY_MARK in p.name] == []
    assert out.read_bytes() == b"previous recording"


def test_importing_the_cli_and_its_help_need_no_torch():
    proc = run_without_torch("sys.argv[:] = ['cordsnet-cli', '--help']\nfrom cordsnet.cli import main\n"
                             "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n",
                             timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reaction-time" in proc.stdout


def test_export_multistep_and_reduced_precision_options(r2_files, tmp_path):
    ckpt, _ = r2_files
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(ckpt), "--graph", "multistep", "--steps", "4", "--steps-per-call", "2",
                                 "--spontaneous-steps", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    from cordsnet.artifact import read_info

    assert read_info(out).steps_per_call == 2
    result = runner.invoke(app, ["export", str(ckpt), "--graph", "multistep", "--steps", "4", "--steps-per-call", "3",
                                 "-o", str(tmp_path / "bad.onnx")])
    assert result.exit_code == 1 and "steps_per_call" in result.output and not (tmp_path / "bad.onnx").exists()
    junk = tmp_path / "images.npy"
    junk.write_bytes(b"not an array")
    result = runner.invoke(app, ["export", str(ckpt), "--dtype", "int8", "--verify-images", str(junk),
                                 "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 1 and "--verify-images" in result.output and "Traceback" not in result.output


def test_long_phases_log_a_line_at_least_every_heartbeat_without_a_terminal(caplog):
    """When stderr is not a terminal, no silent stretch longer than the heartbeat (a log reader sees progress)."""
    import logging
    import time

    from cordsnet.cli._shared import phases

    with caplog.at_level(logging.INFO, logger="cordsnet.cli"):
        with phases("working", heartbeat_s=0.1) as say:
            time.sleep(0.35)
            say("second phase")
            time.sleep(0.25)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "working" and "second phase" in lines
    assert sum(line.startswith("working (") for line in lines) >= 2
    assert any(line.startswith("second phase (") and line.endswith("s so far)") for line in lines)
