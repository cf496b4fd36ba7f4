"""Stage behaviour that the CLI tests do not reach: INT8 fallback, rejection, re-runs."""
import json
import shutil

import pytest

from export import onnx_to_ort
from pipeline import stages


@pytest.fixture
def bundle(smoke_bundle, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(smoke_bundle, dst)
    return dst


@pytest.mark.slow
def test_int8_auto_falls_back_to_dynamic(bundle, monkeypatch):
    real = onnx_to_ort.quantize_int8

    def static_breaks(src, dst, mode, calibration=None):
        if mode == "static":
            raise RuntimeError("static quantization unsupported here")
        return real(src, dst, mode, calibration)

    monkeypatch.setattr(onnx_to_ort, "quantize_int8", static_breaks)
    variants = stages.optimize(bundle, int8=True, fp16=False)
    assert variants["int8"]["mode"] == "dynamic"
    assert [a["status"] for a in variants["int8"]["attempts"]] == ["failed", "accepted"]
    assert "static quantization unsupported" in variants["int8"]["attempts"][0]["reason"]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["variants"]["int8"]["mode"] == "dynamic" and "model.int8.onnx" in m["files"]


@pytest.mark.slow
def test_variant_over_the_threshold_is_rejected_not_dropped(bundle, monkeypatch):
    def garbage(src, dst):  # an "FP16" file that is really a different, untrained-looking model
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src))
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind == "f" and arr.ndim >= 2:
                init.CopyFrom(numpy_helper.from_array(arr[..., ::-1].copy(), init.name))
        onnx.save_model(model, str(dst))

    monkeypatch.setattr(onnx_to_ort, "convert_fp16", garbage)
    variants = stages.optimize(bundle, int8=False, fp16=True)
    assert variants["fp16"]["status"] == "rejected" and "loses" in variants["fp16"]["reason"]
    rows = stages.benchmark(bundle)
    assert "ORT fp16" not in {r["backend"] for r in rows}, "rejected variants are not offered"
