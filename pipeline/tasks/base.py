"""What a task is to the pipeline (the :class:`Task` interface), and how its run config is resolved.

A task is a subclass of :class:`Task` registered in ``pipeline/tasks/__init__.py``. The generic
stages (train, export, optimize, benchmark) call only the methods below; each has a shape comment
and the optional ones a default.

A run config has sections ``model`` (an architecture name from the models registry plus that
architecture's typed fields), ``data``, ``train``, ``optimize``, ``benchmark`` and ``inference``
(the task's own dataclasses for data, benchmark and inference). Layers, lowest first: the
dataclass defaults, the task's preset, ``--config FILE``, then ``--set key=value``; every layer is
checked for unknown keys and types.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import models
from export.contract import ExportContract
from pipeline.config import from_dict, merge, to_dict, unknown_key
from pipeline.errors import PipelineError
from serve.bundle import first_line
from pipeline.train import EvalFn, StepFn, TrainConfig

PRESETS = ("smoke", "quick", "full")
Feeds = dict[str, np.ndarray]
Runners = dict[str, Any]  # graph name -> a callable Feeds -> {output name: array} (ORT, torch or TensorRT)


# ---------------------------------------------------------------------------------------------
# Config sections every task shares


@dataclass
class OptimizeConfig:
    # (str) static: QDQ, activations calibrated on training data; dynamic: activations quantized at run
    # time (MatMul-heavy nets); auto: static, then dynamic where static fails or loses more than max_drop
    int8: Literal["auto", "static", "dynamic"] = "auto"
    calibration_samples: int = 256  # (int) training samples used to calibrate static INT8
    # (list[str]) ONNX operator types INT8 quantizes, e.g. [Conv, MatMul, Gemm]; empty: the quantizer's
    # default set (which also quantizes Concat/Reshape/Transpose outputs, such as a detector's raw scores)
    int8_ops: tuple[str, ...] = ()
    # (str) OpenVINO's INT8 by NNCF: static (weights and activations, calibrated like ORT's static
    # INT8), weights (INT8 weights only, data-free); auto: static, then weights where static is rejected
    openvino_int8: Literal["auto", "static", "weights"] = "auto"
    # (float) how much of the task's metric (in its unit) a variant may lose against fp32 before it is
    # rejected; unset: the task's own tolerance
    max_drop: float | None = None

    def __post_init__(self):
        if self.calibration_samples < 1 or (self.max_drop is not None and not (0 <= self.max_drop < math.inf)):
            raise ValueError("calibration_samples must be >= 1 and max_drop a finite number >= 0")


@dataclass
class BenchmarkConfig:
    """What every task's benchmark has; a task subclasses it for its own axes (context lengths, steps)."""

    batch_sizes: tuple[int, ...] = (1, 32, 256)  # (list[int]) batch sizes to time
    seconds: float = 2.0  # (float) time budget per backend and case
    min_runs: int = 5  # (int) fewest timed calls per backend and case
    threads: int = 0  # (int) intra-op threads for ORT and torch; 0 = all cores
    # (int) passes over every backend and case, each with seconds / rounds per cell; a cell's timings
    # are pooled over the passes, so a machine that speeds up or slows down during the benchmark moves
    # every cell alike and the ratios between them hold
    rounds: int = 3
    # (bool) also time torch.compile (inductor), scored on the held-out sets like every backend; the
    # smoke presets leave it out (compiling takes longer than their whole run)
    torch_compile: bool = True

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.seconds > 0 or self.min_runs < 1:
            raise ValueError("batch_sizes must be >= 1 (at least one), seconds > 0 and min_runs >= 1")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: all cores), got {self.threads}")


@dataclass
class NoInference:
    """A task whose served graph needs no settings (its inference section is empty)."""


@dataclass
class RunConfig:
    task: str
    preset: str
    model_name: str
    model: Any  # the architecture's config dataclass
    data: Any  # the task's DataConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    benchmark: Any = field(default_factory=BenchmarkConfig)  # the task's BenchmarkConfig
    inference: Any = field(default_factory=NoInference)  # the task's InferenceConfig: served defaults

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``model`` holds ``name`` beside the architecture's fields."""
        out = to_dict(self)
        out["model"] = {"name": out.pop("model_name"), **out["model"]}
        return out


SECTIONS = ("task", "preset", "model", "data", "train", "optimize", "benchmark", "inference")


# ---------------------------------------------------------------------------------------------
# What the generic stages exchange with a task


@dataclass(frozen=True)
class Metric:
    name: str  # key in the task's score dicts, e.g. "accuracy"
    direction: Literal["max", "min"]  # which way is better
    tolerance: float  # how much a variant may lose against fp32 (in ``unit``) before it is rejected
    unit: str = ""  # "%", "bits/byte", ...

    def loss(self, reference: float, value: float) -> float:
        """How much worse ``value`` is than ``reference`` (negative when better)."""
        return reference - value if self.direction == "max" else value - reference


@dataclass
class Graph:
    """One exported graph: the deployable module (pre/post-processing inside), its contract as
    data, example inputs for the exporter, and what the ``.onnx`` file says of itself."""

    module: nn.Module
    contract: ExportContract
    example: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    # a graph assembled from another graph's file instead of exported from ``module`` (a sampler's ONNX
    # Loop around the denoiser step, which the exporter cannot write): (the source graph's name, a function
    # of its onnx.ModelProto). Every variant rebuilds it from that variant's source file; ``module`` stays
    # the torch reference it is verified and timed against
    assemble: tuple[str, Callable[[Any], Any]] | None = None


@dataclass
class EvalSet:
    """Held-out inputs that exports are verified on: ``items`` is whatever :meth:`Task.infer` takes."""

    name: str  # manifest key: "test", "stress", ...
    description: str  # what it holds, for people
    items: Any
    samples: int
    scored: bool = False  # also scored (metrics.*.<name>) and judged, beside the first set, which always is


@dataclass
class BenchCase:
    """One timed cell: ``items`` for :meth:`Task.infer`, the task's axes and the work it does."""

    axes: dict[str, int | str]  # e.g. {"batch": 32} or {"batch": 1, "phase": "decode", "context": 512}
    items: Any
    units: float  # work per call in Task.bench_unit (samples, tokens, seconds of audio, images)
    backends: tuple[str, ...] = ()  # only these backends time this case (e.g. "torch eager"); empty: all


class Task(ABC):
    """The training-side interface of a task. Class attributes describe it; methods do the work.

    The abstract methods are required: a task missing one is refused when it is registered
    (:func:`register`). Arguments come in one order throughout: what the method works on first, the run
    config last."""

    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]  # model.name choices, from the models registry
    default_model: ClassVar[str]
    presets: ClassVar[dict[str, dict[str, Any]]]  # smoke / quick / full overrides
    metric: ClassVar[Metric]
    DataConfig: ClassVar[type]
    BenchmarkConfig: ClassVar[type] = BenchmarkConfig
    InferenceConfig: ClassVar[type] = NoInference
    train_unit: ClassVar[str] = "samples"  # what the training step's count measures
    bench_unit: ClassVar[str] = "samples"  # what BenchCase.units measures
    usage: ClassVar[str] = ""  # the model card's "run it with onnxruntime" snippet (markdown)
    # bundles of other tasks this one needs (imagegen's samples are judged by a classify bundle): task name ->
    # the data.<field> holding its path; an empty field is filled at train time with the newest finished bundle
    # of that task beside the run (trained first, with the same preset, when there is none)
    requires: ClassVar[dict[str, str]] = {}
    # minutes of ``run`` with the quick preset, measured on this project's 2-core CPU: ``run all --serve``
    # makes the fastest first and shows it as a queued task's wait
    quick_minutes: ClassVar[float | None] = None

    # -- data and model ------------------------------------------------------------------------

    @abstractmethod
    def load_data(self, cfg: RunConfig) -> Any:
        """The task's data (splits train / val / test), from cfg.data."""

    def describe_data(self, data: Any) -> str:
        """One line for the training banner."""
        return str(getattr(data, "source", type(data).__name__))

    def complete_config(self, data: Any, cfg: RunConfig) -> RunConfig:
        """Fill in config fields that the data decides (class count, vocabulary)."""
        return cfg

    @abstractmethod
    def build_model(self, data: Any | None, cfg: RunConfig) -> nn.Module:
        """The trainable module; ``data`` is given when training starts (to fit normalization, say), None otherwise."""

    @abstractmethod
    def dataset(self, data: Any, split: Literal["train", "val", "test"], cfg: RunConfig) -> Dataset:
        """A torch Dataset of one split (map-style: random windows are indices into one long array)."""

    collate: ClassVar[Any] = None  # list of samples -> batch (variable lengths); None: torch's default

    @abstractmethod
    def make_training_step(self, cfg: RunConfig) -> StepFn:
        """step(model, batch, device, generator) -> (loss, units in the batch)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data_set: Dataset, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        """Torch-side metrics of a split (``metric.name`` among them); EvalFn of the loop."""

    # -- export, verification, benchmark ----------------------------------------------------------

    @abstractmethod
    def graphs(self, model: nn.Module, data: Any, cfg: RunConfig) -> dict[str, Graph]:
        """The graphs to export, by name (the name is the file stem: ``model`` -> model.onnx)."""

    @abstractmethod
    def eval_sets(self, data: Any, cfg: RunConfig) -> list[EvalSet]:
        """Held-out inputs; the first is scored (the task's metric), every one is checked for parity."""

    @abstractmethod
    def infer(self, runners: Runners, items: Any, cfg: RunConfig) -> Any:
        """Run the served computation over graph runners: one call per batch, or the decode/sampler
        loop of ``serve/tasks/<task>.py``. The same code runs ORT, TensorRT and torch runners."""

    @abstractmethod
    def score(self, outputs: Any, items: Any, cfg: RunConfig) -> dict[str, float]:
        """Metrics of :meth:`infer`'s outputs on an eval set (``metric.name`` among them)."""

    @abstractmethod
    def parity(self, reference: Any, candidate: Any, items: Any = None) -> dict[str, float]:
        """How far two runs of :meth:`infer` on ``items`` are apart; gated by each graph contract's parity bounds."""

    def calibration(self, data: Any, samples: int, cfg: RunConfig) -> dict[str, Iterable[Feeds]] | None:
        """Per graph, input batches to calibrate static INT8; None: static INT8 does not apply."""
        return None

    @abstractmethod
    def benchmark_cases(self, data: Any, cfg: RunConfig) -> list[BenchCase]:
        """What the benchmark times, with the task's axes and units."""

    def call_axes(self, graph: str, feeds: Feeds) -> dict[str, int | str] | None:
        """One call of ``graph`` named as the benchmark's cases name it, so that serving can pick the variant
        of the nearest case (``serve.runtime.ServingChoice``). None (the default): its batch size, where the
        graph's contract puts it (``Bundle.batch_of``)."""
        return None

    def bench_call(self, runners: Runners, case: BenchCase, cfg: RunConfig) -> Callable[[], Any]:
        """What one timed call of ``case`` is; untimed set-up (a prompt's KV cache before a decode step)
        happens here, before the closure is returned. Default: :meth:`infer` on the case's items."""
        return lambda: self.infer(runners, case.items, cfg)

    def samples(self, runners: Runners, data: Any, cfg: RunConfig) -> list[dict[str, str]]:
        """What the exported model produces on a few held-out inputs, for people (the manifest's
        ``samples``, shown in the model card): e.g. {"prompt": ..., "continuation": ...}."""
        return []

    def baselines(self, data: Any, cfg: RunConfig) -> dict[str, dict[str, float]]:
        """The task's metric from something people already know (a compressor, a rule), by name:
        {name: {metric name: value, scored set name: value}}."""
        return {}

    def bundle_files(self, data: Any, cfg: RunConfig) -> dict[str, bytes]:
        """Files other runtimes need beside the graphs (an onnxruntime-genai config, a tokenizer), by
        name: written at export into the bundle's folder and listed with their sha256."""
        return {}

    def examples(self, data: Any, cfg: RunConfig) -> list[tuple[str, bytes]]:
        """Held-out examples for the app and model card, as (file name, file bytes) of the task's kind."""
        return []

    def info(self, data: Any, cfg: RunConfig) -> dict[str, Any]:
        """Task facts serving needs (labels, vocabulary): the manifest's ``info``."""
        return {}


REQUIRED_ATTRIBUTES = ("name", "architectures", "default_model", "presets", "metric", "DataConfig")


def register(*classes: type[Task]) -> dict[str, Task]:
    """The registry of ``classes``: name -> instance. A class missing a required method or class
    attribute, or naming a task twice, is refused here, with one line saying what it lacks."""
    registry: dict[str, Task] = {}
    for cls in classes:
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        missing += [a for a in REQUIRED_ATTRIBUTES if not hasattr(cls, a)]
        if missing:
            raise PipelineError(f"task class {cls.__name__} cannot be registered: it lacks {', '.join(missing)}")
        task = cls()
        if task.name in registry:
            raise PipelineError(f"task {task.name!r} is registered twice ({cls.__name__})")
        if task.default_model not in task.architectures or set(task.presets) - set(PRESETS):
            raise PipelineError(f"task {task.name!r}: default_model must be one of its architectures and its "
                                f"presets among {', '.join(PRESETS)}")
        registry[task.name] = task
    return registry


# ---------------------------------------------------------------------------------------------
# Config resolution


def resolve(task: Task, preset: str, *layers: dict[str, Any]) -> RunConfig:
    """Build ``task``'s RunConfig: defaults <- preset <- each of ``layers`` in order."""
    if preset not in PRESETS:
        raise PipelineError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    raw: dict[str, Any] = {"model": {"name": task.default_model}}
    for layer in (task.presets.get(preset, {}), *layers):
        for key, value in layer.items():
            if key not in SECTIONS:
                raise unknown_key(key, SECTIONS, "")
            if key not in ("task", "preset") and not isinstance(value, dict):
                raise PipelineError(f"{key}: expected a table of settings (e.g. {key}.<name>=...), got {value!r}")
        model_layer = layer.get("model", {})
        if "name" in model_layer and model_layer["name"] != raw["model"].get("name"):
            # another architecture: the fields set for the previous one no longer apply
            raw = {**raw, "model": {}}
        raw = merge(raw, layer)
    if raw.get("task", task.name) != task.name:
        raise PipelineError(f"config is for task {raw['task']!r}, not {task.name!r}")
    if raw.get("preset", preset) != preset:  # a saved config names the preset it was resolved with
        raise PipelineError(f"preset {raw['preset']!r} in a config: choose the preset with --preset")
    model_raw = dict(raw.get("model", {}))
    name = model_raw.pop("name", task.default_model)
    if name not in task.architectures:
        raise PipelineError(f"model.name {name!r} is not one of {task.name}'s models: {', '.join(task.architectures)}")
    model_cfg = from_dict(models.config_class(name), model_raw, "model")
    return RunConfig(
        task=task.name,
        preset=raw.get("preset", preset),
        model_name=name,
        model=model_cfg,
        data=from_dict(task.DataConfig, raw.get("data", {}), "data"),
        train=from_dict(TrainConfig, raw.get("train", {}), "train"),
        optimize=from_dict(OptimizeConfig, raw.get("optimize", {}), "optimize"),
        benchmark=from_dict(task.BenchmarkConfig, raw.get("benchmark", {}), "benchmark"),
        inference=from_dict(task.InferenceConfig, raw.get("inference", {}), "inference"),
    )


def build_model(task: Task, data: Any | None, cfg: RunConfig) -> nn.Module:
    """``task.build_model``, with a model config that passes its types but not torch (a negative
    width, a dropout of 5, sizes beyond memory) one clear error rather than torch's traceback."""
    try:
        return task.build_model(data, cfg)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        raise PipelineError(f"cannot build {cfg.model_name} from this model config ({first_line(e)}); "
                            f"check the model.* settings") from None


def with_model_fields(cfg: RunConfig, **values) -> RunConfig:
    """A copy whose model config has ``values`` (fields the task derives from the data)."""
    try:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **values))
    except ValueError as e:
        raise PipelineError(f"model: {e}") from None


__all__ = ["BenchCase", "BenchmarkConfig", "EvalFn", "EvalSet", "Graph", "Metric", "NoInference", "OptimizeConfig",
           "RunConfig", "StepFn", "Task", "register", "resolve", "with_model_fields"]
