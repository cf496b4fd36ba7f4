"""The task registry: every registered task is a complete Task, and an incomplete one is refused when
it is registered, not when a stage first calls the method it lacks."""
import inspect

import pytest

from pipeline.errors import PipelineError
from pipeline.tasks import TASKS
from pipeline.tasks.base import REQUIRED_ATTRIBUTES, Task, register
from pipeline.tasks.classify import Classify


def test_every_registered_task_is_complete():
    assert list(TASKS) == ["classify", "detect", "segment", "textgen", "asr", "imagegen"]
    for name, task in TASKS.items():
        assert task.name == name and not getattr(type(task), "__abstractmethods__", None)
        assert task.default_model in task.architectures
        assert all(hasattr(task, a) for a in REQUIRED_ATTRIBUTES)


def test_a_task_missing_a_required_method_is_refused_at_registration():
    class NoParity(Classify):
        name = "no-parity"

    # a class that defines every method but parity: built from Task directly, copying Classify's others
    namespace = {k: v for k, v in vars(Classify).items() if k not in ("parity", "__dict__", "__weakref__")}
    Incomplete = type("Incomplete", (Task,), {**namespace, "name": "incomplete"})
    with pytest.raises(PipelineError, match=r"Incomplete cannot be registered: it lacks parity"):
        register(Incomplete)
    register(NoParity)  # inherits Classify's parity: complete


def test_a_task_missing_a_class_attribute_or_registered_twice_is_refused():
    namespace = {k: v for k, v in vars(Classify).items() if k not in ("metric", "__dict__", "__weakref__")}
    NoMetric = type("NoMetric", (Task,), namespace)
    with pytest.raises(PipelineError, match="NoMetric cannot be registered: it lacks metric"):
        register(NoMetric)
    with pytest.raises(PipelineError, match="registered twice"):
        register(Classify, Classify)


def required(member) -> list[str]:
    return [n for n, p in inspect.signature(member).parameters.items() if p.default is inspect.Parameter.empty]


def test_the_config_comes_last_in_every_task_method():
    """One argument order: what a method works on first, the run config last (options with defaults after)."""
    for cls in (Task, *(type(t) for t in TASKS.values())):
        for name, member in inspect.getmembers(cls, inspect.isfunction):
            if hasattr(Task, name) and "cfg" in required(member):
                assert required(member)[-1] == "cfg", f"{cls.__name__}.{name}{inspect.signature(member)}"
