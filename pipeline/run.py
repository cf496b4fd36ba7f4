"""A run folder in memory: its task, config, data, trained model and manifest, loaded once.

The stages (``pipeline/stages.py``) work on a :class:`Run`; ``run`` chains them on one. Each file is
hashed once: when the stage that wrote it lists it (:meth:`Run.record`), or when a stage first
checks it before use (:meth:`Run.check_file`).
"""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.verify import TorchRunner
from pipeline.config import load_file
from pipeline.errors import PipelineError
from pipeline.fileio import remove_stale_temporaries, write_json
from pipeline.tasks import get_task
from pipeline.tasks.base import EvalSet, Graph, RunConfig, Task, build_model, resolve
from pipeline.train import CHECKPOINT, METRICS, TRAINING_STATE, load_weights
from serve.bundle import CONFIG, MANIFEST, BundleError, read_manifest, sha256

TRAINED_FILES = (CONFIG, CHECKPOINT, TRAINING_STATE, METRICS, "curves.png")  # what train writes


@dataclass
class Run:
    """A run folder in memory: its task, config, data, trained model and manifest."""

    dir: Path
    task: Task
    cfg: RunConfig
    data: Any
    model: torch.nn.Module
    manifest: dict[str, Any]
    _verified: set[str] = field(default_factory=set, repr=False)

    @cached_property
    def graphs(self) -> dict[str, Graph]:
        return self.task.graphs(self.model.eval().cpu(), self.data, self.cfg)

    @cached_property
    def eval_sets(self) -> list[EvalSet]:
        return self.task.eval_sets(self.data, self.cfg)

    @cached_property
    def torch_runners(self) -> dict[str, TorchRunner]:
        return {name: TorchRunner(g.module, g.contract) for name, g in self.graphs.items()}

    # -- files and the manifest ---------------------------------------------------------------

    def record(self, name: str) -> None:
        """List a file this stage wrote in the manifest, with its sha256 (hashed here, once)."""
        path = self.dir / name
        self.manifest["files"][name] = {"sha256": sha256(path), "bytes": path.stat().st_size}
        self._verified.add(name)

    def forget(self, name: str) -> None:
        self.manifest["files"].pop(name, None)

    def check_file(self, name: str, hint: str) -> Path:
        """``dir/name``, after checking it exists and matches the manifest's sha256 (once per Run)."""
        path = self.dir / name
        if not path.is_file():
            raise PipelineError(f"{path} not found; {hint}")
        if name not in self._verified:
            want = self.manifest.get("files", {}).get(name, {}).get("sha256")
            if want is None or sha256(path) != want:
                raise PipelineError(f"{path} is corrupt or was changed after it was written (sha256 mismatch); {hint}")
            self._verified.add(name)
        return path

    def save(self) -> None:
        self.manifest["updated"] = now()
        write_json(self.dir / MANIFEST, self.manifest)

    # -- scoring -------------------------------------------------------------------------------

    def score(self, runners: dict[str, Any]) -> tuple[dict[str, float], Any]:
        """The task's metrics of ``runners`` on the first eval set, with the metric on every other
        scored set under the set's name (``{"accuracy": 99.4, "drawn": 97.1}``); and the first set's outputs."""
        if not self.eval_sets:
            raise PipelineError(f"task {self.task.name} names no held-out set to verify and score on")
        outputs = {es.name: self.task.infer(runners, es.items, self.cfg) for es in self.scored_sets}
        return self.scores(outputs), outputs[self.eval_sets[0].name]

    @property
    def scored_sets(self) -> list[EvalSet]:
        return [es for i, es in enumerate(self.eval_sets) if i == 0 or es.scored]

    def scores(self, outputs: dict[str, Any]) -> dict[str, float]:
        """``outputs`` per scored set's name -> the metrics (see :meth:`score`)."""
        first, *others = self.scored_sets
        scores = self.task.score(outputs[first.name], first.items, self.cfg)
        for es in others:
            scores[es.name] = self.task.score(outputs[es.name], es.items, self.cfg)[self.task.metric.name]
        return scores

    def judge(self, scores: dict[str, float]) -> tuple[str, str | None]:
        """Accepted when the metric, on the first set and on every other scored set, loses at most
        the tolerance against fp32."""
        metric = self.task.metric
        tolerance = self.cfg.optimize.max_drop if self.cfg.optimize.max_drop is not None else metric.tolerance
        fp32 = self.manifest["variants"]["fp32"]
        others = [es.name for es in self.scored_sets[1:] if es.name in scores and es.name in fp32]
        for key in [metric.name, *others]:
            ref, value = fp32[key], scores[key]
            drop = metric.loss(ref, value)
            if not np.isfinite(drop) or drop > tolerance:  # a NaN score is never "within tolerance"
                where = "" if key == metric.name else f" on {key}"
                return "rejected", (f"{metric.name}{where} {value:.4g} vs fp32 {ref:.4g}: loses {drop:.4g} "
                                    f"> {tolerance:g}{metric.unit}")
        return "accepted", None


def metric_entry(run: Run) -> dict[str, Any]:
    """The manifest's ``metric``: what variants are judged on, on which held-out set."""
    metric = run.task.metric
    return {"name": metric.name, "direction": metric.direction, "tolerance": metric.tolerance, "unit": metric.unit,
            "split": run.eval_sets[0].name if run.eval_sets else "test",
            "also_on": [es.name for es in run.scored_sets[1:]] if run.eval_sets else []}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


# ---------------------------------------------------------------------------------------------
# load a finished run


def load_run(run_dir: str | Path, allow_older: bool = False) -> Run:
    """A finished run folder, loaded: manifest, task, config, data, and the trained weights."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"run folder not found: {run_dir}")
    tidy(run_dir)
    try:
        manifest = read_manifest(run_dir, allow_older=allow_older)
    except BundleError as e:
        raise PipelineError(str(e)) from None
    task = get_task(manifest["task"])
    run = Run(run_dir, task, None, None, None, manifest)  # type: ignore[arg-type]
    raw = load_file(run.check_file(CONFIG, "the run folder is damaged"))
    run.cfg = resolve(task, raw.get("preset", "quick"), raw)
    run.data = task.load_data(run.cfg)
    model = build_model(task, None, run.cfg)
    load_weights(model, run.check_file(CHECKPOINT, "retrain with `python -m pipeline train`"))
    run.model = model.eval()
    return run


def tidy(run_dir: Path) -> None:
    """What an interrupted stage left: temporary files of dead processes (the bundle itself was never
    touched: every file is renamed into place whole)."""
    removed = remove_stale_temporaries(run_dir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) left by an interrupted stage: {', '.join(removed)}",
              flush=True)


def require_exported(run: Run) -> None:
    """The run has verified graphs (the stages after export need them), or a PipelineError saying what to run."""
    if "fp32" not in run.manifest.get("variants", {}) or not run.manifest.get("graphs"):
        raise PipelineError(f"{run.dir} has no verified model graphs; run `python -m pipeline export {run.dir}`")


def as_run(run: Run | str | Path, allow_older: bool = False) -> Run:
    return run if isinstance(run, Run) else load_run(run, allow_older)
