"""Proof that the core is generic (issue 7): a task living in tests/ goes through every stage.

Character-level sequence reversal with an encoder graph and a decoder-step graph with a KV cache
(past length 0 at the first step), a scalar input, variable-length batches and a greedy numpy
decode loop: train -> export (both graphs, loop-level parity) -> optimize -> benchmark (tokens/s)
-> the torch-free serve runtime and the app. Its code is all in ``tests/proof_task/``; it is
registered here, for this module only, with ``monkeypatch.setitem`` on the three registries.
"""
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.tasks.base import register
from tests.conftest import assert_judged
import torch

import models
import pipeline.tasks
import serve.tasks
from tests.conftest import ROOT
from tests.proof_task import serve_task
from tests.proof_task.model import Reverser, ReverserConfig
from tests.proof_task.pipeline_task import Reverse, random_strings
from tests.proof_task.serve_task import ReverseTab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registered():
    """The proof task in the model, task and tab registries, for this module's duration."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(models.MODELS, "reverser", (ReverserConfig, Reverser))
        mp.setitem(pipeline.tasks.TASKS, "reverse", register(Reverse)["reverse"])  # the checks a new task meets
        mp.setitem(serve.tasks.TABS, "reverse", ReverseTab())
        yield


@pytest.fixture(scope="module")
def run_dir(registered, tmp_path_factory):
    """``run_all("reverse", "smoke")`` in this process; the finished bundle's folder."""
    from pipeline.stages import run_all

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread trains it fastest on a shared 2-core machine
    try:
        t0 = time.perf_counter()
        path = run_all("reverse", "smoke", out=tmp_path_factory.mktemp("artifacts"))
        print(f"run_all reverse smoke: {time.perf_counter() - t0:.1f}s")
    finally:
        torch.set_num_threads(threads)
    return path


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _test_strings(run_dir) -> list[str]:
    data = json.loads((run_dir / "config.json").read_text())["data"]
    return random_strings(data["test_size"], data["max_length"], data["seed"] + 2)


# ---------------------------------------------------------------------------------------------
# The bundle the stages wrote


def test_both_graphs_exported_with_loop_level_parity(run_dir):
    m = _manifest(run_dir)
    assert list(m["graphs"]) == ["encoder", "decoder"]
    assert (run_dir / "encoder.onnx").is_file() and (run_dir / "decoder.onnx").is_file()
    assert m["graphs"]["encoder"]["files"]["fp32"] == "encoder.onnx"
    assert m["graphs"]["decoder"]["files"]["fp32"] == "decoder.onnx"
    dec = {s["name"]: s for s in m["graphs"]["decoder"]["io"]["inputs"]}
    assert dec["temperature"]["shape"] == [] and dec["temperature"]["dtype"] == "float32"  # a scalar input
    assert dec["past_key_values.0.key"]["shape"][2] == "past"
    assert m["graphs"]["decoder"]["io"]["dims"]["past"]["min"] == 0  # the first step has an empty cache
    assert set(m["parity"]) == {"test", "longest"}
    for p in m["parity"].values():
        assert p["exact_agreement"] == 1.0 and p["max_abs_logit_diff"] <= 1e-3
    metric = m["metric"]
    assert metric["name"] == "exact_match" and metric["unit"] == "%"
    assert m["metrics"]["torch"]["exact_match"] >= 50.0, "smoke training reaches well above chance"
    assert m["variants"]["fp32"]["exact_match"] == m["metrics"]["onnx_fp32"]["exact_match"]
    assert m["inference"] == {"max_new_tokens": 10, "temperature": 1.0}
    assert m["info"]["cache"] == {"layers": 2, "heads": 4, "head_dim": 16}
    assert m["examples"] == ["examples/examples.txt"]


def test_variants_are_judged_as_sets(run_dir):
    m = _manifest(run_dir)
    variants = m["variants"]
    assert assert_judged(m, "opt") == "accepted" and assert_judged(m, "fp16") != "failed"
    int8 = variants["int8"]
    # no calibration data: static INT8 fails, and auto falls back to dynamic
    assert [a["mode"] for a in int8["attempts"]] == ["static", "dynamic"]
    assert int8["attempts"][0]["status"] == "failed" and "calibration" in int8["attempts"][0]["reason"]
    assert int8["mode"] == "dynamic" and assert_judged(m, "int8") != "failed"
    for variant in ("opt", "int8", "fp16"):
        files = {g: spec["files"].get(variant) for g, spec in m["graphs"].items()}
        assert files == {"encoder": f"encoder.{variant}.onnx", "decoder": f"decoder.{variant}.onnx"}, variant
        assert all(f in m["files"] for f in files.values())
        assert 0 <= variants[variant]["exact_match"] <= 100


def test_benchmark_rows_have_the_task_axes_and_tokens(run_dir):
    bench = json.loads((run_dir / "benchmark.json").read_text())
    assert bench["axes"] == ["batch", "length"] and bench["unit"] == "tokens"
    rows = bench["rows"]
    backends = {r["backend"] for r in rows}
    assert {"torch eager", "ORT fp32", "ORT opt"} <= backends
    cells = {(r["batch"], r["length"]) for r in rows}
    assert cells == {(1, 4), (1, 8), (32, 4), (32, 8)}
    assert all(r["unit"] == "tokens" and r["throughput"] > 0 for r in rows)
    row = next(r for r in rows if r["backend"] == "ORT fp32" and (r["batch"], r["length"]) == (32, 8))
    assert row["throughput"] == pytest.approx(32 * 9 * 1000.0 / row["median_ms"])
    assert "tokens/s" in (run_dir / "benchmark.md").read_text()


# ---------------------------------------------------------------------------------------------
# Serving


def test_runtime_decodes_held_out_strings_at_the_manifest_rate(run_dir):
    from serve.runtime import Bundle

    bundle = Bundle.open(run_dir)
    assert bundle.task == "reverse" and bundle.bad_files == {}
    m = bundle.manifest
    texts = _test_strings(run_dir)
    cache = bundle.info["cache"]
    inf = bundle.inference
    for variant in bundle.variants():
        out = serve_task.greedy_decode(bundle.runners(variant), texts, inf["max_new_tokens"], inf["temperature"],
                                       cache=cache)
        rate = 100.0 * np.mean([o == t[::-1] for o, t in zip(out, texts)])
        assert rate == pytest.approx(m["variants"][variant]["exact_match"], abs=100.0 / len(texts) + 1e-9), variant
    # the scalar input is live: the logits scale by 1 / temperature, the greedy texts do not change
    runners = bundle.runners("fp32")
    cool = serve_task.decode(runners, texts[:8], 10, 1.0, cache=cache)
    hot = serve_task.decode(runners, texts[:8], 10, 2.0, cache=cache)
    assert hot.texts == cool.texts
    np.testing.assert_allclose(hot.logits, cool.logits / 2, atol=1e-5)


def test_exported_decoder_cache_steps_equal_one_full_call(run_dir):
    """The ONNX decoder fed the whole target at past length 0 gives the logits of the cached steps."""
    from serve.runtime import Bundle

    bundle = Bundle.open(run_dir)
    spec = serve_task.CacheSpec(**bundle.info["cache"])
    enc, dec = bundle.runners("fp32")["encoder"], bundle.runners("fp32")["decoder"]
    texts = ["abc", "hello", "q"]
    tokens, mask = serve_task.pad_batch([serve_task.encode(t) for t in texts])
    memory = enc({"tokens": tokens, "tokens_mask": mask})["memory"]
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.full((3, 1), serve_task.BOS), rng.integers(3, 29, (3, 5))], axis=1).astype(np.int64)
    names = serve_task.past_names(spec.layers)
    empty = {n: np.zeros((3, spec.heads, 0, spec.head_dim), np.float32) for n in names}
    temp = np.asarray(1.0, np.float32)
    full = dec({"input_ids": ids, "memory": memory, "memory_mask": mask, **empty, "temperature": temp})
    past, steps = empty, []
    for t in range(ids.shape[1]):
        out = dec({"input_ids": ids[:, t : t + 1], "memory": memory, "memory_mask": mask, **past, "temperature": temp})
        steps.append(out["logits"][:, 0])
        past = {n: out[serve_task.present_name(n)] for n in names}
    np.testing.assert_allclose(np.stack(steps, 1), full["logits"], atol=1e-4)
    np.testing.assert_allclose(past[names[0]], full["present.0.key"], atol=1e-5)


def test_serve_loop_runs_with_torch_unimportable(run_dir):
    script = f"""
import sys
for name in ("torch", "models", "pipeline", "export"):
    sys.modules[name] = None  # makes `import name` raise ImportError
sys.path.insert(0, {str(ROOT)!r})
from serve.runtime import Bundle
from tests.proof_task.serve_task import greedy_decode
b = Bundle.open({str(run_dir)!r})
out = greedy_decode(b.runners("fp32"), ["abc", "reverse", "z"], b.inference["max_new_tokens"], cache=b.info["cache"])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print("ok", out)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok [") and proc.stdout.count("'") == 6, proc.stdout


def test_app_builds_with_the_tab_and_its_endpoint_reverses(run_dir):
    import gradio as gr

    from serve.app import build_app
    from serve.discover import find_bundles

    bundles, problems = find_bundles(run_dir.parent.parent)
    assert list(bundles) == ["reverse"] and problems == []
    app = build_app(bundles, problems)
    (fn,) = [f for f in app.fns.values() if f.api_name == "reverse"]
    texts = _test_strings(run_dir)[:5]
    expected = serve_task.greedy_decode(bundles["reverse"].runners("fp32"), texts, 10, cache=bundles["reverse"].info["cache"])
    assert [fn.fn(t, "fp32") for t in texts] == expected
    for bad, message in (("", "empty"), ("Hello!", "only lowercase letters"), ("a" * 12, "decodes at most 9")):
        with pytest.raises(gr.Error, match=message):
            fn.fn(bad, "fp32")


# ---------------------------------------------------------------------------------------------
# The model's invariant


def test_kv_cache_steps_equal_full_recompute():
    """Decoding token by token over the cache (from past length 0) gives the teacher-forced logits."""
    torch.manual_seed(0)
    model = Reverser(ReverserConfig(dim=32, heads=4, layers=2, ffn=64)).eval()
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])  # the second row padded
    mask = (src != 0).long()
    tgt = torch.tensor([[1, 8, 7, 6, 5], [1, 10, 9, 2, 0]])
    with torch.no_grad():
        full = model(src, mask, tgt)  # (N, T, V)
        memory = model.encode(src, mask)
        past, steps = model.empty_cache(2), []
        for t in range(tgt.shape[1]):
            logits, past = model.step(tgt[:, t : t + 1], memory, mask, past, torch.tensor(1.0))
            steps.append(logits[:, 0])
        # two tokens at once on a cache of three: the causal mask is bottom-right aligned
        two, _ = model.step(tgt[:, 3:5], memory, mask, [(k[:, :, :3], v[:, :, :3]) for k, v in past], torch.tensor(1.0))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(two, full[:, 3:5], atol=1e-5, rtol=0)
    assert past[0][0].shape == (2, 4, 5, 8)
