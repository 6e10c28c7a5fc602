"""The install layers (cordsnet.extras): a missing extra is one line naming it, before any work."""

from __future__ import annotations

import pytest

from cordsnet.extras import EXTRAS, MissingExtraError, available, require
from helpers import run_without_torch


def test_require_names_the_extra_and_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert not available("openvino")
    with pytest.raises(MissingExtraError, match=r"`x` needs .*openvino not installed.*pip install 'cordsnet\[openvino\]'"):
        require("openvino", "`x`")
    with pytest.raises(ValueError, match="extra: expected one of"):
        require("gpu", "x")
    assert issubclass(MissingExtraError, ImportError) and "torch" in EXTRAS


def test_without_torch_modules_and_commands_say_which_extra_in_one_line():
    res = run_without_torch("""
        import cordsnet, cordsnet.runtime                      # the torch-free layer imports
        try:
            import cordsnet.model
        except ImportError as exc:
            print(type(exc).__name__, "|", exc)
        import sys
        from cordsnet.cli import main
        for args in (["export", "--format", "onnx", "--steps", "100"], ["train", "--dataset", "digits"],
                     ["analyze", "spectrum"], ["info", "digits"]):
            sys.argv = ["cordsnet-cli", *args]
            try:
                main()
            except SystemExit as e:
                print("exit", e.code)
    """)
    out = res.stdout.splitlines()
    # (only torch and torchvision are blocked here; the rest of the extra is installed)
    assert out[0] == "MissingExtraError | cordsnet.model needs PyTorch (torch, torchvision not installed): " \
                     "pip install 'cordsnet[torch]'", out
    assert out[1:] == ["exit 1"] * 4, res.stdout
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 4 and all(e.startswith("Error: ") and "pip install 'cordsnet[torch]'" in e for e in errors), \
        res.stderr
    assert "Traceback" not in res.stderr


def test_export_to_executorch_without_it_is_refused_before_any_work(monkeypatch, tmp_path):
    import importlib.util

    from typer.testing import CliRunner

    from cordsnet.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    res = CliRunner().invoke(app, ["export", "--format", "executorch", "--graph", "stepwise", "-o", str(tmp_path / "m.pte")])
    assert res.exit_code == 1
    assert "pip install 'cordsnet[executorch]'" in res.output
    assert list(tmp_path.iterdir()) == []  # nothing exported, nothing written
