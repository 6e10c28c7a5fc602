"""Fetching checkpoints into the cache (cordsnet.fetch, `cordsnet-cli fetch`), from a server on 127.0.0.1 only.

The server serves synthetic checkpoints of the published layout (tests/helpers.py) and misbehaves on
request: it stalls mid-file, drops the connection once, or ignores Range requests.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import subprocess
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from cordsnet import fetch as fetch_module
from cordsnet.checkpoint import load_checkpoint
from cordsnet.cli import app
from cordsnet.fetch import REMOTES, FetchError, Remote, fetch, git_blob_id
from helpers import make_published_state_dict

runner = CliRunner()


def _published_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    sd = make_published_state_dict(depth=2, num_classes=10, in_channels=3, image_size=32, seed=seed)
    torch.save({f"module.{k}": v for k, v in sd.items()}, buffer)  # as saved from DataParallel
    return buffer.getvalue()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Server:
    """Files by path, each with a behaviour: "ok", "stall" (half the file, then silence), "drop-once" (half
    the file, then the connection closes; later requests are served), "no-range" (Range ignored)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path not in server.files:
                    self.send_error(404)
                    return
                data, mode = server.files[self.path], server.modes.get(self.path, "ok")
                start = int(rng.split("=")[1].split("-")[0]) if rng and mode != "no-range" else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if mode == "stall" or (mode == "drop-once" and sum(p == self.path for p, _ in server.requests) == 1):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if mode == "stall":
                        server.release.wait(30)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes, mode: str = "ok") -> str:
        self.files[path], self.modes[path] = data, mode
        return self.url(path)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("CORDSNET_CACHE_DIR", str(folder))
    return folder


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_git_blob_id_is_gits(tmp_path):
    data = _published_bytes()
    path = tmp_path / "x.pth"
    path.write_bytes(data)
    assert git_blob_id(path) == _blob_id(data)
    if shutil.which("git"):
        assert git_blob_id(path) == subprocess.run(["git", "hash-object", str(path)], capture_output=True,
                                                   text=True, check=True).stdout.strip()


def test_fetch_by_url_then_load_then_cached_without_network(server, cache):
    data = _published_bytes()
    url = server.add("/ckpt/cordsnetr2.pth", data)
    path = fetch(url, git_blob=_blob_id(data), progress="none")
    assert path.read_bytes() == data and path.is_relative_to(cache)
    assert _files(cache) == [path]  # no temporary left beside it
    model = load_checkpoint(path)
    assert model.config.depth == 2
    sd = make_published_state_dict(depth=2, num_classes=10, in_channels=3, image_size=32)
    assert torch.equal(model.state_dict()["area_conv.1.parametrizations.weight.original1"],
                       sd["area_conv.1.parametrizations.weight.original1"])
    served = len(server.requests)
    server.close()  # later calls must not need the network
    assert fetch(url, git_blob=_blob_id(data), progress="none") == path
    assert len(server.requests) == served
    # sha256 works the same (another cache entry: the hash names the folder)
    server2 = _Server()
    try:
        url2 = server2.add("/other.pth", data)
        assert fetch(url2, sha256=hashlib.sha256(data).hexdigest(), progress="none").read_bytes() == data
    finally:
        server2.close()


def test_wrong_hash_leaves_nothing(server, cache):
    data = _published_bytes()
    url = server.add("/cordsnetr8.pth", data)
    wrong = _blob_id(data + b"x")
    with pytest.raises(FetchError, match=f"expected {wrong}"):
        fetch(url, git_blob=wrong, progress="none")
    assert _files(cache) == [] and not any(cache.rglob("*"))


def test_stall_fails_in_bounded_time_and_leaves_nothing(server, cache):
    data = _published_bytes()
    url = server.add("/stall.pth", data, mode="stall")
    start = time.monotonic()
    with pytest.raises(FetchError, match="no data for 0.5 s") as info:
        fetch(url, git_blob=_blob_id(data), timeout=0.5, progress="none")
    elapsed = time.monotonic() - start
    # each stall after progress is resumed where it stopped, at most `retries` (2) times: 3 x 0.5 s in all
    assert elapsed < 5, elapsed
    half, quarter = len(data) // 2, (len(data) - len(data) // 2) // 2
    assert [r for _, r in server.requests] == [None, f"bytes={half}-", f"bytes={half + quarter}-"]
    assert "place it at" in str(info.value) and url in str(info.value)
    assert not any(cache.rglob("*"))


def test_dropped_connection_resumes_with_range(server, cache):
    data = _published_bytes()
    url = server.add("/drop.pth", data, mode="drop-once")
    path = fetch(url, git_blob=_blob_id(data), progress="none")
    assert path.read_bytes() == data
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]  # the second half only


def test_server_without_ranges_sends_it_all_again(server, cache):
    data = _published_bytes()
    url = server.add("/norange.pth", data, mode="stall")
    server.release.set()  # "stall" without the wait: half the file, then the connection closes
    server.modes["/norange.pth"] = "stall"
    original = server.httpd.RequestHandlerClass.do_GET

    def first_drops_then_whole(handler):
        if len(server.requests) == 1:  # the second request: answer 200 with the whole file, ignoring Range
            server.modes["/norange.pth"] = "no-range"
        original(handler)

    server.httpd.RequestHandlerClass.do_GET = first_drops_then_whole
    path = fetch(url, git_blob=_blob_id(data), progress="none")
    assert path.read_bytes() == data
    assert server.requests[1][1] == f"bytes={len(data) // 2}-"  # asked for the rest, got it all: started over


def test_unreachable_fails_at_once_in_one_line(cache, monkeypatch):
    url = "http://127.0.0.1:9/cordsnetr8.pth"  # discard port: nothing listens
    start = time.monotonic()
    result = runner.invoke(app, ["fetch", url, "--git-blob", "0" * 40])
    assert time.monotonic() - start < 10
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert url in result.output and "place it at" in result.output
    assert not any(cache.rglob("*"))


def test_cli_fetch_list_and_errors(server, cache):
    result = runner.invoke(app, ["fetch", "--list", "--json"])
    assert result.exit_code == 0, result.output
    assert '"name": "cordsnet-r8"' in result.output
    assert '"digest": "94ed91f2c3eaefb1666ee12dc3cab01513f69143"' in result.output
    result = runner.invoke(app, ["fetch", "--list"])
    assert result.exit_code == 0 and "cordsnet-r8" in result.output and "94ed91f2c3eaefb1666ee12dc3cab01513f69143" \
        in result.output

    data = _published_bytes()
    url = server.add("/a.pth", data)
    result = runner.invoke(app, ["fetch", url, "--git-blob", _blob_id(data)])
    assert result.exit_code == 0, result.output
    path = result.output.strip().splitlines()[-1]
    assert open(path, "rb").read() == data

    for args, needle in [([url], "exactly one hash"), (["cordsnet-r9"], "cordsnet-r8"),
                         ([url, "--git-blob", "xyz"], "40 hexadecimal"),
                         (["cordsnet-r8", "--sha256", "0" * 64], "registered name"),
                         ([url.replace("/a.pth", "/missing.pth"), "--sha256", "0" * 64], "HTTP 404")]:
        result = runner.invoke(app, ["fetch", *args])
        assert result.exit_code == 1 and result.output.startswith("Error: ") and needle in result.output, result.output
        assert result.output.count("\n") == 1


def test_load_checkpoint_by_registered_name(server, cache, monkeypatch):
    data = _published_bytes(seed=3)
    url = server.add("/wmws2/cordsnet/cordsnetr8.pth", data)
    monkeypatch.setitem(REMOTES, "cordsnet-r8", Remote(url=url, kind="git-blob", digest=_blob_id(data)))
    model = load_checkpoint("cordsnet-r8")
    assert model.config.depth == 2
    assert fetch_module.cached_path(REMOTES["cordsnet-r8"]).read_bytes() == data
    served = len(server.requests)
    load_checkpoint("cordsnet-r8")
    assert len(server.requests) == served  # from the cache


def test_a_cached_file_that_does_not_match_is_refused(server, cache):
    data = _published_bytes()
    url = server.add("/c.pth", data)
    path = fetch(url, git_blob=_blob_id(data), progress="none")
    path.write_bytes(data[:-1])
    with pytest.raises(FetchError, match="does not match"):
        fetch(url, git_blob=_blob_id(data), progress="none")


def test_log_lines_when_not_a_terminal(server, cache, caplog):
    data = _published_bytes()
    url = server.add("/log.pth", data)
    with caplog.at_level("INFO", logger="cordsnet.fetch"):
        fetch(url, git_blob=_blob_id(data), progress="log")
    text = caplog.text
    assert "downloading" in text and "100%" in text and "verified" in text


def test_fetch_and_the_hub_names_are_torch_free():
    from helpers import run_without_torch

    done = run_without_torch("import cordsnet, cordsnet.fetch, cordsnet.pretrained\n"
                             "from cordsnet.cli.web import cache_dir\n"
                             "assert cache_dir() == cordsnet.fetch.cache_dir()\n"
                             "print(cordsnet.fetch.REMOTES['cordsnet-r8'].digest)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "94ed91f2c3eaefb1666ee12dc3cab01513f69143"


def test_cli_commands_take_the_registered_name(server, cache, monkeypatch):
    data = _published_bytes(seed=4)
    url = server.add("/published/cordsnetr8.pth", data)
    monkeypatch.setitem(REMOTES, "cordsnet-r8", Remote(url=url, kind="git-blob", digest=_blob_id(data)))
    result = runner.invoke(app, ["info", "cordsnet-r8", "--json"])
    assert result.exit_code == 0, result.output
    assert '"depth": 2' in result.output and len(server.requests) == 1
    monkeypatch.setitem(REMOTES, "cordsnet-r8", Remote(url=url, kind="git-blob", digest="0" * 40))
    result = runner.invoke(app, ["info", "cordsnet-r8"])  # another digest: not cached, downloaded and refused
    assert result.exit_code == 1 and result.output.startswith("Error: fetch:") and "expected 0000" in result.output
