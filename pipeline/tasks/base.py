"""What a task is to the pipeline, and how its run config is resolved.

A run config is a task's own dataclass with sections ``model`` (an architecture name from the
models registry plus that architecture's typed fields), ``data``, ``train``, ``optimize`` and
``benchmark``. Layers, lowest first: the dataclass defaults, the task's preset, ``--config FILE``,
then ``--set key=value``; every layer is checked for unknown keys and types.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import models
from pipeline.config import from_dict, merge, to_dict, unknown_key
from pipeline.errors import PipelineError
from pipeline.train import TrainConfig

PRESETS = ("smoke", "quick", "full")


@dataclass
class OptimizeConfig:
    # (str) static: QDQ, activations calibrated on training data; dynamic: activations quantized at run
    # time (MatMul-heavy nets); auto: static, then dynamic where static fails or loses more than max_drop
    int8: Literal["auto", "static", "dynamic"] = "auto"
    calibration_samples: int = 256  # (int) training samples used to calibrate static INT8
    max_drop: float = 0.5  # (float) metric points a variant may lose against fp32 before it is rejected

    def __post_init__(self):
        if self.calibration_samples < 1 or self.max_drop < 0:
            raise ValueError("calibration_samples must be >= 1 and max_drop >= 0")


@dataclass
class BenchmarkConfig:
    batch_sizes: tuple[int, ...] = (1, 32, 256)  # (list[int]) batch sizes to time
    seconds: float = 2.0  # (float) time budget per backend and batch size
    min_runs: int = 5  # (int) fewest timed calls per backend and batch size
    threads: int = 0  # (int) intra-op threads for ORT and torch; 0 = all cores

    def __post_init__(self):
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.seconds <= 0 or self.min_runs < 1:
            raise ValueError("batch_sizes must be >= 1 (at least one), seconds > 0 and min_runs >= 1")


@dataclass
class RunConfig:
    task: str
    preset: str
    model_name: str
    model: Any  # the architecture's config dataclass
    data: Any  # the task's data config dataclass
    train: TrainConfig = field(default_factory=TrainConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``model`` holds ``name`` beside the architecture's fields."""
        out = to_dict(self)
        out["model"] = {"name": out.pop("model_name"), **out["model"]}
        return out


SECTIONS = ("task", "preset", "model", "data", "train", "optimize", "benchmark")


def resolve(task, preset: str, *layers: dict[str, Any]) -> RunConfig:
    """Build ``task``'s RunConfig: defaults <- preset <- each of ``layers`` in order."""
    if preset not in PRESETS:
        raise PipelineError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    raw: dict[str, Any] = {"model": {"name": task.DEFAULT_MODEL}}
    for layer in (task.PRESETS[preset], *layers):
        for key in layer:
            if key not in SECTIONS:
                raise unknown_key(key, SECTIONS, "")
        model_layer = layer.get("model", {})
        if "name" in model_layer and model_layer["name"] != raw["model"].get("name"):
            # another architecture: the fields set for the previous one no longer apply
            raw = {**raw, "model": {}}
        raw = merge(raw, layer)
    if raw.get("task", task.NAME) != task.NAME:
        raise PipelineError(f"config is for task {raw['task']!r}, not {task.NAME!r}")
    model_raw = dict(raw.get("model", {}))
    name = model_raw.pop("name", task.DEFAULT_MODEL)
    if name not in task.ARCHITECTURES:
        raise PipelineError(f"model.name {name!r} is not one of {task.NAME}'s models: {', '.join(task.ARCHITECTURES)}")
    model_cfg = from_dict(models.config_class(name), model_raw, "model")
    return RunConfig(
        task=task.NAME,
        preset=raw.get("preset", preset),
        model_name=name,
        model=model_cfg,
        data=from_dict(task.DataConfig, raw.get("data", {}), "data"),
        train=from_dict(TrainConfig, raw.get("train", {}), "train"),
        optimize=from_dict(OptimizeConfig, raw.get("optimize", {}), "optimize"),
        benchmark=from_dict(BenchmarkConfig, raw.get("benchmark", {}), "benchmark"),
    )


def with_model_fields(cfg: RunConfig, **values) -> RunConfig:
    """A copy whose model config has ``values`` (fields the task derives from the data)."""
    try:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **values))
    except ValueError as e:
        raise PipelineError(f"model: {e}") from None
