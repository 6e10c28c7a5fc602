"""Reduced precisions of an ONNX export and the graph clean-up every export gets.

* :func:`prune_dead_nodes`: removes the nodes no graph output depends on. In an unrolled graph with
  readout "last" and no recorded areas, area i's update at the last ``D - 2 - i`` steps (the two
  read-out areas excepted) never reaches the logits: the exporter leaves them out.
* :func:`to_bfloat16`: weights stored as bfloat16 initializers, each followed by a ``Cast`` to float32
  (folded once when a session is created): float32 I/O and activations in onnxruntime, which has almost
  no bfloat16 CPU kernels; a backend with bfloat16 units (OpenVINO ``INFERENCE_PRECISION_HINT=bf16``,
  GPUs) computes in bfloat16. The verification checks that the answer survives bfloat16 weights.
* :func:`quantize_int8`: onnxruntime static QDQ quantisation, int8 weights per output channel, uint8
  activations (U8S8: the MLAS VNNI fast path), calibrated on the states of every step of real
  trajectories stepped by the runtime's StepSession (:func:`calibration_feeds`), not on images only.
* :func:`preset_images`: the images a reduced-precision export is calibrated and verified on, for
  presets with local data (digits); other presets need the caller's images.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..artifact import REDUCED_DTYPES, ArtifactInfo
from ..model import CordsNet
from ..quantization import ActivationRanges, quant_points

__all__ = ["CALIBRATIONS", "MIN_VERIFY_IMAGES", "calibration_feeds", "count_ops", "preset_images",
           "keep_float_consumers", "learned_ranges", "prune_dead_nodes", "quantize_int8", "reduced_images", "to_bfloat16"]

logger = logging.getLogger("cordsnet.export")

MIN_VERIFY_IMAGES = 100  # a reduced-precision verification on fewer images cannot resolve 99% agreement
DEFAULT_CALIBRATION_IMAGES = 64  # calibration images when the preset has local data (x every step's state)

# Calibration methods: onnxruntime's static quantiser's by our name, and "checkpoint": the activation
# ranges a quantisation-aware training stage stored in the checkpoint (no calibration run).
from ..names import CALIBRATIONS  # noqa: E402 (the one list: cordsnet.names)
# Ops whose inputs and weights are quantised: the convolutions and the read-out (where the arithmetic is).
# The Euler update ((1 - alpha) r + alpha f) and the additions stay float32, so the state fed back
# every step is not rounded to 8 bits.
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
# Ops whose output stays float: the read-out's logits (rounding them to 8 bits over their range turns
# close second choices into ties and wrong answers; it saves nothing: one small Gemm per step).
FLOAT_OUTPUT_OPS: tuple[str, ...] = ("Gemm", "MatMul")


# ------------------------------------------------------------------------------ dead nodes
def prune_dead_nodes(graph: onnx.GraphProto) -> dict[str, int]:
    """Remove (in place) the nodes and initializers no graph output depends on.

    Returns:
        Removed nodes by op type (e.g. ``{"Conv": 6, "Add": 9}``).
    """
    producer = {o: n for n in graph.node for o in n.output if o}
    live: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        node = producer.get(name)
        if node is not None:
            stack += [x for x in node.input if x] + _subgraph_inputs(node)
            live.update(node.output)  # a multi-output node is kept whole
    removed: dict[str, int] = {}
    kept = []
    for n in graph.node:
        if any(o in live for o in n.output):
            kept.append(n)
        else:
            removed[n.op_type] = removed.get(n.op_type, 0) + 1
    if removed:
        del graph.node[:]
        graph.node.extend(kept)
        used = {x for n in kept for x in [*n.input, *_subgraph_inputs(n)]} | {o.name for o in graph.output}
        inits = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(inits)
    return removed


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs a node carries (a Loop's body, an If's branches)."""
    for a in node.attribute:
        yield from ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names a node's subgraphs (Loop body) read."""
    names: list[str] = []
    for g in _subgraphs(node):
        for n in g.node:
            names += list(n.input) + _subgraph_inputs(n)
    return names


def count_ops(proto: onnx.ModelProto | onnx.GraphProto, op_type: str) -> int:
    """Nodes of `op_type` in a graph and its subgraphs (each Loop body counted once)."""
    graph = proto.graph if isinstance(proto, onnx.ModelProto) else proto
    total = 0
    for n in graph.node:
        total += n.op_type == op_type
        total += sum(count_ops(g, op_type) for g in _subgraphs(n))
    return total


# -------------------------------------------------------------------------------- bfloat16
def to_bfloat16(graph: onnx.GraphProto) -> int:
    """Store every float32 initializer of `graph` (and its subgraphs) as bfloat16 + ``Cast`` to float32.

    Rounding is to nearest even (``ml_dtypes.bfloat16``). Returns the number of converted tensors.
    """
    import ml_dtypes

    converted = 0
    for n in graph.node:
        converted += sum(to_bfloat16(g) for g in _subgraphs(n))
    keep, casts = [], []
    for t in graph.initializer:
        if t.data_type != TensorProto.FLOAT or len(t.dims) == 0:
            keep.append(t)
            continue
        arr = numpy_helper.to_array(t).astype(ml_dtypes.bfloat16)
        bf = helper.make_tensor(t.name + "/bf16", TensorProto.BFLOAT16, list(arr.shape),
                                arr.view(np.uint16).tobytes(), raw=True)
        keep.append(bf)
        casts.append(helper.make_node("Cast", [bf.name], [t.name], to=TensorProto.FLOAT, name=t.name + "/to_float"))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


# ------------------------------------------------------------------------------------ int8
def preset_images(model: CordsNet, split: str) -> tuple[np.ndarray, str] | None:
    """Images of the model's own preset with local data: ((N, C, S, S) float32 normalised, description).

    Only the digits preset has local data (scikit-learn's digits): ``split`` "test" is the 360
    held-out digits (verification), "train" the training digits (calibration). None for other presets.
    """
    c = model.config
    if c.dataset != "digits" or c.in_channels != 1:
        return None
    from ..data import digits_split, digits_to_tensor

    X, _ = digits_split()[split]
    return digits_to_tensor(X, c.image_size).numpy(), f"{len(X)} digits ({split} split, cordsnet.data.digits_split)"


def reduced_images(model: CordsNet, dtype: str, images: object, name: str, split: str
                   ) -> tuple[np.ndarray, str] | None:
    """The images a reduced-precision export is verified ("test") or calibrated ("train") on.

    float32 without images: None (verified on random images with tolerances). Passed images are
    checked ((N, C, S, S) matching the model; N >= :data:`MIN_VERIFY_IMAGES` for verification);
    without them the preset's local images are used, and a preset without local data is refused
    rather than verified on a weak default.
    """
    reduced = dtype in REDUCED_DTYPES
    if images is None and not reduced:
        return None
    c = model.config
    if images is None:
        found = preset_images(model, split)
        if found is None:
            what = "verified on" if split == "test" else "calibrated with"
            raise ValueError(f"{name}: a {dtype} export is {what} images of the model's own preset, and preset "
                             f"{c.dataset!r} has no local images; pass {name}=(N, {c.in_channels}, {c.image_size}, "
                             f"{c.image_size}) normalised float32 images" + (" or verify=False" if split == "test"
                                                                              else ""))
        arr, desc = found
        if split == "train":
            step = max(1, len(arr) // DEFAULT_CALIBRATION_IMAGES)
            arr = arr[::step][:DEFAULT_CALIBRATION_IMAGES]
            desc = f"{len(arr)} of the " + desc
        return arr, desc
    arr = np.asarray(images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(c.input_shape) or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name}: expected float images of shape (N, {', '.join(map(str, c.input_shape))}), got "
                         f"{arr.dtype} {tuple(arr.shape)}")
    least = MIN_VERIFY_IMAGES if split == "test" and reduced else 1
    if len(arr) < least:
        raise ValueError(f"{name}: expected at least {least} images (99% agreement needs at least 100 to be "
                         f"resolved), got {len(arr)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return np.ascontiguousarray(arr, dtype=np.float32), f"{len(arr)} images passed as {name}"


def calibration_feeds(path: Path, info: ArtifactInfo, input_names: Sequence[str], images: np.ndarray,
                      batch: int = 32, companions: Mapping[str, Path] | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for a graph's inputs from real trajectories of `images`, stepped by the runtime.

    A graph reading ``state_i`` is run float32 by :class:`cordsnet.runtime.StepSession` (onnxruntime, the
    session applications use, :meth:`~cordsnet.runtime._core.StepCore.trace`), and gets the state before
    every call of the artifact's protocol (every ``steps_per_call``-th step for a multistep graph), so
    the calibrated ranges cover the whole trajectory from the spontaneous state to the last step; a
    graph reading only the image gets the images.

    Args:
        path: the float32 graph (before quantisation).
        info: its metadata (protocol, kind, batch).
        input_names: the graph's inputs.
        images: (N, C, S, S) float32 calibration images.
        batch: images per feed (a fixed-batch graph: its own batch, the last chunk padded).
        companions: its companion graphs by role, float32 (default: beside `path`).
    """
    from ..runtime import StepSession
    from ..runtime._batch import pad_chunks

    batch = info.batch or batch
    pieces = [x for x, _ in pad_chunks(np.ascontiguousarray(images, dtype=np.float32), batch)] \
        if info.batch is not None else [images[lo:lo + batch] for lo in range(0, len(images), batch)]
    if not any(n.startswith("state_") for n in input_names):
        for x in pieces:
            yield {"image": np.ascontiguousarray(x, dtype=np.float32)}
        return
    session = StepSession(path, "cpu", companions=companions)
    for x in pieces:  # padded to the fixed batch already: trace keeps every row
        for _, _, feed in session.trace(x, info.steps, inputs=True):
            yield {n: feed[n] for n in input_names}


def quantize_int8(path: Path, model: CordsNet, info: ArtifactInfo, images: np.ndarray | None, *,
                  calibration: str = "minmax", ops: Sequence[str] = QUANTIZED_OPS,
                  float_recurrent: bool = False, ranges: ActivationRanges | None = None,
                  companions: Mapping[str, Path] | None = None) -> dict[str, int]:
    """Quantise the float32 ONNX graph at `path` in place (static QDQ, per-channel, U8S8); keeps its metadata.

    Args:
        path: a float32 graph written by the exporter (its metadata is kept).
        model: the float32 model it came from (for the calibration trajectories).
        info: its metadata.
        images: (N, C, S, S) calibration images (unused with ``calibration="checkpoint"``).
        calibration: "minmax", "percentile", "entropy", or "checkpoint": the Q/DQ scales come from
            `ranges` (learned by quantisation-aware training), none are calibrated.
        ops: op types whose inputs and weights are quantised (a subset of Conv, Gemm, MatMul: the
            float consumers are told apart from the quantised ops by these).
        float_recurrent: keep the convolutions that read a ``state_i`` input (the recurrent ones) in float32.
        ranges: the activation ranges for ``calibration="checkpoint"``.
        companions: the graph's companions by role, still float32 (the encode graph a stepwise-drive
            step graph's calibration trajectories start from); default: beside `path`.

    Returns:
        Counts of the quantised graph's QuantizeLinear / DequantizeLinear nodes.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    if not ops or not set(ops) <= set(QUANTIZED_OPS):
        raise ValueError(f"ops: expected a non-empty subset of {list(QUANTIZED_OPS)}, got {ops!r}")

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    input_names = [i.name for i in proto.graph.input]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = calibration_feeds(path, info, input_names, images, companions=companions)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    root = logging.getLogger()
    quiet = _DropPreprocessHint()
    root.addFilter(quiet)  # onnxruntime's quantiser logs a pre-processing hint on the root logger
    try:
        keep = _float_areas(float_recurrent)
        exclude = [n.name for n in proto.graph.node if n.op_type == "Conv"
                   and any(x.startswith("state_") and (keep is None or int(x[6:]) in keep) for x in n.input)
                   and keep != set()]
        # What quant_points leaves out stays float32: the image drive's convolutions (once per image, so int8
        # saves nothing there; OpenVINO's int8 execution of them was far less exact than onnxruntime's, the
        # encode graph's outputs off by a third of their range, which no later step can undo).
        points = quant_points(model)
        exclude += [n.name for n in proto.graph.node if n.op_type in ops and _weight_name(n) not in points]
        if calibration == "checkpoint":
            if ranges is None:
                raise ValueError("calibration: 'checkpoint' needs the activation ranges of a quantisation-aware "
                                 "training stage (activation_ranges=)")
            ranges.check(model)
            q = _quantize(path, None, CalibrationMethod.MinMax, quantize_static, QuantFormat, QuantType, ops, exclude,
                          cache=learned_ranges(proto.graph, model, ranges, ops, skip=exclude))
        else:
            q = _quantize(path, _Reader(), methods[calibration], quantize_static, QuantFormat, QuantType, ops,
                          exclude)
    finally:
        root.removeFilter(quiet)
    del q.metadata_props[:]
    rewired = keep_float_consumers(q.graph, ops)
    if rewired:
        logger.debug("int8: %d float consumers read their input unrounded", rewired)
    helper.set_model_props(q, props)
    q.ir_version = proto.ir_version
    q.producer_name, q.producer_version = proto.producer_name, proto.producer_version
    onnx.checker.check_model(q, full_check=True)
    onnx.save_model(q, str(path))
    return {"QuantizeLinear": count_ops(q, "QuantizeLinear"), "DequantizeLinear": count_ops(q, "DequantizeLinear")}


def keep_float_consumers(graph: onnx.GraphProto, quantized_ops: Sequence[str]) -> int:
    """Let the float ops read the float tensor, not its 8-bit rounding (in place); returns the inputs rewired.

    onnxruntime's QDQ quantiser puts one QuantizeLinear/DequantizeLinear pair on a tensor that a
    quantised op reads and hands the rounded value to *every* consumer. On a state that means the
    Euler update ``(1 - alpha) r + alpha f`` reads ``r`` rounded to 8 bits: the rounding is fed back
    every step and the trajectory drifts (the answer changed on 6 % of the held-out digits). Here the
    consumers that are not quantised ops (the update's Mul, Relu, Add) read the original tensor
    again; the quantised convolutions keep their rounded input. The pair after a quantised op's
    output (a convolution's int8 output, which its consumers must read for the int8 kernel to be
    used) is left alone.
    """
    producer = {o: n for n in graph.node for o in n.output if o}
    quantized = set(quantized_ops) | {"QuantizeLinear", "DequantizeLinear"}
    initializers = {t.name for t in graph.initializer}
    float_of: dict[str, str] = {}  # DequantizeLinear output -> the float tensor its pair rounded
    for n in graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        q = producer.get(n.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in initializers:
            continue
        source = producer.get(q.input[0])
        if source is not None and source.op_type in quantized_ops:
            continue  # a quantised op's own output: its consumers read the int8 result
        float_of[n.output[0]] = q.input[0]
    rewired = 0
    for n in graph.node:
        if n.op_type in quantized:
            continue
        for k, x in enumerate(n.input):
            if x in float_of:
                n.input[k] = float_of[x]
                rewired += 1
    return rewired


def _float_areas(float_recurrent: object) -> set[int] | None:
    """True: every area (None); False: none (empty set); a collection: those areas."""
    if float_recurrent is True:
        return None
    if float_recurrent is False:
        return set()
    return {int(a) for a in float_recurrent}  # type: ignore[union-attr]


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def learned_ranges(graph: onnx.GraphProto, model: CordsNet, ranges: ActivationRanges,
                   ops: Sequence[str], skip: Sequence[str] = ()) -> dict[str, tuple[float, float]]:
    """The range of every tensor a quantised op of `graph` reads or writes, from learned `ranges`.

    Each quantised op is identified by its weight initializer (``area_conv_2``, ``out_weight``, ...,
    the exporter's names, after a wrapper's scope such as ``step/``);
    :func:`cordsnet.quantization.quant_points` says which activation it reads and writes, in every
    step of an unrolled graph alike.

    Args:
        skip: names of nodes left float32 (not quantised).

    Raises:
        ValueError: a quantised op whose weight is not one of the model's.
    """
    points = quant_points(model)
    out: dict[str, tuple[float, float]] = {}
    for n in graph.node:
        if n.op_type not in ops or n.name in skip:
            continue
        weight = _weight_name(n)
        if weight not in points:
            raise ValueError(f"calibration 'checkpoint': the {n.op_type} node {n.name!r} has weight {weight!r}, "
                             f"not one of the model's {sorted(points)}")
        src, dst = points[weight]
        out[n.input[0]] = ranges[src]
        if dst is not None:
            out[n.output[0]] = ranges[dst]
    return out


def _weight_name(node: onnx.NodeProto) -> str:
    """A Conv / Gemm node's weight by the model's name (``area_conv_2``), its wrapper's scope (``step/``) dropped."""
    return node.input[1].rsplit("/", 1)[-1] if len(node.input) > 1 else ""


def _quantize(path: Path, reader: object, method: object, quantize_static: object, QuantFormat: object,
              QuantType: object, ops: Sequence[str], exclude: Sequence[str] = (),
              cache: dict[str, tuple[float, float]] | None = None) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="cordsnet-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        cache_path = None
        if cache is not None:  # onnxruntime's calibration cache: the ranges are used, no calibration run
            from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

            cache_path = Path(tmp) / "ranges.json"
            save_tensors_data(TensorsData(method, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                                   for k, (lo, hi) in cache.items()}), cache_path)
        quantize_static(str(path), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,  # type: ignore
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,  # type: ignore
                        calibrate_method=method, use_external_data_format=False,
                        op_types_to_quantize=list(ops),
                        nodes_to_exclude=list(exclude), calibration_cache_path=cache_path,
                        extra_options={"CalibTensorRangeSymmetric": False,
                                       "OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)})
        return onnx.load(str(out))
