"""Peer backends (issue 12): OpenVINO runs model.onnx as a served variant, torch.compile is timed and
scored beside torch eager, and serving defaults to the benchmark's fastest accepted variant."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.benchmark import _fastest, _fastest_single
from serve.openvino_runtime import openvino_missing
from serve.runtime import Bundle
from tests.conftest import assert_judged


def test_fastest_accepted_variant_per_case_is_a_served_one():
    rows = [{"backend": "torch eager", "batch": 1, "median_ms": 0.1},  # torch is never served
            {"backend": "torch.compile", "batch": 1, "median_ms": 0.2},
            {"backend": "ORT fp32", "batch": 1, "median_ms": 2.0},
            {"backend": "OpenVINO fp32", "batch": 1, "median_ms": 1.5},
            {"backend": "ORT fp32 spin", "batch": 1, "median_ms": 1.0},  # a thread setting, not a variant
            {"backend": "ORT fp32", "batch": 32, "median_ms": 9.0},
            {"backend": "ORT int8", "batch": 32, "median_ms": 5.0}]
    served = {"ORT fp32": "fp32", "OpenVINO fp32": "openvino", "ORT int8": "int8"}
    assert _fastest(rows, ["batch"], served) == [{"axes": {"batch": 1}, "variant": "openvino"},
                                                 {"axes": {"batch": 32}, "variant": "int8"}]
    # the fallback: the fastest over every case at once, among the variants timed in every case
    assert _fastest_single(rows, ["batch"], served) == "fp32"  # int8 and OpenVINO ran one case each
    rows.append({"backend": "ORT int8", "batch": 1, "median_ms": 2.2})
    assert _fastest_single(rows, ["batch"], served) == "int8"  # sqrt(2.2 * 5) < sqrt(2 * 9)


def serving(*cases: tuple[dict, str], fallback: str = "fp32", status: str = "accepted", reason=None) -> dict:
    """A manifest's typed ``serving``."""
    return {"cases": [{"axes": axes, "variant": v} for axes, v in cases], "fallback": fallback, "status": status,
            "reason": reason}


def test_fastest_is_recorded_per_case_so_a_prompt_and_its_steps_can_differ():
    """Text: a prefill and decode steps at two contexts per batch size; each case names its fastest."""
    axes = ["batch", "phase", "context", "cache"]
    times = {("prefill", 128): {"fp32": 3.0, "int8": 2.0, "openvino": 2.9},
             ("prefill", 512): {"fp32": 30.0, "int8": 28.0, "openvino": 15.0},
             ("decode", 32): {"fp32": 0.30, "int8": 0.33, "openvino": 0.50},
             ("decode", 512): {"fp32": 0.40, "int8": 0.38, "openvino": 0.90}}
    names = {"fp32": "ORT fp32", "int8": "ORT int8", "openvino": "OpenVINO fp32"}
    rows = [{"backend": names[v], "batch": 1, "phase": ph, "context": c, "cache": "yes", "median_ms": t}
            for (ph, c), by in times.items() for v, t in by.items()]
    rows.append({"backend": "torch eager", "batch": 1, "phase": "decode", "context": 32, "cache": "no",
                 "median_ms": 0.01})  # torch only: no served variant ran this case
    served = {n: v for v, n in names.items()}
    assert [(c["axes"]["phase"], c["axes"]["context"], c["variant"]) for c in _fastest(rows, axes, served)] == [
        ("prefill", 128, "int8"), ("prefill", 512, "openvino"), ("decode", 32, "fp32"), ("decode", 512, "int8")]
    assert all(c["axes"] == {"batch": 1, "phase": c["axes"]["phase"], "context": c["axes"]["context"], "cache": "yes"}
               for c in _fastest(rows, axes, served))


def test_each_call_runs_on_the_nearest_case_of_its_own_phase(textgen_bundle, tmp_path):
    """The Text tab's "served" choice: a prompt and the steps after it, each on the variant the
    benchmark found fastest for the nearest case of its phase, batch size and context."""
    from serve.tasks import textgen as loop

    run = tmp_path / "run"
    shutil.copytree(textgen_bundle, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"fp32", "int8"} <= set(Bundle.open(run).variants())
    manifest["serving"] = serving(({"batch": 1, "phase": "prefill", "context": 16}, "fp32"),
                                  ({"batch": 1, "phase": "prefill", "context": 64}, "int8"),
                                  ({"batch": 1, "phase": "decode", "context": 16}, "int8"),
                                  ({"batch": 1, "phase": "decode", "context": 64}, "int8"),
                                  ({"batch": 8, "phase": "decode", "context": 16}, "fp32"),
                                  ({"batch": 8, "phase": "prefill", "context": 64}, "tensorrt"))  # not usable here
    (run / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle.open(run)
    assert bundle.serving_variant(1, phase="prefill", context=20) == "fp32"
    assert bundle.serving_variant(1, phase="prefill", context=50) == "int8"
    assert bundle.serving_variant(1, phase="decode", context=17) == "int8"
    assert bundle.serving_variant(6, phase="decode", context=16) == "fp32"
    assert bundle.serving_variant(8, phase="prefill", context=64) == "int8"  # tensorrt skipped: the nearest usable
    assert bundle.serving_variant(1) == "int8"  # no phase given: the variant most batch-1 cases name
    spec = loop.CacheSpec.of(bundle.info)
    runner = bundle.served("model", loop.call_axes)
    out = loop.complete(runner, ["Return the"], loop.Sampling(temperature=0.0, max_new_tokens=6), spec)
    assert runner.used == {"fp32": 1, "int8": 5}  # the 10-byte prompt on fp32, the steps on int8
    alone = {v: loop.complete(bundle.session("model", v), ["Return the"], loop.Sampling(temperature=0.0,
                                                                                         max_new_tokens=6), spec)
             for v in ("fp32", "int8")}
    # the int8 steps read a cache fp32 wrote: the same graph I/O, float32 caches in every variant
    assert np.allclose(out.prefill_logits, alone["fp32"].prefill_logits, atol=1e-5, equal_nan=True)
    assert np.abs(out.logits - alone["int8"].logits).max() < np.abs(alone["int8"].logits).max() * 0.05


def test_a_call_runs_the_serving_choice_for_its_batch_size(smoke_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_bundle, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"fp32", "int8"} <= set(Bundle.open(run).variants())
    manifest["serving"] = serving(({"batch": 1}, "fp32"), ({"batch": 32}, "int8"),
                                  ({"batch": 256}, "tensorrt"))  # tensorrt: not here
    (run / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle.open(run)
    assert [bundle.serving_variant(n) for n in (1, 2, 5, 6, 32, 100, 1000)] == \
        ["fp32", "fp32", "fp32", "int8", "int8", "int8", "int8"]
    # a bundle benchmarked before the choice was typed ("batch 1": ...) reads the same
    manifest["serving"] = {"batch 1": "fp32", "batch 32": "int8", "batch 256": "tensorrt"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    legacy = Bundle.open(run)
    assert [legacy.serving_variant(n) for n in (1, 6, 1000)] == ["fp32", "int8", "int8"]
    image = np.full((1, 28, 28, 1), 255, np.uint8)
    assert bundle.run({"image": image}).variant == "fp32"
    assert bundle.run({"image": np.repeat(image, 32, axis=0)}).variant == "int8"
    assert bundle.run({"image": np.repeat(image, 32, axis=0)}, "fp32").variant == "fp32"  # the caller's pick wins


def test_serving_defaults_to_the_fastest_variant_that_is_usable_here(segment_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(segment_bundle, run)
    manifest = json.loads((run / "manifest.json").read_text())
    cases = {c["axes"]["batch"]: c["variant"] for c in manifest["serving"]["cases"]}
    assert set(cases) == {1, 4}  # the smoke benchmark's cases
    assert Bundle.open(run).default_variant == cases[1]
    manifest["serving"] = serving(({"batch": 1}, "tensorrt"))  # fastest where the bundle was made, absent here
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
    assert entry["attempts"][0]["mode"] == "static" and assert_judged(m, "openvino-int8") != "failed", entry
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
    assert [c["variant"] in manifest["variants"] for c in manifest["serving"]["cases"]] == [True]


def test_a_served_mix_that_loses_too_much_is_rejected_and_serving_falls_back(textgen_bundle, tmp_path, monkeypatch):
    """The per-call choice is judged like a variant: scored on the held-out sets through the runtime's own
    choice (here: prompts on fp32, decode steps on int8); when it loses more than the tolerance, every
    call runs the fastest accepted single variant."""
    from pipeline.benchmark import judge_serving
    from pipeline.run import as_run
    from serve.models_tab import _serving

    run_dir = tmp_path / "run"
    shutil.copytree(textgen_bundle, run_dir)
    run = as_run(run_dir)
    bundle = Bundle.open(run_dir)
    assert {"fp32", "int8"} <= set(bundle.variants())
    mix = [{"axes": {"batch": 1, "phase": "prefill", "context": 64}, "variant": "fp32"},
           {"axes": {"batch": 1, "phase": "decode", "context": 64}, "variant": "int8"}]
    metric = run.task.metric
    fp32 = run.manifest["variants"]["fp32"][metric.name]
    real_score = type(run).score
    used: dict[str, int] = {}

    def counted(self, runners):
        used.clear()
        scores, outputs = real_score(self, runners)
        used.update({v: n for r in runners.values() for v, n in r.used.items()})
        return scores, outputs

    # judged for real: the mix of two accepted variants is within the tolerance
    monkeypatch.setattr(type(run), "score", counted)
    accepted = judge_serving(run, bundle, mix, "int8")
    assert set(used) == {"fp32", "int8"}  # the runtime's choice ran both variants, call by call
    assert accepted["status"] == "accepted" and accepted["reason"] is None
    assert metric.loss(fp32, accepted["metrics"][metric.name]) <= metric.tolerance

    # a mix that scores a whole bit per byte worse than fp32 (its scoring, replaced): rejected
    def worse(self, runners):
        scores, outputs = counted(self, runners)
        return {**scores, metric.name: fp32 + 1.0}, outputs

    monkeypatch.setattr(type(run), "score", worse)
    rejected = judge_serving(run, bundle, mix, "int8")
    assert rejected["status"] == "rejected" and "loses 1" in rejected["reason"]
    run.manifest["serving"] = rejected
    run.save()
    served = Bundle.open(run_dir)
    assert served.serving.status == "rejected"
    calls = [dict(phase=p, context=c) for p in ("prefill", "decode") for c in (8, 64)]
    assert [served.serving_variant(1, **call) for call in calls] == ["int8"] * 4  # the fallback, for every call
    assert _serving(served).startswith("every call on int8 (the fastest accepted single variant)")
    # the manifest's metrics are those of what is served: the fallback's; the mix's are kept beside
    assert rejected["metrics"][metric.name] == run.manifest["variants"]["int8"][metric.name]
    assert rejected["mix_metrics"][metric.name] == fp32 + 1.0


def test_torch_compile_keeps_a_sampler_loop_in_python_around_the_compiled_step(smoke_bundles):
    """Compiling the sampler's Python loop would unroll every step count into its own graph: the loop
    stays as written and calls the compiled denoiser (torch.compile is lazy, so nothing compiles here)."""
    from pipeline.benchmark import compiled_modules
    from pipeline.run import as_run

    graphs = as_run(smoke_bundles("imagegen")).graphs
    modules = compiled_modules(graphs)
    assert isinstance(modules["denoiser"], torch._dynamo.eval_frame.OptimizedModule)
    assert modules["denoiser"]._orig_mod is graphs["denoiser"].module
    loop = modules["sampler"]
    assert type(loop) is type(graphs["sampler"].module) and loop.denoiser is modules["denoiser"]
    assert graphs["sampler"].module.denoiser is graphs["denoiser"].module  # the reference is left as it was
