"""Text generation end to end: the smoke bundle's graph and manifest, the graph alone in plain
onnxruntime, the served loop, the app through gradio_client (streaming, bad input) and Chromium."""
import json
import math
import os
import re
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import assert_judged

from serve.bundle import VARIANTS
from serve.runtime import Bundle
from serve.tasks import textgen as loop

pytestmark = pytest.mark.slow


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_one_graph_with_the_decoder_with_past_names(textgen_bundle):
    m = _manifest(textgen_bundle)
    layers = m["info"]["layers"]
    io = m["graphs"]["model"]["io"]
    inputs = [s["name"] for s in io["inputs"]]
    outputs = [s["name"] for s in io["outputs"]]
    assert inputs == ["input_ids", "attention_mask", *loop.past_names(layers)]
    assert outputs == ["logits", *(loop.present_name(n) for n in loop.past_names(layers))]
    spec = {s["name"]: s for s in io["inputs"]}
    assert spec["input_ids"]["dtype"] == spec["attention_mask"]["dtype"] == "int64"
    assert spec["past_key_values.0.key"]["shape"] == ["batch", m["info"]["heads"], "past", m["info"]["head_dim"]]
    assert io["dims"]["past"]["min"] == 0 and io["outputs"][0]["shape"] == ["batch", "seq", 256]
    graph = onnx.load(str(textgen_bundle / "model.onnx"))
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input]
    assert dims[0] == ["batch", "seq"] and isinstance(dims[1][1], str) and dims[2][2] == "past"
    meta = {p.key: p.value for p in graph.metadata_props}
    assert {"vocabulary", "context", "layers", "heads", "head_dim", "special_bytes"} <= set(meta)


def test_export_verified_the_served_loop(textgen_bundle):
    m = _manifest(textgen_bundle)
    for name in ("test", "stress"):
        p = m["parity"][name]
        assert p["greedy_agreement"] == 1.0 and p["max_abs_prefill_logit_diff"] <= 1e-3
        assert p["bits_per_byte_diff"] <= 0.01
    assert m["metric"]["direction"] == "min" and m["metric"]["name"] == "bits_per_byte"
    assert math.isclose(m["variants"]["fp32"]["bits_per_byte"], m["metrics"]["torch_served"]["bits_per_byte"],
                        abs_tol=0.01)
    assert assert_judged(m, "opt") == "accepted"  # the same arithmetic, fused
    for v in ("int8", "fp16"):  # lower is better: accepted exactly when at most the tolerance worse
        assert_judged(m, v)
    assert 1.0 < m["baselines"]["xz -9e (train text as context)"]["bits_per_byte"] < 4.0
    assert len(m["samples"]) >= 3 and all(s["continuation"] for s in m["samples"])
    card = (textgen_bundle / "MODEL_CARD.md").read_text()
    assert "xz -9e" in card and "Samples" in card


def test_benchmark_has_prefill_decode_and_the_uncached_reference(textgen_bundle):
    rows = json.loads((textgen_bundle / "benchmark.json").read_text())["rows"]
    uncached = {r["backend"] for r in rows if r["cache"] == "no"}
    assert uncached == {"torch eager"}
    phases = {(r["backend"], r["phase"]) for r in rows}
    for backend in ("torch eager", "ORT fp32"):
        assert {(backend, "prefill"), (backend, "decode")} <= phases
    assert all(r["unit"] == "tokens" and r["median_ms"] > 0 for r in rows)
    assert "(baseline)" in (textgen_bundle / "benchmark.md").read_text()


def test_the_graph_alone_in_plain_onnxruntime(textgen_bundle):
    """What an app in any language does: metadata for the cache, then a greedy loop on the cache;
    it matches serve's loop byte for byte."""
    session = ort.InferenceSession(str(textgen_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    layers, heads, head_dim = (int(meta[k]) for k in ("layers", "heads", "head_dim"))
    ids = np.frombuffer(b"The value of", np.uint8).astype(np.int64)[None]
    past = {f"past_key_values.{i}.{kv}": np.zeros((1, heads, 0, head_dim), np.float32)
            for i in range(layers) for kv in ("key", "value")}
    out = bytearray()
    for _ in range(12):
        mask = np.ones((1, past["past_key_values.0.key"].shape[2] + ids.shape[1]), np.int64)
        logits, *present = session.run(None, {"input_ids": ids, "attention_mask": mask, **past})
        past = dict(zip(past, present))
        ids = logits[:, -1:].argmax(-1)
        out.append(int(ids[0, 0]))
    bundle = Bundle.open(textgen_bundle)
    ours = loop.complete(bundle.session("model"), ["The value of"], loop.Sampling(temperature=0, max_new_tokens=12),
                         loop.CacheSpec.of(bundle.info))
    assert ours.data[0] == bytes(out)


EXACT = {"opt", "openvino"}  # fp32 arithmetic: the same greedy bytes as fp32


def test_every_variant_runs_the_loop_and_greedy_follows_fp32(textgen_bundle):
    """Sampling runs on every variant; greedy bytes equal fp32's on the fp32 variants, and on the quantized
    ones wherever they part from fp32 it is at a near tie: fp32's two best bytes are closer than the
    variant's logits are from fp32's at that step."""
    bundle = Bundle.open(textgen_bundle)
    spec = loop.CacheSpec.of(bundle.info)
    prompts = ["Return the", "é", "The value of"]
    greedy = loop.Sampling(temperature=0.0, max_new_tokens=16)
    ref = loop.complete(bundle.session("model", "fp32"), prompts, greedy, spec)
    for variant in bundle.variants():
        runner = bundle.session("model", variant)
        sampled = loop.complete(runner, prompts[:2], loop.Sampling(temperature=0.7, top_k=20, max_new_tokens=8,
                                                                    seed=1), spec)
        assert [len(d) for d in sampled.data] == [8, 8]
        out = loop.complete(runner, prompts, greedy, spec)
        if variant in EXACT or variant == "fp32":
            assert out.data == ref.data, variant
            continue
        for row, (a, b) in enumerate(zip(ref.data, out.data)):
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if i is None:
                continue
            top2 = np.sort(ref.logits[row, i])[-2:]
            error = np.abs(out.logits[row, i] - ref.logits[row, i]).max()
            assert top2[1] - top2[0] <= 2 * error, (variant, row, i, top2, error)


# ---------------------------------------------------------------------------------------------
# The app


@pytest.fixture(scope="module")
def text_app(textgen_bundle, tmp_path_factory):
    from tests.serve.conftest import served

    with served([textgen_bundle], tmp_path_factory) as (url, _):
        yield url


@pytest.fixture(scope="module")
def text_client(text_app):
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from gradio_client import Client

    return Client(text_app, verbose=False)


def test_generate_streams_through_the_api(text_client):
    job = text_client.submit("The function returns", 0.0, 0, 1.0, 1024, 0, "fp32", api_name="/generate")
    updates = []
    while not job.done():
        time.sleep(0.02)
    for text, status in job.outputs():
        updates.append(text)
    assert len(updates) >= 3, "the continuation comes in pieces"
    assert all(b.startswith(a) for a, b in zip(updates, updates[1:])), "each update extends the last"
    final_text, final_status = job.result()
    assert final_status.startswith("done: 1024 bytes") and "tokens/s" in final_status
    again = text_client.predict("The function returns", 0.0, 0, 1.0, 1024, 0, "fp32", api_name="/generate")
    assert again[0] == final_text  # greedy is deterministic


def test_the_default_choice_serves_each_call_on_its_fastest_variant(text_client):
    """The Text tab's default "served": the prompt and each step on the variant serving picks for it."""
    text, status = text_client.predict("import", 0.0, 0, 1.0, 12, 0, "served", api_name="/generate")
    assert status.startswith("done: 12 bytes") and "served: " in status
    calls = re.findall(r"(\d+) calls? on ([\w-]+)", status)
    assert sum(int(n) for n, _ in calls) == 12  # one prompt call and 11 steps, wherever each ran
    assert calls and {v for _, v in calls} <= set(VARIANTS)


def test_seeded_sampling_through_the_api(text_client):
    a = text_client.predict("import", 1.0, 40, 0.9, 30, 7, "fp32", api_name="/generate")[0]
    b = text_client.predict("import", 1.0, 40, 0.9, 30, 7, "fp32", api_name="/generate")[0]
    assert a == b


def test_long_and_non_ascii_prompts(text_client):
    long = "word " * 500  # 2,500 bytes; the smoke model's context is 64
    text, status = text_client.predict(long, 0.0, 0, 1.0, 10, 0, "fp32", api_name="/generate")
    assert "first 2437 bytes were dropped" in status
    text, status = text_client.predict("naïve café 日本", 1.5, 0, 1.0, 40, 3, "fp32", api_name="/generate")
    assert status.startswith("done") and isinstance(text, str)


@pytest.mark.parametrize("args, message", [
    (("", 0.8, 0, 0.9, 20, 0), "the prompt is empty"),
    (("Hi", 0.8, 0, 0.9, loop.MAX_NEW_TOKENS + 1, 0), "over this server's limit"),
    (("Hi", -1.0, 0, 0.9, 20, 0), "temperature must be"),
    (("Hi", 0.8, -2, 0.9, 20, 0), "top_k must be"),
    (("Hi", 0.8, 0, 0.0, 20, 0), "top_p must be"),
    (("Hi", 0.8, 0, 0.9, 20, -3), "seed must be"),
])
def test_bad_input_is_one_readable_message_and_serving_goes_on(text_client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        text_client.predict(*args, "fp32", api_name="/generate")
    assert text_client.predict("Hi", 0.0, 0, 1.0, 5, 0, "fp32", api_name="/generate")[1].startswith("done")


def test_chromium_sees_the_text_stream_in(text_app, tmp_path):
    from tests.serve.test_browser import SCREENSHOTS, chromium_page

    with chromium_page() as page:
        page.goto(text_app)
        page.fill("#text-prompt textarea", "The module provides")
        page.fill("#text-max-new input[type=number]", "1024")
        page.press("#text-max-new input[type=number]", "Enter")
        # the page records the continuation's every state, frame by frame, while it streams
        page.evaluate("""() => { window.seen = []; const tick = () => {
            const t = document.querySelector('#text-output textarea');
            if (t && t.value && t.value !== window.seen[window.seen.length - 1]) window.seen.push(t.value);
            requestAnimationFrame(tick); }; tick(); }""")
        page.click("#text-generate")
        page.wait_for_function("() => document.querySelector('#text-status textarea').value.startsWith('done')",
                               timeout=60_000)
        page.wait_for_timeout(200)
        seen = page.evaluate("() => window.seen")
        final = page.input_value("#text-output textarea")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "text-stream.png"))
        status = page.input_value("#text-status textarea")
        # Stop mid-stream: the bytes so far stay, the status says stopped, no box shows an error
        page.click("#text-generate")
        page.wait_for_function("() => document.querySelector('#text-output textarea').value.length > 20"
                               " && document.querySelector('#text-status textarea').value.includes('tokens/s')",
                               timeout=60_000)
        page.click("#text-stop")
        page.wait_for_function("() => document.querySelector('#text-status textarea').value.startsWith('stopped')",
                               timeout=30_000)
        page.wait_for_timeout(1000)
        kept, stopped = page.input_value("#text-output textarea"), page.input_value("#text-status textarea")
        errors = page.locator("#text-output .error, #text-status .error, .toast-body.error").count()
        page.screenshot(path=str(SCREENSHOTS / "text-stopped.png"))
    assert status.startswith("done: 1024 bytes"), status
    assert len(seen) >= 3, f"the text did not stream in: {len(seen)} distinct states"
    assert all(final.startswith(s) for s in seen)
    count = int(stopped.split("stopped after ")[1].split(" ")[0])
    assert 20 < count < 1024 and len(kept.encode()) >= count - 4, (stopped, len(kept))  # whole UTF-8 characters
    assert errors == 0


def test_train_on_your_own_text_folder(tmp_path):
    from tests.conftest import run_cli

    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(6):
        (folder / f"note{i}.txt").write_text(f"Note number {i}. " + "The quick brown fox jumps over the dog. " * 40)
    proc = run_cli("train", "textgen", "--preset", "smoke", "--data", str(folder), "--out", str(tmp_path / "a"),
                   "--set", "train.steps=4", "--set", "train.eval_every=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = (tmp_path / "a" / "textgen").iterdir()
    assert "texts" in json.loads((run / "manifest.json").read_text())["data"]
    bad = run_cli("train", "textgen", "--preset", "smoke", "--data", str(tmp_path / "nothing"), "--out",
                  str(tmp_path / "b"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "no such file" in bad.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*.json"))


def test_a_stream_can_be_stopped_and_serving_goes_on(text_client):
    """Stopped after its first update, a 1,024-byte generation ends there: no "done" line, nothing more
    arrives, fewer bytes than asked; the next request is served."""
    job = text_client.submit("Stop me", 1.0, 0, 1.0, 1024, 1, "fp32", api_name="/generate")
    while not job.outputs():
        time.sleep(0.005)
    job.cancel()
    deadline = time.monotonic() + 10
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.done(), "the stream did not end after the stop"
    seen = len(job.outputs())
    time.sleep(0.5)
    outputs = job.outputs()
    assert len(outputs) == seen, "updates kept arriving after the stop"
    text, status = outputs[-1]
    assert not status.startswith("done") and len(text.encode()) < 1024, status
    assert text_client.predict("Hi", 0.0, 0, 1.0, 5, 0, "fp32", api_name="/generate")[1].startswith("done")


def test_named_parameters_and_one_rule_for_values(text_app, text_client):
    """Keyword calls (the rest at the tab's defaults); a prompt must be text; a boolean is not a number; a
    value echoed in an error is cut short; a request Gradio cannot process is a message."""
    from tests.conftest import http_call

    text, status = text_client.predict(prompt="Hi", temperature=0, max_new_tokens=4, variant="fp32",
                                       api_name="/generate")
    assert status.startswith("done: 4 bytes")
    settings = [0.0, 0, 1.0, 5, 0, "fp32"]
    for prompt, message in ((123, "the prompt must be text, got int 123"),
                            (["a"], "the prompt must be text, got list ['a']"),
                            ({"a": [1, 2]}, "the prompt must be text, got dict {'a': [1, 2]}")):
        assert http_call(text_app, "generate", [prompt, *settings]) == ("error", message)
    assert http_call(text_app, "generate", ["Hi", True, *settings[1:]]) == (
        "error", "temperature must be a number, got True")
    event, message = http_call(text_app, "generate", ["Hi", *settings[:4], int("9" * 4000), "fp32"])
    assert event == "error" and message.startswith("seed must be") and len(message) < 120, message[:200]
    assert http_call(text_app, "generate", ["Hi"]) == (
        "error", "/generate takes 7 values (prompt, temperature, top_k, top_p, max_new_tokens, seed, variant); got 1")


def test_nan_from_the_api_is_a_readable_message(text_app, text_client):
    """JSON clients cannot send NaN, but Python's json (the server's) reads it: plain HTTP does."""
    import httpx

    body = '{"data": ["Hi", NaN, 0, 0.9, 20, 0, "fp32"]}'
    event = httpx.post(f"{text_app}gradio_api/call/generate", content=body,
                       headers={"Content-Type": "application/json"}).json()["event_id"]
    stream = httpx.get(f"{text_app}gradio_api/call/generate/{event}", timeout=30).text
    assert "event: error" in stream and "temperature must be a finite number" in stream, stream[-500:]
    assert text_client.predict("Hi", 0.0, 0, 1.0, 5, 0, "fp32", api_name="/generate")[1].startswith("done")


def test_onnxruntime_genai_runs_the_same_model(textgen_bundle):
    """The bundle's genai_config.json and byte-level tokenizer.json: onnxruntime-genai runs model.onnx
    as it is, and its greedy bytes are ours."""
    og = pytest.importorskip("onnxruntime_genai")
    for name in ("genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert name in _manifest(textgen_bundle)["files"]
    model = og.Model(str(textgen_bundle))
    tokenizer = og.Tokenizer(model)
    assert list(tokenizer.encode("naïve café")) == list("naïve café".encode())
    prompt = "The return value".encode()
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + 30)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([list(prompt)], np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    theirs = bytes(list(generator.get_sequence(0))[len(prompt):])
    bundle = Bundle.open(textgen_bundle)
    ours = loop.complete(bundle.session("model"), [prompt], loop.Sampling(temperature=0, max_new_tokens=30),
                         loop.CacheSpec.of(bundle.info)).data[0]
    # genai stops at the NUL byte (its end-of-text); up to there, byte for byte the same
    assert ours.startswith(theirs.rstrip(b"\0")) and (len(theirs) == 30 or 0 in ours)
