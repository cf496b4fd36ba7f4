"""OpenVINO's INT8 by NNCF (export/onnx_to_openvino.py): the graph it is given, and what it writes."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.onnx_to_openvino import _fold_transposed_weights, nncf_missing, quantize_nncf


def _tied_head(rng) -> onnx.ModelProto:
    """x (N, 64) -> x @ W^T with W (96, 64) an initializer behind a Transpose, as an exported tied head."""
    w = numpy_helper.from_array(rng.standard_normal((96, 64)).astype(np.float32), "head.weight")
    nodes = [helper.make_node("Transpose", ["head.weight"], ["w_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w_t"], ["y"])]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 96])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_transposed_initializer_is_folded_into_the_weight_and_computes_the_same():
    rng = np.random.default_rng(0)
    model, x = _tied_head(rng), rng.standard_normal((3, 64)).astype(np.float32)
    before = _run(model, x)
    folded = _fold_transposed_weights(onnx.load_from_string(model.SerializeToString()))
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]
    assert {i.name for i in folded.graph.initializer} == {"head.weight", "w_t"}
    np.testing.assert_array_equal(_run(folded, x), before)


@pytest.mark.skipif(bool(nncf_missing()), reason="NNCF is not installed")
def test_weights_only_int8_of_a_tied_head_runs_and_stays_close(tmp_path):
    from serve.openvino_runtime import OpenVinoSession

    rng = np.random.default_rng(1)
    src, dst = tmp_path / "model.onnx", tmp_path / "model.ov-int8.onnx"
    onnx.save_model(_tied_head(rng), str(src))
    quantize_nncf(src, dst, "weights")
    x = rng.standard_normal((4, 64)).astype(np.float32)
    ours = OpenVinoSession(dst.read_bytes())({"x": x})["y"]
    exact = _run(onnx.load(str(src)), x)
    assert np.abs(ours - exact).max() < 0.05 * np.abs(exact).max()  # INT8 weights: about 1% of the range
    with pytest.raises(ValueError, match="unknown NNCF mode"):
        quantize_nncf(src, dst, "int4")
