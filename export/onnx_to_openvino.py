"""onnx -> OpenVINO's own INT8: NNCF post-training quantization of the portable graph.

NNCF (the ``openvino`` extra) either calibrates the graph on the task's training batches
(``static``: weights and activations) or compresses its weights alone (``weights``: INT8 weights,
data-free, NNCF's recipe for language models), and writes it back as an ONNX file with
QuantizeLinear/DequantizeLinear pairs, which OpenVINO's CPU plugin runs with INT8 kernels. The file stays ONNX: one format in the bundle, checked and hashed like the rest.
The contract's exact nodes (pre/post-processing: resizing, decoding, NMS) stay fp32.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from export.onnx_to_ort import copy_metadata, exact_nodes

MODES = ("static", "weights")


def nncf_missing() -> str:
    """Why NNCF cannot quantize here ("" when it can)."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return "NNCF or OpenVINO is not installed (pip install '.[openvino]')"
    return ""


def _fold_transposed_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A ``Transpose`` of an initializer (the exporter's form of a weight tied to an embedding, as the
    GPT's head) replaced by the transposed initializer: NNCF's weight compression looks for a MatMul's
    weight among the initializers and fails on the Transpose's output ("no tensor with the name ...")."""
    from onnx import numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "Transpose" and node.input[0] in weights:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            array = np.transpose(numpy_helper.to_array(weights[node.input[0]]), perm)
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), node.output[0]))
            model.graph.node.remove(node)
    return model


def quantize_nncf(src: Path, dst: Path, mode: str, calibration: Iterable[dict[str, np.ndarray]] | None = None) -> None:
    """INT8 by NNCF: ``static`` on ``calibration`` (feeds of the graph, every batch used), or ``weights`` only."""
    if why := nncf_missing():
        raise RuntimeError(why)
    if mode not in MODES:
        raise ValueError(f"unknown NNCF mode {mode!r}; known: {', '.join(MODES)}")
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry stub: nothing leaves the machine, no consent prompt
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = _fold_transposed_weights(onnx.load(str(src)))
    ignored = nncf.IgnoredScope(names=exact_nodes(model), validate=False)
    if mode == "static":
        batches = list(calibration or ())
        if not batches:
            raise ValueError("NNCF static INT8 needs calibration batches")
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=ignored)
    else:
        # MatMul and Gemm weights only: a convolution's compressed weight gets a scale of rank 3 or 4,
        # which OpenVINO's own ONNX reader then refuses ("Dequantization scale needs to be a scalar or a vector")
        ignored = nncf.IgnoredScope(names=exact_nodes(model), types=["Conv", "ConvTranspose"], validate=False)
        quantized = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    onnx.save_model(quantized, str(dst))
    copy_metadata(src, dst, {"variant": f"openvino-int8-{mode}"})
