"""Where a run is, for whoever watches it: the stages and the training loop report here, and when the
environment names a file (``LITTLEBOOK_PROGRESS``, set by ``run all --serve`` for each task it runs in a
child process) the latest report is written there whole, at most once a second (a stage change at once).

The file is one JSON object (read by :mod:`serve.live`)::

    {"stage": "train" | "export" | "optimize" | "benchmark", "run": "<run folder>",
     "step": 120, "total": 1200, "loss": 0.43, "eta_s": 310.0,       # train only
     "detail": "int8 (static)", "time": <unix seconds>}
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pipeline.fileio import write_json

ENV = "LITTLEBOOK_PROGRESS"
_last: dict[str, Any] = {}
_written = 0.0


def report(stage: str, run: str | Path | None = None, force: bool = False, **fields: Any) -> None:
    """The run is at ``stage`` (with ``fields``: step, total, loss, eta_s, detail); a no-op unless
    ``LITTLEBOOK_PROGRESS`` names a file."""
    global _written
    path = os.environ.get(ENV)
    if not path:
        return
    changed = stage != _last.get("stage") or (run is not None and str(run) != _last.get("run"))
    if run is None:
        run = _last.get("run")
    _last.clear()
    _last.update(stage=stage, run=None if run is None else str(run), time=time.time(),
                 **{k: v for k, v in fields.items() if v is not None})
    if changed or force or time.monotonic() - _written >= 1.0:
        try:
            write_json(Path(path), _last)
        except OSError:  # a watcher's file is never a reason for a run to fail
            return
        _written = time.monotonic()
