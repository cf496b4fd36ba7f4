"""The bundle: a run folder that training fills and serving reads, described by ``manifest.json``.

Every stage updates the manifest atomically and re-hashes the files it lists, so the manifest
always describes exactly the files beside it.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.fileio import sha256, write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CONFIG = "config.json"
ONNX = "model.onnx"
VARIANT_FILES = {"fp32": "model.onnx", "opt": "model.opt.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{run_dir} is not a finished run: {MANIFEST} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path} is corrupt: {e}") from None


def new_manifest(task: str, run_name: str, cfg: dict, labels: list[str], metric: tuple[str, str]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "run": run_name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": cfg["preset"],
        "architecture": cfg["model"]["name"],
        "labels": labels,
        "metric": {"name": metric[0], "direction": metric[1], "split": "test"},
        "metrics": {},
        "variants": {},
        "versions": versions(),
        "git_commit": git_commit(),
        "files": {},
    }


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """Re-hash every file of the bundle, then replace ``manifest.json`` atomically."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        name = path.relative_to(run_dir).as_posix()
        if path.is_file() and name != MANIFEST and not any(part.startswith(".") for part in path.parts[-2:]):
            files[name] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    manifest["files"] = files
    manifest["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json(run_dir / MANIFEST, manifest)


def check_file(run_dir: Path, manifest: dict, name: str, hint: str) -> Path:
    """``run_dir/name``, after checking it exists and matches the manifest's sha256."""
    path = run_dir / name
    if not path.is_file():
        raise PipelineError(f"{path} not found; {hint}")
    want = manifest.get("files", {}).get(name, {}).get("sha256")
    if want and sha256(path) != want:
        raise PipelineError(f"{path} is corrupt or was changed after it was written (sha256 mismatch); {hint}")
    return path


def model_card(manifest: dict, usage: str) -> str:
    """MODEL_CARD.md: what it is, its data, metrics, and ``usage``: running it with plain onnxruntime."""
    metric = manifest["metric"]["name"]
    rows = []
    for name, v in manifest["variants"].items():
        value = v.get(metric)
        shown = f"{value:.2f}" if isinstance(value, (int, float)) else "-"
        rows.append(f"| {name} | `{v.get('file', '-')}` | {shown} | {v['status']} |")
    io = manifest["io"]
    inputs = "\n".join(f"- `{s['name']}` {s['dtype']} {list(s['shape'])}: {s['doc']}" for s in io["inputs"])
    outputs = "\n".join(f"- `{s['name']}` {s['dtype']} {list(s['shape'])}: {s['doc']}" for s in io["outputs"])
    torch_metric = manifest["metrics"].get("torch", {}).get(metric)
    return f"""# {manifest['task']} model `{manifest['run']}`

A {manifest['architecture']} trained by `python -m pipeline train {manifest['task']} --preset {manifest['preset']}`
on {manifest.get('data', 'the built-in data')}. Labels: {', '.join(manifest['labels'])}.

## Graph I/O

{inputs}
{outputs}

Pre- and post-processing are inside the graph; `model.onnx` uses standard ONNX ops only (opset {io['opset']}),
so any ONNX Runtime (Python, C++, C#, Java, JavaScript) runs it with nothing else.

## Metrics ({metric} on the held-out test split, percent)

PyTorch: {torch_metric if torch_metric is None else f'{torch_metric:.2f}'}

| variant | file | {metric} | status |
| --- | --- | --- | --- |
{chr(10).join(rows)}

Parity of `model.onnx` against PyTorch on the test split: {json.dumps(manifest.get('parity', {}))}

## Run it with onnxruntime and numpy

{usage}

Training config: `config.json`. Versions: {json.dumps(manifest['versions'])}. Git commit: {manifest.get('git_commit')}.
"""
