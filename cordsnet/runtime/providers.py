"""Execution-provider selection for onnxruntime, with no silent fallback.

onnxruntime quietly runs a model on the CPU when the CUDA (or TensorRT) provider library cannot be
loaded: ``InferenceSession(..., providers=["CUDAExecutionProvider"])`` succeeds and
``session.get_providers()`` says ``["CPUExecutionProvider"]``. This module checks both that the
installed onnxruntime offers the provider (``onnxruntime.get_available_providers()``) and that the
created session really got it (``session.get_providers()``), and says why when it did not.

Provider names accepted by :func:`resolve_providers` (a registry, :data:`PROVIDER_ALIASES`):

* ``"cpu"``: the CPU provider only.
* ``"cuda"``: the CUDA provider (nodes it lacks run on the CPU, as onnxruntime always allows).
* ``"tensorrt"``: the TensorRT provider, then CUDA for what TensorRT does not take.
* ``"auto"``: CUDA when it can be used, else the CPU: silently with a CPU build of onnxruntime (the
  ``onnxruntime`` package: nothing to fall back from), with exactly one :class:`RuntimeWarning` when a
  GPU build (``onnxruntime-gpu``) cannot use CUDA here.
* an explicit onnxruntime list, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` or
  ``[("CUDAExecutionProvider", {"device_id": 1})]``: every listed provider must be active.

Every session is created by :func:`create_session`, which also

* gives the TensorRT provider its engine and timing caches (:func:`tensorrt_cache_options`): under
  ``<cache dir>/tensorrt/<sha256 of the graph file>/onnxruntime-<version>/``, so a changed graph (or another
  onnxruntime) never reuses a stale engine and a second process starts from the built engine; float16 graphs
  also get ``trt_fp16_enable`` (TensorRT otherwise builds their layers in float32). Options the caller sets
  for the provider win;
* warms a GPU session up (:func:`warm_up`): one run on zero inputs of batch 1 (or the graph's fixed batch), so
  that TensorRT's engine build and CUDA's first-run set-up happen at creation, not in the first timed call.
  Sessions with CUDA graphs are left alone (their first run captures the graph).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import onnxruntime as ort

from .._io import cache_dir, file_sha256
from ..threads import num_threads

logger = logging.getLogger("cordsnet.runtime")

__all__ = [
    "CPU",
    "CUDA",
    "CUDA_GRAPH_OPTIONS",
    "TENSORRT",
    "PROVIDER_ALIASES",
    "ProviderError",
    "ProviderPlan",
    "ProvidersLike",
    "create_session",
    "tensorrt_cache_options",
    "quiet_onnxruntime",
    "quiet_session_options",
    "is_gpu_provider",
    "resolve_providers",
    "warm_up",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderEntry = Union[str, tuple[str, Mapping[str, Any]]]
ProvidersLike = Union[str, Sequence[ProviderEntry]]

# Short names -> the onnxruntime providers they request, in priority order. "auto" is handled apart.
PROVIDER_ALIASES: dict[str, tuple[str, ...]] = {
    "cpu": (CPU,),
    "cuda": (CUDA, CPU),
    "tensorrt": (TENSORRT, CUDA, CPU),
}
_AUTO = "auto"

# Shared library that holds each GPU provider (onnxruntime dlopens it when a session asks for it).
_PROVIDER_LIBRARIES: dict[str, str] = {CUDA: "onnxruntime_providers_cuda", TENSORRT: "onnxruntime_providers_tensorrt"}


class ProviderError(ValueError):
    """A requested execution provider cannot be used here; the message says why."""


@dataclass(frozen=True)
class ProviderPlan:
    """What to ask onnxruntime for and what must be active afterwards.

    Attributes:
        request: the ``providers`` list for ``InferenceSession``.
        options: the matching ``provider_options`` list (dicts).
        required: providers that must appear in ``session.get_providers()``.
        auto: True when the plan came from "auto" (CPU fallback allowed, with one warning).
        label: the user's request, for messages.
    """

    request: tuple[str, ...]
    options: tuple[dict[str, str], ...]
    required: tuple[str, ...]
    auto: bool = False
    label: str = ""
    fallback_reason: str | None = field(default=None, compare=False)


def is_gpu_provider(name: str) -> bool:
    """True for providers whose tensors live on a CUDA device (CUDA, TensorRT)."""
    return name in (CUDA, TENSORRT)


def _with_options(names: Sequence[str], extra: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, str], ...]:
    return tuple({k: str(v) for k, v in extra.get(n, {}).items()} for n in names)


def resolve_providers(providers: ProvidersLike = "auto", *,
                      provider_options: Mapping[str, Mapping[str, Any]] | None = None) -> ProviderPlan:
    """Turn a provider request into a :class:`ProviderPlan`, checking availability first.

    Args:
        providers: "auto", "cpu", "cuda", "tensorrt" or an explicit onnxruntime provider list.
        provider_options: extra options per onnxruntime provider name, e.g.
            ``{"CUDAExecutionProvider": {"enable_cuda_graph": "1"}}``.

    Raises:
        ProviderError: a GPU provider was asked for by name and this onnxruntime cannot load it
            (the message gives the reason: not in this build, or the library's load error).
        ValueError: an unknown provider name (the message lists the valid ones).
    """
    extra = dict(provider_options or {})
    if isinstance(providers, str):
        key = providers.strip().lower()
        if key == _AUTO:
            if CUDA not in ort.get_available_providers():  # a CPU build: the CPU is what was installed
                names = PROVIDER_ALIASES["cpu"]
                return ProviderPlan(names, _with_options(names, extra), (CPU,), auto=True, label=_AUTO)
            reason = _unavailable_reason(CUDA)
            if reason is None:
                names = PROVIDER_ALIASES["cuda"]
                return ProviderPlan(names, _with_options(names, extra), (CUDA,), auto=True, label=_AUTO)
            names = PROVIDER_ALIASES["cpu"]
            return ProviderPlan(names, _with_options(names, extra), (CPU,), auto=True, label=_AUTO,
                                fallback_reason=f"{CUDA} cannot be used: {reason}")
        if key not in PROVIDER_ALIASES:
            raise ValueError(f"providers: expected one of {[_AUTO, *PROVIDER_ALIASES]} or a list of onnxruntime "
                             f"provider names, got {providers!r}")
        names = PROVIDER_ALIASES[key]
        required = names[:1] if key != "tensorrt" else (TENSORRT, CUDA)
        for name in required:
            reason = _unavailable_reason(name)
            if reason is not None:
                raise ProviderError(f"providers: {providers!r} asks for {name}, which cannot be used here: {reason}")
        return ProviderPlan(names, _with_options(names, extra), required, label=key)

    if not isinstance(providers, (list, tuple)) or not providers:
        raise TypeError(f"providers: expected a name or a non-empty list of onnxruntime providers, got {providers!r}")
    names, options = [], []
    valid = set(ort.get_all_providers())
    for entry in providers:
        if isinstance(entry, str):
            name, opts = entry, {}
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str) \
                and isinstance(entry[1], Mapping):
            name, opts = entry[0], dict(entry[1])
        else:
            raise TypeError(f"providers: expected entries 'Name' or ('Name', {{options}}), got {entry!r}")
        if name not in valid:
            raise ValueError(f"providers: unknown onnxruntime provider {name!r}; valid names are {sorted(valid)}")
        merged = {**{k: str(v) for k, v in extra.get(name, {}).items()}, **{k: str(v) for k, v in opts.items()}}
        names.append(name)
        options.append(merged)
    for name in names:
        reason = _unavailable_reason(name)
        if reason is not None:
            raise ProviderError(f"providers: {name} was requested but cannot be used here: {reason}")
    return ProviderPlan(tuple(names), tuple(options), tuple(names), label=str(names))


def create_session(path: str | os.PathLike, plan: ProviderPlan,
                   session_options: ort.SessionOptions | None = None,
                   warn: Callable[[str], None] | None = None) -> ort.InferenceSession:
    """Create an ``InferenceSession`` following `plan` and check what it really got.

    An "auto" plan that falls back to the CPU emits one :class:`RuntimeWarning` (through `warn`
    when given). Any other shortfall raises :class:`ProviderError`.
    """
    if plan.fallback_reason is not None:
        _warn_fallback(plan.fallback_reason, warn)
    session_options = quiet_session_options(session_options)
    plan = _with_tensorrt_caches(plan, Path(path))
    session = ort.InferenceSession(str(path), sess_options=session_options, providers=list(plan.request),
                                   provider_options=[dict(o) for o in plan.options])
    active = session.get_providers()
    missing = [p for p in plan.required if p not in active]
    if not missing:
        captures = any(o.get(k) == "1" for o in plan.options for k in CUDA_GRAPH_OPTIONS.values())
        if is_gpu_provider(active[0]) and not captures:
            warm_up(session)
        return session
    why = (f"onnxruntime created the session with {active} instead: the provider library loaded but the "
           f"provider could not start (no usable GPU visible, a driver / CUDA / cuDNN version mismatch, "
           f"or invalid provider options {list(plan.options)}); onnxruntime's log above has the details")
    if plan.auto and missing == [CUDA]:
        _warn_fallback(f"{CUDA} could not start: {why}", warn)
        return session  # onnxruntime already made it a CPU session; we only refuse to be silent about it
    raise ProviderError(f"providers: {plan.label} requires {missing}, but {why}")


# ------------------------------------------------------------------------------ TensorRT caches, warm-up
TENSORRT_CACHE = "tensorrt"  # cache_dir() sub-folder: <sha256 of the graph>/onnxruntime-<version>/
# provider -> its option that captures CUDA graphs (StepSession(cuda_graph=True) sets them; warm-up skips them)
CUDA_GRAPH_OPTIONS: dict[str, str] = {CUDA: "enable_cuda_graph", TENSORRT: "trt_cuda_graph_enable"}
# onnxruntime's element types -> the numpy dtypes of warm-up inputs.
_WARM_DTYPES: dict[str, type] = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                                 "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def tensorrt_cache_options(sha256: str, dtype: str | None = None) -> dict[str, str]:
    """The TensorRT provider options for a graph file of digest `sha256`: engine and timing caches in its folder.

    Args:
        sha256: hex sha256 of the graph file; its folder is ``<cache dir>/tensorrt/<sha256>/onnxruntime-<version>``
            (created here), so an engine built for other bytes, or by another onnxruntime, is never reused.
        dtype: the graph's dtype (``"float16"`` adds ``trt_fp16_enable``, without which TensorRT builds
            float16 layers in float32); None or another dtype: none.

    Returns:
        ``{"trt_engine_cache_enable": "1", "trt_engine_cache_path": folder, "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": folder[, "trt_fp16_enable": "1"]}``.

    Raises:
        ValueError: `sha256` is not a hex sha256.
    """
    from ..artifact.reading import SHA256_HEX

    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256: expected the hex sha256 of a graph file (64 lowercase hex digits), got {sha256!r}")
    folder = cache_dir() / TENSORRT_CACHE / sha256 / f"onnxruntime-{ort.__version__}"
    folder.mkdir(parents=True, exist_ok=True)
    options = {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(folder),
               "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(folder)}
    if dtype == "float16":
        options["trt_fp16_enable"] = "1"
    return options


def _with_tensorrt_caches(plan: ProviderPlan, path: Path) -> ProviderPlan:
    """`plan` with :func:`tensorrt_cache_options` for the graph file `path` under the options set for TensorRT
    (the plan's own options win); the plan itself when it does not ask for TensorRT."""
    if TENSORRT not in plan.request:
        return plan
    from ..artifact import read_info

    try:
        dtype: str | None = read_info(path, "onnx", check_io=False).dtype
    except ValueError:  # not a cordsnet graph: caches only; onnxruntime says what is wrong with the file
        dtype = None
    options = list(plan.options)
    at = plan.request.index(TENSORRT)
    options[at] = {**tensorrt_cache_options(file_sha256(path), dtype), **options[at]}
    return dataclasses.replace(plan, options=tuple(options))


def warm_up(session: ort.InferenceSession) -> None:
    """One run of `session` on zero inputs (integer inputs: 1) of batch 1, or the graph's fixed sizes.

    On a GPU provider this is where TensorRT builds (or loads) its engines and CUDA sets up its kernels, so
    the first call of the application is not the slow one. A failure is logged, not raised: the first real
    run meets the same problem and reports it with the real inputs.
    """
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (arg.shape or [])]
        dtype = _WARM_DTYPES.get(arg.type)
        if dtype is None:
            logger.debug("no warm-up: input %r has element type %s", arg.name, arg.type)
            return
        feeds[arg.name] = (np.ones if np.issubdtype(dtype, np.integer) else np.zeros)(shape, dtype)
    try:
        session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types; the first real run reports it
        logger.warning("the warm-up run on %s failed (the first call will retry): %s", session.get_providers()[0],
                       " ".join(str(exc).split())[:300])


def quiet_session_options(options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """`options` (or new ones) with the process's thread budget and onnxruntime's log kept to errors.

    * threads: :func:`cordsnet.threads.num_threads` as ``intra_op_num_threads`` unless `options` set one;
    * logging: onnxruntime's own warnings (e.g. a float16 graph's "Could not find a CPU kernel" lines of
      constant folding, which fall back correctly) are not the user's business; errors still show, and
      ``CORDSNET_DEBUG=1`` shows everything. :func:`quiet_onnxruntime` does the same for the default logger,
      which onnxruntime's own tools (the int8 quantiser's calibration sessions) use.
    """
    options = options if options is not None else ort.SessionOptions()
    n = num_threads()
    if n is not None and options.intra_op_num_threads == 0:
        options.intra_op_num_threads = n
    if not os.environ.get("CORDSNET_DEBUG") and options.log_severity_level == -1:
        options.log_severity_level = 3
    quiet_onnxruntime()
    return options


def quiet_onnxruntime() -> None:
    """onnxruntime's default logger at errors only (unless ``CORDSNET_DEBUG`` is set)."""
    if not os.environ.get("CORDSNET_DEBUG"):
        ort.set_default_logger_severity(3)


def _warn_fallback(reason: str, warn: Callable[[str], None] | None) -> None:
    message = f"providers='auto': running on the CPU ({CPU}) because {reason}"
    if warn is not None:
        warn(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=4)


# ----------------------------------------------------------------------------- availability probe
_PRELOADED = False


def _preload_cuda_libraries() -> str:
    """Let onnxruntime find CUDA / cuDNN from the nvidia-* pip packages (what ``import torch`` does)."""
    global _PRELOADED
    if _PRELOADED or not hasattr(ort, "preload_dlls"):
        return ""
    _PRELOADED = True
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            ort.preload_dlls()
    except Exception as exc:  # a missing optional package is not an error: the probe below decides
        buf.write(f"preload_dlls failed: {exc}")
    return buf.getvalue().strip()


def _library_path(name: str) -> Path | None:
    stem = _PROVIDER_LIBRARIES.get(name)
    if stem is None:
        return None
    capi = Path(ort.__file__).parent / "capi"
    filename = f"{stem}.dll" if sys.platform == "win32" else f"lib{stem}.so"
    path = capi / filename
    return path if path.exists() else None


_REASONS: dict[str, str | None] = {}


def _unavailable_reason(name: str) -> str | None:
    """None when `name` looks usable; otherwise a sentence saying why not (cached)."""
    if name == CPU:
        return None
    if name in _REASONS:
        return _REASONS[name]
    available = ort.get_available_providers()
    reason: str | None = None
    if name not in available:
        reason = (f"this onnxruntime build (package {_ort_package()}, version {ort.__version__}) does not include it "
                  f"(available: {available}); install onnxruntime-gpu for CUDA / TensorRT")
    elif name in _PROVIDER_LIBRARIES:
        preload_notes = _preload_cuda_libraries()
        path = _library_path(name)
        if path is not None:
            try:
                ctypes.CDLL(str(path))
            except OSError as exc:
                hint = {
                    CUDA: "no NVIDIA driver on this machine" if "libcuda.so" in str(exc)
                    else "the CUDA / cuDNN runtime libraries this onnxruntime was built for are missing",
                    TENSORRT: "the TensorRT libraries (libnvinfer) or CUDA libraries are missing",
                }[name]
                reason = f"its library {path.name} cannot be loaded: {exc} ({hint})"
                if preload_notes:
                    reason += f"; {' '.join(preload_notes.split())}"
    _REASONS[name] = reason
    return reason


def _ort_package() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return "onnxruntime"
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            version(dist)
            return dist
        except PackageNotFoundError:
            continue
    return "onnxruntime"
