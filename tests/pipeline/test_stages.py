"""Stage behaviour that the CLI tests do not reach: INT8 fallback, rejection, re-runs."""
import json
import shutil

import pytest

from collections import Counter

import pipeline.run
import serve.runtime
from export import onnx_to_ort
from pipeline import stages
from pipeline.errors import PipelineError
from pipeline.tasks import get_task
from serve.bundle import BundleError, read_manifest


@pytest.fixture
def bundle(smoke_bundle, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(smoke_bundle, dst)
    return dst


@pytest.mark.slow
def test_int8_auto_falls_back_to_dynamic(bundle, monkeypatch):
    real = onnx_to_ort.quantize_int8

    def static_breaks(src, dst, mode, calibration=None, ops=()):
        if mode == "static":
            raise RuntimeError("static quantization unsupported here")
        return real(src, dst, mode, calibration, ops)

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


@pytest.mark.slow
def test_run_all_loads_data_once_builds_the_model_once_and_hashes_each_file_once(tmp_path, monkeypatch):
    task = get_task("classify")
    calls = Counter()
    for name in ("load_data", "build_model"):
        original = getattr(task, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(task, name, counted)
    hashed = Counter()
    real_sha, real_bytes = pipeline.run.sha256, serve.runtime.sha256_bytes

    def sha(path):
        hashed[("stages", path.name)] += 1
        return real_sha(path)

    monkeypatch.setattr(pipeline.run, "sha256", sha)
    monkeypatch.setattr(serve.runtime, "sha256_bytes", lambda data: hashed.update(["runtime"]) or real_bytes(data))
    run_dir = stages.run_all("classify", "smoke", sets={"train": {"epochs": 1}, "benchmark": {"seconds": 0.01}},
                             out=tmp_path)
    assert calls == {"load_data": 1, "build_model": 1}
    # every file is hashed once, by the stage that wrote it (the model card is written by export and by
    # optimize, which adds the variants); the benchmark hashes the graph file of each accepted variant
    # it runs, once each
    assert hashed.pop(("stages", "MODEL_CARD.md")) == 2
    # INT8 (ORT's and OpenVINO's) is written once per attempt (static, then dynamic or weights-only where
    # static loses too much)
    variants = read_manifest(run_dir)["variants"]
    assert hashed.pop(("stages", "model.int8.onnx")) == len(variants["int8"]["attempts"])
    assert hashed.pop(("stages", "model.ov-int8.onnx"), 0) == len(variants.get("openvino-int8", {}).get("attempts", []))
    assert max(n for k, n in hashed.items() if k != "runtime") == 1, hashed
    accepted = [v for v, entry in read_manifest(run_dir)["variants"].items() if entry["status"] == "accepted"]
    assert hashed["runtime"] == len(accepted) + 1 >= 3  # + the benchmark's spinning fp32 session
    assert read_manifest(run_dir)["benchmark"]["file"] == "benchmark.json"


@pytest.mark.slow
def test_an_older_bundle_is_refused_with_the_command_that_rebuilds_it(bundle, capsys):
    m = json.loads((bundle / "manifest.json").read_text())
    m["schema_version"] = 1
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"schema 1 is older than 2; rebuild it with `python -m pipeline export"):
        serve.runtime.Bundle.open(bundle)
    with pytest.raises(PipelineError, match="older than 2"):
        stages.optimize(bundle)
    stages.export(bundle)  # the stage that rebuilds it takes it
    assert serve.runtime.Bundle.open(bundle).variants() == ["fp32"]


def test_every_variant_has_one_builder():
    """serve.bundle.VARIANTS is the one table; the pipeline builds each entry (fp32 by export, tensorrt by
    the engine build, openvino by judging model.onnx on OpenVINO, the rest by BUILDERS)."""
    from serve.bundle import VARIANTS

    assert set(stages.BUILDERS) | {"fp32", "tensorrt", "openvino"} == set(VARIANTS)


def test_a_nan_score_is_rejected():
    from types import SimpleNamespace

    from pipeline.tasks.base import Metric, OptimizeConfig

    for direction in ("max", "min"):
        run = SimpleNamespace(task=SimpleNamespace(metric=Metric("m", direction, 0.5)),
                              cfg=SimpleNamespace(optimize=OptimizeConfig()),
                              manifest={"variants": {"fp32": {"m": 1.0}}}, scored_sets=[])
        assert pipeline.run.Run.judge(run, {"m": float("nan")})[0] == "rejected"
        assert pipeline.run.Run.judge(run, {"m": 1.0})[0] == "accepted"
        worse = 0.4 if direction == "max" else 1.6
        assert pipeline.run.Run.judge(run, {"m": worse})[0] == "rejected"


def test_a_parity_bound_on_an_unmeasured_metric_breaks():
    from export.contract import Bound, check_parity

    assert check_parity({"a": 0.0}, (Bound("b", "<=", 1.0),)) == ["b was not measured, needs b <= 1"]


@pytest.mark.slow
def test_a_rebuild_that_fails_keeps_the_earlier_accepted_variant(bundle, monkeypatch, capsys):
    before = read_manifest(bundle)
    assert before["variants"]["fp16"]["status"] == "accepted"
    kept = (bundle / "model.fp16.onnx").read_bytes()

    def breaks(src, dst, graph, run):
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(stages.BUILDERS, "fp16", breaks)
    stages.optimize(bundle, int8=False, fp16=True)
    after = read_manifest(bundle)
    assert after["variants"]["fp16"]["status"] == "accepted"
    assert after["variants"]["fp16"]["rebuild_failed"].startswith("RuntimeError: out of memory")
    assert after["graphs"]["model"]["files"]["fp16"] == "model.fp16.onnx"
    assert after["files"]["model.fp16.onnx"] == before["files"]["model.fp16.onnx"]
    assert (bundle / "model.fp16.onnx").read_bytes() == kept
    assert "the earlier accepted fp16 is kept" in capsys.readouterr().out
    from serve.runtime import Bundle

    assert "fp16" in Bundle.open(bundle).variants()


@pytest.mark.slow
def test_kill_9_during_export_leaves_nothing_for_good(bundle):
    """A stage killed outright leaves only its hidden temporary file; the next stage removes it and
    the bundle is as it was."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "export", str(bundle)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not list(bundle.glob(".model.onnx.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(bundle.glob(".*.tmp-*"))
    assert left, "the export was not caught while writing (it finished or never started)"
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file() and p not in left} == before
    stages.benchmark(bundle)  # any later stage tidies up first
    assert not list(bundle.rglob(".*.tmp-*"))
