"""ONNX backend: graph pieces exported with torch.onnx, the time loop assembled with ``onnx.helper``.

* stepwise / stepwise-drive (+ encode): the traced wrappers of :func:`cordsnet.export.wrappers.traced_graphs`,
  exported directly.
* loop: three pieces are exported (prologue: image -> skip, ff0, initial state; body: one step;
  epilogue: state -> logits) and stitched into one graph around an ONNX ``Loop`` whose trip count is
  the int64 scalar input ``steps``. The body reads ``skip``/``ff0`` from the outer scope, so the drive
  terms are computed once per image; its weights are initializers of the body itself, which lets
  onnxruntime pre-pack them once (as outer-scope values they cost ~30% more per step).
* unrolled: the same pieces with the one-step body copied ``steps`` times (weights shared), so the
  export time does not grow with the step count (tracing the whole unrolled wrapper gives the same
  arithmetic and is slower; ``benchmarks/bench_export.py --traced-unrolled`` compares the two).
* Every file is pinned to IR version :data:`~cordsnet.artifact.IR_VERSION` and checked with
  ``onnx.checker.check_model(full_check=True)``.
* Models whose initializers exceed :data:`EXTERNAL_DATA_THRESHOLD` are saved with external data
  (``<name>.data`` beside the file).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from ..artifact import DEFAULT_OPSET, GRAPH_KINDS, IR_VERSION, MAX_OPSET, MIN_OPSET, ArtifactInfo
from ..model import CordsNet
from . import wrappers as W
from ._staging import staged
from .spec import ExportSpec

__all__ = ["DEFAULT_OPSET", "EXPORTER_NAME", "EXTERNAL_DATA_THRESHOLD", "IR_VERSION", "MAX_OPSET", "MIN_OPSET",
           "build", "export_piece", "open_runner", "save", "staged", "write"]

logger = logging.getLogger("cordsnet.export")

EXPORTER_NAME = None  # the ONNX exporter is the spec's ("legacy" or "dynamo")
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of initializers above which external data is used

_ELEM = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


# ------------------------------------------------------------------------------ piece export
def export_piece(wrapper: torch.nn.Module, args: tuple, input_names: Sequence[str], output_names: Sequence[str],
                 spec: ExportSpec, *, batch_axes: Mapping[str, int] | None = None,
                 exporter: str | None = None) -> onnx.ModelProto:
    """Export one traced wrapper to an in-memory ONNX model with the contract's names.

    Args:
        wrapper: a module from :mod:`cordsnet.export.wrappers`.
        args: example inputs (batch ``spec.trace_batch``).
        input_names, output_names: graph I/O names.
        spec: the export's options (opset, batch, exporter).
        batch_axes: the batch dimension of each I/O name when it is not 0 (time-major outputs: 1).
        exporter: override ``spec.exporter``: "legacy" or "dynamo".
    """
    opset = spec.opset or DEFAULT_OPSET
    exporter = exporter or spec.exporter
    wrapper.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        if exporter == "legacy":
            axes = None
            if spec.batch is None:
                axes = {n: {(batch_axes or {}).get(n, 0): "batch"} for n in [*input_names, *output_names]
                        if n != "steps"}
            buf = io.BytesIO()
            torch.onnx.export(wrapper, args, buf, dynamo=False, input_names=list(input_names),
                              output_names=list(output_names), opset_version=opset, do_constant_folding=True,
                              dynamic_axes=axes)
            proto = onnx.load_from_string(buf.getvalue())
        else:
            proto = _export_dynamo(wrapper, args, input_names, output_names, spec, opset)
    proto.ir_version = IR_VERSION
    return proto


def _export_dynamo(wrapper: torch.nn.Module, args: tuple, input_names: Sequence[str],
                   output_names: Sequence[str], spec: ExportSpec, opset: int) -> onnx.ModelProto:
    # The dynamo exporter reports progress on stdout/logging; keep it quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(wrapper, args, dynamo=True, input_names=list(input_names),
                                    output_names=list(output_names), opset_version=opset,
                                    dynamic_shapes=W.dynamic_shapes(wrapper, args, spec), optimize=True,
                                    verbose=False)
    proto = program.model_proto
    from onnx import inliner

    proto = inliner.inline_local_functions(proto)
    # Name the batch dimension "batch" like the legacy graphs.
    for v in [*proto.graph.input, *proto.graph.output]:
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and spec.batch is None:
                d.dim_param = "batch"
    return proto


def _traced(model: CordsNet, spec: ExportSpec, kind: str) -> onnx.ModelProto:
    g = W.traced_graph(model, spec, kind)
    return export_piece(g.module, g.args, g.input_names, g.output_names, spec)


# ------------------------------------------------------------------------------------ graphs
def _pieces(model: CordsNet, spec: ExportSpec) -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto | None]:
    """The exported pieces of the loop and unrolled graphs.

    prologue: image -> skip, ff0, init_state_i; body: skip, ff0, state_i -> next_state_i
    [, step_logits]; epilogue (readout "last"): final_state_i -> logits.
    """
    depth = model.depth
    kw = spec.wrapper_kwargs()
    ex = W.example_inputs(model, spec)
    states = [f"state_{i}" for i in range(depth)]
    readout_all = spec.readout == "all"
    pro = export_piece(W.Prologue(model, **kw), (ex["image"],), ["image"],
                       ["skip", "ff0", *[f"init_state_{i}" for i in range(depth)]], spec)
    body_out = [f"next_state_{i}" for i in range(depth)] + (["step_logits"] if readout_all else [])
    body = export_piece(W.LoopBody(model, with_logits=readout_all, **kw),
                        (ex["skip"], ex["ff0"], *[ex[s] for s in states]), ["skip", "ff0", *states], body_out,
                        spec)
    epi = None
    if not readout_all:
        epi = export_piece(W.Readout(model, **kw), tuple(ex[s] for s in states),
                           [f"final_state_{i}" for i in range(depth)], ["logits"], spec)
    return pro, body, epi


def _assemble(model: CordsNet, spec: ExportSpec, pieces: Sequence[onnx.ModelProto | None], nodes: list,
              initializers: list, with_steps: bool, name: str) -> onnx.ModelProto:
    """The outer graph: inputs image [, steps], outputs logits [, rates_a], deduplicated initializers."""
    elem = _ELEM[spec.torch_dtype]
    batch = "batch" if spec.batch is None else spec.batch
    time_dim = "steps" if with_steps else spec.steps
    c = model.config
    graph_inputs = [helper.make_tensor_value_info("image", elem, [batch, *c.input_shape])]
    if with_steps:
        graph_inputs.append(helper.make_tensor_value_info("steps", TensorProto.INT64, []))
    k = c.num_classes
    logits_shape = [time_dim, batch, k] if spec.readout == "all" else [batch, k]
    graph_outputs = [helper.make_tensor_value_info("logits", elem, logits_shape)]
    for a in spec.record:
        graph_outputs.append(helper.make_tensor_value_info(f"rates_{a}", elem, [time_dim, batch, *c.state_shapes[a]]))
    graph = helper.make_graph(nodes, name, graph_inputs, graph_outputs, initializer=_dedupe(initializers, nodes))
    opsets = {op.domain: op.version for m in pieces if m is not None for op in m.opset_import}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             ir_version=IR_VERSION, producer_name="cordsnet")


def _loop(model: CordsNet, spec: ExportSpec) -> onnx.ModelProto:
    depth = model.depth
    states = [f"state_{i}" for i in range(depth)]
    init = [f"init_state_{i}" for i in range(depth)]
    nexts = [f"next_state_{i}" for i in range(depth)]
    final = [f"final_state_{i}" for i in range(depth)]
    readout_all = spec.readout == "all"
    pro, body, epi = _pieces(model, spec)
    body_out = [o.name for o in body.graph.output]

    # Prologue, its I/O names kept.
    nodes, initializers = _prefixed(pro.graph, "pro/", keep={"image", "skip", "ff0", *init})

    # Loop body: (iteration, cond, state_i...) -> (cond, next_state_i..., [step_logits], [rate_a...]).
    b_nodes, b_init = _prefixed(body.graph, "step/", keep={"skip", "ff0", *states, *body_out})
    inner_init = b_init  # constants of the body, not outer-scope values: onnxruntime pre-packs them once
    b_nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"], name="step/cond"))
    scan_outs = (["step_logits"] if readout_all else [])
    for a in spec.record:
        b_nodes.append(helper.make_node("Identity", [f"next_state_{a}"], [f"rate_{a}"], name=f"step/rate_{a}"))
        scan_outs.append(f"rate_{a}")
    vi = {v.name: v for v in [*body.graph.input, *body.graph.output]}
    body_inputs = [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
                   helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                   *[vi[s] for s in states]]
    body_outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), *[vi[n] for n in nexts]]
    for name in scan_outs:
        src = vi["step_logits"] if name == "step_logits" else vi[f"next_state_{name.split('_')[1]}"]
        body_outputs.append(_renamed_vi(src, name))
    body_graph = helper.make_graph(b_nodes, "cordsnet_step", body_inputs, body_outputs, initializer=inner_init)

    initializers.append(helper.make_tensor("loop_cond", TensorProto.BOOL, [], [True]))
    loop_scan = (["logits"] if readout_all else []) + [f"rates_{a}" for a in spec.record]
    nodes.append(helper.make_node("Loop", ["steps", "loop_cond", *init], [*final, *loop_scan], name="time_loop",
                                  body=body_graph))
    if epi is not None:
        e_nodes, e_init = _prefixed(epi.graph, "out/", keep={*final, "logits"})
        nodes += e_nodes
        initializers += e_init
    return _assemble(model, spec, (pro, body, epi), nodes, initializers, True, "cordsnet_loop")


def _unrolled(model: CordsNet, spec: ExportSpec) -> onnx.ModelProto:
    """The unrolled graph as `steps` copies of the one-step piece (shared initializers).

    The same arithmetic as tracing the unrolled wrapper, but only one step is traced: export time
    no longer grows with the step count (tracing 100 R8 steps takes most of a traced export).
    """
    depth = model.depth
    init = [f"init_state_{i}" for i in range(depth)]
    final = [f"final_state_{i}" for i in range(depth)]
    readout_all = spec.readout == "all"
    pro, body, epi = _pieces(model, spec)
    nodes, initializers = _prefixed(pro.graph, "pro/", keep={"image", "skip", "ff0", *init})
    body_inits = {t.name for t in body.graph.initializer}
    for t in body.graph.initializer:
        u = onnx.TensorProto()
        u.CopyFrom(t)
        u.name = "step/" + t.name
        initializers.append(u)
    if readout_all or spec.record:
        initializers.append(helper.make_tensor("axis0", TensorProto.INT64, [1], [0]))
    prev = list(init)
    per_step: dict[str, list[str]] = {"logits": [], **{f"rates_{a}": [] for a in spec.record}}
    for t in range(spec.steps):
        mapping = {f"state_{i}": prev[i] for i in range(depth)}
        mapping.update({"skip": "skip", "ff0": "ff0", "": ""})
        mapping.update({n: "step/" + n for n in body_inits})

        def rn(name: str, t: int = t, mapping: dict = mapping) -> str:
            return mapping.get(name, f"t{t}/{name}")

        for n in body.graph.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.input[:] = [rn(x) for x in m.input]
            m.output[:] = [rn(x) for x in m.output]
            m.name = f"t{t}/{m.name}"
            nodes.append(m)
        prev = [f"t{t}/next_state_{i}" for i in range(depth)]
        sources = ([("logits", f"t{t}/step_logits")] if readout_all else []) + \
            [(f"rates_{a}", prev[a]) for a in spec.record]
        for key, src in sources:
            nodes.append(helper.make_node("Unsqueeze", [src, "axis0"], [f"{src}/t"], name=f"{src}/unsqueeze"))
            per_step[key].append(f"{src}/t")
    for key, items in per_step.items():
        if items:
            nodes.append(helper.make_node("Concat", items, [key], axis=0, name=f"stack/{key}"))
    if epi is not None:
        e_nodes, e_init = _prefixed(epi.graph, "out/", keep={*final, "logits"})
        rename = dict(zip(final, prev))
        for n in e_nodes:
            n.input[:] = [rename.get(x, x) for x in n.input]
        nodes += e_nodes
        initializers += e_init
    return _assemble(model, spec, (pro, body, epi), nodes, initializers, False, "cordsnet_unrolled")


def _renamed_vi(src: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(src)
    out.name = name
    return out


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> tuple[list, list]:
    """Copies of a graph's nodes and initializers with every name not in `keep` prefixed."""
    def rn(name: str) -> str:
        return name if (not name or name in keep) else prefix + name

    nodes = []
    for n in graph.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.input[:] = [rn(x) for x in m.input]
        m.output[:] = [rn(x) for x in m.output]
        m.name = prefix + m.name
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in m.attribute):
            raise RuntimeError("export: unexpected subgraph in a piece of the loop graph")
        nodes.append(m)
    inits = []
    for t in graph.initializer:
        u = onnx.TensorProto()
        u.CopyFrom(t)
        u.name = rn(u.name)
        inits.append(u)
    return nodes, inits


def _dedupe(initializers: list[onnx.TensorProto], nodes: list[onnx.NodeProto]) -> list[onnx.TensorProto]:
    """Store identical initializers once (out_fc appears in both the body and the epilogue)."""
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    kept = []
    for t in initializers:
        key = (t.data_type, tuple(t.dims), hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest())
        if key in seen:
            rename[t.name] = seen[key]
        else:
            seen[key] = t.name
            kept.append(t)
    if rename:
        _rename_inputs(nodes, rename)
    return kept


def _rename_inputs(nodes: Sequence[onnx.NodeProto], rename: dict[str, str]) -> None:
    for n in nodes:
        n.input[:] = [rename.get(x, x) for x in n.input]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_inputs(a.g.node, rename)


# Kinds whose ONNX graph is assembled here (the whole protocol: unrolled, or as a Loop when the step count is an
# input); every other kind is exported from its traced wrapper.
_ASSEMBLED: dict[str, Callable[[CordsNet, ExportSpec], onnx.ModelProto]] = {
    k.name: _loop if k.steps_input else _unrolled for k in GRAPH_KINDS.values() if k.session == "whole"}


def build(model: CordsNet, spec: ExportSpec, kinds: Sequence[str]) -> list[onnx.ModelProto]:
    """The ONNX model of each graph kind in `kinds` (the export's graph, then its companions)."""
    return [_ASSEMBLED[k](model, spec) if k in _ASSEMBLED else _traced(model, spec, k) for k in kinds]


def write(model: CordsNet, spec: ExportSpec, targets: Sequence[tuple[Path, ArtifactInfo]],
          progress: Callable[[str], None] | None = None) -> None:
    """Build, check and save one graph per target (temporary paths from :func:`staged`) with its metadata."""
    say = progress or (lambda _m: None)
    from .precision import prune_dead_nodes, to_bfloat16

    protos = build(model, spec, [info.graph for _, info in targets])
    for proto, (path, info) in zip(protos, targets):
        removed = prune_dead_nodes(proto.graph)  # updates that cannot reach an output (unrolled, readout "last")
        if removed:
            logger.info("left out %d nodes no output depends on (%s)", sum(removed.values()),
                        ", ".join(f"{k} {v}" for k, v in sorted(removed.items())))
        if spec.dtype == "bfloat16":
            to_bfloat16(proto.graph)
        helper.set_model_props(proto, info.to_metadata())
        proto.producer_name, proto.producer_version = "cordsnet", info.version
        say(f"checking the {info.graph} graph (onnx.checker, full check)")
        save(proto, path)


def open_runner(path: Path, info: ArtifactInfo, providers: object = None
                ) -> tuple[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]], str, list[str], list[str]]:
    """(run(feeds) -> outputs by name, runner description, input names, output names) on onnxruntime.

    The runtime's provider rules apply: a name ("cpu", "cuda", ...) or a list; no silent fallback.
    """
    import onnxruntime as ort

    from ..runtime.providers import create_session, resolve_providers

    sess = create_session(path, resolve_providers(providers if providers else "cpu"))
    ins = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outs, sess.run(outs, {k: feeds[k] for k in ins})))

    return run, f"onnxruntime {ort.__version__} {sess.get_providers()[0]}", ins, outs


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Check `proto` (full check) and save it; external data beside it when it is too large."""
    big = sum(len(t.raw_data) for t in proto.graph.initializer) > EXTERNAL_DATA_THRESHOLD
    if big:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(proto, full_check=True)
        onnx.save_model(proto, str(path))
