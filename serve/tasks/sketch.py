"""The sketchpad that Classify, Detect and Segment share: drawing with the mouse, a finger or a pen,
the drawing as the graph's image, and the page script that readies every sketchpad."""
from __future__ import annotations

from typing import Any

import numpy as np

from serve.inputs import InputError

INK_THRESHOLD = 24  # grey levels below white that count as ink on a sketch
SKETCH_CLASS = "lb-sketch"  # every sketchpad's CSS class: the page script finds them by it
# the sketchpad's height over its paper's: Gradio's editor fits the paper into its canvas (2 px less than
# the component) less a 30 px border on each side, and caps its first view at 1:1 but not a later "fit";
# just under 1:1 both agree (100%), where the default height opened at 103% and snapped to 100% later
SKETCH_BORDER = 2 + 60 - 1
OFF_PAPER = 40  # a press up to this many pixels beside a sketchpad's canvas still starts a stroke on entry
UNREADABLE_SKETCH = "the sketch could not be read; clear it and draw again"


def has_ink(image: np.ndarray) -> bool:
    """uint8 (H, W, C): some pixel darker than paper by more than INK_THRESHOLD."""
    return bool((image.min(axis=-1) < 255 - INK_THRESHOLD).any())


def from_sketch(value: Any, what: str = "a digit") -> np.ndarray:
    """A sketch (``{"composite": uint8 (H, W, 3)}``, as :func:`serve.tasks.base.sketch_input`
    hands it over, or the array itself) -> the canvas as drawn: the graphs read it as any image, as
    for any app that embeds ``model.onnx``. A sketch without ink is an InputError."""
    image = value.get("composite") if isinstance(value, dict) else value
    if image is None or not has_ink(image):
        raise InputError(f"the sketch is empty: draw {what} first")
    return image


def sketchpad(elem_id: str, label: str, canvas: tuple[int, int], brush: int):
    """A white sketchpad of ``canvas`` (width, height) paper pixels, black brush ``brush`` px, shown at
    100% (see SKETCH_BORDER), inside an open Gradio block."""
    import gradio as gr

    return gr.Sketchpad(label=label, type="numpy", image_mode="RGBA", canvas_size=canvas,
                        height=canvas[1] + SKETCH_BORDER, elem_id=elem_id, elem_classes=[SKETCH_CLASS],
                        brush=gr.Brush(default_size=brush, colors=["#000000"], color_mode="fixed"))


# every sketchpad opens with its brush picked, and picks it again after "Clear canvas" (which drops
# the tool): people drag the mouse and ink appears
SKETCH_JS = """
    const picked = new WeakSet();  // each sketchpad once: it may appear late (a tab rendered as its model lands)
    const pickBrush = (sketch, tries) => {
      const brush = sketch.querySelector("button[aria-label='Brush']");
      if (brush) brush.click(); else if (tries > 0) setTimeout(() => pickBrush(sketch, tries - 1), 100);
    };
    setInterval(() => {
      for (const sketch of document.querySelectorAll(".lb-sketch"))
        if (!picked.has(sketch) && sketch.offsetParent !== null) { picked.add(sketch); pickBrush(sketch, 100); }
    }, 200);
    document.addEventListener("click", (event) => {
      const clear = event.target.closest && event.target.closest(".lb-sketch button[aria-label='Clear canvas']");
      if (clear) setTimeout(() => pickBrush(clear.closest(".lb-sketch"), 20), 50);
    }, true);

    // A stroke that starts off the paper: Gradio's brush begins only on a press over the paper, so a
    // press a few pixels outside drew nothing, even once the pen was inside. Such a press is handed to
    // the paper where the pen enters it. Where the paper is comes from the editor itself (Gradio's image
    // editor puts itself on window.editor; its image container's bounds are in the canvas's CSS pixels);
    // without it, nothing is done.
    // Gradio keeps only the last editor mounted on window.editor; with a sketchpad on several tabs,
    // every one is kept as it is set, and the visible canvas's own editor is the one asked
    const editors = new Set(window.editor ? [window.editor] : []);
    let lastEditor = window.editor;
    try {
      Object.defineProperty(window, "editor", {configurable: true, get: () => lastEditor,
                                               set: (v) => { lastEditor = v; if (v) editors.add(v); }});
    } catch (e) { /* not redefinable: only the last editor is known */ }
    const paperRect = () => {
      const canvas = [...document.querySelectorAll(".lb-sketch .pixi-target canvas")].find((c) => c.offsetParent !== null);
      if (!canvas) return null;
      const ed = [...editors, window.editor].find((x) => x && x.image_container && x.target_element &&
                                                      x.target_element.contains(canvas));
      if (!ed) return null;
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
