"""The app while its models are still being made (``python -m pipeline run all --serve``): a board of
every task's progress, and tabs that go live as their bundles land, with no restart.

The pipeline fills a :class:`Board` (the state of each task, read from the progress file its run
writes: ``pipeline/progress.py``) and hands it each bundle as it lands; the app shows the board on its
front tab, refreshed every second, and renders a task's tab (the same ``TaskTab.build`` as ever) when
its bundle is on the board. A tab rendered live answers the page and the inference protocol; its
``gradio_client`` endpoints exist once the app is started again (Gradio names only the endpoints of
the page it was started with).
"""
from __future__ import annotations

import html
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from serve.runtime import Bundle

STAGES = {"queued": "queued", "train": "training", "export": "exporting", "optimize": "optimizing",
          "benchmark": "benchmarking", "ready": "ready", "failed": "failed", "stopped": "stopped"}
WORKING = ("train", "export", "optimize", "benchmark")


@dataclass(frozen=True)
class TaskState:
    """One task on the board."""

    task: str
    stage: str = "queued"  # a key of STAGES
    detail: str = ""  # what the stage is doing now (a variant being built, "evaluating") or why it failed
    step: int | None = None  # the stage's step and its total (training steps, benchmark cells)
    total: int | None = None
    loss: float | None = None
    eta_s: float | None = None  # the stage's time left, as measured so far
    expected_s: float | None = None  # the whole task's time as measured here before (a queued task's wait)
    started: float | None = None  # when its run began, and when it ended (unix seconds)
    ended: float | None = None
    run: str | None = None  # the run folder
    metric: str = ""  # a ready bundle's headline ("accuracy 99.1%")

    def line(self, now: float | None = None) -> str:
        """One line of plain text: what the task is doing and how far it is."""
        now = time.time() if now is None else now
        parts = [STAGES.get(self.stage, self.stage)]
        if self.stage in WORKING:
            if self.step is not None and self.total:
                parts.append(f"{'step' if self.stage == 'train' else 'part'} {self.step}/{self.total}")
            if self.loss is not None:
                parts.append(f"loss {self.loss:.3g}")
            if self.detail:
                parts.append(self.detail)
            if self.eta_s is not None and self.stage == "train":
                parts.append(f"{duration(self.eta_s)} left in training")
        elif self.stage == "queued" and self.expected_s:
            parts.append(f"about {duration(self.expected_s)} once started")
        elif self.detail:
            parts.append(self.detail)
        if self.stage == "ready" and self.metric:
            parts.append(self.metric)
        if self.started is not None:
            parts.append(f"{duration((self.ended or now) - self.started)} {'so far' if self.ended is None else 'in all'}")
        return ", ".join(parts)

    @property
    def share(self) -> float:
        """How much of the task is done, 0..1 (training counts for 70%, its later stages for the rest)."""
        if self.stage == "ready":
            return 1.0
        if self.stage == "train":
            return 0.7 * (self.step or 0) / self.total if self.total else 0.0
        return {"export": 0.75, "optimize": 0.8, "benchmark": 0.9}.get(self.stage, 0.0)


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s:02d} s" if minutes < 10 else f"{minutes} min"


class Board:
    """Every task's state and the bundles landed so far; written by the pipeline's thread, read by the
    app's (a lock keeps each read whole)."""

    def __init__(self, tasks: list[str], expected_s: dict[str, float] | None = None):
        self._lock = threading.Lock()
        self._states = {t: TaskState(t, expected_s=(expected_s or {}).get(t)) for t in tasks}
        self._bundles: dict[str, Bundle] = {}
        self.started = time.time()
        self.listeners: list[Callable[[str, Bundle], None]] = []  # called as a bundle lands (the protocol)

    @property
    def tasks(self) -> list[str]:
        return list(self._states)

    def update(self, task: str, **fields: Any) -> None:
        with self._lock:
            self._states[task] = replace(self._states[task], **fields)

    def read_progress(self, task: str, path: Path) -> None:
        """The stage its run's progress file reports (``pipeline/progress.py``): ignored when unreadable."""
        try:
            p = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return
        if not isinstance(p, dict) or p.get("stage") not in WORKING:
            return
        number = lambda k: p[k] if isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool) else None  # noqa: E731
        self.update(task, stage=p["stage"], detail=str(p.get("detail") or ""), step=number("step"),
                    total=number("total"), loss=number("loss"), eta_s=number("eta_s"),
                    run=str(p.get("run") or "") or None)

    def land(self, task: str, bundle: Bundle, metric: str = "") -> None:
        """``bundle`` serves ``task`` from now on (its tab renders at the next refresh of each page)."""
        with self._lock:
            self._bundles[task] = bundle
            self._states[task] = replace(self._states[task], stage="ready", detail="", run=str(bundle.path),
                                         ended=self._states[task].ended or time.time(), metric=metric, eta_s=None)
        for listener in self.listeners:
            listener(task, bundle)

    def bundle(self, task: str) -> Bundle | None:
        with self._lock:
            return self._bundles.get(task)

    def bundles(self) -> dict[str, Bundle]:
        with self._lock:
            return dict(self._bundles)

    def states(self) -> list[TaskState]:
        with self._lock:
            return list(self._states.values())

    def state(self, task: str) -> TaskState:
        with self._lock:
            return self._states[task]

    @property
    def finished(self) -> bool:
        return all(s.stage in ("ready", "failed", "stopped") for s in self.states())


# ---------------------------------------------------------------------------------------------
# What the page shows


def board_html(board: Board, titles: dict[str, str]) -> str:
    """The front tab: a row per task, fastest first, with a bar of how far it is."""
    now = time.time()
    rows = []
    for s in board.states():
        colour = {"ready": "#2e7d32", "failed": "#c62828", "stopped": "#8d6e63"}.get(s.stage, "#1565c0")
        bar = (f'<div style="background:#e0e0e0;border-radius:3px;height:8px;width:100%">'
               f'<div style="background:{colour};width:{100 * s.share:.0f}%;height:8px;border-radius:3px"></div></div>')
        rows.append(f'<tr data-task="{s.task}" data-stage="{s.stage}"><td style="white-space:nowrap"><b>'
                    f'{html.escape(titles.get(s.task, s.task))}</b></td><td style="width:30%">{bar}</td>'
                    f'<td>{html.escape(s.line(now))}</td></tr>')
    done = sum(s.stage == "ready" for s in board.states())
    head = (f"<p>{done} of {len(rows)} demos live, {duration(now - board.started)} since the start. Each tab goes "
            "live as its model lands (fastest first); this page need not be reloaded.</p>")
    return (f'<div id="live-board">{head}<table style="width:100%;border-collapse:collapse">'
            + "".join(rows) + "</table></div>")


def waiting_html(state: TaskState, title: str) -> str:
    """A tab whose model is not ready: what it waits for."""
    if state.stage == "failed":
        what = f"could not be made: {state.detail}"
    elif state.stage == "stopped":
        what = "was stopped before its model was ready; run the same command again to continue it"
    else:
        what = f"goes live when its model is ready ({state.line()})"
    return f'<p class="live-waiting" data-stage="{state.stage}">{html.escape(title)} {html.escape(what)}.</p>'
