"""Detection: an image and run-time thresholds to the graph, its padded outputs to labelled boxes, and the tab."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.inputs import InputError, number
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, choice_input, guarded, number_input
from serve.tasks.scenes import colours, need_image, scene_input, wire_scene
from serve.tasks.sketch import SKETCH_JS

OUTPUTS = ("num_detections", "boxes", "scores", "labels")


@dataclass
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


def threshold(value: Any, what: str) -> float:
    """A threshold as sent (slider, API) -> a float in [0, 1]; anything else is an InputError naming it."""
    return float(number(value, f"the {what}", lo=0, hi=1))


def detect(bundle: Bundle, image: np.ndarray, score: float, iou: float, variant: str = "fp32"
           ) -> tuple[list[Detection], str]:
    """uint8 (H, W, 3) -> its detections, best first, and a line on latency and provider."""
    feeds = {"image": image[None], "score_threshold": np.array(threshold(score, "score threshold"), np.float32),
             "iou_threshold": np.array(threshold(iou, "IoU threshold"), np.float32)}
    pred = bundle.run(feeds, variant)
    labels = bundle.info["labels"]
    n = int(pred.outputs["num_detections"][0])
    out = [Detection(labels[int(c)], float(s), tuple(float(v) for v in b))  # type: ignore[arg-type]
           for b, s, c in zip(pred.outputs["boxes"][0, :n], pred.outputs["scores"][0, :n], pred.outputs["labels"][0, :n])]
    line = (f"{len(out)} detection{'s' * (len(out) != 1)} in {pred.seconds * 1000:.2f} ms "
            f"({bundle.describe(variant)})")
    return out, line


def outlines(found: list[Detection], size: tuple[int, int]) -> list[tuple[np.ndarray, str]]:
    """The boxes drawn per class, as the annotated image's masks: one mask per class (one legend entry, in
    the order of each class's best score), each box its outline and a faint fill."""
    h, w = size
    line = max(2, round(min(h, w) / 160))
    masks: dict[str, np.ndarray] = {}
    for d in found:
        mask = masks.setdefault(d.label, np.zeros((h, w), np.float32))
        x1, y1 = max(0, int(d.box[0])), max(0, int(d.box[1]))
        x2, y2 = min(w, max(x1 + 1, round(d.box[2]))), min(h, max(y1 + 1, round(d.box[3])))
        inside = mask[y1:y2, x1:x2]
        np.maximum(inside, 0.15, out=inside)
        for edge in (mask[y1:y1 + line, x1:x2], mask[max(y1, y2 - line):y2, x1:x2],
                     mask[y1:y2, x1:x1 + line], mask[y1:y2, max(x1, x2 - line):x2]):
            edge[...] = 1.0
    return [(m, label) for label, m in masks.items()]


class DetectTab(TaskTab):
    task = "detect"
    title = "Detect"
    endpoints = ("detect", "detect_new_scene", "detect_sketch")
    on_load_js = SKETCH_JS  # the sketchpad's brush picked on open and after "Clear canvas"

    def check(self, bundle: Bundle) -> None:
        graph = bundle.manifest["graphs"].get("model")
        outputs = [o.get("name") for o in graph["io"]["outputs"]] if graph else []
        labels = bundle.info.get("labels")
        if tuple(outputs) != OUTPUTS:
            raise BundleError(f"{bundle.path}: not a detector bundle (graph 'model' must give {', '.join(OUTPUTS)})")
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise BundleError(f"{bundle.path}: info.labels must be a list of class names")

    def build(self, bundle: Bundle) -> None:
        import gradio as gr

        names = bundle.info["labels"]
        palette = dict(zip(names, colours(len(names))))

        def run(image, score_threshold, iou_threshold, variant):  # the API's parameter names
            image = need_image(image, bundle)
            found, line = detect(bundle, image, score_threshold, iou_threshold, variant)
            boxes = outlines(found, image.shape[:2])
            rows = [[d.label, round(d.score, 3), *(round(v, 1) for v in d.box)] for d in found]
            if not found:
                line = "no digits found above the score threshold; " + line
            return (image, boxes), rows, line

        d = bundle.inference
        variants = bundle.variants()
        gr.Markdown(f"**{bundle.name}**: an SSD ({bundle.manifest.get('architecture', '')}) over labels "
                    f"{', '.join(names)}. Decoding and NonMaxSuppression run inside `model.onnx`; the thresholds "
                    "are inputs of the graph, set at run time.")
        with gr.Row():
            with gr.Column():
                controls = scene_input("detect", "Detect")
                score = gr.Slider(0, 1, value=float(d.get("score_threshold", 0.4)), step=0.01, label="Score threshold",
                                  elem_id="detect-score")
                iou = gr.Slider(0, 1, value=float(d.get("iou_threshold", 0.45)), step=0.01, label="IoU threshold (NMS)",
                                elem_id="detect-iou")
                variant = gr.Radio(variants, value=bundle.default_variant, label="Variant", elem_id="detect-variant",
                                   info=variant_info(variants))
            with gr.Column():
                # png: the picture shown is the one the model read, pixel for pixel (Gradio's default webp is lossy)
                shown = gr.AnnotatedImage(label="Detections", color_map=palette, elem_id="detect-image", format="png")
                table = gr.Dataframe(headers=["label", "score", "x1", "y1", "x2", "y2"], label="Detections",
                                     interactive=False, elem_id="detect-table")
                latency = gr.Textbox(label="Latency", interactive=False, elem_id="detect-latency")
        choice_input(variant, "variant")
        number_input(score)
        number_input(iou)
        inputs, outputs = [controls[0], score, iou, variant], [shown, table, latency]
        wire_scene(bundle, run, controls, inputs, outputs, "detect")
        def rerun(image, score, iou, variant):
            """A slider moved: the same image again with the new thresholds (nothing yet: nothing to say)."""
            return (gr.skip(),) * 3 if image is None else run(image, score, iou, variant)

        # change, not release: a value typed into the slider's box (and Enter) re-runs too, not only a drag
        for slider in (score, iou):
            slider.change(guarded(rerun), inputs, outputs, api_name=False, trigger_mode="always_last",
                          show_progress="hidden")
