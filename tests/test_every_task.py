"""Every registered task, end to end at its smoke size: train -> export -> optimize -> benchmark (one
``python -m pipeline run TASK --preset smoke``), then the torch-free runtime. Parametrized over the
registry, so a task is covered the day it is registered."""
import json

import pytest

from pipeline.tasks import TASKS
from serve.runtime import Bundle


@pytest.mark.parametrize("name", list(TASKS))
def test_a_registered_task_runs_end_to_end(name, smoke_bundles):
    run_dir = smoke_bundles(name)
    bundle = Bundle.open(run_dir)
    m = bundle.manifest
    assert bundle.task == name and bundle.bad_files == {}
    assert m["variants"]["fp32"]["status"] == "accepted" and set(m["parity"]) >= {"test"}
    assert all(entry["status"] in ("accepted", "rejected", "failed") and (entry["status"] == "accepted") == (
        entry.get("reason") is None) for entry in m["variants"].values()), m["variants"]
    assert bundle.warm_up(bundle.variants()) == {}  # every usable variant's sessions load here
    metric = m["metric"]
    serving = bundle.serving
    assert serving.cases and serving.status == "accepted", serving
    served = (serving.model_extra or {})["metrics"][metric["name"]]
    fp32 = m["variants"]["fp32"][metric["name"]]
    loss = fp32 - served if metric["direction"] == "max" else served - fp32
    assert loss <= metric["tolerance"], f"served {served} vs fp32 {fp32}"
    bench = json.loads((run_dir / "benchmark.json").read_text())
    assert bench["cpu"]["flags"] == m["benchmark"]["cpu"]["flags"] and "model" in bench["cpu"]
    cells = {tuple(r[a] for a in bench["axes"]) for r in bench["rows"]}
    for cell in cells:  # every case has torch's reference and ONNX Runtime's fp32 beside it
        backends = {r["backend"] for r in bench["rows"] if tuple(r[a] for a in bench["axes"]) == cell}
        assert "torch eager" in backends and ("ORT fp32" in backends or "cache" in bench["axes"]), (cell, backends)
