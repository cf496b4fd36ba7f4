"""The bundle format: the one place that defines what a run folder holds and how it is read.

Both sides import this module (pipeline writes bundles, serve reads them); it imports the standard
library and pydantic, whose models below are the one schema every manifest is checked against
before anything uses it (``Manifest.model_json_schema()`` gives it as JSON Schema). A bundle is
``artifacts/<task>/<run>/`` with a ``manifest.json``:

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
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    runtime: str = "onnxruntime"  # what runs the file: onnxruntime, tensorrt, openvino
    # a file any ONNX Runtime build runs as it is (onnxruntime-node, onnxruntime-web): not an ORT-optimized
    # file (its fusions and layouts are the building machine's), an engine or OpenVINO's
    portable: bool = False
    meaning: str = ""  # one line for people choosing it


# The one variant table. The builders live on the pipeline side (pipeline/stages.py: BUILDERS, plus
# the export itself for fp32 and the engine build for tensorrt); a test checks both name the same.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", ".onnx", "fp32 (portable ONNX)", portable=True, meaning="the exported graph as it is"),
    Variant("opt", ".opt.onnx", "fp32, ORT-optimized", meaning="fp32 with ONNX Runtime's fusions for this CPU"),
    Variant("int8", ".int8.onnx", "INT8", portable=True, meaning="8-bit integers: quantized, smaller, often faster"),
    Variant("fp16", ".fp16.onnx", "FP16", portable=True, meaning="16-bit floats: half the size, no faster on a CPU"),
    Variant("tensorrt", ".plan", "TensorRT engine", engine=True, runtime="tensorrt",
            meaning="an NVIDIA TensorRT engine built for this GPU"),
    # the portable model.onnx itself, run by OpenVINO instead of ONNX Runtime (no file of its own)
    Variant("openvino", ".onnx", "fp32 on OpenVINO", runtime="openvino", meaning="fp32 run by OpenVINO, not ONNX Runtime"),
    # OpenVINO's own INT8: the graph quantized by NNCF (QDQ ONNX), run by OpenVINO
    Variant("openvino-int8", ".ov-int8.onnx", "INT8 on OpenVINO (NNCF)", runtime="openvino",
            meaning="8-bit, quantized by NNCF, run by OpenVINO"),
)}


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception as one line for people: its message's first line (cut at ``limit``), or its type."""
    return ((str(error).splitlines() or [""])[0] or type(error).__name__)[:limit]


def variant_file(graph: str, variant: str, engine_tag: str = "") -> str:
    """``model.onnx``, ``encoder.int8.onnx``, ``model.<gpu>-trt<version>.plan``."""
    v = VARIANTS[variant]
    tag = f".{engine_tag}" if v.engine and engine_tag else ""
    return f"{graph}{tag}{v.suffix}"


def engine_tag(gpu: str, trt_version: str) -> str:
    """The part of a plan's name that ties it to one GPU model and TensorRT version."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") + f"-trt{trt_version}"


def variant_runtime(variant: str) -> str:
    """What runs a variant's files: onnxruntime (also for names this version does not know), tensorrt, openvino."""
    return VARIANTS[variant].runtime if variant in VARIANTS else "onnxruntime"


def variant_title(variant: str) -> str:
    return VARIANTS[variant].title if variant in VARIANTS else variant


def variant_info(variants: list[str], served: str = "") -> str:
    """What each of ``variants`` is, one short clause each, for the picker that offers them (``served``:
    what the picker's first, per-call choice does)."""
    parts = ([f"served: {served}"] if served else []) + [f"{v}: {VARIANTS[v].meaning}" for v in variants
                                                          if v in VARIANTS and VARIANTS[v].meaning]
    return " · ".join(parts)


# the instruction sets that decide kernels and INT8 speed (VNNI: int8 dot products; AMX: tiles)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """This machine's CPU: model name, logical cores and which of :data:`CPU_FLAGS` it has. Served
    variants, INT8 choices and every timing depend on them, so benchmarks record them beside their figures."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def cpu_line(cpu: dict[str, Any]) -> str:
    """``cpu_info()`` in words: "Intel(R) Xeon(R) Processor, 2 cores, avx2 avx512f avx512_vnni"."""
    return f"{cpu.get('model', '?')}, {cpu.get('cores', '?')} cores, {' '.join(cpu.get('flags', ())) or 'no AVX2'}"


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


# ---------------------------------------------------------------------------------------------
# The manifest's schema. Keys the runtime and the stages rely on are typed; the rest (versions,
# benchmark summary, task-specific metrics) pass through. File names are bundle-relative paths that
# cannot leave the bundle.

_INSIDE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*(/[A-Za-z0-9_][A-Za-z0-9_.+\-]*)*")


def _inside(name: str) -> str:
    if len(name) > 255 or not _INSIDE.fullmatch(name):
        raise ValueError(f"{name[:80]!r} is not a file name inside the bundle")
    return name


FileName = Annotated[str, AfterValidator(_inside)]


def safe_file_name(name: str) -> str:
    """``name`` made a valid file name inside a bundle (a class called "a,b" or "é" names examples too)."""
    stem = re.sub(r"[^A-Za-z0-9_.+\-]", "_", name).lstrip(".+-") or "file"
    return stem[:200]
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Dim(_Model):
    min: int = Field(ge=0)
    opt: Union[int, None] = None
    max: int = Field(ge=0)


class Tensor(_Model):
    name: str = Field(min_length=1)
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: list[Union[int, str]]
    doc: str = ""


class GraphIO(_Model):
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[Tensor] = Field(min_length=1)
    dims: dict[str, Dim] = {}


class GraphEntry(_Model):
    io: GraphIO
    files: dict[Literal[tuple(VARIANTS)], FileName]  # type: ignore[valid-type]


class VariantEntry(_Model):
    status: Literal["accepted", "rejected", "failed"]


class MetricEntry(_Model):
    name: str = Field(min_length=1)
    direction: Literal["max", "min"]
    tolerance: float = Field(ge=0, allow_inf_nan=False)
    unit: str = ""
    split: str = "test"
    also_on: list[str] = []  # other held-out sets the metric is reported and judged on (entries' keys)


class ServingCase(_Model):
    """One benchmarked case and the variant that was fastest there: axes as numbers and names
    ({"batch": 1, "phase": "prefill", "context": 512}; a size may be fractional: 2.5 seconds)."""

    axes: dict[str, Union[int, float, str]] = Field(min_length=1)
    variant: Literal[tuple(VARIANTS)]  # type: ignore[valid-type]


class Serving(_Model):
    """What serving runs (the manifest's ``serving``, written by the benchmark on the CPU in ``cpu``):
    each call on the variant of the nearest benchmarked case. That per-call mix is scored on the
    held-out sets like a variant (``metrics``); when it loses more than the task's tolerance it is
    ``rejected`` and every call runs ``fallback``, the fastest accepted single variant."""

    cases: list[ServingCase] = []
    fallback: Literal[tuple(VARIANTS)] = "fp32"  # type: ignore[valid-type]
    status: Literal["accepted", "rejected"] = "accepted"
    reason: Union[str, None] = None


def serving_of(manifest: dict[str, Any]) -> Serving:
    """The manifest's ``serving``, typed. Bundles benchmarked before the choice was typed hold
    {"batch 1, phase prefill, context 512": "int8"}: read as cases, with fp32 to fall back on."""
    raw = manifest.get("serving") or {}
    if "cases" not in raw and all(isinstance(v, str) for v in raw.values()):
        cases = []
        for label, variant in raw.items():
            pairs = [part.strip().partition(" ") for part in label.split(",")]
            if variant in VARIANTS and pairs and all(name and value for name, _, value in pairs):
                cases.append(ServingCase(axes={n: int(v) if v.isdigit() else v for n, _, v in pairs}, variant=variant))
        return Serving(cases=cases)
    return Serving.model_validate(raw)


class Manifest(_Model):
    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    task: str = Field(min_length=1)
    run: str = ""
    metric: MetricEntry
    inference: dict[str, Any] = {}
    info: dict[str, Any] = {}
    graphs: dict[str, GraphEntry]
    variants: dict[Literal[tuple(VARIANTS)], VariantEntry]  # type: ignore[valid-type]
    metrics: dict[str, dict[str, Any]] = {}
    parity: dict[str, dict[str, Any]] = {}
    examples: list[FileName] = []
    baselines: dict[str, dict[str, float]] = {}  # the metric of reference points people know (xz, ...)
    samples: list[dict[str, str]] = []  # what the exported model produced on held-out inputs
    # what serving runs per call (:class:`Serving`); {"batch 1": "openvino"} in bundles benchmarked before it was typed
    serving: Union[Serving, dict[str, str]] = {}
    files: dict[FileName, FileEntry]

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        listed = set(self.files)
        for name, graph in self.graphs.items():
            for variant, file in graph.files.items():
                if file not in listed:
                    raise ValueError(f"graph {name!r} names {file!r} for {variant}, but files does not list it")
                if variant not in self.variants:
                    raise ValueError(f"graph {name!r} has a {variant} file, but variants has no {variant!r} entry")
            for spec in (*graph.io.inputs, *graph.io.outputs):
                for axis in spec.shape:
                    if isinstance(axis, int) and axis < 0:
                        raise ValueError(f"graph {name!r}: {spec.name} has a negative size {axis}")
        for example in self.examples:
            if example not in listed:
                raise ValueError(f"example {example!r} is not listed in files")
        for variant, entry in self.variants.items():
            value = (entry.model_extra or {}).get(self.metric.name)
            if entry.status == "accepted" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise ValueError(f"variants.{variant} is accepted without its {self.metric.name} value")
        return self


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p != "[key]")
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def read_manifest(run_dir: str | Path, allow_older: bool = False) -> dict[str, Any]:
    """``run_dir/manifest.json``, checked: valid JSON, an object of the current schema version (or an
    older one with ``allow_older``, for the stage that rebuilds it), valid against :class:`Manifest`."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{run_dir} is not a finished run: {MANIFEST} not found")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, absurd nesting or numbers
        raise BundleError(f"{path} is not valid JSON: {first_line(e)}") from None
    except OSError as e:
        raise BundleError(f"{path} cannot be read: {e.strerror}") from None
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
    try:
        Manifest.model_validate(manifest)
        serving_of(manifest)
    except ValidationError as e:
        raise BundleError(f"{path} is damaged: {_first_error(e)}") from None
    return manifest


def check_graphs(manifest: dict[str, Any], where: str) -> None:
    """A (schema-checked) manifest has exported graphs to serve."""
    if not manifest["graphs"]:
        raise BundleError(f"{where}: no graph has been exported; run `python -m pipeline export {where}`")


def metric_columns(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(column title, key in a variant or metrics entry) of the metric on each scored set:
    ``[("accuracy % (test)", "accuracy"), ("accuracy % (drawn)", "drawn")]``."""
    metric = manifest["metric"]
    unit = f" {metric['unit']}" if metric.get("unit") else ""
    return [(f"{metric['name']}{unit} ({metric.get('split', 'test')})", metric["name"]),
            *((f"{metric['name']}{unit} ({s})", s) for s in metric.get("also_on", []))]


def shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def graph_files(manifest: dict[str, Any], variant: str) -> dict[str, str]:
    """{graph: file} of ``variant`` (every graph must have one, or the variant does not exist)."""
    files = {g: spec["files"].get(variant) for g, spec in manifest["graphs"].items()}
    return {} if any(f is None for f in files.values()) else files  # type: ignore[return-value]
