"""ORT variants (optimized graph, INT8 static/dynamic, FP16) and the TensorRT path."""
import numpy as np
import pytest
import torch

from export import onnx_to_engine, onnx_to_ort
from export.ort import session
from export.torch_to_onnx import export_onnx, read_metadata
from tests.export.helpers import classify_setup, random_images


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    _, module, contract = classify_setup("lenet")
    path = tmp / "model.onnx"
    export_onnx(module, {"image": torch.from_numpy(random_images(2, 8, 8, 1))}, contract, path, {"task": "classify"})
    return path, contract


def _probs(path, images):
    return session(path, ["CPUExecutionProvider"]).run(None, {"image": images})[0]


@pytest.mark.parametrize("variant", ["opt", "int8-static", "int8-dynamic", "fp16"])
def test_variant_runs_close_to_fp32(fp32, tmp_path, variant):
    src, _ = fp32
    dst = tmp_path / f"{variant}.onnx"
    if variant == "opt":
        onnx_to_ort.optimize_graph(src, dst)
    elif variant.startswith("int8"):
        mode = variant.split("-")[1]
        calib = ({"image": random_images(16, 8, 8, 1, seed=s)} for s in range(4))
        onnx_to_ort.quantize_int8(src, dst, mode, calib if mode == "static" else None)
        assert read_metadata(dst)["variant"] == variant
        assert read_metadata(dst)["task"] == "classify"
    else:
        onnx_to_ort.convert_fp16(src, dst)
    images = random_images(8, 20, 20, 1, seed=9)
    a, b = _probs(src, images), _probs(dst, images)
    assert b.shape == a.shape and b.dtype == np.float32
    assert np.abs(a - b).max() < 0.1


def test_static_int8_needs_calibration(fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        onnx_to_ort.quantize_int8(fp32[0], tmp_path / "q.onnx", "static", None)


def test_tensorrt_reason_or_engine(fp32, tmp_path):
    reason = onnx_to_engine.unavailable_reason()
    if reason is not None:
        assert "\n" not in reason and ("TensorRT" in reason)
        pytest.skip(reason)
    src, contract = fp32
    plan = tmp_path / onnx_to_engine.engine_name()
    built = onnx_to_engine.build_engine(src, plan, contract)
    assert built["tensorrt"] and plan.stat().st_size > 0
    images = random_images(4, 8, 8, 1)
    out = onnx_to_engine.EngineRunner(plan)({"image": images})[0]
    assert np.abs(out - _probs(src, images)).max() < 1e-2
