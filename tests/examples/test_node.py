"""examples/node: the Node.js program (onnxruntime-node + js/littlebook.mjs) answers as Python does,
for every task, on the session's smoke bundles.

Python's answers come from serve/ (the same graphs through onnxruntime, and serve's numpy loops);
Node's from ``node examples/node/cli.mjs ... --json``. Skips, with the reason, where ``node`` is not on
PATH or the program's packages cannot be installed (``npm ci --ignore-scripts`` needs the npm registry).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

NODE_APP = ROOT / "examples" / "node"


def skip(why: str) -> None:
    """Skip with the reason; in CI (which installs Node and the packages) fail instead."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(why)


@pytest.fixture(scope="session")
def node_app() -> Path:
    if shutil.which("node") is None:
        skip("node is not on PATH (.ci/run installs it from Debian)")
    if not (NODE_APP / "node_modules" / "onnxruntime-node").is_dir():
        if shutil.which("npm") is None:
            skip("npm is not on PATH: examples/node's packages cannot be installed")
        proc = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_APP,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode:
            skip(f"npm ci failed (no registry?): {proc.stderr.strip().splitlines()[-1:]}")
    return NODE_APP


def node(app: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["node", str(app / "cli.mjs"), *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def answers(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def open_bundle(path: Path):
    from serve.runtime import Bundle

    return Bundle.open(path)


def test_classify_matches_python(node_app, smoke_bundle):
    from serve.inputs import decode_image

    files = sorted((smoke_bundle / "examples").glob("*.png"))
    assert files
    got = answers(node(node_app, "classify", str(smoke_bundle), *map(str, files), "--json"))
    bundle = open_bundle(smoke_bundle)
    labels = bundle.info["labels"]
    for f, g in zip(files, got, strict=True):
        probs = bundle.run({"image": decode_image(f.read_bytes())[None]}, "fp32").outputs["probs"][0]
        assert g["label"] == labels[int(probs.argmax())], f.name
        np.testing.assert_allclose(g["probs"], probs, atol=1e-5)


def test_detect_matches_python(node_app, detect_bundle):
    from serve.inputs import decode_image
    from serve.tasks.detect import detect

    bundle = open_bundle(detect_bundle)
    for f in sorted((detect_bundle / "examples").glob("*.png"))[:3]:
        (g,) = answers(node(node_app, "detect", str(detect_bundle), str(f), "--score", "0.005", "--json"))
        want, _ = detect(bundle, decode_image(f.read_bytes()), 0.005, 0.45)  # low: the smoke model is unsure
        assert want and [d["label"] for d in g["detections"]] == [d.label for d in want], f.name
        np.testing.assert_allclose([d["box"] for d in g["detections"]], [d.box for d in want], atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in g["detections"]], [d.score for d in want], atol=1e-4)


def test_segment_matches_python(node_app, smoke_bundles, tmp_path):
    from PIL import Image

    from serve.inputs import decode_image
    from serve.tasks.segment import segment

    run = smoke_bundles("segment")
    f = sorted((run / "examples").glob("*.png"))[0]
    (g,) = answers(node(node_app, "segment", str(run), str(f), "--out", str(tmp_path / "mask.png"), "--json"))
    mask, shares, _ = segment(open_bundle(run), decode_image(f.read_bytes()))
    got = np.array(g["mask"], np.uint8).reshape(mask.shape)
    assert (got == mask).mean() >= 0.999  # two ORT builds (node's, Python's) may round a tie apart
    assert Image.open(tmp_path / "mask.png").size == mask.shape[::-1]


@pytest.mark.parametrize("prompt", ["The ", "def f(x):\n    return", "é"])
def test_greedy_text_matches_python_byte_for_byte(node_app, textgen_bundle, prompt):
    from serve.kv_cache import CacheSpec
    from serve.tasks.textgen import Sampling, complete

    bundle = open_bundle(textgen_bundle)
    spec = CacheSpec.of(bundle.info)
    n = spec.context + 20  # past the context: the cache slides
    (g,) = answers(node(node_app, "generate", str(textgen_bundle), prompt, "--temperature", "0",
                        "--max-new-tokens", str(n), "--json"))
    want = complete(bundle.runners("fp32")["model"], [prompt], Sampling(temperature=0, max_new_tokens=n), spec)
    assert base64.b64decode(g["bytes"]) == want.data[0]
    assert g["text"] == want.texts[0]


def test_sampled_text_is_seeded(node_app, textgen_bundle):
    args = ("generate", str(textgen_bundle), "The ", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9",
            "--max-new-tokens", "24", "--json")
    a, b = (answers(node(node_app, *args, "--seed", "7"))[0] for _ in range(2))
    assert a["bytes"] == b["bytes"] and len(base64.b64decode(a["bytes"])) == 24


@pytest.mark.parametrize("beam", [1, 3])
def test_transcripts_match_python(node_app, smoke_bundles, beam):
    from serve.inputs import decode_audio
    from serve.kv_cache import CacheSpec
    from serve.tasks.asr import Decoding, Limits, transcribe_many

    run = smoke_bundles("asr")
    files = sorted((run / "examples").glob("*.wav"))
    got = answers(node(node_app, "transcribe", str(run), *map(str, files), "--beam", str(beam), "--json"))
    bundle = open_bundle(run)
    inf = bundle.manifest["inference"]
    want = transcribe_many(bundle.runners("fp32"), [decode_audio(str(f)) for f in files], CacheSpec(**bundle.info["cache"]),
                           Decoding(beam, inf["max_tokens"], ctc_weight=inf["ctc_weight"]), Limits(bundle.info["window"]))
    for f, g, w in zip(files, got, want, strict=True):
        assert g["text"] == w.text, f.name
        assert [(s["start"], s["end"]) for s in g["segments"]] == [(s.start, s.end) for s in w.segments], f.name
        assert g["note"] == w.note


def test_generated_digits_match_python(node_app, smoke_bundles, tmp_path):
    run = smoke_bundles("imagegen")
    bundle = open_bundle(run)
    shape = (3, int(bundle.info["channels"]), int(bundle.info["image_size"]), int(bundle.info["image_size"]))
    noise = np.random.default_rng(5).standard_normal(shape, dtype=np.float32)
    (tmp_path / "noise.f32").write_bytes(noise.tobytes())
    (g,) = answers(node(node_app, "imagegen", str(run), "--label", "3", "--count", "3", "--steps", "4",
                        "--noise", str(tmp_path / "noise.f32"), "--out", str(tmp_path / "d.png"), "--json"))
    want = bundle.run({"noise": noise, "label": np.full(3, 3, np.int64), "guidance": np.full(3, 2.0, np.float32),
                       "steps": np.array(4, np.int64)}, "fp32", graph="sampler").outputs["images"]
    got = np.stack([np.frombuffer(base64.b64decode(x), np.uint8) for x in g["images"]]).reshape(want.shape)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_the_portable_variants_are_the_variant_table_s():
    """js/littlebook.mjs names the portable variants in JavaScript; they are serve.bundle.VARIANTS' own."""
    import re

    from pipeline.web import portable

    source = (ROOT / "js" / "littlebook.mjs").read_text()
    names = re.search(r"export const PORTABLE = \[([^\]]*)\]", source).group(1)
    assert tuple(re.findall(r'"([^"]+)"', names)) == portable() == ("fp32", "int8", "fp16")


def test_smallest_variant_and_bad_input(node_app, smoke_bundle, textgen_bundle, smoke_bundles, tmp_path):
    (g,) = answers(node(node_app, "classify", str(smoke_bundle), str(next((smoke_bundle / "examples").glob("*.png"))),
                        "--variant", "smallest", "--json"))
    assert g["label"] in [str(i) for i in range(10)]
    (tmp_path / "not.png").write_text("hello")
    asr = smoke_bundles("asr")
    wav = next((asr / "examples").glob("*.wav"))
    cases = [(("classify", str(smoke_bundle), str(tmp_path / "not.png")), 1, "not an image"),
             (("classify", str(smoke_bundle), str(tmp_path / "missing.png")), 1, "not found"),
             (("classify", str(textgen_bundle), str(tmp_path / "not.png")), 1, "textgen bundle"),
             (("classify", str(tmp_path)), 1, "bundle folder"),
             (("classify", str(smoke_bundle), "x.png", "--variant", "openvino"), 1, "not an accepted portable variant"),
             (("generate", str(textgen_bundle), ""), 1, "prompt is empty"),
             (("generate", str(textgen_bundle), "a", "--max-new-tokens", "x"), 2, "must be an integer"),
             (("frobnicate", str(smoke_bundle)), 2, "unknown command"),
             (("transcribe", str(asr), str(wav), "--beam", "0"), 1, "beam must be"),
             (("transcribe", str(asr), str(tmp_path / "not.png")), 1, "not a WAV file"),
             (("generate", str(textgen_bundle), "a", "--top-p", "0"), 1, "top_p must be"),
             (("imagegen", str(smoke_bundles("imagegen")), "--label", "3", "--steps", "0"), 1, "steps must be"),
             (("imagegen", str(smoke_bundles("imagegen")), "--label", "x"), 1, "label must be one of"),
             (("classify",), 2, "usage")]
    for args, rc, words in cases:
        proc = node(node_app, *args, ok=False)
        assert proc.returncode == rc, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, proc.stderr)


@pytest.mark.parametrize("task", ["textgen", "asr"])
def test_model_card_snippet_runs(node_app, smoke_bundles, task, tmp_path):
    """The card's five lines of Node.js, copied as a user would (the bundle folder and the module's path
    filled in), give Python's answer."""
    from pipeline.card import js_usage

    run = smoke_bundles(task)
    wav = sorted((run / "examples").glob("test*.wav"))[0] if task == "asr" else None
    code = js_usage(task).replace("BUNDLE_DIR", str(run)).replace("./js/littlebook.mjs", str(ROOT / "js" / "littlebook.mjs"))
    if wav:
        code = code.replace("speech.wav", str(wav)) + "\nconsole.log(text);"
    script = node_app / f".card-{task}.mjs"  # beside node_modules, so that onnxruntime-node resolves
    script.write_text(code)
    try:
        proc = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=120)
    finally:
        script.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    from pipeline.card import model_card
    from pipeline.web import choose_variant
    from serve.kv_cache import CacheSpec

    bundle = open_bundle(run)
    assert js_usage(task) in model_card(bundle.manifest, "")
    runners, inf = bundle.runners(choose_variant(bundle)[0]), bundle.inference  # the snippet's "smallest"
    if task == "textgen":
        from serve.tasks.textgen import Sampling, complete

        want = complete(runners["model"], ["The "], Sampling(temperature=0, max_new_tokens=inf["max_new_tokens"]),
                        CacheSpec.of(bundle.info))
        assert proc.stdout == want.texts[0]
    else:
        from serve.inputs import decode_audio
        from serve.tasks.asr import Decoding, Limits, transcribe

        want = transcribe(runners, decode_audio(str(wav)), CacheSpec(**bundle.info["cache"]),
                          Decoding(1, inf["max_tokens"], ctc_weight=inf["ctc_weight"]), Limits(bundle.info["window"]))
        assert proc.stdout.strip() == want.text  # the snippet's default: greedy, as the Speech tab
