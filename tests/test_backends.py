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


def test_fastest_over_several_cases_of_a_batch_size_is_the_best_geometric_mean():
    """Text: a prefill and decode steps at two contexts per batch size; one variant wins overall."""
    axes = ["batch", "phase", "context"]
    times = {("prefill", 128): {"fp32": 3.0, "int8": 2.0, "openvino": 2.9},
             ("decode", 32): {"fp32": 0.30, "int8": 0.33, "openvino": 0.50},
             ("decode", 512): {"fp32": 0.40, "int8": 0.41, "openvino": 0.90}}
    names = {"fp32": "ORT fp32", "int8": "ORT int8", "openvino": "OpenVINO fp32"}
    rows = [{"backend": names[v], "batch": 1, "phase": ph, "context": c, "median_ms": t}
            for (ph, c), by in times.items() for v, t in by.items()]
    rows.append({"backend": "ORT fp16", "batch": 1, "phase": "prefill", "context": 128, "median_ms": 0.1})  # one case only
    served = {n: v for v, n in names.items()} | {"ORT fp16": "fp16"}
    # int8: (1 * 1.1 * 1.025)^(1/3) = 1.041; fp32: (1.5 * 1 * 1)^(1/3) = 1.145
    assert _fastest(rows, axes, served) == {"batch 1": "int8"}


def test_a_call_runs_the_serving_choice_for_its_batch_size(smoke_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_bundle, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"fp32", "int8"} <= set(Bundle.open(run).variants())
    manifest["serving"] = {"batch 1": "fp32", "batch 32": "int8", "batch 256": "tensorrt"}  # tensorrt: not here
    (run / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle.open(run)
    assert [bundle.serving_variant(n) for n in (1, 2, 5, 6, 32, 100, 1000)] == \
        ["fp32", "fp32", "fp32", "int8", "int8", "int8", "int8"]
    image = np.full((1, 28, 28, 1), 255, np.uint8)
    assert bundle.run({"image": image}).variant == "fp32"
    assert bundle.run({"image": np.repeat(image, 32, axis=0)}).variant == "int8"
    assert bundle.run({"image": np.repeat(image, 32, axis=0)}, "fp32").variant == "fp32"  # the caller's pick wins


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


@pytest.mark.skipif(bool(openvino_missing()), reason="OpenVINO is not installed")
def test_openvino_int8_by_nncf_is_a_judged_variant_in_its_own_onnx_file(segment_bundle):
    import onnx

    m = json.loads((segment_bundle / "manifest.json").read_text())
    entry = m["variants"]["openvino-int8"]
    assert entry["status"] in ("accepted", "rejected") and entry["attempts"][0]["mode"] == "static", entry
    if entry["status"] == "accepted":
        name = m["graphs"]["model"]["files"]["openvino-int8"]
        assert name == "model.ov-int8.onnx" and name in m["files"]
        ops = {n.op_type for n in onnx.load(str(segment_bundle / name)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        bundle = Bundle.open(segment_bundle)
        image = np.random.default_rng(1).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
        assert bundle.run({"image": image}, "openvino-int8").outputs["mask"].shape == (1, 64, 64)
        assert "OpenVINO INT8" in {r["backend"] for r in json.loads((segment_bundle / "benchmark.json").read_text())["rows"]}


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
