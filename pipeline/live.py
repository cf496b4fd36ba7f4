"""``python -m pipeline run all --serve``: the app first, then the models, each demo live as it lands.

The app (with the inference protocol) listens within seconds, its front tab a board of every task's
progress (:mod:`serve.live`). The tasks are made one at a time, fastest first, each by ``python -m
pipeline run`` in a child process at the lowest CPU priority, so the live tabs keep answering at once
while it trains; each child writes where it is to a progress file (:mod:`pipeline.progress`) and its
log to ``ARTIFACTS/logs/<task>.log``. A finished bundle (same preset) is kept; an interrupted one is
continued (``run --resume``). Ctrl-C stops the child as Ctrl-C stops ``run`` (nothing half-written), then
the app.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import progress
from pipeline.stages import PARTIAL, stages_left
from pipeline.tasks import TASKS
from serve.bundle import CONFIG
from serve.live import Board, duration

POLL = 0.5  # seconds between looks at the child and its progress file


@dataclass
class Plan:
    """What to do for one task: nothing (``done``: its bundle), continue ``run_dir``, or a new run."""

    task: str
    done: Path | None = None
    resume: Path | None = None


def order(tasks: list[str]) -> list[str]:
    """Fastest first (each task's measured quick time), a task after those it needs."""
    ranked = sorted(tasks, key=lambda t: TASKS[t].quick_minutes or float("inf"))
    out: list[str] = []

    def add(t: str) -> None:
        if t not in out:
            for other in TASKS[t].requires:
                if other in ranked:
                    add(other)
            out.append(t)

    for t in ranked:
        add(t)
    return out


def plan(task: str, preset: str, root: Path) -> Plan:
    """The newest run of ``task`` with ``preset`` under ``root``: finished (kept), or continued where it
    stopped; none, or one stopped before its first checkpoint: a new run."""
    runs = sorted((d for d in (root / task).glob(f"*-{preset}*") if d.is_dir() and _preset(d) == preset),
                  key=lambda d: d.name.removesuffix(PARTIAL))
    for run_dir in reversed(runs):
        left = stages_left(run_dir)
        if not left:
            return Plan(task, done=run_dir)
        if left != ["new"]:
            return Plan(task, resume=run_dir)
    return Plan(task)


def _preset(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / CONFIG).read_text()).get("preset")
    except (OSError, ValueError, AttributeError):
        return None


def headline(bundle) -> str:
    """The bundle's metric with fp32 ("accuracy 99.2%"), for the board."""
    metric = bundle.manifest.get("metric", {})
    value = bundle.manifest.get("variants", {}).get("fp32", {}).get(metric.get("name"))
    if not isinstance(value, (int, float)):
        return ""
    return f"{metric['name'].replace('_', ' ')} {value:.4g}{'' if metric.get('unit') in (None, '') else metric['unit']}"


def serve_while_making(tasks: list[str], preset: str, root: Path, child_args: list[str], serve_args) -> int:
    """Serve at once, then make each task's bundle (see the module's docstring). The exit code: 0 when every
    task is live, 1 when one failed, 130 when stopped."""
    from serve.__main__ import start, usable
    from serve.discover import find_bundles

    root.mkdir(parents=True, exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    plans = [plan(t, preset, root) for t in order(tasks)]
    expected = {t: 60 * TASKS[t].quick_minutes for t in tasks if preset == "quick" and TASKS[t].quick_minutes}
    board = Board([p.task for p in plans], expected)
    done = {p.task: str(p.done) for p in plans if p.done}
    bundles, problems = find_bundles(root, list(done.values())) if done else ({}, [])
    usable(bundles, problems)
    for task, bundle in bundles.items():
        board.land(task, bundle, headline(bundle))
        board.update(task, detail="made earlier", ended=None)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    try:
        served = start(serve_args, dict(bundles), problems, board)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"open http://{serve_args.host}:{serve_args.port}: the Progress tab shows each task; its demo goes live "
          f"as it lands (logs in {logs})", flush=True)
    code = 0
    try:
        for p in plans:
            if p.task in bundles:
                print(f"{p.task}: kept {p.done}", flush=True)
                continue
            if not _make(p, preset, root, logs, child_args, board):
                code = 1
        if len(tasks) > 1:
            from pipeline.web import write_run_site

            write_run_site(root)
        print(f"all done ({duration(time.time() - board.started)}); still serving, Ctrl-C stops it", flush=True)
        served.app.block_thread()
    except KeyboardInterrupt:
        if not board.finished:
            code = 130
            print("\nstopped; the same command continues where it stopped", flush=True)
    finally:
        served.stop()
    return code


def _make(p: Plan, preset: str, root: Path, logs: Path, child_args: list[str], board: Board) -> bool:
    """One task's ``run`` in a child process, its progress on the board; True when its bundle landed."""
    from serve.discover import find_bundles

    status = logs / f"{p.task}.progress.json"
    status.unlink(missing_ok=True)
    if p.resume is not None:
        cmd = ["run", p.task, "--resume", str(p.resume)]
        print(f"{p.task}: continuing {p.resume}", flush=True)
    else:
        cmd = ["run", p.task, "--preset", preset, "--out", str(root), *child_args]
    env = {**os.environ, progress.ENV: str(status), "PYTHONUNBUFFERED": "1"}
    board.update(p.task, stage="train", detail="starting", started=time.time())
    with (logs / f"{p.task}.log").open("a") as log:
        log.write(f"\n$ python -m pipeline {' '.join(cmd)}\n")
        log.flush()
        # its own session: Ctrl-C reaches the child from us, after we decide (not from the terminal at once)
        child = subprocess.Popen([sys.executable, "-m", "pipeline", *cmd], stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:  # the lowest priority: a request to the app takes the CPU from training at once
            os.setpriority(os.PRIO_PROCESS, child.pid, 19)
        except (AttributeError, OSError):
            pass
        stage, printed = "", 0.0
        try:
            while child.poll() is None:  # a line at each new stage, and every 30 s
                board.read_progress(p.task, status)
                state = board.state(p.task)
                if state.stage != stage or time.monotonic() - printed > 30:
                    print(f"{p.task}: {state.line()}", flush=True)
                    stage, printed = state.stage, time.monotonic()
                time.sleep(POLL)
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)  # the run stops as at Ctrl-C: its files stay whole
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
            board.update(p.task, stage="stopped", ended=time.time())
            raise
    board.read_progress(p.task, status)
    run = board.state(p.task).run
    if child.returncode != 0:
        reason = _reason(logs / f"{p.task}.log")
        board.update(p.task, stage="failed", detail=reason, ended=time.time())
        print(f"{p.task}: failed: {reason} (log: {logs / (p.task + '.log')})", flush=True)
        return False
    bundles, problems = find_bundles(root, [Path(run).name] if run else None)  # by name: the child's paths are its own
    if p.task not in bundles:
        why = "; ".join(problems) or "its bundle was not found"
        board.update(p.task, stage="failed", detail=why, ended=time.time())
        print(f"{p.task}: failed: {why}", flush=True)
        return False
    from serve.__main__ import usable

    if not usable({p.task: bundles[p.task]}, problems):
        board.update(p.task, stage="failed", detail="; ".join(problems), ended=time.time())
        return False
    board.land(p.task, bundles[p.task], headline(bundles[p.task]))
    print(f"{p.task}: live ({board.state(p.task).line()})", flush=True)
    return True


def _reason(log: Path) -> str:
    """The child's one-line error (``error: ...``), else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "its log could not be read"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors[-1].removeprefix("error:").strip() if errors else lines[-1] if lines else "no output")[:300]

