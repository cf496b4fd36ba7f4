"""The Models tab's tables: metrics per held-out set, parity, variants; no raw JSON."""
from serve.models_tab import _metrics_table, _parity_table
from tests.serve.test_manifest import VALID


def test_metrics_and_parity_are_tables():
    manifest = {**VALID, "metric": {**VALID["metric"], "also_on": ["drawn"]},
                "metrics": {"torch": {"loss": 0.1, "accuracy": 99.4}, "onnx_fp32": {"accuracy": 99.4, "drawn": 27.8}},
                "parity": {"test": {"max_abs_diff": 2.1e-06, "top1_agreement": 1.0, "description": "the test split",
                                    "samples": 359},
                           "drawn": {"max_abs_diff": 5.7e-06, "top1_agreement": 0.999, "description": "drawings",
                                     "samples": 1000}}}
    metrics = _metrics_table(manifest).splitlines()
    assert metrics[0] == "| model | accuracy % (test) | accuracy % (drawn) |"
    assert metrics[2] == "| PyTorch (training's evaluation) | 99.4 | - |" and metrics[3] == "| ONNX fp32 | 99.4 | 27.8 |"
    parity = _parity_table(manifest).splitlines()
    assert parity[0] == "| held-out set | samples | max abs diff | top1 agreement |"
    assert parity[2:] == ["| the test split | 359 | 2.1e-06 | 100.0% |", "| drawings | 1000 | 5.7e-06 | 99.9% |"]
    assert "{" not in "".join(metrics + parity)


def test_the_serving_choice_is_shown_with_what_runs_here(smoke_bundle, tmp_path):
    import json
    import shutil

    from serve.models_tab import _serving
    from serve.runtime import Bundle

    run = tmp_path / "run"
    shutil.copytree(smoke_bundle, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["serving"] = {"cases": [{"axes": {"batch": 1}, "variant": "int8"},
                                     {"axes": {"batch": 32}, "variant": "tensorrt"}], "fallback": "int8"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert _serving(Bundle.open(run)) == ("batch 1: int8; batch 32: tensorrt (not usable here). Each call runs the choice of the "
                                     "nearest case usable here (a single input: int8)")
    del manifest["serving"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert _serving(Bundle.open(run)) == "fp32 (no benchmark yet)"


def test_the_summary_is_one_row_of_what_serves_and_how_fast():
    from types import SimpleNamespace

    from serve.models_tab import _summary

    manifest = {"metric": {"name": "accuracy", "unit": "%"}, "variants": {"fp32": {"accuracy": 99.44}},
                "serving": {"metrics": {"accuracy": 99.72}},
                "benchmark": {"headline": {"case": {"batch": 1}, "variant": "int8", "ms": 0.77, "torch_eager_ms": 2.98,
                                           "peer": "OpenVINO fp32", "peer_ms": 0.89}}}
    row = _summary(SimpleNamespace(manifest=manifest, default_variant="fp32")).splitlines()
    assert row[0] == "| accuracy: fp32 / served | served variant | its latency | vs torch eager | vs fastest peer |"
    assert row[2] == "| 99.44% / 99.72% | int8: INT8 | 0.77 ms (batch 1) | 3.9x | 1.2x (OpenVINO fp32) |"
    # a bundle benchmarked before the headline existed: dashes, not an error
    old = _summary(SimpleNamespace(manifest={**manifest, "benchmark": {}}, default_variant="fp32")).splitlines()
    assert old[2] == "| 99.44% / 99.72% | fp32: fp32 (portable ONNX) | - | - | - |"
