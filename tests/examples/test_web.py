"""``python -m pipeline web``: the static site, and the demos running in Debian's Chromium with
onnxruntime-web (no server inference; every request that leaves loopback is blocked), checked against
Python's answers from the same ONNX files."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.examples.test_node import skip
from tests.serve.test_browser import chromium_page

ORT_WEB = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "onnxruntime-web"


@pytest.fixture(scope="module")
def site(smoke_bundles, tmp_path_factory) -> Path:
    if not ORT_WEB.is_dir():
        skip("onnxruntime-web is not installed in web/ (npm ci --ignore-scripts; scripts/setup.sh does it)")
    root = tmp_path_factory.mktemp("bundles")
    for task in ("classify", "detect", "textgen"):
        run = smoke_bundles(task)
        (root / task).mkdir()
        (root / task / run.name).symlink_to(run)
    out = tmp_path_factory.mktemp("site") / "site"
    proc = run_cli("web", str(root), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "classify" in proc.stdout and (out / "serve.py").is_file()
    return out


def test_site_holds_the_smallest_accepted_variant(site, smoke_bundle):
    info = json.loads((site / "site.json").read_text())
    by_task = {t["task"]: t for t in info["tasks"]}
    assert set(by_task) == {"classify", "detect", "textgen"}
    manifest = json.loads((smoke_bundle / "manifest.json").read_text())
    accepted = {v: sum(manifest["files"][f]["bytes"] for f in set(g["files"][v] for g in manifest["graphs"].values()))
                for v in ("fp32", "int8", "fp16") if manifest["variants"].get(v, {}).get("status") == "accepted"}
    c = by_task["classify"]
    assert c["bytes"] == min(accepted.values()) and accepted[c["variant"]] == c["bytes"]
    assert c["bytes"] <= 5e6  # the bar: the classify page's model files
    shipped = {p.name for p in (site / "models" / "classify").iterdir() if p.suffix == ".onnx"}
    assert shipped == {manifest["graphs"]["model"]["files"][c["variant"]]}


def test_web_refuses_bad_input(tmp_path, site):
    proc = run_cli("web", str(tmp_path / "nothing"), "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no usable bundle" in proc.stderr
    proc = run_cli("web", str(tmp_path), "--out", str(site))
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (site / "site.json").is_file()  # untouched


@pytest.fixture(scope="module")
def served(site):
    proc = subprocess.Popen([sys.executable, str(site / "serve.py"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    url = re.search(r"http://\S+/", line).group(0)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.mark.slow
def test_demos_in_chromium_match_python(site, served, smoke_bundles):
    from serve.inputs import decode_data_url, decode_image
    from serve.kv_cache import CacheSpec
    from serve.runtime import Bundle
    from serve.tasks.detect import detect
    from serve.tasks.textgen import Sampling, complete

    tasks = {t["task"]: t for t in json.loads((site / "site.json").read_text())["tasks"]}
    left = []
    with chromium_page() as page:
        def gate(route):
            host = urlparse(route.request.url).hostname
            if host in ("127.0.0.1", "localhost"):
                route.continue_()
            else:
                left.append(route.request.url)
                route.abort()

        page.route("**/*", gate)
        page.goto(served)
        page.wait_for_function("() => window.littlebook && window.littlebook.stats.classify", timeout=60_000)
        assert page.evaluate("crossOriginIsolated")  # serve.py's headers: WASM threads

        # classify: a 7 drawn with the mouse; the page's answer is model.onnx's in Python on the same pixels
        box = page.locator("canvas.pad").bounding_box()
        x, y = box["x"], box["y"]
        page.mouse.move(x + 70, y + 60)
        page.mouse.down()
        for px, py in [(210, 60), (180, 130), (150, 200), (130, 240)]:
            page.mouse.move(x + px, y + py, steps=8)
        page.mouse.up()
        page.wait_for_function("() => window.littlebook.last.classify && window.littlebook.stats.classify.answers >= 1")
        page.wait_for_timeout(500)  # the stroke's last prediction
        got = page.evaluate("window.littlebook.last.classify")
        image = decode_image(decode_data_url(got["image"]))
        assert (image < 128).any()  # ink was drawn
        bundle = Bundle.open(smoke_bundles("classify"))
        probs = bundle.run({"image": image[None]}, tasks["classify"]["variant"]).outputs["probs"][0]
        assert got["label"] == bundle.info["labels"][int(probs.argmax())]
        np.testing.assert_allclose(got["probs"], probs, atol=1e-4)

        # text: greedy bytes equal Python's, the same file
        page.evaluate("window.littlebook.show('textgen')")
        page.wait_for_selector("textarea[aria-label=prompt]")
        page.fill("textarea[aria-label=prompt]", "The ")
        page.fill("input[aria-label=temperature]", "0")
        page.fill("input[aria-label='max new bytes']", "80")
        page.click("text=Generate")
        page.wait_for_function("() => window.littlebook.last.textgen", timeout=60_000)
        got = page.evaluate("window.littlebook.last.textgen")
        bundle = Bundle.open(smoke_bundles("textgen"))
        want = complete(bundle.runners(tasks["textgen"]["variant"])["model"], ["The "],
                        Sampling(temperature=0, max_new_tokens=80), CacheSpec.of(bundle.info))
        assert base64.b64decode(got["bytes"]) == want.data[0]
        assert got["tokensPerSecond"] > 0

        # detect: an uploaded scene; the boxes are the graph's in Python
        page.evaluate("window.littlebook.show('detect')")
        page.wait_for_selector("input[type=range]")
        page.evaluate("""() => { const r = document.querySelector('input[type=range]'); r.min = 0; r.value = 0.005; }""")
        run = smoke_bundles("detect")
        scene = sorted((run / "examples").glob("*.png"))[0]
        page.set_input_files("section[data-task=detect] input[type=file]", str(scene))
        page.wait_for_function("() => window.littlebook.last.detect", timeout=60_000)
        got = page.evaluate("window.littlebook.last.detect")["detections"]
        want, _ = detect(Bundle.open(run), decode_image(scene.read_bytes()), 0.005, 0.45, tasks["detect"]["variant"])
        assert want and [d["label"] for d in got] == [d.label for d in want]
        np.testing.assert_allclose([d["box"] for d in got], [d.box for d in want], atol=1e-2)
        stats = page.evaluate("window.littlebook.stats")
        assert page.evaluate("window.littlebook.errors") == []
    assert left == []
    assert all(stats[t]["firstAnswerMs"] > 0 for t in ("classify", "textgen", "detect"))


def test_run_all_ends_with_the_site(site, smoke_bundle, tmp_path, capsys):
    """``run all`` writes ROOT/site from the bundles it made; serve's discovery still sees only the bundles."""
    from pipeline.web import write_run_site
    from serve.discover import find_bundles

    root = tmp_path / "artifacts"
    (root / "classify").mkdir(parents=True)
    (root / "classify" / smoke_bundle.name).symlink_to(smoke_bundle)
    write_run_site(root)
    assert "web site: " in capsys.readouterr().out
    assert json.loads((root / "site" / "site.json").read_text())["tasks"][0]["task"] == "classify"
    found, problems = find_bundles(root)
    assert set(found) == {"classify"} and problems == []
