"""The bundle format: the one place that defines what a run folder holds and how it is read.

Both sides import this module (pipeline writes bundles, serve reads them); it imports nothing but
the standard library. A bundle is ``artifacts/<task>/<run>/`` with a ``manifest.json``:

    schema_version  SCHEMA_VERSION; older bundles are refused with the command that rebuilds them
    task, run, created, updated, preset, architecture, data
    metric          {"name", "direction" (max|min), "tolerance", "unit", "split"}
    inference       the served defaults of the task's inference settings (decode length, ...)
    info            task-specific facts for serving (labels, vocabulary, ...)
    graphs          {graph name: {"io": I/O spec, "files": {variant: file name}}}
    variants        {variant: {"status": accepted|rejected|failed, metric values, "reason", ...}}:
                    a variant is one file per graph, judged as a set on the task's metric
    metrics         {"torch": {...}, ...}; parity: {eval set: measured values}; examples: [file names]
    files           {file name: {"sha256", "bytes"}} for every file of the bundle but the manifest
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
CONFIG = "config.json"


class BundleError(Exception):
    """A bundle, file or input that cannot be used; the message is meant for people."""


@dataclass(frozen=True)
class Variant:
    name: str  # key in manifest["variants"] and graphs[g]["files"]
    suffix: str  # file name: <graph><suffix>; the TensorRT suffix also names the GPU and version
    title: str  # what people see (the app's variant picker, tables)
    engine: bool = False  # a TensorRT plan rather than an ONNX file


# The one variant table. The builders live on the pipeline side (pipeline/stages.py: BUILDERS, plus
# the export itself for fp32 and the engine build for tensorrt); a test checks both name the same.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", ".onnx", "fp32 (portable ONNX)"),
    Variant("opt", ".opt.onnx", "fp32, ORT-optimized"),
    Variant("int8", ".int8.onnx", "INT8"),
    Variant("fp16", ".fp16.onnx", "FP16"),
    Variant("tensorrt", ".plan", "TensorRT engine", engine=True),
)}


def variant_file(graph: str, variant: str, engine_tag: str = "") -> str:
    """``model.onnx``, ``encoder.int8.onnx``, ``model.<gpu>-trt<version>.plan``."""
    v = VARIANTS[variant]
    tag = f".{engine_tag}" if v.engine and engine_tag else ""
    return f"{graph}{tag}{v.suffix}"


def engine_tag(gpu: str, trt_version: str) -> str:
    """The part of a plan's name that ties it to one GPU model and TensorRT version."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") + f"-trt{trt_version}"


def variant_title(variant: str) -> str:
    return VARIANTS[variant].title if variant in VARIANTS else variant


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rebuild_command(run_dir: Path | str) -> str:
    """What turns a trained run folder into a current bundle (training is kept)."""
    return (f"python -m pipeline export {run_dir} && python -m pipeline optimize {run_dir} "
            f"&& python -m pipeline benchmark {run_dir}")


def read_manifest(run_dir: str | Path, allow_older: bool = False) -> dict[str, Any]:
    """``run_dir/manifest.json``, checked: valid JSON, an object, the current schema (or an older
    one with ``allow_older``, for the stage that rebuilds it), and the keys every bundle has."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{run_dir} is not a finished run: {MANIFEST} not found")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} is damaged: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        if isinstance(version, int) and version < SCHEMA_VERSION:
            if allow_older:
                return manifest
            raise BundleError(f"{run_dir}: bundle schema {version} is older than {SCHEMA_VERSION}; rebuild it with "
                              f"`{rebuild_command(run_dir)}`")
        raise BundleError(f"{run_dir}: manifest schema {version!r} is not {SCHEMA_VERSION} (made by a newer version?)")
    for key, kind in (("task", str), ("files", dict), ("graphs", dict), ("variants", dict), ("metric", dict)):
        if not isinstance(manifest.get(key), kind):
            raise BundleError(f"{path} is damaged: {key!r} is missing or not a {kind.__name__}")
    return manifest


def check_graphs(manifest: dict[str, Any], where: str) -> None:
    """The exported part of a manifest (graphs and their files) is well formed."""
    if not manifest["graphs"]:
        raise BundleError(f"{where}: no graph has been exported; run `python -m pipeline export {where}`")
    for name, graph in manifest["graphs"].items():
        io = graph.get("io") if isinstance(graph, dict) else None
        if not (isinstance(io, dict) and isinstance(io.get("inputs"), list) and isinstance(io.get("outputs"), list)
                and isinstance(graph.get("files"), dict)):
            raise BundleError(f"{where}: graph {name!r} in the manifest is damaged (no io/files)")
        for variant, file in graph["files"].items():
            if variant not in VARIANTS or not isinstance(file, str):
                raise BundleError(f"{where}: graph {name!r} lists an unknown variant {variant!r}")


def graph_files(manifest: dict[str, Any], variant: str) -> dict[str, str]:
    """{graph: file} of ``variant`` (every graph must have one, or the variant does not exist)."""
    files = {g: spec["files"].get(variant) for g, spec in manifest["graphs"].items()}
    return {} if any(f is None for f in files.values()) else files  # type: ignore[return-value]
