import math

import pytest
import torch
from safetensors.torch import load_file

from pipeline import stages
from pipeline.errors import PipelineError
from pipeline.tasks import classify
from pipeline.train import CHECKPOINT, load_weights, lr_factor


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(80, 100, 0, "constant") == 1.0


SETS = {"train": {"epochs": 3, "batch_size": 256, "log_every": 1}, "model": {"dropout": 0.3}}


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """Stopped in epoch 2 and resumed, training ends with exactly the weights of an uninterrupted run."""
    whole = stages.train("classify", "smoke", sets=SETS, out=tmp_path / "a")

    original = classify.make_training_step
    calls = {"n": 0}

    def interrupting(cfg):
        step = original(cfg)

        def wrapped(*args):
            calls["n"] += 1
            if calls["n"] == 6:  # 4 steps per epoch at batch 256: this is in epoch 2
                raise KeyboardInterrupt
            return step(*args)

        return wrapped

    monkeypatch.setattr(classify, "make_training_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        stages.train("classify", "smoke", sets=SETS, out=tmp_path / "b")
    monkeypatch.setattr(classify, "make_training_step", original)
    (partial,) = (tmp_path / "b" / "classify").iterdir()
    assert partial.name.endswith(".partial")
    resumed = stages.train("classify", "smoke", out=tmp_path / "b", resume=partial)
    assert not partial.exists() and resumed.is_dir()
    a, b = load_file(whole / CHECKPOINT), load_file(resumed / CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    val = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    assert len(val) == 3


def test_checkpoint_errors(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(PipelineError, match="checkpoint not found"):
        load_weights(model, tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(PipelineError, match="corrupt"):
        load_weights(model, bad)


def test_training_learns(tmp_path):
    """Three smoke-sized epochs get well above chance (10%) on the digits."""
    run = stages.train("classify", "smoke", sets={"train": {"epochs": 3}}, out=tmp_path)
    import json

    acc = json.loads((run / "manifest.json").read_text())["metrics"]["torch"]["accuracy"]
    assert acc > 50 and not math.isnan(acc)
