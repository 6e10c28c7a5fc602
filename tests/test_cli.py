"""The foundation commands of cordsnet-cli (info, convert) and its error handling."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from conftest import make_published_state_dict
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
