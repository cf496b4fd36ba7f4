"""What the Detect and Segment tabs share: held-out scenes shipped in the bundle, and the image and sketch inputs."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from serve.inputs import NOT_AN_IMAGE, InputError, is_blank
from serve.runtime import Bundle
from serve.tasks.base import guarded, image_input, sketch_input
from serve.tasks.sketch import UNREADABLE_SKETCH, from_sketch, sketchpad

PAPER = (480, 320)  # the scene sketchpad's paper, pixels (width, height): digits drawn 40-200 px tall
PEN = 8  # its brush, pixels


def scene_files(bundle: Bundle) -> list[Path]:
    """The bundle's held-out scenes (examples/*.png, written at export), checked against the manifest."""
    return [p for name in bundle.manifest.get("examples", []) if (p := bundle.file(name))]


def new_scene(bundle: Bundle) -> str:
    """A held-out scene the network never trained on, drawn at random: its file's path."""
    files = scene_files(bundle)
    if not files:
        raise InputError("this bundle ships no held-out scenes; upload an image")
    return str(random.choice(files))


def need_image(image: np.ndarray | None, bundle: Bundle | None = None) -> np.ndarray:
    """The image to run: an InputError when there is none, or (given the bundle) a size the graph refuses."""
    if image is None:
        raise InputError("no image: upload one or press \"New scene\"")
    if bundle is not None:
        bundle.check_image(image)
    if is_blank(image):
        raise InputError("the image is blank (one colour): there is nothing in it to find")
    return image


def colours(count: int) -> list[str]:
    """``count`` distinct hex colours (class i -> colours[i]), the same on every call."""
    import colorsys

    out = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.61803) % 1.0, 0.85, 0.95)
        out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return out


def scene_input(prefix: str, action: str) -> tuple:
    """The scene column's top (inside an open Gradio column): a tab to upload, paste or photograph a
    scene (the webcam: a photo of paper) with "New scene" and the button that runs the model, and a tab
    to draw digits on paper. elem_ids ``<prefix>-upload``, ``<prefix>-new-scene``, ``<prefix>-go``,
    ``<prefix>-sketch``. Returns (upload, new scene, go, sketch)."""
    import gradio as gr

    with gr.Tabs():
        with gr.Tab("Image"):
            # image_mode=None: the file goes to serve.inputs as uploaded (decoded once, size-checked first)
            upload = gr.Image(label="Scene", type="filepath", image_mode=None,
                              sources=["upload", "clipboard", "webcam"], elem_id=f"{prefix}-upload")
            with gr.Row():
                scene_btn = gr.Button("New scene", elem_id=f"{prefix}-new-scene")
                go = gr.Button(action, variant="primary", elem_id=f"{prefix}-go")
        with gr.Tab("Draw"):
            sketch = sketchpad(f"{prefix}-sketch", "Draw a few digits", PAPER, PEN)
    return upload, scene_btn, go, sketch


def wire_scene(bundle: Bundle, run, controls: tuple, inputs: list, outputs: list, api: str) -> None:
    """Events of :func:`scene_input`'s controls: the button runs ``run`` (endpoint ``/<api>``); "New
    scene" puts a held-out scene in the upload (``/<api>_new_scene``) and runs it; each stroke on the
    sketchpad runs ``run`` on the drawing (``/<api>_sketch``). ``inputs[0]`` is the upload."""
    upload, scene_btn, go, sketch = controls
    image_input(upload, NOT_AN_IMAGE)
    sketch_input(sketch, UNREADABLE_SKETCH)
    go.click(guarded(run), inputs, outputs, api_name=api)
    # an image uploaded, pasted or photographed runs at once, as a drawing does (the button runs it again)
    upload.upload(guarded(run), inputs, outputs, api_name=False, trigger_mode="always_last")
    scene_btn.click(lambda: new_scene(bundle), [], [upload], api_name=f"{api}_new_scene").then(
        guarded(run), inputs, outputs, api_name=False)

    def drawn(value, *settings):
        """After each stroke: the model on the drawing; a cleared sketchpad clears the outputs."""
        try:
            image = from_sketch(value, "a few digits")
        except InputError:
            return (None,) * (len(outputs) - 1) + ("",)
        return run(image, *settings)

    sketch.change(guarded(drawn), [sketch, *inputs[1:]], outputs, api_name=f"{api}_sketch",
                  trigger_mode="always_last", show_progress="hidden")
