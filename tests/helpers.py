"""Builders shared by the tests (and benchmarks): import them, don't copy them, don't import conftest.

``from helpers import published_model`` works in every test module (pytest puts ``tests/`` on the path
through ``conftest.py``); a benchmark adds ``tests/`` to ``sys.path`` first.
"""

from __future__ import annotations

from typing import Any

import torch

from cordsnet.config import CordsNetConfig
from cordsnet.model import CordsNet

__all__ = ["MANIFEST_LIES", "compared_manifest_fields", "exact_int8_kernels", "make_images", "make_published_state_dict",
           "published_model", "python_disagreements", "rewrite_onnx_metadata"]


def make_published_state_dict(depth: int = 2, num_classes: int = 10, in_channels: int = 3,
                              image_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with the exact published layout (docs/specification.md §2), stable dynamics and
    non-zero biases.

    Weight-norm magnitudes g are drawn so the recurrent dynamics stay bounded; every conv_bias is a
    non-zero spatial map, so the spontaneous phase does real work.
    """
    gen = torch.Generator().manual_seed(seed)
    cfg = CordsNetConfig(depth=depth, num_classes=num_classes, in_channels=in_channels,
                         image_size=image_size, dataset=None)
    template = CordsNet(cfg).state_dict()
    sd = {}
    for key, t in template.items():
        if key.endswith("original1"):  # v: direction
            sd[key] = torch.randn(t.shape, generator=gen)
        elif key.endswith("original0"):  # g: per-output-channel norm of the effective weight
            scale = {"area_conv": 0.3, "out_fc": 0.9}.get(key.split(".")[0], 1.6)
            sd[key] = (0.5 + 0.5 * torch.rand(t.shape, generator=gen)) * scale
        elif key.startswith("conv_bias"):
            sd[key] = 0.2 * torch.randn(t.shape, generator=gen) + 0.05
        else:  # out_fc.bias
            sd[key] = 0.1 * torch.randn(t.shape, generator=gen)
    return sd


def published_model(depth: int = 2, size: int = 32, classes: int = 10, channels: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], CordsNet]:
    """(state dict, model loaded from it) for a random published-layout checkpoint; a fresh model each call."""
    from cordsnet.checkpoint import load_checkpoint

    sd = make_published_state_dict(depth=depth, num_classes=classes, in_channels=channels, image_size=size,
                                   seed=seed)
    return sd, load_checkpoint(sd).to(dtype)


def make_images(batch: int = 2, channels: int = 3, size: int = 32, seed: int = 1) -> torch.Tensor:
    """Seeded standard-normal images (B, C, S, S), float32."""
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# A meta-path finder that makes `import torch` (and torchvision) fail in a subprocess: code run through
# run_without_torch proves it needs only numpy, onnxruntime (or OpenVINO) and the torch-free modules.
NO_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "torchvision") or name.startswith(("torch.", "torchvision.")):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _BlockTorch())
"""


def run_without_torch(code: str, *, cwd: str | None = None, timeout: float = 180):
    """Run `code` in a fresh Python with torch blocked and this checkout first on the path.

    Returns:
        The ``subprocess.CompletedProcess`` (text stdout/stderr).
    """
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def exact_int8_kernels() -> bool:
    """Whether this CPU's u8 x s8 int8 kernels sum their products exactly.

    On x86 without VNNI, onnxruntime's and oneDNN's U8S8 kernels use ``vpmaddubsw``, whose pairwise
    int16 sums saturate (documented by onnxruntime's quantisation guide); there an int8 graph and
    its fake-quantised PyTorch statement can differ by more than rounding. Other architectures and
    VNNI (``avx512_vnni`` / ``avx_vnni``) sum in int32.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


# --------------------------------------------------------------------------- manifests that lie
def _nudge_first_value(data: dict) -> None:
    """The first float32 of the manifest's spontaneous state, one ulp up (the base64 keeps its length)."""
    import base64

    import numpy as np

    area = data["spontaneous_state"]["areas"][0]
    values = np.frombuffer(base64.b64decode(area["data"]), "<f4").copy()
    values[0] = np.nextafter(values[0], np.float32(np.inf))
    area["data"] = base64.b64encode(values.tobytes()).decode("ascii")


# One lie per field that cordsnet.artifact.manifest_disagreements compares (an edit of a stepwise graph's
# client manifest, its sha256 and size left true); tests check the set against ArtifactInfo's fields.
MANIFEST_LIES: dict[str, Any] = {
    "graph": lambda d: d.update(graph="stepwise-drive"),
    "config": lambda d: d["config"].update(dataset="imagenet"),
    "steps": lambda d: d["protocol"].update(steps=99),
    "spontaneous_steps": lambda d: d["protocol"].update(spontaneous_steps=99),
    "alpha": lambda d: d["protocol"].update(alpha=0.25, dt_ms=2.5),
    "readout": lambda d: d["protocol"].update(readout="all"),
    "record": lambda d: d["protocol"].update(record=[0]),
    "dtype": lambda d: d.update(dtype="bfloat16"),
    "batch": lambda d: d.update(batch=2),
    "steps_per_call": lambda d: d["protocol"].update(steps_per_call=2),
    "preset": lambda d: d["preset"].update(mean=[0.5]),
    "exporter": lambda d: d.update(exporter="someone-else"),
    "checkpoint_sha256": lambda d: d.update(checkpoint_sha256="0" * 64),
    "state_dict_sha256": lambda d: d.update(state_dict_sha256="1" * 64),
    "format_version": lambda d: d.update(format_version="2"),
    "version": lambda d: d.update(cordsnet_version="9.9.9"),
    "spontaneous_state": _nudge_first_value,
}


def compared_manifest_fields() -> list[str]:
    """The fields cordsnet.artifact.manifest_disagreements compares, by the names it reports."""
    import dataclasses

    from cordsnet.artifact import ArtifactInfo

    return [f.name for f in dataclasses.fields(ArtifactInfo) if f.compare] + ["spontaneous_state"]


def python_disagreements(artifact, data: dict) -> list[str] | None:
    """What Python's check says of manifest `data` for `artifact`: the fields it disagrees on, or None when
    Python refuses to parse the manifest at all (a contradiction the lie made within the manifest)."""
    from cordsnet.artifact import ArtifactInfo, read_info
    from cordsnet.artifact.info import _manifest_to_metadata
    from cordsnet.artifact.manifest import manifest_disagreements

    try:
        told = ArtifactInfo.from_metadata(_manifest_to_metadata(data, "manifest"), "manifest")
    except ValueError:
        return None
    return manifest_disagreements(read_info(artifact), told)


def check_a_client_refuses_every_lie(artifact, tmp_path, refused) -> None:
    """A client (Node, C, C++) against Python's rule: for each field of MANIFEST_LIES, a manifest with that
    one lie (true sha256 and size) is refused in one line naming the field, and several lies at once name
    every field in Python's order. ``refused(manifest_path) -> str`` runs the client with ``--manifest``
    and returns its one error line."""
    import json

    from cordsnet.artifact import manifest_path

    assert sorted(MANIFEST_LIES) == sorted(compared_manifest_fields())
    good = json.loads(manifest_path(artifact).read_text())
    lie_path = tmp_path / "lie.json"
    for field, lie in MANIFEST_LIES.items():
        data = json.loads(json.dumps(good))
        lie(data)
        assert python_disagreements(artifact, data) in (None, [field]), field  # Python refuses it too
        lie_path.write_text(json.dumps(data))
        line = refused(lie_path)
        assert f"disagrees with the metadata inside {artifact.name} on {field}; " in line, (field, line)
    data = json.loads(json.dumps(good))
    for field in ("version", "exporter", "preset", "alpha"):
        MANIFEST_LIES[field](data)
    assert python_disagreements(artifact, data) == ["alpha", "preset", "exporter", "version"]
    lie_path.write_text(json.dumps(data))
    assert " on alpha, preset, exporter, version; " in refused(lie_path)


def rewrite_onnx_metadata(model, folder, edit):
    """A copy of ONNX graph `model` in new `folder`, its metadata_props edited by `edit(dict)`, with a copy
    of its manifest whose sha256 and size are made true for the copy (so only the metadata can disagree)."""
    import hashlib
    import json
    from pathlib import Path

    import onnx

    from cordsnet.artifact import manifest_path

    model, folder = Path(model), Path(folder)
    folder.mkdir()
    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    edit(props)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    path = folder / model.name
    onnx.save(proto, str(path))
    data = json.loads(manifest_path(model).read_text())
    data["artifact"].update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size_bytes=path.stat().st_size)
    manifest_path(path).write_text(json.dumps(data))
    return path
