"""What a task is to the app: the serve-side interface every ``serve/tasks/<task>.py`` implements,
and the Gradio glue that sends every input through :mod:`serve.inputs`."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from serve.bundle import BundleError
from serve.inputs import LIMITS, InputError, Picture, as_text, decode_audio, decode_data_url, decoded, image_size
from serve.runtime import Bundle
from serve.tensors import TensorSpec


@dataclass(frozen=True)
class Whole:
    """A task's serve loop as one model of the inference protocol (:mod:`serve.protocol`): named tensors
    in, named tensors out. ``run(tensors, parameters, variant)``: variant None runs each graph call on
    the serving choice; settings come as tensors or as the request's parameters (:func:`setting`)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run: Callable[[dict[str, np.ndarray], dict[str, Any], "str | None"], dict[str, np.ndarray]]
    # concurrent calls joined into one run of the loop (up to ``gather`` rows): the ``stacked`` inputs
    # along their first axis; ``batch_key(tensors, parameters)`` says what joined calls share (None: not joined)
    gather: int = 0
    stacked: tuple[str, ...] = ()
    batch_key: Callable[[dict[str, np.ndarray], dict[str, Any]], Any] | None = None


def setting(tensors: dict[str, np.ndarray], parameters: dict[str, Any], name: str, default: Any) -> Any:
    """A loop's setting: its tensor's one element, else the request's parameter, else ``default``."""
    if name in tensors:
        value = tensors[name]
        if value.size != 1:
            raise InputError(f"input {name} must hold one value, got shape {list(value.shape)}")
        item = value.reshape(-1)[0]
        return item.decode("utf-8", "replace") if isinstance(item, bytes) else item.item()
    return parameters.get(name, default)


def setting_specs(**settings: tuple[str, str]) -> tuple[TensorSpec, ...]:
    """Optional one-element inputs: name=(datatype, doc)."""
    return tuple(TensorSpec(n, t, (1,), doc, optional=True) for n, (t, doc) in settings.items())


class TaskTab:
    """A task's tab. ``build`` runs inside an open ``gr.Tab`` and registers the task's API endpoints
    (``api_name`` of each event, listed in ``endpoints`` for clients and tests)."""

    task: ClassVar[str]  # the pipeline task whose bundles it serves
    title: ClassVar[str]  # the tab's label
    endpoints: ClassVar[tuple[str, ...]] = ()  # the API names its events register
    on_load_js: ClassVar[str] = ""  # a JavaScript function body run when the page opens (ready the tab's tools)

    def check(self, bundle: Bundle) -> None:
        """Refuse (BundleError) a bundle whose task-specific ``info`` this tab cannot use; the
        manifest's generic schema is already checked (serve.bundle.Manifest)."""

    def build(self, bundle: Bundle) -> None:
        raise NotImplementedError

    def whole(self, bundle: Bundle) -> Whole | None:
        """The task's loop as one protocol model (loop tasks); None: the graph is the model."""
        return None


def _readable(error: BundleError) -> Exception:
    import gradio as gr

    return gr.Error(str(error), print_exception=False)


def takes_request(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Gradio hands ``fn`` the page's request as its ``request`` parameter: Gradio finds it by the annotation
    ``gr.Request``, which postponed annotations (``from __future__ import annotations``) leave as a string it
    cannot resolve inside a tab's ``build``; here it is the class itself."""
    import gradio as gr

    fn.__annotations__ = {**fn.__annotations__, "request": gr.Request}
    return fn


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An event handler that gets its images decoded (within the pixel budget, held until it returns)
    and whose BundleErrors reach people as one readable message, not a traceback."""

    @functools.wraps(fn)  # Gradio names the API's parameters after ``fn``'s (gradio_client keyword calls)
    def run(*args):
        try:
            with decoded(args) as values:
                return fn(*values)
        except BundleError as e:
            raise _readable(e) from None

    return run


def guarded_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`guarded` for a generator handler (a streamed answer): its images stay decoded while it
    streams, and a BundleError raised at any step reaches people as one readable message."""

    @functools.wraps(fn)
    def run(*args):
        try:
            with decoded(args) as values:
                yield from fn(*values)
        except BundleError as e:
            raise _readable(e) from None

    return run


def _checked(component: Any, preprocess: Callable[[Any], Any], unreadable: str, allow_none: bool = True) -> None:
    """``component`` hands its events what ``preprocess`` makes of the payload; a payload of the
    wrong shape (Gradio's own validation, before any preprocess) or an InputError is ``unreadable``
    or the error's message, never a traceback or a validation dump."""
    import gradio as gr
    from pydantic import ValidationError

    model = getattr(component, "data_model", None)
    if model is not None:
        class Checked(model):  # type: ignore[misc, valid-type]
            @classmethod
            def model_validate(cls, obj, *args, **kwargs):
                try:
                    return super().model_validate(obj, *args, **kwargs)
                except ValidationError:
                    raise gr.Error(unreadable, print_exception=False) from None

        Checked.__name__ = model.__name__
        component.data_model = Checked

    def run(payload):
        if payload is None and allow_none:
            return None
        try:
            return preprocess(payload)
        except BundleError as e:
            raise _readable(e) from None
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - any other undecodable payload means the same to a person
            raise gr.Error(unreadable, print_exception=False) from None

    component.preprocess = run


def _file_source(file: Any, missing: str = "no image was sent") -> str | bytes:
    """A Gradio file payload (FileData or the same fields as a plain dict, as a streamed chunk comes; raw
    bytes; or an inline ``data:`` URL) -> a path or bytes."""
    if isinstance(file, (bytes, bytearray, memoryview)):
        return bytes(file)
    field = file.get if isinstance(file, dict) else lambda name: getattr(file, name, None)
    url = field("url")
    if isinstance(url, str) and url.startswith("data:"):
        return decode_data_url(url)
    path = field("path")
    if not isinstance(path, str):
        raise InputError(missing)
    return path


def image_input(component: Any, unreadable: str) -> None:
    """An image component whose events get a header-checked :class:`serve.inputs.Picture`, which
    :func:`guarded` decodes (:func:`serve.inputs.decode_image`) to uint8 (H, W, 3) for the handler."""
    _checked(component, lambda payload: Picture.of(_file_source(payload)), unreadable)


def sketch_input(component: Any, unreadable: str) -> None:
    """A Sketchpad / ImageEditor whose events get ``{"composite": Picture | None}`` (uint8 (H, W, 3)
    once :func:`guarded` decodes it): every image of the value (background, layers, composite) is
    size-checked from its header; only the composite, the drawing as seen, is decoded."""

    def preprocess(payload: Any) -> dict[str, Any]:
        data = payload
        if getattr(payload, "id", None) is not None:  # the canvas's images sent ahead as blobs
            data = component.blob_storage.pop(payload.id, None) or payload
        layers = [x for x in (getattr(data, "layers", None) or []) if x is not None]
        images = [x for x in (getattr(data, "background", None), *layers) if x is not None]
        composite = getattr(data, "composite", None)
        if len(images) + 1 > LIMITS.max_layers:
            raise InputError(f"the sketch has {len(images) + 1} images; at most {LIMITS.max_layers}")
        for image in images:
            image_size(_file_source(image))
        return {"composite": None if composite is None else Picture.of(_file_source(composite))}

    _checked(component, preprocess, unreadable)


def audio_input(component: Any, rate: int, unreadable: str) -> None:
    """An Audio component whose events get mono float32 (L,) at ``rate`` Hz (:func:`serve.inputs.decode_audio`:
    any file format libsndfile reads, any rate, channel count and sample format; Gradio's (rate, samples)
    pairs from a streamed microphone alike), or None when nothing was recorded or uploaded."""

    def preprocess(payload: Any) -> Any:
        if isinstance(payload, (tuple, list)) and len(payload) == 2:
            return decode_audio(tuple(payload), rate)
        return decode_audio(_file_source(payload, "no audio was sent"), rate)

    _checked(component, preprocess, unreadable)


def text_input(component: Any, what: str) -> None:
    """A Textbox whose events get the text as sent: a number, list or object is one readable line
    (Gradio would turn ``123`` or ``["a"]`` into a string and go on)."""
    _checked(component, lambda payload: as_text(payload, what), f"{what} could not be read")


def number_input(component: Any) -> None:
    """A Slider / Number whose events get the value as sent: the handler checks it (range, NaN, whole
    numbers) with its own message naming the setting, instead of Gradio's bounds error and traceback."""
    component.preprocess = lambda payload: payload


def choice_input(component: Any, what: str) -> None:
    """A Radio / Dropdown whose events get one of its choices; anything else is one readable line."""
    choices = [c[1] if isinstance(c, (tuple, list)) else c for c in component.choices]

    def preprocess(value: Any) -> Any:
        if value not in choices:
            shown = repr(value)[:60]
            raise InputError(f"unknown {what} {shown}; choose one of {', '.join(map(str, choices))}")
        return value

    _checked(component, preprocess, f"the {what} could not be read", allow_none=False)
