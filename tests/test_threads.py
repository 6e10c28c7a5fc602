"""One thread budget for every engine (cordsnet.threads, the CLI's --threads)."""

from __future__ import annotations

import pytest
import torch

from cordsnet import threads
from cordsnet.runtime.providers import quiet_session_options


@pytest.fixture
def restore():
    before = torch.get_num_threads()
    yield
    threads.set_num_threads(None)
    torch.set_num_threads(before)


def test_set_num_threads_reaches_torch_and_onnxruntime(restore):
    threads.set_num_threads(2)
    assert threads.num_threads() == 2 and torch.get_num_threads() == 2
    assert quiet_session_options().intra_op_num_threads == 2
    threads.set_num_threads(1)
    assert torch.get_num_threads() == 1 and quiet_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="threads"):
        threads.set_num_threads(0)


def test_the_environment_sets_the_default_and_is_checked(restore, monkeypatch):
    threads.set_num_threads(None)
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.num_threads() == 3
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ValueError, match="CORDSNET_NUM_THREADS: expected a positive integer, got 'many'"):
        threads.num_threads()


def test_every_computing_command_takes_threads():
    from typer.testing import CliRunner

    from cordsnet.cli import COMMANDS, app

    for name, command in COMMANDS.items():
        args = ["analyze", name] if name == "spectrum" else [name]
        res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0
        assert ("--threads" in res.output) == (command.threads or name == "train"), name
