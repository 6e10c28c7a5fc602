"""cordsnet._io: atomic writes (cleanup on every exit Python sees, modes under the umask, errors that
name the destination) and the one output guard every writing command uses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cordsnet._io import TEMPORARY_MARK, atomic_path, check_output, output_mode, stale_temporaries

ROOT = Path(__file__).resolve().parents[1]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if TEMPORARY_MARK in p.name)


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin" + TEMPORARY_MARK)
        assert f"{TEMPORARY_MARK}{os.getpid()}-" in tmp.name
        tmp.write_bytes(b"new")
    assert dest.read_bytes() == b"new"
    for exc in (RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)):
        with pytest.raises(type(exc)):
            with atomic_path(dest) as tmp:
                tmp.write_bytes(b"half")
                raise exc
        assert dest.read_bytes() == b"new" and _leftovers(tmp_path) == []


# The writer answers Ctrl-C as an interactive program does even when its launcher ignores SIGINT (a background
# job of a shell without job control, some CI runners): Python installs no handler for an ignored SIGINT.
WRITER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from cordsnet._io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"partial" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_a_terminated_writer_leaves_no_temporary_and_the_old_file_intact(tmp_path, sig, code):
    dest = tmp_path / "rates.npy"
    dest.write_bytes(b"precious")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"writing"
        assert len(_leftovers(tmp_path)) == 1  # the temporary exists while writing...
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, proc.stderr.read()
    assert _leftovers(tmp_path) == []  # ...and not after the signal
    assert dest.read_bytes() == b"precious"


def test_sigkill_leftovers_are_recognisable_as_stale(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "x.onnx")], stdout=subprocess.PIPE,
                            env=env)
    assert proc.stdout.readline().strip() == b"writing"
    assert stale_temporaries(tmp_path) == []  # its writer is alive
    proc.kill()
    proc.wait(timeout=30)
    stale = stale_temporaries(tmp_path)
    assert [p.name.split(TEMPORARY_MARK)[0] for p in stale] == [".x.onnx"]
    assert not (tmp_path / "x.onnx").exists()




def test_sigterm_handler_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with atomic_path(tmp_path / "a") as tmp:
        tmp.write_bytes(b"1")
        assert signal.getsignal(signal.SIGTERM) is not before or before is not signal.SIG_DFL
        with atomic_path(tmp_path / "b") as tmp2:  # nested writes share the guard
            tmp2.write_bytes(b"2")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask_even_when_the_writer_replaces_the_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert output_mode() == 0o666 & ~umask
        with atomic_path(tmp_path / "plain") as tmp:
            tmp.write_bytes(b"x")
        with atomic_path(tmp_path / "replaced") as tmp:  # like a library that writes its own file and renames it
            other = tmp_path / "writer-own"
            other.write_bytes(b"y")
            os.chmod(other, 0o600)
            os.replace(other, tmp)
    finally:
        os.umask(old)
    for name in ("plain", "replaced"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_write_errors_name_the_destination_not_the_temporary(tmp_path):
    dest = tmp_path / "model.safetensors"
    dest.mkdir()  # the final rename fails: a directory is in the way
    with pytest.raises(OSError) as info:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"x")
    assert "model.safetensors" in str(info.value) and TEMPORARY_MARK not in str(info.value)
    assert _leftovers(tmp_path) == []


def test_an_os_error_about_the_temporary_is_reported_for_the_destination(tmp_path):
    with pytest.raises(OSError) as info:
        with atomic_path(tmp_path / "out.npy") as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert str(tmp_path / "out.npy") in str(info.value) and "No space left" in str(info.value)
    assert TEMPORARY_MARK not in str(info.value) and _leftovers(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_path(tmp_path / "missing" / "out.npy"):
            pass


# ------------------------------------------------------------------------------------ check_output
def test_check_output_refuses_every_way_of_naming_an_input(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    src.write_bytes(b"weights")
    (tmp_path / "link.safetensors").symlink_to(src)
    os.link(src, tmp_path / "hard.safetensors")
    monkeypatch.chdir(tmp_path)
    for same in (src, Path("m.safetensors"), Path("./sub/../m.safetensors"), tmp_path / "link.safetensors",
                 tmp_path / "hard.safetensors"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="is an input of this command"):
            check_output(same, inputs=[None, src])
    assert check_output("other.safetensors", inputs=[src]) == Path("other.safetensors")
    assert src.read_bytes() == b"weights"


def test_check_output_suffix_directory_and_parent(tmp_path):
    with pytest.raises(ValueError, match=r"-o: expected a path ending in \.onnx, got 'x.safetensors'"):
        check_output("x.safetensors", suffixes=(".onnx",), name="-o")
    assert check_output(tmp_path / "X.ONNX", suffixes=(".onnx",)) == tmp_path / "X.ONNX"
    with pytest.raises(ValueError, match="directory"):
        check_output(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output(tmp_path / "nope" / "x.onnx")
