"""ONNX == torch for every image classifier behind the classify wrapper (dynamic batch, size, channels)."""
import numpy as np
import onnx
import pytest
import torch

from pipeline.tasks.classify import Classify
from export.contract import Bound, check_parity
from export.torch_to_onnx import ExportError, export_onnx, read_metadata
from export.verify import TorchRunner, gate
from serve.runtime import OrtSession
from tests.export.helpers import CLASSIFY, classify_setup, random_images


@pytest.mark.parametrize("arch", sorted(Classify.architectures))
def test_export_parity(arch, tmp_path):
    cfg, module, contract = classify_setup(arch)
    path = tmp_path / "model.onnx"
    example = {"image": torch.from_numpy(random_images(2, 8, 8, 1))}
    export_onnx(module, example, contract, path, {"task": "classify", "labels": "0,1,2,3,4,5,6,7,8,9"})
    assert not (tmp_path / "model.onnx.data").exists(), "weights must stay inside the graph"
    sess, reference = OrtSession(path, ["CPUExecutionProvider"]), TorchRunner(module, contract)
    for n, h, w, c in [(1, 8, 8, 1), (5, 28, 28, 1), (3, 200, 120, 3), (64, 8, 8, 1)]:
        feeds = {"image": random_images(n, h, w, c, seed=n)}
        got, ref = sess(feeds)["probs"], reference(feeds)["probs"]
        measured = CLASSIFY.parity(ref, got)
        assert check_parity(measured, contract.parity) == [], measured
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    assert read_metadata(path)["labels"] == "0,1,2,3,4,5,6,7,8,9"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("GridSample" if cfg.data.crop_to_ink else "Resize") in ops and "Softmax" in ops


def test_rgb_model_fixes_three_channels(tmp_path):
    _, module, contract = classify_setup("lenet", in_chans=3)
    path = tmp_path / "m.onnx"
    export_onnx(module, {"image": torch.from_numpy(random_images(2, 16, 16, 3))}, contract, path, {})
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in shape] == ["batch", "height", "width", 3]


def test_gate_names_every_broken_bound():
    bounds = (Bound("max_abs_diff", "<=", 1e-4), Bound("top1_agreement", ">=", 1.0))
    with pytest.raises(ExportError, match=r"max_abs_diff = 0.01.*top1_agreement = 0.9"):
        gate({"max_abs_diff": 0.01, "top1_agreement": 0.9}, bounds, "model.onnx")
    gate({"max_abs_diff": 1e-6, "top1_agreement": 1.0}, bounds, "model.onnx")


def test_unexportable_module_fails_loudly(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, image):
            if image.float().mean() > 100:  # control flow on data: torch.export cannot trace it
                return image.float()
            return -image.float()

    _, _, contract = classify_setup("mlp")
    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        export_onnx(Bad(), {"image": torch.from_numpy(random_images(2, 8, 8, 1))}, contract, tmp_path / "x.onnx", {})
    assert not (tmp_path / "x.onnx").exists()
