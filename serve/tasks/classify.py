"""Classification: images from uploads and sketches to the graph's ``image`` input, and the tab."""
from __future__ import annotations

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.inputs import NOT_AN_IMAGE, InputError, is_blank
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, choice_input, guarded, image_input, sketch_input
from serve.tasks.sketch import SKETCH_JS, UNREADABLE_SKETCH, from_sketch, has_ink, sketchpad

CANVAS = 280  # the sketchpad's paper, pixels a side


def need_ink(image: np.ndarray) -> np.ndarray:
    """An uploaded image with something on it: a blank one (one colour, or paper with no ink) is said to
    be blank, as an empty sketch is, rather than read as a digit."""
    if is_blank(image) or not has_ink(image):
        raise InputError("the image is blank: there is no drawing or digit on it to read")
    return image


def predict(bundle: Bundle, image: np.ndarray, variant: str = "fp32", top_k: int = 5) -> tuple[dict[str, float], str]:
    """uint8 (H, W, C) -> ({label: probability} of the top k, a line on latency and provider)."""
    bundle.check_image(image)
    pred = bundle.run({"image": image[None]}, variant)
    probs = pred.outputs["probs"][0]
    labels = bundle.info["labels"]  # as many as probabilities: ClassifyTab.check and the I/O check
    order = np.argsort(probs)[::-1][:top_k]
    line = f"{pred.seconds * 1000:.2f} ms in the model ({bundle.describe(variant)})"
    return {labels[i]: float(probs[i]) for i in order}, line


class ClassifyTab(TaskTab):
    task = "classify"
    title = "Classify"
    endpoints = ("classify", "classify_sketch")
    on_load_js = SKETCH_JS  # the sketchpad's brush picked on open and after "Clear canvas"

    def check(self, bundle: Bundle) -> None:
        labels = bundle.info.get("labels")
        graph = bundle.manifest["graphs"].get("model")
        outputs = {o.get("name"): o.get("shape") for o in graph["io"]["outputs"]} if graph else {}
        probs = outputs.get("probs")
        if probs is None or len(probs) != 2 or not isinstance(probs[1], int):
            raise BundleError(f"{bundle.path}: not a classifier bundle (no graph 'model' with probs [batch, K])")
        if not (isinstance(labels, list) and len(labels) == probs[1] and all(isinstance(x, str) for x in labels)):
            raise BundleError(f"{bundle.path}: info.labels must be {probs[1]} class names, one per probability")

    def build(self, bundle: Bundle) -> None:
        """The tab's components and events (inside an open ``gr.Tab``)."""
        import gradio as gr

        def classify_upload(image, variant):
            if image is None:
                raise InputError("no image: upload one, pick an example, or draw in the Draw tab")
            bundle.check_image(image)  # a size the graph refuses is said as such before blankness
            return predict(bundle, need_ink(image), variant)

        def classify_sketch(sketch, variant):  # the API's parameter names
            return predict(bundle, from_sketch(sketch), variant)

        def live(value, variant):
            """While drawing: the prediction after each stroke; a cleared canvas clears it (no message)."""
            try:
                return predict(bundle, from_sketch(value), variant)
            except InputError:
                return None, ""

        variants = bundle.variants()
        gr.Markdown(f"**{bundle.name}**: {bundle.manifest.get('architecture', '')} over labels "
                    f"{', '.join(bundle.info.get('labels', []))}. Draw a digit or upload an image.")
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Draw"):
                        sketch = sketchpad("classify-sketch", "Draw a digit", (CANVAS, CANVAS), 10)
                        sketch_btn = gr.Button("Classify drawing", variant="primary", elem_id="classify-sketch-btn")
                    with gr.Tab("Upload"):
                        # image_mode=None: Gradio hands over the uploaded file as is (no decode and
                        # re-encode into its cache, which also races on identical concurrent uploads)
                        upload = gr.Image(label="Image", type="filepath", image_mode=None,
                                          sources=["upload", "clipboard"], elem_id="classify-upload")
                        upload_btn = gr.Button("Classify image", variant="primary", elem_id="classify-upload-btn")
                        examples = [str(p) for name in bundle.manifest.get("examples", []) if (p := bundle.file(name))]
                        if examples:
                            gr.Examples(examples=examples, inputs=[upload], label="Held-out test digits")
                variant = gr.Radio(variants, value=bundle.default_variant, label="Variant", elem_id="classify-variant",
                                   info=variant_info(variants))
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="Prediction", elem_id="classify-label")
                latency = gr.Textbox(label="Latency", interactive=False, elem_id="classify-latency")
        # every input through serve.inputs: decoded once, size-checked from the header first
        image_input(upload, NOT_AN_IMAGE)
        sketch_input(sketch, UNREADABLE_SKETCH)
        choice_input(variant, "variant")
        upload_btn.click(guarded(classify_upload), [upload, variant], [label, latency], api_name="classify")

        def uploaded(image, variant):
            """An image uploaded, pasted or picked from the examples is classified at once; removed: cleared."""
            return (None, "") if image is None else classify_upload(image, variant)

        upload.change(guarded(uploaded), [upload, variant], [label, latency], api_name=False, trigger_mode="always_last")
        sketch_btn.click(guarded(classify_sketch), [sketch, variant], [label, latency], api_name="classify_sketch")
        # live: each finished stroke updates the prediction; only the newest drawing is classified
        sketch.change(guarded(live), [sketch, variant], [label, latency], api_name=False, trigger_mode="always_last",
                      show_progress="hidden")
