"""The Progress board of ``run --serve`` (serve/live.py): each task's line, read from its run's progress file."""
from __future__ import annotations

import json

from serve.live import Board, TaskState, board_html, duration, waiting_html


def test_each_stage_reads_as_one_plain_line():
    now = 1000.0
    assert TaskState("asr", expected_s=810).line(now) == "queued, about 13 min once started"
    training = TaskState("asr", stage="train", step=120, total=1200, loss=0.4321, eta_s=95, started=now - 30)
    assert training.line(now) == "training, step 120/1200, loss 0.432, 1 min 35 s left in training, 30 s so far"
    assert TaskState("asr", stage="optimize", detail="int8 (static)", started=now - 700).line(now) == \
        "optimizing, int8 (static), 11 min so far"
    ready = TaskState("asr", stage="ready", metric="cer 19.3%", started=now - 800, ended=now - 10)
    assert ready.line(now) == "ready, cer 19.3%, 13 min in all"
    assert TaskState("asr", stage="failed", detail="no space left").line(now) == "failed, no space left"
    assert [TaskState("t", stage=s, step=5, total=10).share for s in ("queued", "train", "export", "ready")] == \
        [0.0, 0.35, 0.75, 1.0]
    assert duration(59.6) == "1 min 00 s" and duration(-3) == "0 s"


def test_the_board_follows_the_progress_file_and_ignores_a_bad_one(tmp_path):
    board = Board(["classify", "detect"], {"classify": 300})
    status = tmp_path / "classify.progress.json"
    board.read_progress("classify", status)  # not written yet: nothing changes
    assert board.state("classify").stage == "queued"
    status.write_text(json.dumps({"stage": "train", "run": "a/b", "step": 3, "total": 30, "loss": 1.5, "eta_s": 9}))
    board.read_progress("classify", status)
    s = board.state("classify")
    assert (s.stage, s.step, s.total, s.loss, s.run) == ("train", 3, 30, 1.5, "a/b")
    for bad in ("{not json", json.dumps([1, 2]), json.dumps({"stage": "ready"}), json.dumps({"stage": "train", "step": "x"})):
        status.write_text(bad)
        board.read_progress("classify", status)
    assert board.state("classify").stage == "train" and board.state("classify").step in (3, None)
    html = board_html(board, {"classify": "Classify", "detect": "Detect"})
    assert '<tr data-task="classify" data-stage="train">' in html and "0 of 2 demos live" in html
    assert not board.finished
    board.update("detect", stage="failed", detail="<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in waiting_html(board.state("detect"), "Detect")  # escaped
