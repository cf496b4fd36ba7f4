"""Issue 28: a detector on pages no scene generator here drew, through ``model.onnx`` alone: typed
digits (matplotlib's DejaVu fonts) and the browser test's mouse polylines (4, 7, 8), 40-150 px tall on
480x320 white paper (pens 6-12 px). Prints recall and precision at IoU 0.5 and score 0.4.

    .venv/bin/python benchmarks/scenes_others.py artifacts/detect/<run> [more bundles]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.serve.test_browser import DRAWINGS  # noqa: E402

W, H = 480, 320
PAGES = 25  # per kind


def _ink(rng: np.random.Generator, kind: str, fonts: list[str]) -> tuple[np.ndarray, int]:
    """One digit somewhere on the page: its ink mask (H, W) and its class."""
    from PIL import Image, ImageDraw, ImageFont

    size = int(rng.uniform(40, 150))
    x, y = rng.uniform(0, W - size * 0.8), rng.uniform(0, H - size)
    glyph = Image.new("L", (W, H), 255)
    draw = ImageDraw.Draw(glyph)
    if kind == "fonts":
        digit = int(rng.integers(10))
        draw.text((x, y), str(digit), fill=0, font=ImageFont.truetype(fonts[rng.integers(len(fonts))], size))
    else:
        digit, pen = int(rng.choice([4, 7, 8])), int(rng.integers(6, 13))
        for stroke in DRAWINGS[str(digit)]:
            draw.line([(x + px * size * 0.8, y + py * size) for px, py in stroke], fill=0, width=pen, joint="curve")
    return np.asarray(glyph) < 128, digit


def page(rng: np.random.Generator, kind: str, fonts: list[str]) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
    """A white page (H, W, 3) uint8 with 3-6 digits that do not touch, and their boxes and classes."""
    paper, boxes = np.full((H, W), 255, np.uint8), []
    for _ in range(int(rng.integers(3, 7))):
        for _ in range(30):  # a place apart from the others
            ink, digit = _ink(rng, kind, fonts)
            ys, xs = np.nonzero(ink)
            if not len(ys):
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
            if any(min(box[2], b[2]) - max(box[0], b[0]) > -4 and min(box[3], b[3]) - max(box[1], b[1]) > -4
                   for b, _ in boxes):
                continue
            paper[ink] = 0
            boxes.append((box, digit))
            break
    return np.stack([paper] * 3, -1), boxes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def main() -> None:
    import matplotlib
    import onnxruntime as ort

    fonts = [str(p) for p in sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf"))][:6]
    for bundle in sys.argv[1:]:
        session = ort.InferenceSession(f"{bundle}/model.onnx", providers=["CPUExecutionProvider"])
        for kind in ("fonts", "mouse"):
            rng, hits, missed, extra = np.random.default_rng(123), 0, 0, 0
            for _ in range(PAGES):
                image, truth = page(rng, kind, fonts)
                n, boxes, _, labels = session.run(None, {"image": image[None],
                                                         "score_threshold": np.array(0.4, np.float32),
                                                         "iou_threshold": np.array(0.45, np.float32)})
                found, used = [(boxes[0, k], int(labels[0, k])) for k in range(int(n[0]))], set()
                for box, digit in truth:
                    hit = next((k for k, (b, d) in enumerate(found) if k not in used and d == digit
                                and iou(box, b) >= 0.5), None)
                    if hit is None:
                        missed += 1
                    else:
                        hits += 1
                        used.add(hit)
                extra += len(found) - len(used)
            print(f"{Path(bundle).name} {kind}: recall {hits / (hits + missed):.3f}, "
                  f"precision {hits / max(1, hits + extra):.3f} ({hits + missed} digits)")


if __name__ == "__main__":
    main()
