"""The task registry: name -> the module holding all training-side knowledge of that task."""
from __future__ import annotations

from types import ModuleType

from pipeline.errors import PipelineError
from pipeline.tasks import classify

TASKS: dict[str, ModuleType] = {"classify": classify}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        raise PipelineError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
