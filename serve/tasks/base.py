"""What a task is to the app: the serve-side interface every ``serve/tasks/<task>.py`` implements."""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from serve.bundle import BundleError
from serve.runtime import Bundle


class TaskTab:
    """A task's tab. ``build`` runs inside an open ``gr.Tab`` and registers the task's API endpoints
    (``api_name`` of each event, listed in ``endpoints`` for clients and tests)."""

    task: ClassVar[str]  # the pipeline task whose bundles it serves
    title: ClassVar[str]  # the tab's label
    endpoints: ClassVar[tuple[str, ...]] = ()  # the API names its events register

    def build(self, bundle: Bundle) -> None:
        raise NotImplementedError


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An event handler whose BundleErrors reach people as one readable message, not a traceback."""
    import gradio as gr

    def run(*args):
        try:
            return fn(*args)
        except BundleError as e:
            raise gr.Error(str(e), print_exception=False) from None

    run.__name__ = getattr(fn, "__name__", "run")
    return run


def readable_preprocess(component: Any, message: str) -> None:
    """Gradio's own decoding error names its internals; show people ``message`` instead."""
    import gradio as gr

    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Exception:  # noqa: BLE001 - any undecodable input means the same to a person
            raise gr.Error(message, print_exception=False) from None

    component.preprocess = preprocess
