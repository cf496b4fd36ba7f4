"""The task registry: name -> the Task holding all training-side knowledge of that task.

Adding a task: its ``models/`` file(s), ``pipeline/tasks/<task>.py`` with a Task subclass,
``serve/tasks/<task>.py`` with its tab, and one line in each registry.
"""
from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.tasks.asr import Asr
from pipeline.tasks.base import Task, register
from pipeline.tasks.classify import Classify
from pipeline.tasks.detect import Detect
from pipeline.tasks.imagegen import ImageGen
from pipeline.tasks.segment import Segment
from pipeline.tasks.textgen import TextGen

TASKS: dict[str, Task] = register(Classify, Detect, Segment, TextGen, Asr, ImageGen)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise PipelineError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
