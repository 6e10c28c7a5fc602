"""Dataset-scale recording into one chunked Zarr v3 store, written by many processes at once.

A store holds one recording of one model over the first N images of a dataset split:

* ``area_<a>``: (image, time, channel, y, x) rates, or (image, time, channel) with a spatial mean (when
  the recorded areas differ in shape, their own dimensions carry the area: channel_<a>, y_<a>, x_<a>);
* ``logits``: (image, time, class), or (image, class) for the readout after the last step only;
* coordinates ``index`` (image,) — the image's index in the split —, ``label`` (image,) and
  ``time_ms`` (time,) — milliseconds after stimulus onset (see :mod:`cordsnet.analysis.recording`);
* ``done`` (image,): the completion mask, True once every chunk of the image is written;
* attributes under ``"cordsnet"``: the model's config and state-dict sha256, the checkpoint's sha256,
  the protocol, window, dtype, the source (dataset, split, N), the sharding and the cordsnet version.

Every array is chunked along the image axis by ``chunk_images`` images (and along time so a chunk
stays around 16 MiB); chunk k (images ``k*C .. k*C + C - 1``) belongs to rank ``k mod world``
("strided over chunks"). So concurrent writers never share a chunk, need no lock, and never send
activity to each other; the process group (torchrun) is used only for two barriers.

Resuming: the same call on an existing store checks that it was made with the same model, protocol,
window, variables and source (else :class:`ValueError`), reads ``done`` and simulates only the
chunks not yet complete. A chunk's ``done`` entries are written after all of its data, so a killed
writer leaves at worst chunks that are rewritten on the next run; a chunk is simulated as the same
batch of images whatever the number of processes, so the numbers do not depend on it.

Evaluating a store (top-1 per step and class, the accuracy curve) is :mod:`cordsnet.analysis.evaluation`.
Reading needs nothing of cordsnet: ``zarr.open_group(path, mode="r")`` or
``xarray.open_zarr(path, consolidated=False)`` (dimension names are stored in the arrays' metadata).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import validate
from ..progress import Progress, default_style
from .recording import NumpyConverter, RecordPlan, blank_phase, simulate_batch

__all__ = ["STORE_FORMAT", "READOUT_KINDS", "StoreReport", "dist_context", "open_store", "record_dataset",
           "store_identity"]

logger = logging.getLogger("cordsnet.record")

STORE_FORMAT = 1  # version of the store layout written here
READOUT_KINDS: tuple[str, ...] = ("all", "last")
CHUNK_BYTES = 16 << 20  # target uncompressed size of one chunk: time blocks are cut to stay near it
_DIMS = {"area": ("image", "time", "channel", "y", "x"), "area_mean": ("image", "time", "channel"),
         "logits": ("image", "time", "class"), "logits_last": ("image", "class")}
# Identity keys: a store is resumed only when all of these match (the message names the first that differs).
_IDENTITY: dict[str, str] = {"format_version": "store format", "kind": "kind of recording",
                             "state_dict_sha256": "model", "config": "model", "protocol": "protocol",
                             "window": "window", "variables": "variables", "dtype": "dtype",
                             "spatial_mean": "spatial mean", "source": "dataset", "chunk_images": "chunking"}


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise ValueError("store: Zarr stores need zarr v3: pip install 'cordsnet[zarr]'") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise ValueError(f"store: expected zarr >= 3, got {zarr.__version__}; pip install 'zarr>=3'")
    return zarr


def _compressor() -> Any:
    # numcodecs' Blosc: zstd level 1 with byte shuffling compressed float32 rates better and about twice as
    # fast as level 3 with bit shuffling (digits area 0: 1.38x in 0.23 s vs 1.27x in 0.41 s per 64 images).
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


@dataclass(frozen=True)
class StoreReport:
    """What one process did in :func:`record_dataset`.

    Attributes:
        store: the store's path or URL.
        rank, world: this process and the number of processes.
        images: N, images in the store.
        written: images this process simulated and wrote now.
        skipped: images of this process's shard already done (resumed).
        seconds: wall-clock time of the simulation and writing.
    """

    store: str
    rank: int
    world: int
    images: int
    written: int
    skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "rank": self.rank, "world": self.world, "images": self.images,
                "written": self.written, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 3)}


def store_identity(model: Any, plan: RecordPlan, *, source: Mapping[str, Any], readout: str | None,
                   chunk_images: int, checkpoint_sha256: str = "") -> dict[str, Any]:
    """The attributes a store records and checks on resume (plain JSON data).

    Args:
        model: the CordsNet recorded.
        plan: what is recorded (:func:`~cordsnet.analysis.recording.make_plan`).
        source: where the images come from, e.g. {"dataset": "digits", "split": "test", "images": 360}.
        readout: "all"/"last" for logits (evaluate), None for a recording of areas only.
        chunk_images: images per chunk (and per simulated batch).
        checkpoint_sha256: sha256 of the checkpoint file ("" for an in-memory model).
    """
    from .. import __version__
    from ..checkpoint import state_dict_sha256

    variables = {name: list(shape) for name, shape in plan.shapes.items()}
    return {"format": "cordsnet-activity", "format_version": STORE_FORMAT,
            "kind": "evaluate" if readout is not None else "record",
            "cordsnet_version": __version__, "config": model.config.to_dict(),
            "state_dict_sha256": state_dict_sha256(model.state_dict()), "checkpoint_sha256": checkpoint_sha256,
            "protocol": plan.protocol_dict(), "window": list(plan.window), "areas": list(plan.areas),
            "variables": variables, "readout": readout, "dtype": plan.dtype, "spatial_mean": plan.spatial_mean,
            "source": dict(source), "chunk_images": int(chunk_images),
            "sharding": {"scheme": "strided-chunks", "chunk_images": int(chunk_images),
                         "rule": "chunk k holds images k*chunk_images .. (k+1)*chunk_images - 1 and is written by "
                                 "rank k mod world"}}


# The attributes every store has, with their JSON types: an edited or damaged store is refused by name.
_ATTR_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str, "format_version": int, "kind": str, "config": dict, "state_dict_sha256": str,
    "checkpoint_sha256": str, "protocol": dict, "window": list, "areas": list, "variables": dict,
    "readout": (str, type(None)), "dtype": str, "spatial_mean": bool, "source": dict, "chunk_images": int}
_COORDINATES = ("index", "label", "done")  # (image,) arrays every store has besides its variables
MAX_ZARR_METADATA_BYTES = 16 << 20  # a zarr.json: attributes and array metadata, never this large


def _check_metadata_files(path: str) -> None:
    """Local stores: every ``zarr.json`` is a regular file parsed within bounds before zarr reads it."""
    from .._io import read_json_file, register_input

    root = Path(path)
    if "://" in path or not root.is_dir():
        return
    register_input(root)  # no output of this command may be written inside the store
    for meta in [root / "zarr.json", *sorted(root.glob("*/zarr.json"))]:
        if meta.exists() or meta.is_symlink():
            try:
                data = read_json_file(meta, "store metadata", max_bytes=MAX_ZARR_METADATA_BYTES)
                if meta.parent != root and isinstance(data, dict) and isinstance(data.get("shape"), list):
                    _check_chunk_files(meta.parent / "c", len(data["shape"]))
            except ValueError as exc:
                raise ValueError(f"store: {path!r} is damaged or its creation was interrupted ({exc}); delete it "
                                 "and run the command again") from None


def _check_chunk_files(folder: Path, ndim: int) -> None:
    """Every chunk of an array (``c/i0/.../i{ndim-1}``) is a regular file: a FIFO would block the reader, a
    device (``/dev/zero``) would be read without end, a directory would fail the writer."""
    def walk(directory: Path, depth: int) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                leaf = depth == ndim
                if entry.is_dir() and not leaf:
                    walk(Path(entry.path), depth + 1)
                elif not (leaf and entry.is_file()):
                    kind = "a directory" if entry.is_dir() else "not a regular file"
                    raise ValueError(f"chunk {entry.path!r} is {kind}")

    if folder.is_dir() and not folder.is_symlink():
        walk(folder, 1)
    elif folder.exists() or folder.is_symlink():
        raise ValueError(f"chunk folder {str(folder)!r} is not a plain folder")


def _attributes(group: Any, path: str) -> dict[str, Any]:
    """The store's ``cordsnet`` attributes, their types checked (one line naming the first wrong one)."""
    attrs = group.attrs.get("cordsnet")
    if not isinstance(attrs, dict) or attrs.get("format") != "cordsnet-activity":
        raise ValueError(f"store: {path!r} is a Zarr group but not a cordsnet recording (or its creation was "
                         "interrupted); choose another path or delete it")
    for key, kind in _ATTR_TYPES.items():
        value = attrs.get(key)
        if not (validate.is_int(value) if kind is int else isinstance(value, kind)):
            raise ValueError(f"store: {path!r} has a damaged or edited attribute cordsnet.{key} = {str(value)[:60]!r} "
                             f"(expected {getattr(kind, '__name__', 'str or null')}); delete the store and run again")
    source = attrs["source"]
    if not isinstance(source.get("images"), int) or source["images"] < 1 or attrs["chunk_images"] < 1:
        raise ValueError(f"store: {path!r} has damaged attributes (source.images {source.get('images')!r}, "
                         f"chunk_images {attrs['chunk_images']!r}); delete the store and run again")
    return attrs


def _check_arrays(group: Any, attrs: Mapping[str, Any], path: str) -> None:
    """Every array the attributes promise is there, with the image count and chunking they state."""
    n, chunk = attrs["source"]["images"], attrs["chunk_images"]
    names = [*attrs["variables"], *_COORDINATES]
    present = set(group.array_keys())
    missing = [name for name in names if name not in present]
    if missing:
        raise ValueError(f"store: {path!r} lacks the array(s) {missing} its attributes list (damaged or edited); "
                         "delete the store and run again")
    dtypes = {**{name: attrs["dtype"] for name in attrs["variables"]}, "index": "int64", "label": "int64",
              "done": "bool"}
    for name in names:
        arr = group[name]
        if arr.shape[:1] != (n,) or arr.chunks[0] != chunk:
            raise ValueError(f"store: {path!r}: array {name!r} has shape {tuple(arr.shape)} and chunks "
                             f"{tuple(arr.chunks)}, but the attributes say {n} images in chunks of {chunk}; "
                             "delete the store and run again")
        tail = tuple(attrs["variables"].get(name, ()))
        if str(arr.dtype) != dtypes[name] or (tail and tuple(arr.shape[-len(tail):]) != tail):
            raise ValueError(f"store: {path!r}: array {name!r} is {arr.dtype} of shape {tuple(arr.shape)}, but the "
                             f"attributes say {dtypes[name]}{f' ending in {tail}' if tail else ''}; the store was "
                             "edited or damaged: delete it and run again")


def open_store(path: str | os.PathLike, mode: str = "r") -> Any:
    """Open a cordsnet store as a ``zarr.Group``, its metadata bounded, attributes and arrays checked.

    Raises:
        ValueError: not a cordsnet store, or a damaged one (one line naming what is wrong).
    """
    zarr = _zarr()
    path = str(path)
    _check_metadata_files(path)
    try:
        group = zarr.open_group(path, mode=mode)
    except Exception as exc:  # noqa: BLE001 - zarr raises several types for "nothing there"
        raise ValueError(f"store: no Zarr store at {path!r} ({type(exc).__name__})") from None
    _check_arrays(group, _attributes(group, path), path)
    return group


def _exists(path: str) -> bool:
    zarr = _zarr()
    _check_metadata_files(path)
    try:
        zarr.open_group(path, mode="r")
        return True
    except Exception:  # noqa: BLE001 - any failure to open means "no group there"
        local = Path(path)
        if "://" not in path and local.exists() and (not local.is_dir() or any(local.iterdir())):
            raise ValueError(f"store: {path!r} exists and is not a Zarr store; choose another path") from None
        return False


def _check_identity(path: str, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    for key, what in _IDENTITY.items():
        if stored.get(key) != wanted.get(key):
            raise ValueError(f"store: {path!r} was made with another {what} ({key}: stored {stored.get(key)!r}, "
                             f"now {wanted.get(key)!r}); use another --store or delete it")


def _time_chunk(shape: Sequence[int], chunk_images: int, length: int, itemsize: int) -> int:
    per_step = chunk_images * math.prod(shape) * itemsize
    return max(1, min(length, CHUNK_BYTES // max(1, per_step)))


def _area_dims(plan: RecordPlan, name: str) -> tuple[str, ...]:
    """(image, time, channel, y, x), or with a spatial mean (image, time, channel); when the recorded areas
    differ in shape, each area's own dimensions carry its index (channel_2, y_2, x_2) so that xarray can
    hold them side by side."""
    dims = _DIMS["area_mean" if plan.spatial_mean else "area"]
    shapes = {shape for key, shape in plan.shapes.items() if key.startswith("area_")}
    if len(shapes) <= 1:
        return dims
    suffix = name[len("area"):]
    return dims[:2] + tuple(d + suffix for d in dims[2:])


def _create(path: str, identity: dict[str, Any], plan: RecordPlan, n: int, chunk_images: int,
            readout: str | None, index: np.ndarray) -> None:
    zarr = _zarr()
    group = zarr.open_group(path, mode="w", zarr_format=3)
    for name, shape in plan.shapes.items():
        if name == "logits" and readout == "last":  # the readout after the last step: no time axis
            full, chunks, dims = (n, *shape), (chunk_images, *shape), _DIMS["logits_last"]
            coords = "index label"
        else:
            tc = _time_chunk(shape, chunk_images, plan.length, plan.np_dtype.itemsize)
            full, chunks = (n, plan.length, *shape), (chunk_images, tc, *shape)
            dims = _DIMS["logits"] if name == "logits" else _area_dims(plan, name)
            coords = "index label time_ms"
        # "coordinates" (CF convention) makes xarray attach index/label/time_ms as coordinates.
        group.create_array(name, shape=full, chunks=chunks, dtype=plan.np_dtype, fill_value=np.nan,
                           compressors=_compressor(), dimension_names=dims, attributes={"coordinates": coords})
    group.create_array("index", shape=(n,), chunks=(chunk_images,), dtype="int64", fill_value=-1,
                       dimension_names=("image",), attributes={"description": "index of the image in the split"})
    group.create_array("label", shape=(n,), chunks=(chunk_images,), dtype="int64", fill_value=-1,
                       dimension_names=("image",), attributes={"description": "class label (-1: not written yet)"})
    group.create_array("done", shape=(n,), chunks=(chunk_images,), dtype="bool", fill_value=False,
                       dimension_names=("image",),
                       attributes={"description": "True once every chunk of the image is written"})
    group.create_array("time_ms", shape=(plan.length,), chunks=(plan.length,), dtype="float64", fill_value=0.0,
                       dimension_names=("time",), attributes={"units": "ms after stimulus onset"})
    group["time_ms"][:] = plan.times_ms
    group["index"][:] = index
    group.attrs["cordsnet"] = identity  # last: a store without it is not a cordsnet store (half-created)


# ----------------------------------------------------------------------------- distribution
@dataclass
class DistContext:
    """This process's place among the writers: rank, world size and a barrier/broadcast (torchrun)."""

    rank: int = 0
    world: int = 1
    _group: bool = field(default=False, repr=False)

    def barrier(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.barrier()

    def total(self, value: int) -> int:
        """The sum of `value` over every rank (a count, never activity)."""
        if not self._group:
            return int(value)
        import torch.distributed as dist

        box = torch.tensor([int(value)], dtype=torch.int64)
        dist.all_reduce(box)
        return int(box.item())

    def share_error(self, message: str | None) -> None:
        """Rank 0's error (or None) reaches every rank, which all raise it (no rank is left waiting)."""
        if self._group:
            import torch.distributed as dist

            box = [message]
            dist.broadcast_object_list(box, src=0)
            message = box[0]
        if message is not None:
            raise ValueError(message)


@contextlib.contextmanager
def dist_context() -> Iterator[DistContext]:
    """The torchrun environment as a :class:`DistContext` (rank 0 of 1 without it).

    Under torchrun (``WORLD_SIZE`` > 1) a gloo process group is started if none is (it carries only
    barriers, one error message and a count, never activity). It is kept for the rest of the process,
    so that later calls reuse it: tearing it down and starting another one in the same torchrun job can
    hang in the rendezvous.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistContext(0, 1, False)
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    yield DistContext(dist.get_rank(), dist.get_world_size(), True)


# ------------------------------------------------------------------------------- recording
def record_dataset(model: Any, dataset: Any, store: str | os.PathLike, plan: RecordPlan, *,
                   source: Mapping[str, Any], readout: str | None = None, limit: int | None = None,
                   chunk_images: int = 8, checkpoint_sha256: str = "", context: DistContext | None = None,
                   workers: int = 0, progress: bool | None = None, log_every: int = 100,
                   stop_after: int | None = None) -> StoreReport:
    """Record `plan` for the first `limit` images of `dataset` into a Zarr store, this process's shard.

    Call it from every process (torchrun): each simulates and writes only its chunks (module
    docstring). Rerunning the same call on the same store resumes it.

    Args:
        model: a CordsNet on this process's device.
        dataset: a map-style dataset yielding (image (C, S, S) normalised, label int).
        store: a directory path or any fsspec URL zarr supports.
        plan: what to record; with `readout` "last" its window must be the last index only.
        source: describes the images (dataset name, split, ...); part of the store's identity.
        readout: "all" (logits at every recorded index) or "last" (after the last step, no time
            axis) for an evaluation; None when recording areas only.
        limit: the first `limit` images of the dataset (default: all).
        chunk_images: images per chunk along the image axis, and per simulated batch.
        checkpoint_sha256: recorded in the attributes.
        context: rank/world/barriers (default: :func:`dist_context` must have been entered by the
            caller; without one, a single process).
        workers: DataLoader worker processes for loading images.
        progress: a bar per rank (default: on a TTY); otherwise a log line every `log_every` images.
        log_every: images between log lines (no TTY).
        stop_after: stop after this many chunks (a test hook simulating a killed job).

    Returns:
        This process's :class:`StoreReport`.
    """
    from torch.utils.data import DataLoader

    ctx = context if context is not None else DistContext()
    size = len(dataset)
    n = size if limit is None else min(size, validate.positive_int("limit", limit))
    if n == 0:
        raise ValueError("dataset: expected at least one image, got an empty split")
    chunk_images = validate.positive_int("chunk_images", chunk_images)
    if readout is not None:
        validate.choice("readout", readout, READOUT_KINDS)
        if not plan.logits:
            raise ValueError("plan: an evaluation (readout given) needs a plan with logits=True")
        if readout == "last" and plan.window != (plan.total - 1, plan.total):
            raise ValueError(f"plan: readout 'last' records the last index only, window ({plan.total - 1}, "
                             f"{plan.total}); got {plan.window}")
    path = str(store)
    source = {**source, "images": n}
    identity = store_identity(model, plan, source=source, readout=readout, chunk_images=chunk_images,
                              checkpoint_sha256=checkpoint_sha256)
    error = None
    if ctx.rank == 0:
        try:  # one process at a time checks or creates the store: another command's creation is never mixed in
            with _creation_lock(path):
                if _exists(path) and not _half_created(path, plan):
                    _check_identity(path, _attributes(open_store(path, "r"), path), identity)
                else:  # new, or a creation that was interrupted before its attributes (nothing recorded yet)
                    _create(path, identity, plan, n, chunk_images, readout, np.arange(n, dtype=np.int64))
        except (ValueError, OSError) as exc:  # shared, so that no rank waits for rank 0 forever
            error = str(exc)
    ctx.share_error(error)
    group = open_store(path, "r+")
    if ctx.rank != 0:
        _check_identity(path, _attributes(group, path), identity)
    done = np.asarray(group["done"][:], dtype=bool)
    damaged = _damaged_images(group, path, done, chunk_images, plan)
    if damaged.any():
        logger.warning("store %s: %d image(s) marked done have missing or damaged data; rewriting them", path,
                       int(damaged.sum()))
        done &= ~damaged
    ctx.barrier()  # every rank has read the mask before anyone writes

    n_chunks = -(-n // chunk_images)
    mine = [k for k in range(n_chunks) if k % ctx.world == ctx.rank]
    pending = [k for k in mine if not done[k * chunk_images:min(n, (k + 1) * chunk_images)].all()]
    if stop_after is not None:
        pending = pending[:stop_after]
    todo = sum(min(n, (k + 1) * chunk_images) - k * chunk_images for k in pending)
    skipped = sum(min(n, (k + 1) * chunk_images) - k * chunk_images for k in mine) - todo
    batches = [list(range(k * chunk_images, min(n, (k + 1) * chunk_images))) for k in pending]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers)
    arrays = {name: group[name] for name in plan.shapes}
    convert = NumpyConverter(plan.dtype)
    squeeze = readout == "last"
    start = time.perf_counter()
    blank = blank_phase(model, plan) if len(batches) > 1 else None  # the same for every chunk
    written = 0
    style = default_style() if progress is None else ("bar" if progress else "log")
    with Progress(f"rank {ctx.rank}/{ctx.world}: images", todo, style=style, logger=logger, every=log_every) as bar:
        for rows, (images, labels) in zip(batches, loader):
            i0, i1 = rows[0], rows[-1] + 1
            _write_chunk(model, images, plan, arrays, convert, i0, i1, squeeze, blank)
            group["label"][i0:i1] = np.asarray(labels, dtype=np.int64)
            group["done"][i0:i1] = True  # last: the images are complete
            written += i1 - i0
            bar.advance(i1 - i0)
    seconds = time.perf_counter() - start
    convert.warn("record_dataset")
    ctx.barrier()  # the store is complete when every rank is past here
    report = StoreReport(path, ctx.rank, ctx.world, n, written, skipped, seconds)
    logger.info("rank %d/%d: wrote %d images (%d already done) in %.1f s, %.2f images/s", ctx.rank, ctx.world,
                written, skipped, seconds, report.images_per_second)
    return report


def _creation_lock(path: str) -> Any:
    """:class:`cordsnet._io.output_lock` on a local store (``.<name>.cordsnet-lock`` beside it): a second command
    checking or creating the same store meanwhile refuses in one line instead of re-creating it under the
    first one's writes (a remote store: no lock)."""
    from .._io import output_lock

    if "://" in path:
        return contextlib.nullcontext()
    return output_lock(Path(path.rstrip("/") or path), "--store")


def _half_created(path: str, plan: RecordPlan) -> bool:
    """A store whose creation stopped before its attributes (the last thing written): only our arrays, none
    of them with a completed image. Such a store is created again; anything else is left alone."""
    zarr = _zarr()
    group = zarr.open_group(path, mode="r")
    if "cordsnet" in group.attrs:
        return False
    ours = {*plan.shapes, *_COORDINATES, "time_ms"}
    members = set(group.keys())
    if not members <= ours:
        return False
    return "done" not in members or not np.asarray(group["done"][:], dtype=bool).any()


def _damaged_images(group: Any, path: str, done: np.ndarray, chunk_images: int, plan: RecordPlan) -> np.ndarray:
    """Images marked done whose data is not all there: a label never written, a missing, empty or
    undecodable chunk of a variable, or non-finite logits. Labels and logits are read whole (small);
    the variables' chunk files are checked for presence (local stores) without decoding them."""
    bad = np.zeros(done.shape, dtype=bool)
    labels = np.asarray(group["label"][:])
    bad |= done & (labels < 0)
    n = done.size
    for k in range(-(-n // chunk_images)):
        i0, i1 = k * chunk_images, min(n, (k + 1) * chunk_images)
        if not done[i0:i1].any():
            continue
        for name in plan.shapes:
            if name == "logits":
                try:
                    block = np.asarray(group[name][i0:i1])
                except Exception:  # noqa: BLE001 - a truncated or random chunk fails in the codec
                    bad[i0:i1] |= done[i0:i1]
                    continue
                bad[i0:i1] |= done[i0:i1] & ~np.isfinite(block.reshape(i1 - i0, -1)).all(axis=1)
            elif not _chunk_files_present(path, name, k, group[name]):
                bad[i0:i1] |= done[i0:i1]
    return bad


def _chunk_files_present(path: str, name: str, k: int, arr: Any) -> bool:
    """Every time block of image chunk `k` of `name` is a non-empty file (local stores; True elsewhere)."""
    folder = Path(path) / name / "c" / str(k)
    if "://" in path or not Path(path).is_dir():
        return True
    blocks = -(-arr.shape[1] // arr.chunks[1]) if arr.ndim > 1 else 1
    files = [f for f in folder.rglob("*") if f.is_file()] if folder.is_dir() else []
    return len(files) >= blocks and all(f.stat().st_size > 0 for f in files)


def _write_chunk(model: Any, images: Tensor, plan: RecordPlan, arrays: Mapping[str, Any],
                 convert: Callable[[Tensor], np.ndarray], i0: int, i1: int, squeeze: bool, blank: Any) -> None:
    """Simulate one chunk of images and write its time blocks as they fill (one chunk file each)."""
    nb = i1 - i0
    start = plan.window[0]
    blocks = {name: arr.chunks[1] if not squeeze else 1 for name, arr in arrays.items()}
    buffers = {name: np.empty((nb, blocks[name], *shape), dtype=plan.np_dtype) for name, shape in plan.shapes.items()}
    for t, values in simulate_batch(model, images, plan, blank):
        rel = t - start
        for name, value in values.items():
            block = blocks[name]
            buffers[name][:, rel % block] = convert(value)
            if rel % block == block - 1 or rel == plan.length - 1:
                t0 = rel - rel % block
                if squeeze:
                    arrays[name][i0:i1] = buffers[name][:, 0]
                else:
                    arrays[name][i0:i1, t0:rel + 1] = buffers[name][:, :rel + 1 - t0]
