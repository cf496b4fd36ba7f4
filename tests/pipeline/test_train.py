import json
import math

import pytest
import torch
from safetensors.torch import load_file

from pipeline import stages
from pipeline.errors import PipelineError
from pipeline.tasks import classify
from pipeline.train import CHECKPOINT, METRICS, TRAINING_STATE, LengthBuckets, load_weights, lr_factor, read_metrics


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(80, 100, 0, "constant") == 1.0


def test_length_buckets_draw_every_sample_once_in_batches_of_similar_length():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1_000, 100_000, (1_000,), generator=g).tolist()
    sampler = LengthBuckets(lengths, batch_size=10, pool=20)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100 and all(len(b) == 10 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1_000))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    shuffled = [list(range(k, k + 10)) for k in range(0, 1_000, 10)]  # what random batches would give
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in shuffled) / 100
    assert spread < random_spread / 5
    assert list(sampler) == batches  # one epoch, one order (a resumed run skips exactly what it trained)
    sampler.set_epoch(1)
    assert list(sampler) != batches
    ranks = [list(LengthBuckets(lengths, 10, world_size=3, rank=r, pool=20)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # every process as many steps
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen))  # no sample in two processes
    assert list(LengthBuckets([5, 3], batch_size=8)) == [[1, 0]]  # fewer samples than a batch: one batch


EPOCHS = {"train": {"epochs": 3, "batch_size": 256, "log_every": 1}, "model": {"dropout": 0.3}}
# a step budget that pauses mid-epoch (7 steps per epoch at batch 256), with an EMA of the weights
STEPS = {"train": {"steps": 10, "eval_every": 3, "batch_size": 256, "log_every": 1, "ema": 0.9,
                   "warmup_steps": 2}, "model": {"dropout": 0.3}}


@pytest.mark.slow  # trains the smoke classifier three times
@pytest.mark.parametrize("sets,stop_at,evals", [(EPOCHS, 10, 3), (STEPS, 5, 4)], ids=["epochs", "steps-ema"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, sets, stop_at, evals):
    """Stopped after a checkpoint and resumed, training ends with exactly the weights (and, with an
    EMA, the averaged weights) of an uninterrupted run, also when the pause falls mid-epoch."""
    whole = stages.train("classify", "smoke", sets=sets, out=tmp_path / "a").dir

    original = classify.make_training_step
    calls = {"n": 0}

    def interrupting(cfg):
        step = original(cfg)

        def wrapped(*args):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            return step(*args)

        return wrapped

    monkeypatch.setattr(classify, "make_training_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        stages.train("classify", "smoke", sets=sets, out=tmp_path / "b")
    monkeypatch.setattr(classify, "make_training_step", original)
    (partial,) = (tmp_path / "b" / "classify").iterdir()
    assert partial.name.endswith(".partial")
    with (partial / METRICS).open("a") as f:
        f.write('{"split": "train", "st')  # a line cut short by kill -9
    (partial / ".checkpoint.safetensors.tmp-999999999").write_bytes(b"half")  # a dead process's temporary
    resumed = stages.train("classify", "smoke", out=tmp_path / "b", resume=partial).dir
    assert not partial.exists() and resumed.is_dir()
    a, b = load_file(whole / CHECKPOINT), load_file(resumed / CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    raw_a, raw_b = (torch.load(d / TRAINING_STATE, weights_only=True)["raw_weights"] for d in (whole, resumed))
    if "ema" in sets["train"]:  # the raw weights differ from the deployed average, and resume equally
        assert any(not torch.equal(raw_a[k], a[k]) for k in a if raw_a[k].is_floating_point())
        for k in raw_a:
            torch.testing.assert_close(raw_a[k], raw_b[k], rtol=0, atol=0, msg=k)
    val = [json.loads(line) for line in (resumed / METRICS).read_text().splitlines() if '"val"' in line]
    assert len(val) == evals
    if "steps" in sets["train"]:
        assert [r["step"] for r in val] == [3, 6, 9, 10]
    # the log reads as one run: steps logged after the checkpoint are not repeated
    steps = [[(r["split"], r["step"]) for r in read_metrics(d)] for d in (resumed, whole)]
    assert steps[0] == steps[1]
    assert not list(resumed.glob(".*.tmp-*"))


def test_checkpoint_errors(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(PipelineError, match="checkpoint not found"):
        load_weights(model, tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(PipelineError, match="corrupt"):
        load_weights(model, bad)


@pytest.mark.slow  # a whole smoke training
def test_training_learns(tmp_path):
    """Five smoke-sized epochs get well above chance (10%) on the digits."""
    run = stages.train("classify", "smoke", sets={"train": {"epochs": 5}}, out=tmp_path)
    acc = json.loads((run.dir / "manifest.json").read_text())["metrics"]["torch"]["accuracy"]
    assert acc > 80 and not math.isnan(acc)


def test_diverging_loss_stops_with_one_line(tmp_path):
    with pytest.raises(PipelineError, match="training diverged: the loss is nan"):
        stages.train("classify", "smoke", sets={"train": {"lr": 1e30, "grad_clip": 0.0}}, out=tmp_path)


def test_ema_follows_the_weights_early_and_averages_later():
    from pipeline.train import update_ema

    model, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        model.weight.fill_(1.0)
    update_ema(ema, model, 0.999, step=0)  # d = 1/10: the random start keeps only 10%
    assert ema.weight.item() == pytest.approx(0.9)
    ema.weight.data.fill_(0.0)
    update_ema(ema, model, 0.999, step=10**6)  # late: the configured decay
    assert ema.weight.item() == pytest.approx(0.001)


def test_an_empty_validation_split_is_one_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="the validation split is empty"):
        stages.train("classify", "smoke", sets={"data": {"val_fraction": 0.0}}, out=tmp_path)
