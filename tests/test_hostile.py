"""Hostile and careless inputs across commands: one line and exit 1 (or a correct result), bounded time and
memory, nothing lost. Small files only (sparse files for sizes), every wait bounded by a timeout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cordsnet import _io
from cordsnet.cli import web

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "cordsnet" / "weights" / "digits_r4-stepwise.onnx"
BUNDLED = REPO / "cordsnet" / "weights" / "digits_r4.safetensors"


def _cli(*args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`cordsnet-cli ARGS` in a fresh interpreter (a native abort would show as a signal), bounded in time."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("CORDSNET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cordsnet.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def _one_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture()
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.safetensors"
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- 2. regular files only
@pytest.mark.parametrize("command", [["info"], ["verify"], ["predict", "--image-size", "32"]])
@pytest.mark.parametrize("what", ["fifo", "dev", "dir", "socket"])
def test_non_regular_files_are_refused_before_a_byte_is_read(command, what, tmp_path):
    paths = {"fifo": tmp_path / "m.onnx", "dev": tmp_path / "zero.onnx", "dir": tmp_path / "d.onnx",
             "socket": tmp_path / "s.onnx"}
    path = paths[what]
    held = None
    if what == "dev":  # a device behind an artifact's name
        path.symlink_to("/dev/zero")
    elif what == "fifo":
        os.mkfifo(path)
    elif what == "dir":
        path.mkdir()
    elif what == "socket":
        held = socket.socket(socket.AF_UNIX)
        held.bind(str(path))
    try:
        if command[0] == "predict":  # the checkpoint argument of a torch command
            res = _cli("predict", path, str(REPO / "web" / "digits.json"), timeout=120)
            assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-1500:]
            return
        res = _cli(*command, path, timeout=60)
        _one_line(res, "directory" if what == "dir" else "regular file")
    finally:
        if held is not None:
            held.close()


def test_a_checkpoint_that_is_a_device_or_fifo_is_one_line(fifo):
    for path in (fifo, Path("/dev/urandom")):
        res = _cli("export", path, "--output", fifo.parent / "x.onnx", timeout=120)
        _one_line(res, "regular file")


def test_an_onnx_file_over_what_protobuf_can_parse_is_refused_unread(tmp_path):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:  # sparse: 3 GiB of nothing on disk
        f.truncate(3 << 30)
    t0 = time.perf_counter()
    res = _cli("info", big, timeout=60)
    _one_line(res, "more than the")
    assert time.perf_counter() - t0 < 60


def test_a_sparse_checkpoint_beyond_any_layout_is_refused(tmp_path):
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.write((8).to_bytes(8, "little") + b"{}      ")
        f.truncate(5 << 30)
    res = _cli("info", big, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_open_regular_refuses_each_kind(tmp_path, fifo):
    with pytest.raises(ValueError, match="FIFO"):
        _io.open_regular(fifo, "x")
    with pytest.raises(ValueError, match="character device"):
        _io.check_regular("/dev/zero", "x")
    with pytest.raises(ValueError, match="directory"):
        _io.open_regular(tmp_path, "x")
    small = tmp_path / "f"
    small.write_bytes(b"12345")
    with pytest.raises(ValueError, match="more than the 4 bytes"):
        _io.open_regular(small, "x", 4)
    with _io.open_regular(small, "x", 5) as f:
        assert f.read() == b"12345"
    for pseudo in ("/proc/self/status", "/proc/self/pagemap"):  # "regular", size 0, streams without end
        if os.path.exists(pseudo):
            with pytest.raises(ValueError, match="empty"):
                _io.check_regular(pseudo, "checkpoint")


# --------------------------------------------------------------------------- 3. bounded parses
def test_bounded_json_refuses_depth_width_and_numbers():
    with pytest.raises(ValueError, match="nested too deeply"):
        _io.load_json("[" * 100 + "]" * 100, "m")
    with pytest.raises(ValueError, match="lists/objects"):
        _io.load_json("[" + ",".join(["[]"] * 20) + "]", "m", max_containers=10)
    for text, match in (("[1e999]", "float range"), ("[-Infinity]", "not a JSON number"), ("[NaN]", "not a JSON"),
                        ("[" + "9" * 5000 + "]", "digits")):
        with pytest.raises(ValueError, match=match):
            _io.load_json(text, "m")
    assert _io.load_json('{"a": "[[[[", "b": [1, 2.5]}', "m") == {"a": "[[[[", "b": [1, 2.5]}


def test_a_zip_extra_file_that_inflates_beyond_any_metadata_is_read_capped(tmp_path):
    import zipfile

    from cordsnet import artifact as A

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/extra/cordsnet.json", b'{"a": "' + b" " * (A.MAX_METADATA_BYTES + 10) + b'"}')
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="more than any metadata|inflates beyond"):
        A.read_metadata(bomb)


@pytest.mark.parametrize("old, new, match", [
    ('"alpha": 0.2', '"alpha": 1e999', "float range"),
    ('"batch": null', '"batch": ' + "9" * 200, "digits"),
    ('"steps": ', '"steps": 1' + "0" * 30 + ', "x": ', "steps"),
])
def test_manifest_numbers_out_of_range_are_one_line(tmp_path, old, new, match):
    from cordsnet import artifact as A

    shutil.copy(SHIPPED, tmp_path / SHIPPED.name)
    text = A.manifest_path(SHIPPED).read_text()
    assert old in text
    A.manifest_path(tmp_path / SHIPPED.name).write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError, match=match):
        A.read_manifest(tmp_path / SHIPPED.name)
    _one_line(_cli("info", tmp_path / SHIPPED.name, timeout=60), match)


# --------------------------------------------------------------------------- 6. native code
def _pte_cases(tmp_path: Path) -> dict[str, Path]:
    rnd = tmp_path / "random.pte"
    rnd.write_bytes(os.urandom(4096))
    head = tmp_path / "head.pte"  # a plausible identifier, an offset beyond the file
    head.write_bytes(b"\xff\xff\xff\x7fET12" + os.urandom(200))
    ext = tmp_path / "ext.pte"  # an extended header claiming more than the file holds
    ext.write_bytes((24).to_bytes(4, "little") + b"ET12eh00" + (32).to_bytes(4, "little")
                    + (1 << 40).to_bytes(8, "little") + os.urandom(300))
    return {"random": rnd, "head": head, "ext": ext}


def test_hostile_pte_bytes_raise_instead_of_aborting(tmp_path):
    pytest.importorskip("executorch")
    cases = _pte_cases(tmp_path)
    for name, command in (("random", "info"), ("head", "info"), ("ext", "info"), ("random", "verify")):
        path = cases[name]
        if True:
            res = _cli(command, path, timeout=120)
            assert res.returncode == 1, (name, command, res.returncode, res.stderr[-1500:])  # not -6 (SIGABRT)
            _one_line(res, "not an ExecuTorch program")
    code = ("import sys; from cordsnet.runtime.executorch import PteStepSession\n"
            "try:\n    PteStepSession(sys.argv[1])\nexcept ValueError as e:\n    print('refused', e)")
    for path in (cases["random"],):
        res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == 0 and res.stdout.startswith("refused"), (res.returncode, res.stderr[-1500:])


def test_the_pte_check_accepts_a_real_program_header(tmp_path):
    from cordsnet.artifact import check_pte_file

    good = tmp_path / "good.pte"  # the header of a real program: root offset, identifier, extended header
    body = bytearray(os.urandom(4096))
    body[0:4] = (60).to_bytes(4, "little")
    body[4:12] = b"ET12eh00"
    body[12:16] = (32).to_bytes(4, "little")
    body[16:24] = (1000).to_bytes(8, "little")
    body[24:32] = (1024).to_bytes(8, "little")
    body[32:40] = (2000).to_bytes(8, "little")
    good.write_bytes(bytes(body))
    check_pte_file(good)
    with pytest.raises(ValueError, match="identifier"):
        check_pte_file(_pte_cases(tmp_path)["random"])


def test_an_onnx_file_onnxruntime_refuses_is_one_line_in_verify(tmp_path):
    """A syntactically valid ONNX model (cordsnet metadata intact) whose graph onnxruntime cannot load."""
    import onnx

    model = onnx.load(str(SHIPPED))
    model.graph.node[0].op_type = "NoSuchOperator"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    res = _cli("verify", bad, timeout=240)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    res = _cli("predict", bad, str(REPO / "web" / "digits.json"), timeout=240)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]


# --------------------------------------------------------------------------- 9. web server
@pytest.fixture()
def hostile_web(tmp_path, monkeypatch):
    """The shipped graph served from a vendor folder that holds a dotfile, a subfolder and a symlink out."""
    if not (web.ORT_DIST / "ort.wasm.min.mjs").is_file():
        pytest.skip("onnxruntime-web is not vendored: run `bash tools/vendor-ort.sh`")
    ort = tmp_path / "ort"
    ort.mkdir()
    shutil.copy(web.ORT_DIST / "ort.wasm.min.mjs", ort / "ort.wasm.min.mjs")
    (ort / ".secret").write_text("token")
    (ort / "sub").mkdir()
    (ort / "sub" / "x.mjs").write_text("x")
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    (ort / "escape.mjs").symlink_to(outside)
    monkeypatch.setattr(web, "ORT_DIST", ort)

    def serve(**kw):
        server = web.make_server(SHIPPED, port=0, **kw)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, "http://%s:%d" % server.server_address[:2]

    servers = []
    yield lambda **kw: servers.append(serve(**kw)) or servers[-1]
    for server, _ in servers:
        server.shutdown()
        server.server_close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_web_serves_the_allow_list_only(hostile_web):
    _, base = hostile_web()
    assert _status(base + "/") == 200 and _status(base + "/vendor/ort/ort.wasm.min.mjs") == 200
    assert _status(base + "/model/manifest.json") == 200 and _status(base + "/model/" + SHIPPED.name) == 200
    for path in ("/vendor/ort/", "/vendor/", "/vendor/ort/.secret", "/vendor/ort/sub/x.mjs", "/vendor/ort/escape.mjs",
                 "/.git/config", "/%2e%2e/README.md", "/vendor/ort/%2esecret", "/./index.html", "/index.html/",
                 "//etc/passwd", "/model/", "/model/../index.html", "/vendor/ort/..%2f..%2fpackage.json",
                 "/package.json", "/node_modules/", "/%69ndex.html"):
        assert _status(base + path) == 404, path


def test_web_closes_idle_connections_after_the_timeout(hostile_web):
    _, base = hostile_web(idle_timeout=0.5)
    host, port = base[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a half-sent request, then silence
        t0 = time.perf_counter()
        assert s.recv(1024) == b""  # closed by the server
        assert time.perf_counter() - t0 < 5


def test_web_bounds_its_connections_and_serves_200_concurrent_gets(hostile_web):
    server, base = hostile_web(idle_timeout=1.0, max_connections=8)
    host, port = base[len("http://"):].split(":")
    before = threading.active_count()
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(40)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= 8 + 1  # one thread per served connection, at most 8
    finally:
        for s in idle:
            s.close()
    with ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(lambda _: _status(base + "/vendor/ort/ort.wasm.min.mjs"), range(200)))
    assert codes == [200] * 200


def test_web_refuses_bad_bounds():
    with pytest.raises(ValueError, match="max_connections"):
        web.make_server(SHIPPED, port=0, max_connections=0)


# --------------------------------------------------------------------------- 8. concurrent writers
_HOLD = ("import sys, time; from cordsnet._io import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")


def test_a_second_export_to_a_path_being_written_refuses(tmp_path):
    out = tmp_path / "m.onnx"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _cli("export", "--output", out, "--graph", "stepwise", "--no-verify", timeout=180)
        _one_line(res, "another process is writing")
        assert not out.exists()
    finally:
        holder.communicate("", timeout=30)
    # The lock went with its holder: the export now runs, and leaves no lock file.
    res = _cli("export", "--output", out, "--graph", "stepwise", "--no-verify", timeout=180)
    assert res.returncode == 0, res.stderr[-1500:]
    assert not [p for p in tmp_path.iterdir() if _io.LOCK_MARK in p.name]


def test_a_killed_holder_releases_the_lock(tmp_path):
    out = tmp_path / "m.onnx"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match="another process is writing"):
        with _io.output_lock(out):
            pass
    holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
    holder.wait(timeout=30)
    with _io.output_lock(out):
        pass


def test_two_concurrent_exports_leave_one_consistent_artifact_and_manifest(tmp_path):
    from cordsnet.artifact import check_manifest, read_info

    out = tmp_path / "m.onnx"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "cordsnet.cli", "export", "--output", str(out), "--graph",
                               "stepwise", "--no-verify", "--steps", str(steps)], env=env, stderr=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for steps in (20, 30)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code == 0 or "another process is writing" in err, err[-1500:]
    manifest = check_manifest(out)  # the artifact and the manifest beside it are one export's
    assert manifest is not None and manifest.info.steps == read_info(out).steps


# --------------------------------------------------------------------------- 10. dataset roots
def test_a_fifo_or_garbage_in_a_torchvision_dataset_folder_is_one_line(tmp_path):
    from cordsnet.data import build_dataset

    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(os.urandom(3000))
    with pytest.raises(ValueError, match="damaged or not MNIST's"):
        build_dataset("mnist", "test", root=tmp_path, download=False)
    os.mkfifo(raw / "t10k-images-idx3-ubyte.fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        build_dataset("mnist", "test", root=tmp_path, download=False)
    res = _cli("evaluate", "--dataset", "mnist", "--data-root", tmp_path, "--store", tmp_path / "e.zarr",
               "--limit", "2", timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-1500:]


def test_an_image_folder_skips_special_files_and_names_a_garbage_image(tmp_path):
    from PIL import Image

    from cordsnet.data import build_dataset

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 40), (10, 200, 30)).save(folder / "ok.png")
        os.mkfifo(tmp_path / split / "a" / "pipe.jpg")
        (tmp_path / split / "b" / "dir.jpg").mkdir()
    with pytest.warns(UserWarning, match="skipped 1 file.* not regular"):
        ds = build_dataset("imagenet", "test", root=tmp_path, image_size=32)
    assert len(ds) == 2 and tuple(ds[0][0].shape) == (3, 32, 32)
    (tmp_path / "val" / "b" / "bad.jpg").write_bytes(os.urandom(500))
    with pytest.warns(UserWarning):
        ds = build_dataset("imagenet", "test", root=tmp_path, image_size=32)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("bad.jpg")][0]
    with pytest.raises(ValueError, match="bad.jpg"):
        ds[bad]


# --------------------------------------------------------------------------- 1. the output guard
def test_inside_a_command_no_writer_replaces_anything_it_read(tmp_path):
    """The mechanism: readers register what they open (input_scope, entered by the CLI), every atomic write
    and staged export checks the registry; a library call outside a scope is unchanged."""
    from cordsnet.checkpoint import load_checkpoint, save_checkpoint

    src = tmp_path / "m.safetensors"
    shutil.copy(BUNDLED, src)
    alias = tmp_path / "alias.safetensors"
    os.link(src, alias)
    with _io.input_scope():
        model = load_checkpoint(src)
        for target in (src, alias):
            with pytest.raises(ValueError, match="is an input of this command"):
                save_checkpoint(model, target)
        with pytest.raises(ValueError, match="is an input of this command"):
            with _io.atomic_path(tmp_path / "alias.safetensors"):
                pass
        save_checkpoint(model, tmp_path / "other.safetensors")  # anything else is fine
    assert src.read_bytes() == BUNDLED.read_bytes()
    save_checkpoint(load_checkpoint(src), src)  # outside a command: a library user may update a file


def test_export_never_writes_a_companion_over_its_checkpoint(tmp_path):
    ckpt = tmp_path / "m.onnx.data"  # the checkpoint has the name the export's external data would get
    shutil.copy(BUNDLED, ckpt)
    res = _cli("export", ckpt, "--output", tmp_path / "m.onnx", "--graph", "stepwise", "--no-verify", timeout=180)
    _one_line(res, "is an input of this command")
    assert ckpt.read_bytes() == BUNDLED.read_bytes() and not (tmp_path / "m.onnx").exists()


def test_a_store_inside_the_data_root_or_on_the_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(BUNDLED, ckpt)
    res = _cli("evaluate", ckpt, "--store", ckpt, "--limit", "2", timeout=120)
    _one_line(res)
    assert ckpt.read_bytes() == BUNDLED.read_bytes()
    root = tmp_path / "data"
    root.mkdir()
    res = _cli("record", ckpt, "--dataset", "digits", "--areas", "1", "--data-root", root, "--store",
               root / "s.zarr", "--limit", "2", timeout=120)
    _one_line(res, "is an input of this command")
    assert not (root / "s.zarr").exists()


def test_a_companion_that_is_a_fifo_is_refused_not_hashed_forever(tmp_path):
    from cordsnet import artifact as A

    path = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, path)
    data = json.loads(A.manifest_path(SHIPPED).read_text())
    data["companions"] = [{"role": "encode", "file": "c.onnx", "sha256": "0" * 64}]
    A.manifest_path(path).write_text(json.dumps(data))
    os.mkfifo(tmp_path / "c.onnx")
    with pytest.raises(ValueError, match="FIFO"):
        A.check_manifest(path)
    _one_line(_cli("info", path, timeout=60), "FIFO")


# --------------------------------------------------------------------------- 3. bounded numpy files (probe)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_a_numpy_header_that_claims_more_than_its_file_allocates_nothing(tmp_path):
    """A 4 KB .npy (or .npz member) whose header claims 56 GiB: refused in one line, no allocation."""
    import zipfile

    import numpy as np

    lie = tmp_path / "lie.npy"
    lie.write_bytes(_npy_header((100000, 3, 224, 224)) + b"\0" * 4096)
    with pytest.raises(ValueError, match="claims 60211200000 bytes"):
        _io.read_arrays(lie, "--verify-images", 1 << 30)
    with zipfile.ZipFile(tmp_path / "lie.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", _npy_header((100000, 3, 224, 224)) + b"\0" * 1000)
    res = _cli("verify", SHIPPED, "--reference", tmp_path / "lie.npz", timeout=60)
    _one_line(res, "claims 60211200000 bytes")
    np.save(tmp_path / "ok.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert _io.read_arrays(tmp_path / "ok.npy", "x", 1 << 20).tolist() == [[0, 1, 2], [3, 4, 5]]
    np.savez(tmp_path / "ok.npz", a=np.ones(3))
    assert _io.read_arrays(tmp_path / "ok.npz", "x", 1 << 20)["a"].tolist() == [1, 1, 1]


def test_a_zip_bomb_reference_and_special_image_files_are_refused_unread(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.npz"  # 40 MB of zeros deflated to ~40 KB: inflates beyond the bound
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images.npy", _npy_header((10, 1000, 1000)) + b"\0" * 40_000_000)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="inflates to"):
        _io.read_arrays(bomb, "reference", 1 << 20)
    fifo = tmp_path / "v.npy"
    os.mkfifo(fifo)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="FIFO"):  # used to block forever in np.load
        _io.read_arrays(fifo, "--verify-images", 1 << 20)
    (tmp_path / "z.npy").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="character device"):
        _io.read_arrays(tmp_path / "z.npy", "--verify-images", 1 << 20)
    assert time.perf_counter() - t0 < 10


# --------------------------------------------------------------------------- 4. manifest vs artifact (probe)
@pytest.mark.parametrize("entry, match", [
    ({"role": "external-data", "file": "gone.onnx.data", "sha256": "0" * 64}, "is missing beside"),
    ({"role": "encode", "file": "..", "sha256": "0" * 64}, "plain name beside the manifest"),
])
def test_a_manifest_listing_a_missing_or_dotdot_companion_is_refused(tmp_path, entry, match):
    from cordsnet import artifact as A

    path = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, path)
    data = json.loads(A.manifest_path(SHIPPED).read_text())
    data["companions"] = [entry]
    A.manifest_path(path).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        A.check_manifest(path)
    _one_line(_cli("info", path, timeout=60), match)


def _edit_decision(tmp_path: Path, edit) -> Path:
    """The shipped graph beside a copy of its manifest whose decision block `edit` changed."""
    from cordsnet import artifact as A

    path = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, path)
    data = json.loads(A.manifest_path(SHIPPED).read_text())
    edit(data)
    A.manifest_path(path).write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["decision"].__setitem__("threshold", 0.5), "is not the exporter's"),
    (lambda d: d["decision"].__setitem__("margin", 0.01), "is not the exporter's"),
    (lambda d: d.pop("decision"), "lacks the decision block"),
])
def test_an_edited_decision_rule_is_refused_by_every_reader(tmp_path, edit, match):
    """The decision block lives only in the manifest; what the exporter cannot have written is refused
    by check_manifest (info, verify, web, PteStepSession...)."""
    path = _edit_decision(tmp_path, edit)
    _one_line(_cli("info", path, timeout=60), match)
    with pytest.raises(ValueError, match=match):
        web.make_server(path, port=0)


def test_an_edited_no_image_baseline_is_refused_where_the_graph_runs(tmp_path):
    """Only running the graph can check the baseline's values: verify --reference and the web server
    recompute it (the page decides with it); an honest manifest passes."""
    import base64

    import numpy as np

    from cordsnet.runtime.reference import check_decision

    assert check_decision(SHIPPED)["max_abs"] <= 1e-4

    def nudge(d):  # half a decision margin on one logit of one step
        b = np.frombuffer(base64.b64decode(d["decision"]["baseline"]["data"]), "<f4").copy()
        b[7] += 0.5
        d["decision"]["baseline"]["data"] = base64.b64encode(b.tobytes()).decode()

    path = _edit_decision(tmp_path, nudge)
    with pytest.raises(ValueError, match="no-image baseline is not the graph's"):
        check_decision(path)
    with pytest.raises(ValueError, match="no-image baseline is not the graph's"):
        web.make_server(path, port=0)


def test_reading_a_small_json_file_allocates_what_it_holds_not_the_bound(tmp_path):
    """read(n) allocates n bytes first: a 2-byte zarr.json read under a 64 MiB bound cost 64 MiB (a MemoryError
    under a memory limit)."""
    import tracemalloc

    small = tmp_path / "zarr.json"
    small.write_text("{}")
    tracemalloc.start()
    try:
        assert _io.read_json_file(small, "store metadata", max_bytes=256 << 20) == {}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


# --------------------------------------------------------------------------- 10. dataset roots (probe)
def test_an_image_folder_with_symlink_loops_is_refused_not_walked_forever(tmp_path):
    """Two loops (`a/l1 -> ..`, `a/l2 -> ..`) made ImageFolder's walk multiply until the paths were too long
    (killed after 60 s at 1.5 GB)."""
    from PIL import Image

    from cordsnet.data import build_dataset

    for cls in ("a", "b"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "val" / cls / "ok.png")
    assert len(build_dataset("imagenet", "test", root=tmp_path, image_size=32)) == 2
    (tmp_path / "val" / "a" / "l1").symlink_to("..")
    (tmp_path / "val" / "a" / "l2").symlink_to("..")
    (tmp_path / "val" / "b" / "l3").symlink_to("..")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="reached twice"):
        build_dataset("imagenet", "test", root=tmp_path, image_size=32)
    assert time.perf_counter() - t0 < 10


def test_a_torchvision_dataset_file_larger_than_any_is_refused_unread(tmp_path):
    """torchvision reads MNIST's files whole (and copies them): 3 GiB sparse files were a MemoryError traceback."""
    from cordsnet.data import build_dataset

    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with open(raw / name, "wb") as f:
            f.truncate(3 << 30)
    with pytest.raises(ValueError, match="more than any MNIST file"):
        build_dataset("mnist", "test", root=tmp_path, download=False)


# --------------------------------------------------------------------------- 11. one line, bounded (probe)
def test_a_thread_budget_beyond_any_machine_is_one_line_not_minutes(monkeypatch):
    """--threads 100000 kept onnxruntime creating threads for minutes ("opening ... (90 s so far)")."""
    from cordsnet import threads

    with pytest.raises(ValueError, match=r"threads: expected an int in \[1, 1024\]"):
        threads.set_num_threads(100_000)
    monkeypatch.setenv(threads.ENV, "99999")
    with pytest.raises(ValueError, match="CORDSNET_NUM_THREADS"):
        threads.num_threads()
    t0 = time.perf_counter()
    _one_line(_cli("predict", SHIPPED, "--threads", "100000", str(REPO / "web" / "digits.json"), timeout=60),
              "threads")
    assert time.perf_counter() - t0 < 60


def test_a_bench_batch_beyond_memory_is_one_line_not_a_memory_error(tmp_path):
    """bench --batch 100000000 drew a 763 GiB random input: an _ArrayMemoryError traceback."""
    res = _cli("bench", SHIPPED, "--batch", "100000000", "--iterations", "1", timeout=60)
    _one_line(res, "batch: expected at most")


def test_save_reference_over_the_models_manifest_is_refused_before_the_work(tmp_path):
    """A --save-reference that is the model's manifest by another name was refused only after the reference
    had been computed."""
    from cordsnet import artifact as A

    path = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, path)
    shutil.copy(A.manifest_path(SHIPPED), A.manifest_path(path))
    alias = tmp_path / "ref.npz"
    alias.symlink_to(A.manifest_path(path).name)
    res = _cli("verify", path, "--save-reference", alias, timeout=120)
    _one_line(res, "--save-reference", "is an input of this command")
    assert "computing the reference" not in res.stderr
    assert A.manifest_path(path).read_bytes() == A.manifest_path(SHIPPED).read_bytes()
