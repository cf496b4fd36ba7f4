"""Segmentation: an image to the graph, its mask to an overlay with a legend per class, and the tab."""
from __future__ import annotations

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, choice_input
from serve.tasks.scenes import colours, need_image, scene_input, wire_scene
from serve.tasks.sketch import SKETCH_JS


def segment(bundle: Bundle, image: np.ndarray, variant: str = "fp32") -> tuple[np.ndarray, dict[str, float], str]:
    """uint8 (H, W, 3) -> its mask (H, W) (index into labels, 0 background), the share of pixels per
    class present (background left out), and a line on latency and provider."""
    pred = bundle.run({"image": image[None]}, variant)
    mask = pred.outputs["mask"][0]
    labels = bundle.info["labels"]
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    shares = {labels[c]: float(counts[c] / mask.size) for c in np.flatnonzero(counts) if c > 0 and c < len(labels)}
    return mask, shares, f"{pred.seconds * 1000:.2f} ms in the model ({bundle.describe(variant)})"


class SegmentTab(TaskTab):
    task = "segment"
    title = "Segment"
    endpoints = ("segment", "segment_new_scene", "segment_sketch")
    on_load_js = SKETCH_JS  # the sketchpad's brush picked on open and after "Clear canvas"

    def check(self, bundle: Bundle) -> None:
        graph = bundle.manifest["graphs"].get("model")
        outputs = {o.get("name"): o.get("shape") for o in graph["io"]["outputs"]} if graph else {}
        labels = bundle.info.get("labels")
        if set(outputs) != {"mask", "probs"}:
            raise BundleError(f"{bundle.path}: not a segmentation bundle (graph 'model' must give mask and probs)")
        k = outputs["probs"][1] if len(outputs["probs"]) == 4 else None
        if not (isinstance(labels, list) and len(labels) == k and all(isinstance(x, str) for x in labels)):
            raise BundleError(f"{bundle.path}: info.labels must be {k} class names (background first)")

    def build(self, bundle: Bundle) -> None:
        import gradio as gr

        names = bundle.info["labels"]
        palette = dict(zip(names[1:], colours(len(names) - 1)))

        def run(image, variant):
            image = need_image(image, bundle)
            mask, shares, line = segment(bundle, image, variant)
            layers = [(mask == names.index(name), name) for name in shares]
            rows = [[name, round(100 * share, 2)] for name, share in sorted(shares.items(), key=lambda x: -x[1])]
            if not shares:
                line = "every pixel is background; " + line
            return (image, layers), rows, line

        variants = bundle.variants()
        gr.Markdown(f"**{bundle.name}**: a U-Net over classes {', '.join(names)}. `model.onnx` gives the mask "
                    "(argmax inside the graph) at the image's own resolution; each class has its colour in the legend.")
        with gr.Row():
            with gr.Column():
                controls = scene_input("segment", "Segment")
                variant = gr.Radio(variants, value=bundle.default_variant, label="Variant", elem_id="segment-variant",
                                   info=variant_info(variants))
            with gr.Column():
                # png: the picture shown is the one the model read, pixel for pixel (Gradio's default webp is lossy)
                shown = gr.AnnotatedImage(label="Mask", color_map=palette, elem_id="segment-image", format="png")
                table = gr.Dataframe(headers=["class", "% of pixels"], label="Classes", interactive=False,
                                     elem_id="segment-table")
                latency = gr.Textbox(label="Latency", interactive=False, elem_id="segment-latency")
        choice_input(variant, "variant")
        wire_scene(bundle, run, controls, [controls[0], variant], [shown, table, latency], "segment")
