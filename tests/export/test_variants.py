"""ORT variants (optimized graph, INT8 static/dynamic, FP16) and the TensorRT path."""
import numpy as np
import pytest
import torch

from export import onnx_to_engine, onnx_to_ort
from export.torch_to_onnx import export_onnx, read_metadata
from pipeline.data.images import load_digits
from serve.bundle import engine_tag, variant_file
from serve.engine import EngineSession
from serve.runtime import OrtSession
from tests.export.helpers import classify_setup, random_images

# How far each variant's probabilities may be from fp32's on peaked (not near-uniform) outputs. A
# different model is far outside every one of them (test_bounds_separate_a_different_model).
# int8 weights have 7 bits (reduce_range: see onnx_to_ort.quantize_int8), measured 0.164 on static here
BOUND = {"opt": 1e-5, "fp16": 1e-2, "int8-static": 0.18, "int8-dynamic": 0.15}
PEAK = 100.0


def _export(tmp, seed=0):
    _, module, contract = classify_setup("lenet", seed=seed, peak=PEAK)
    path = tmp / f"model{seed}.onnx"
    export_onnx(module, {"image": torch.from_numpy(random_images(2, 8, 8, 1))}, contract, path, {"task": "classify"})
    return path, contract


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("variants"))


def _probs(path, images):
    return OrtSession(path, ["CPUExecutionProvider"])({"image": images})["probs"]


IMAGES = np.kron(load_digits().test.images[:64], np.ones((1, 3, 3, 1), np.uint8))  # digits, as the graph expects


def test_bounds_separate_a_different_model(fp32, tmp_path):
    other, _ = _export(tmp_path, seed=1)
    a, b = _probs(fp32[0], IMAGES), _probs(other, IMAGES)
    assert a.max(-1).mean() > 0.5, "outputs must be peaked for the bounds to mean something"
    assert np.abs(a - b).max() > 4 * max(BOUND.values())


@pytest.mark.parametrize("variant", sorted(BOUND))
def test_variant_runs_close_to_fp32(fp32, tmp_path, variant):
    src, _ = fp32
    dst = tmp_path / f"{variant}.onnx"
    if variant == "opt":
        onnx_to_ort.optimize_graph(src, dst)
    elif variant.startswith("int8"):
        mode = variant.split("-")[1]
        train = load_digits().train.images
        calib = ({"image": train[s : s + 16]} for s in range(0, 64, 16))
        onnx_to_ort.quantize_int8(src, dst, mode, calib if mode == "static" else None)
        assert read_metadata(dst)["variant"] == variant
        assert read_metadata(dst)["task"] == "classify"
    else:
        onnx_to_ort.convert_fp16(src, dst)
    a, b = _probs(src, IMAGES), _probs(dst, IMAGES)
    assert b.shape == a.shape and b.dtype == np.float32
    assert np.abs(a - b).max() <= BOUND[variant], np.abs(a - b).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95


def test_static_int8_needs_calibration(fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        onnx_to_ort.quantize_int8(fp32[0], tmp_path / "q.onnx", "static", None)


def test_tensorrt_reason_or_engine(fp32, tmp_path):
    reason = onnx_to_engine.unavailable_reason()
    if reason is not None:
        assert "\n" not in reason and ("TensorRT" in reason)
        pytest.skip(reason)
    src, contract = fp32
    plan = tmp_path / variant_file("model", "tensorrt", engine_tag(*onnx_to_engine.target()))
    built = onnx_to_engine.build_engine(src, plan, contract)
    assert built["tensorrt"] and plan.stat().st_size > 0
    images = random_images(4, 8, 8, 1)
    out = EngineSession(plan.read_bytes(), plan.name)({"image": images})["probs"]
    assert np.abs(out - _probs(src, images)).max() < 1e-2


@pytest.mark.parametrize("variant", ["fp16", "int8-static", "int8-dynamic"])
def test_pre_processing_stays_exact_in_every_variant(fp32, tmp_path, variant, monkeypatch):
    """The contract's exact submodule (the crop to the ink) is left in fp32 and unquantized: the
    box a variant finds is the box fp32 finds, so a drawing is framed the same in every file. The
    quantizer's pre-processing may drop node metadata (it did on the quick ResNet, where a static INT8
    model then scored 10% on drawings): here it always does, and the exact nodes must still be kept."""
    import onnx
    from onnxruntime.quantization import shape_inference

    real = shape_inference.quant_pre_process

    def drops_metadata(src, dst, **kw):
        real(src, dst, **kw)
        model = onnx.load(dst)
        for node in model.graph.node:
            del node.metadata_props[:]
        onnx.save(model, dst)

    monkeypatch.setattr(shape_inference, "quant_pre_process", drops_metadata)
    src, contract = fp32
    assert contract.exact == ("classifier.preprocess",)
    exact = set(onnx_to_ort.exact_nodes(onnx.load(str(src))))
    ops = {n.op_type for n in onnx.load(str(src)).graph.node if n.name in exact}
    assert {"GridSample", "ReduceMax", "CumSum"} <= ops, ops
    dst = tmp_path / "v.onnx"
    if variant == "fp16":
        onnx_to_ort.convert_fp16(src, dst)
    else:
        mode = variant.split("-")[1]
        train = load_digits().train.images
        onnx_to_ort.quantize_int8(src, dst, mode, ({"image": train[s : s + 16]} for s in range(0, 64, 16)))
    model = onnx.load(str(dst))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    producers = {o: n for n in model.graph.node for o in n.output}
    kept = [n for n in model.graph.node if n.name in exact]
    assert len(kept) >= 0.9 * len(exact), f"{len(exact) - len(kept)} exact nodes were replaced in {variant}"
    quantized = [n.name for n in kept for i in n.input if getattr(producers.get(i), "op_type", "") == "DequantizeLinear"]
    assert not quantized, f"{variant} quantized the inputs of exact nodes {quantized[:5]}"
    (crop,) = [n for n in model.graph.node if n.op_type == "GridSample"]
    for source in crop.input:
        assert types.get(source, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, "the crop runs in fp32"
        producer = producers.get(source)
        assert producer is None or producer.op_type not in ("DequantizeLinear", "Cast"), producer
