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


def quantize_int8(src: Path, dst: Path, mode: str, calibration: Iterable[dict[str, np.ndarray]] | None = None) -> None:
    """INT8: ``static`` (QDQ, per-channel weights, activations calibrated on ``calibration``) or
    ``dynamic`` (weights only; activations quantized at run time, MatMul/Gemm-heavy models)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        if mode == "static":
            if calibration is None:
                raise ValueError("static INT8 needs calibration batches")
            quantize_static(str(prepared), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        elif mode == "dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        else:
            raise ValueError(f"unknown INT8 mode {mode!r}; known: static, dynamic")
    _copy_metadata(src, dst, {"variant": f"int8-{mode}"})


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and activations; graph inputs and outputs keep their types."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=["Resize"])
    onnx.save_model(model, str(dst))
    _copy_metadata(src, dst, {"variant": "fp16"})


def _copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
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
