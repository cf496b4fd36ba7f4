"""Peer backends (issue 12): OpenVINO runs model.onnx as a served variant, torch.compile is timed and
scored beside torch eager, and serving defaults to the benchmark's fastest accepted variant."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.stages import _fastest
from serve.openvino_runtime import openvino_missing
from serve.runtime import Bundle


def test_fastest_accepted_variant_per_case_is_a_served_one():
    rows = [{"backend": "torch eager", "batch": 1, "median_ms": 0.1},  # torch is never served
            {"backend": "torch.compile", "batch": 1, "median_ms": 0.2},
            {"backend": "ORT fp32", "batch": 1, "median_ms": 2.0},
            {"backend": "OpenVINO fp32", "batch": 1, "median_ms": 1.5},
            {"backend": "ORT fp32 spin", "batch": 1, "median_ms": 1.0},  # a thread setting, not a variant
            {"backend": "ORT fp32", "batch": 32, "median_ms": 9.0},
            {"backend": "ORT int8", "batch": 32, "median_ms": 5.0}]
    served = {"ORT fp32": "fp32", "OpenVINO fp32": "openvino", "ORT int8": "int8"}
    assert _fastest(rows, ["batch"], served) == {"batch 1": "openvino", "batch 32": "int8"}


def test_serving_defaults_to_the_fastest_variant_that_is_usable_here(segment_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(segment_bundle, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["serving"]) == {"batch 1", "batch 4"}  # the smoke benchmark's cases
    assert Bundle.open(run).default_variant == manifest["serving"]["batch 1"]
    manifest["serving"] = {"batch 1": "tensorrt"}  # fastest where the bundle was made, absent here
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert Bundle.open(run).default_variant == "fp32"


@pytest.mark.skipif(bool(openvino_missing()), reason="OpenVINO is not installed")
def test_openvino_runs_the_portable_graph_as_a_judged_variant(segment_bundle, detect_bundle):
    for bundle_dir in (segment_bundle, detect_bundle):
        m = json.loads((bundle_dir / "manifest.json").read_text())
        assert m["variants"]["openvino"]["status"] == "accepted", m["variants"]["openvino"]
        assert m["graphs"]["model"]["files"]["openvino"] == "model.onnx"  # no file of its own
        rows = json.loads((bundle_dir / "benchmark.json").read_text())["rows"]
        assert "OpenVINO fp32" in {r["backend"] for r in rows}
    bundle = Bundle.open(segment_bundle)
    assert "openvino" in bundle.variants() and "OpenVINO" in bundle.describe("openvino")
    image = np.random.default_rng(0).integers(0, 255, (2, 72, 100, 3), dtype=np.uint8)
    ours = bundle.run({"image": image}, "openvino").outputs
    ort = bundle.run({"image": image}, "fp32").outputs
    assert ours["mask"].shape == (2, 72, 100) and (ours["mask"] == ort["mask"]).mean() > 0.999
    assert np.abs(ours["probs"] - ort["probs"]).max() < 1e-3


def test_torch_compile_is_timed_and_scored_beside_eager(smoke_bundle, tmp_path):
    from pipeline import stages
    from pipeline.run import as_run

    run_dir = tmp_path / "run"
    shutil.copytree(smoke_bundle, run_dir)
    run = as_run(run_dir)
    run.cfg.benchmark.torch_compile = True
    run.cfg.benchmark.batch_sizes = (1,)
    rows = stages.benchmark(run)
    compiled = next(r for r in rows if r["backend"] == "torch.compile")
    eager = next(r for r in rows if r["backend"] == "torch eager")
    assert compiled["accuracy"] == pytest.approx(eager["accuracy"], abs=0.5)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["serving"]["batch 1"] in manifest["variants"]
