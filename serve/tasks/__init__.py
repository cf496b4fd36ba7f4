"""Inference-side knowledge per task: numpy around the graphs (loops) and the task's Gradio tab.

The registry: task name -> its TaskTab. Adding a task adds one line here.
"""
from __future__ import annotations

from serve.tasks.asr import AsrTab
from serve.tasks.base import TaskTab
from serve.tasks.classify import ClassifyTab
from serve.tasks.detect import DetectTab
from serve.tasks.imagegen import ImageTab
from serve.tasks.segment import SegmentTab
from serve.tasks.textgen import TextTab

TABS: dict[str, TaskTab] = {tab.task: tab for tab in (ClassifyTab(), DetectTab(), SegmentTab(), TextTab(), AsrTab(), ImageTab())}
