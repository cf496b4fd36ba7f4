"""Classification: images from uploads and sketches to the graph's ``image`` input, and the tab."""
from __future__ import annotations

from typing import Any

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.inputs import InputError, is_blank
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, choice_input, guarded, image_input, sketch_input

INK_THRESHOLD = 24  # grey levels below white that count as ink on a sketch
CANVAS = 280  # the sketchpad's paper, pixels a side
# the sketchpad's height: Gradio's editor fits the paper into its canvas (2 px less than the component) less a
# 30 px border on each side, and caps its first view at 1:1 but not a later "fit"; just under 1:1 both agree
# (100%), where the default height opened at 103% and snapped to 100% later
SKETCH_HEIGHT = CANVAS + 2 + 60 - 1
OFF_PAPER = 40  # a press up to this many pixels beside the sketchpad's canvas still starts a stroke on entry
NOT_AN_IMAGE = "that file is not an image this app can read (PNG, JPEG, BMP, GIF, WebP, TIFF, ...)"
UNREADABLE_SKETCH = "the sketch could not be read; clear it and draw again"


def has_ink(image: np.ndarray) -> bool:
    """uint8 (H, W, C): some pixel darker than paper by more than INK_THRESHOLD."""
    return bool((image.min(axis=-1) < 255 - INK_THRESHOLD).any())


def need_ink(image: np.ndarray) -> np.ndarray:
    """An uploaded image with something on it: a blank one (one colour, or paper with no ink) is said to
    be blank, as an empty sketch is, rather than read as a digit."""
    if is_blank(image) or not has_ink(image):
        raise InputError("the image is blank: there is no drawing or digit on it to read")
    return image


def from_sketch(value: Any) -> np.ndarray:
    """A sketch (``{"composite": uint8 (H, W, 3)}``, as :func:`serve.tasks.base.sketch_input`
    hands it over, or the array itself) -> the canvas as drawn: the graph itself crops to the ink
    and centres it, as for any app that embeds ``model.onnx``. A sketch without ink is an InputError."""
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None or not has_ink(image):
        raise InputError("the sketch is empty: draw a digit first")
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
    # the sketchpad opens with its brush picked, and picks it again after "Clear canvas" (which drops
    # the tool): people drag the mouse and ink appears
    on_load_js = """
    const picked = new WeakSet();  // each sketchpad once: it may appear late (a tab rendered as its model lands)
    const pickBrush = (tries) => {
      const brush = document.querySelector("#classify-sketch button[aria-label='Brush']");
      if (brush) brush.click(); else if (tries > 0) setTimeout(() => pickBrush(tries - 1), 100);
    };
    setInterval(() => {
      const sketch = document.querySelector("#classify-sketch");
      if (sketch && !picked.has(sketch) && sketch.offsetParent !== null) { picked.add(sketch); pickBrush(100); }
    }, 200);
    document.addEventListener("click", (event) => {
      if (event.target.closest && event.target.closest("#classify-sketch button[aria-label='Clear canvas']"))
        setTimeout(() => pickBrush(20), 50);
    }, true);

    // A stroke that starts off the paper: Gradio's brush begins only on a press over the paper, so a
    // press a few pixels outside drew nothing, even once the pen was inside. Such a press is handed to
    // the paper where the pen enters it. Where the paper is comes from the editor itself (Gradio's image
    // editor puts itself on window.editor; its image container's bounds are in the canvas's CSS pixels);
    // without it, nothing is done.
    const paperRect = () => {
      const ed = window.editor, canvas = document.querySelector("#classify-sketch .pixi-target canvas");
      if (!ed || !ed.image_container || !canvas || canvas.offsetParent === null ||
          !(ed.target_element && ed.target_element.contains(canvas))) return null;
      const r = canvas.getBoundingClientRect(), b = ed.image_container.getBounds();
      return {canvas, around: r, x: r.left + b.x, y: r.top + b.y, right: r.left + b.x + b.width, bottom: r.top + b.y + b.height};
    };
    const inside = (p, e, margin) => e.clientX >= p.x + margin && e.clientX <= p.right - margin &&
                                     e.clientY >= p.y + margin && e.clientY <= p.bottom - margin;
    let offPaper = null;  // the pointer id of a press that began beside the paper
    document.addEventListener("pointerdown", (e) => {
      offPaper = null;
      if (!e.isTrusted || e.button !== 0 || (e.target.closest && e.target.closest("button, input, [role=button]"))) return;
      const p = paperRect();
      if (!p || inside(p, e, 0)) return;  // on the paper the brush takes it
      const a = p.around, near = %(near)d;  // beside the paper: in the canvas, or within this many px of it
      if (e.clientX < a.left - near || e.clientX > a.right + near || e.clientY < a.top - near || e.clientY > a.bottom + near) return;
      offPaper = e.pointerId;
    }, true);
    window.addEventListener("pointermove", (e) => {  // on window, bubbling: after the editor has seen the move
      if (offPaper === null || e.pointerId !== offPaper) return;
      if (!(e.buttons & 1)) { offPaper = null; return; }
      const p = paperRect();
      if (!p || !inside(p, e, 1)) return;
      offPaper = null;
      p.canvas.dispatchEvent(new PointerEvent("pointerdown", {bubbles: true, cancelable: true, composed: true,
        clientX: e.clientX, clientY: e.clientY, screenX: e.screenX, screenY: e.screenY, pointerId: e.pointerId,
        pointerType: e.pointerType, isPrimary: e.isPrimary, button: 0, buttons: 1, pressure: 0.5}));
    });
    for (const end of ["pointerup", "pointercancel"]) document.addEventListener(end, () => { offPaper = null; }, true);""" % {"near": OFF_PAPER}

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
                        sketch = gr.Sketchpad(label="Draw a digit", type="numpy", image_mode="RGBA",
                                              canvas_size=(CANVAS, CANVAS), height=SKETCH_HEIGHT, elem_id="classify-sketch",
                                              brush=gr.Brush(default_size=10, colors=["#000000"], color_mode="fixed"))
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
