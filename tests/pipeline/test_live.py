"""``run TASK --serve``: the app listens first, its front tab shows the task's progress, the tab goes live
as the bundle lands (without a reload), an interrupted run is continued and a finished one kept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.serve.conftest import free_port


def _start(root: Path, port: int, v2: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "classify", "--serve", "--preset", "smoke",
                             "--out", str(root), "--port", str(port), "--v2-port", str(v2), "--grpc-port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _wait_up(url: str, proc: subprocess.Popen, seconds: float = 90) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


@pytest.mark.slow
def test_the_app_opens_first_and_the_tab_goes_live(tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    from serve.runtime import Bundle
    from serve.tasks.classify import predict
    from serve.inputs import decode_image
    from tests.serve.test_browser import SCREENSHOTS, chromium_page

    root = tmp_path / "artifacts"
    # trained, never exported: the command continues this run instead of starting another
    trained = run_cli("train", "classify", "--preset", "smoke", "--out", str(root))
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run_dir,) = (root / "classify").iterdir()
    port, v2 = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = _start(root, port, v2)
    try:
        with chromium_page() as page:
            _wait_up(url, proc)
            page.goto(url)
            page.wait_for_selector("#live-board tr[data-task=classify]", timeout=30_000)
            stages = []
            for _ in range(240):  # the board refreshes itself: the page is never reloaded
                stage = page.get_attribute("#live-board tr[data-task=classify]", "data-stage")
                if not stages or stages[-1] != stage:
                    stages.append(stage)
                if stage in ("ready", "failed"):
                    break
                page.wait_for_timeout(250)
            board = page.inner_text("#live-board")
            page.get_by_role("tab", name="Classify").click()
            page.wait_for_selector("#classify-sketch", timeout=30_000)  # rendered when the bundle landed
            page.get_by_role("tab", name="Upload").click()
            bundle = Bundle.open(run_dir)
            example = str(bundle.file(bundle.manifest["examples"][0]))
            page.set_input_files("#classify-upload input[type=file]", example)  # an upload runs at once
            page.wait_for_function("() => (document.querySelector('#classify-latency textarea') || {}).value"
                                   "?.includes('ms')", timeout=30_000)
            shown = page.inner_text("#classify-label").split("\n")[1].strip()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "live-classify.png"))
        label, _ = predict(bundle, decode_image(example), bundle.default_variant)
        model = httpx.get(f"http://127.0.0.1:{v2}/v2/models/classify", timeout=10)
    finally:
        code, out = _stop(proc)
    assert stages[-1] == "ready", (stages, board, out[-3000:])
    assert "export" in stages or "optimize" in stages or "benchmark" in stages, stages  # seen on its way
    assert "1 of 1 demos live" in board and "accuracy" in board
    assert shown == max(label, key=label.get)
    assert model.status_code == 200 and json.loads(model.text)["name"] == "classify"  # joined the protocol live
    assert [d.name for d in (root / "classify").iterdir()] == [run_dir.name], "continued, not started again"
    assert f"continuing {run_dir}" in out and code == 0, out[-2000:]
    assert (root / "logs" / "classify.log").is_file()

    # again: the finished bundle is kept, and its tab is built at start (its API endpoints exist)
    proc = _start(root, port, v2)
    try:
        _wait_up(url, proc)
        client = Client(url, verbose=False)
        probs, _ = client.predict(handle_file(example), bundle.default_variant, api_name="/classify")
    finally:
        code, out = _stop(proc)
    assert probs["label"] == shown and "classify: kept" in out and code == 0, out[-2000:]


def test_the_plan_keeps_continues_or_starts(tmp_path):
    """A finished bundle is kept, an interrupted run continued, one with no checkpoint yet started anew;
    the order is fastest first, each task after the tasks it needs."""
    from pipeline.live import order, plan

    root = tmp_path
    assert plan("classify", "quick", root).done is None and plan("classify", "quick", root).resume is None
    old = root / "classify" / "20260101-000000-quick"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"preset": "quick", "task": "classify"}))
    (old / "manifest.json").write_text(json.dumps({"variants": {"fp32": {}, "opt": {}}, "benchmark": {}}))
    assert plan("classify", "quick", root).done == old
    assert plan("classify", "smoke", root).done is None  # another preset's bundle is not this one
    partial = root / "classify" / "20260102-000000-quick.partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"preset": "quick", "task": "classify"}))
    assert plan("classify", "quick", root).done == old  # no checkpoint yet: the finished one is newest usable
    for name in ("checkpoint.safetensors", "training_state.pt"):
        (partial / name).write_bytes(b"x")
    assert plan("classify", "quick", root).resume == partial
    exported = root / "classify" / "20260103-000000-quick"
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"preset": "quick", "task": "classify"}))
    (exported / "manifest.json").write_text(json.dumps({"variants": {"fp32": {}}}))
    assert plan("classify", "quick", root).resume == exported
    assert order(["imagegen", "textgen", "classify", "detect"]) == ["classify", "detect", "textgen", "imagegen"]
    assert order(["imagegen"]) == ["imagegen"]
