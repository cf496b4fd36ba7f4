import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# property tests: random in development (new cases each run), a fixed sequence in CI (reproducible)
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """``python -m pipeline ARGS`` in a fresh process; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def smoke_run(task: str, tmp_path_factory, *sets: str) -> Path:
    """``run TASK --preset smoke [--set ...]`` in a fresh process; the bundle's folder."""
    out = tmp_path_factory.mktemp("artifacts")
    proc = run_cli("run", task, "--preset", "smoke", "--out", str(out), *(a for s in sets for a in ("--set", s)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / task).iterdir()
    return run_dir


@pytest.fixture(scope="session")
def smoke_bundles(tmp_path_factory):
    """``smoke_bundles(task)``: the task's smoke bundle, built once per session (in a fresh process) and
    shared by every test that only reads it. Developers may set ``SMOKE_BUNDLES`` to a folder holding
    ``<task>/<run>`` bundles of an earlier session to reuse them (tests must only read them)."""
    built: dict[str, Path] = {}

    reuse = os.environ.get("SMOKE_BUNDLES")  # a folder of <task>/<run> smoke bundles from an earlier session

    def get(task: str) -> Path:
        if task not in built and reuse and len(found := sorted(Path(reuse).glob(f"{task}/*/manifest.json"))) == 1:
            built[task] = found[0].parent
        if task not in built:
            from pipeline.tasks import TASKS

            # a task that needs another's bundle (imagegen: a classifier) gets the session's own
            sets = [f"data.{field}={get(other)}" for other, field in TASKS[task].requires.items()]
            built[task] = smoke_run(task, tmp_path_factory, *sets)
        return built[task]

    return get


@pytest.fixture(scope="session")
def smoke_bundle(smoke_bundles) -> Path:
    return smoke_bundles("classify")


@pytest.fixture(scope="session")
def textgen_bundle(smoke_bundles) -> Path:
    return smoke_bundles("textgen")


@pytest.fixture(scope="session")
def detect_bundle(smoke_bundles) -> Path:
    return smoke_bundles("detect")


@pytest.fixture(scope="session")
def segment_bundle(smoke_bundles) -> Path:
    return smoke_bundles("segment")


BUNDLE_FIXTURES = {"imagegen_bundle", "smoke_bundles", "smoke_bundle", "bundle_copy", "served_bundle", "app_url", "bundle", "client", "textgen_bundle",
                   "text_app", "text_client", "detect_bundle", "segment_bundle", "scene_app", "scene_client"}


def pytest_collection_modifyitems(items):
    """A test that needs a pipeline-built bundle is end to end: it is ``slow`` whether or not it says so,
    so ``-m "not slow"`` skips every one of them (tests/test_layers.py checks the marking holds)."""
    for item in items:
        if BUNDLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def assert_judged(manifest: dict, variant: str) -> str:
    """A variant's status is the one its own metrics call for: accepted exactly when it loses at most the
    tolerance against fp32 on the metric's set and every other judged set, rejected (with a reason naming
    the metric) otherwise; a failed variant says why. Returns the status."""
    entry, metric = manifest["variants"][variant], manifest["metric"]
    if entry["status"] == "failed":
        assert entry.get("reason"), f"{variant} failed without a reason"
        return "failed"
    fp32 = manifest["variants"]["fp32"]
    losses = {}
    for key in (metric["name"], *metric.get("also_on", [])):
        if key in fp32 and key in entry:
            losses[key] = fp32[key] - entry[key] if metric["direction"] == "max" else entry[key] - fp32[key]
    assert metric["name"] in losses, f"{variant} has no {metric['name']}: {entry}"
    expected = "accepted" if all(loss <= metric["tolerance"] + 1e-9 for loss in losses.values()) else "rejected"
    assert entry["status"] == expected, f"{variant}: {entry['status']} with losses {losses} (tolerance {metric['tolerance']})"
    if expected == "rejected":
        assert metric["name"] in entry["reason"], entry["reason"]
    return expected


def http_call(app_url: str, api: str, data) -> tuple[str, object]:
    """A plain-HTTP call of a Gradio endpoint (POST /gradio_api/call/API, then its event stream): the
    last event's name ("complete" or "error") and its payload (the outputs, or the error's message)."""
    import json

    import httpx

    base = f"{app_url.rstrip('/')}/gradio_api/call/{api.lstrip('/')}"
    posted = httpx.post(base, json={"data": data}, timeout=30)
    posted.raise_for_status()
    stream = httpx.get(f"{base}/{posted.json()['event_id']}", timeout=60).text
    event, payload = None, None
    for line in stream.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: "):])
    if event == "error":
        payload = payload.get("error") if isinstance(payload, dict) else payload
    return event, payload
