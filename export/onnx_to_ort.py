"""ONNX -> ONNX Runtime variants: an offline-optimized graph, INT8 (static or dynamic) and FP16.

``model.onnx`` stays portable (standard ops only); these files may hold ORT-specific ops and are
separate, labelled variants.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import onnxruntime as ort

from export.contract import EXACT_KEY


def exact_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that the exporter placed inside the graph's exact submodules (metadata
    ``exact_scopes``, from the export contract): FP16 and INT8 leave them in fp32."""
    scopes = next((p.value for p in model.metadata_props if p.key == EXACT_KEY), "")
    scopes = [s for s in scopes.split(",") if s]
    out = []
    for node in model.graph.node:
        names = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        # a list literal of the module paths the node is in; a scope holds its submodules too ("heads": "heads.0")
        if any(f"'{s}'" in names or f"'{s}." in names for s in scopes):
            out.append(node.name)
    return out


def optimize_graph(src: Path, dst: Path) -> None:
    """ORT's extended graph optimizations (constant folding, fusions), saved for faster session start."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader over graph-input batches."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - not used by MinMax calibration
        raise NotImplementedError


def quantize_int8(src: Path, dst: Path, mode: str, calibration: Iterable[dict[str, np.ndarray]] | None = None,
                  ops: Iterable[str] = ()) -> None:
    """INT8: ``static`` (QDQ, per-channel weights, activations calibrated on ``calibration``) or
    ``dynamic`` (weights only; activations quantized at run time, MatMul/Gemm-heavy models); the
    exact nodes (pre/post-processing) are left in fp32. ``ops``: the operator types to quantize
    (empty: the quantizer's default set, which also quantizes the Concat, Reshape and Transpose
    outputs that may feed the exact nodes, e.g. a detector's raw scores).

    Weights are quantized to 7 bits (``reduce_range``): ORT's U8S8 kernels on CPUs without VNNI (AVX2,
    AVX-512 without VNNI) add pairs of products in 16 bits, which saturate with full-range weights; on
    this AMD EPYC (AVX2) a static INT8 LeNet agreed with fp32 on 31% of top-1 labels with 8-bit weights,
    100% with 7-bit ones. A bundle built on one CPU may be served on another, so the file is safe on both."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    # the exact nodes are found in the source: quant_pre_process keeps node names but may drop their
    # metadata (it did on the quick ResNet, and the crop to the ink was then quantized: 10% on drawings)
    exact = exact_nodes(onnx.load(str(src), load_external_data=False))
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)  # (may fold some exact nodes away)
        if mode == "static":
            if calibration is None:
                raise ValueError("static INT8 needs calibration batches")
            quantize_static(str(prepared), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            nodes_to_exclude=exact, op_types_to_quantize=list(ops) or None)
        elif mode == "dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             nodes_to_exclude=exact, op_types_to_quantize=list(ops) or None)
        else:
            raise ValueError(f"unknown INT8 mode {mode!r}; known: static, dynamic")
    copy_metadata(src, dst, {"variant": f"int8-{mode}"})


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and activations, but for the exact nodes; graph inputs and outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=["Resize"],
                                     node_block_list=exact_nodes(model))
    _drop_round_trips(model)
    onnx.save_model(model, str(dst))
    copy_metadata(src, dst, {"variant": "fp16"})


def _drop_round_trips(model: onnx.ModelProto) -> None:
    """The converter casts every kept-fp32 node's output to fp16 and back for the next one: between
    two exact nodes, read the fp32 tensor itself (Cast(fp32 -> fp16 -> fp32) is not the identity)."""
    FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    replace: dict[str, str] = {}
    for node in graph.node:
        first = producers.get(node.input[0]) if node.input else None
        if cast_to(node) == FLOAT and first is not None and cast_to(first) == FLOAT16:
            replace[node.output[0]] = first.input[0]  # C = fp32(fp16(A)) -> A
    if not replace:
        return
    kept = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in replace)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    for out in graph.output:
        if out.name in replace:  # a graph output keeps its name: keep that cast
            kept.append(next(n for n in graph.node if n.output[0] == out.name))
    used = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    kept = [n for n in kept if not (n.op_type == "Cast" and cast_to(n) == FLOAT16 and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)


def copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    """Quantizers drop ``metadata_props``: put the source's back, plus ``extra``."""
    source = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    model = onnx.load(str(dst))
    present = {p.key for p in model.metadata_props}
    for key, value in {**source, **extra}.items():
        if key in present:
            continue
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(dst))
