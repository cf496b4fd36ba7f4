"""Digits drawn as people draw them on the app's 280x280 sketchpad: thick dark strokes on white.

Each digit has a few stroke styles (how people write it: a 7 with or without a crossbar, an open or
closed 4, a 1 with a flag or a base), each a list of strokes in a unit box (x right, y down). A drawing
takes one style and moves its control points a little (a person's hand), then slants, rotates,
scales and places it at random, and renders it with a round brush of random width, anti-aliased.
Deterministic for a seed: the test set uses its own seed, kept apart from any training use.
"""
from __future__ import annotations

import numpy as np

from pipeline.data.images import ImageSplit

CANVAS = 280  # the app's sketchpad side, pixels
BRUSH = (12, 30)  # stroke widths on the canvas (the app's brush is 20)


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24) -> list[tuple[float, float]]:
    """Points on an ellipse from angle ``start`` to ``end`` (degrees, 0 = right, 90 = down)."""
    t = np.radians(np.linspace(start, end, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


# digit -> styles; a style is a list of strokes; a stroke is a polyline of (x, y) in [0, 1]^2
STYLES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[_arc(0.5, 0.5, 0.32, 0.46, -90, 275)],
        [_arc(0.5, 0.5, 0.28, 0.46, -100, 250) + [(0.45, 0.06)]]],
    1: [[[(0.5, 0.04), (0.5, 0.96)]],
        [[(0.3, 0.25), (0.52, 0.04), (0.52, 0.96)]],
        [[(0.3, 0.22), (0.52, 0.04), (0.52, 0.96)], [(0.3, 0.96), (0.74, 0.96)]]],
    2: [[_arc(0.5, 0.3, 0.3, 0.26, 190, 370) + [(0.18, 0.95), (0.85, 0.95)]],
        [_arc(0.48, 0.3, 0.3, 0.26, 200, 380) + [(0.2, 0.95)], [(0.2, 0.95), (0.85, 0.9)]]],
    3: [[_arc(0.45, 0.27, 0.3, 0.23, 200, 450) + _arc(0.45, 0.73, 0.34, 0.23, -90, 160)],
        [[(0.15, 0.05), (0.8, 0.05), (0.45, 0.45)] + _arc(0.45, 0.7, 0.35, 0.25, -90, 160)]],
    4: [[[(0.62, 0.05), (0.12, 0.65), (0.88, 0.65)], [(0.66, 0.3), (0.66, 0.97)]],
        [[(0.2, 0.05), (0.15, 0.55), (0.85, 0.55)], [(0.7, 0.05), (0.7, 0.97)]]],
    5: [[[(0.8, 0.05), (0.25, 0.05), (0.2, 0.45)] + _arc(0.45, 0.68, 0.35, 0.27, -120, 160)],
        [[(0.25, 0.05), (0.2, 0.45)] + _arc(0.45, 0.68, 0.35, 0.27, -120, 160), [(0.25, 0.05), (0.82, 0.05)]]],
    6: [[[(0.75, 0.05), (0.4, 0.3)] + _arc(0.5, 0.7, 0.3, 0.27, 195, 555)],
        [[(0.7, 0.04), (0.45, 0.2), (0.25, 0.5)] + _arc(0.5, 0.72, 0.27, 0.24, 180, 540)]],
    7: [[[(0.12, 0.06), (0.85, 0.06), (0.38, 0.96)]],
        [[(0.12, 0.06), (0.85, 0.06), (0.38, 0.96)], [(0.35, 0.5), (0.78, 0.5)]],
        [[(0.15, 0.18), (0.2, 0.06), (0.85, 0.06), (0.45, 0.96)]]],
    8: [[_arc(0.5, 0.27, 0.26, 0.22, 90, 450) + _arc(0.5, 0.72, 0.32, 0.25, -90, 270)],
        [_arc(0.5, 0.27, 0.24, 0.22, 0, 360), _arc(0.5, 0.72, 0.32, 0.25, -90, 270)]],
    9: [[_arc(0.5, 0.3, 0.3, 0.25, 0, 360) + [(0.8, 0.3), (0.75, 0.96)]],
        [_arc(0.5, 0.3, 0.3, 0.25, 10, 370) + [(0.8, 0.35)] + _arc(0.45, 0.62, 0.35, 0.35, 0, 100)]],
}


def draw_digit(digit: int, rng: np.random.Generator, canvas: int = CANVAS) -> np.ndarray:
    """One drawing of ``digit``: uint8 (canvas, canvas), dark ink (0) on white (255)."""
    from PIL import Image, ImageDraw

    style = STYLES[digit][rng.integers(len(STYLES[digit]))]
    height = rng.uniform(0.35, 0.85)  # of the canvas
    width = height * rng.uniform(0.5, 0.8)
    slant, angle = rng.uniform(-0.35, 0.35), np.radians(rng.uniform(-15, 15))
    cos, sin = np.cos(angle), np.sin(angle)
    centre = rng.uniform(0.5 - (1 - height) / 2 * 0.8, 0.5 + (1 - height) / 2 * 0.8, size=2)
    brush = rng.uniform(*BRUSH)
    hand = 0.035  # how far a person's control points wander, in units of the digit's size
    scale = 2  # rendered at twice the size, then shrunk: anti-aliased edges as a browser canvas has
    image = Image.new("L", (canvas * scale, canvas * scale), 255)
    pen = ImageDraw.Draw(image)
    radius = brush * scale / 2
    for stroke in style:
        pts = np.asarray(stroke, dtype=np.float64) - 0.5
        pts = pts + rng.normal(0, hand, size=pts.shape) * (len(pts) < 6) + rng.normal(0, hand / 2, size=(1, 2))
        x, y = pts[:, 0] * width, pts[:, 1] * height
        x = x - slant * y  # slanted like handwriting (top to the right for positive slant)
        x, y = cos * x - sin * y, sin * x + cos * y
        xy = [((centre[0] + px) * canvas * scale, (centre[1] + py) * canvas * scale) for px, py in zip(x, y)]
        pen.line(xy, fill=0, width=int(round(2 * radius)), joint="curve")
        for px, py in (xy[0], xy[-1]):  # round brush ends
            pen.ellipse((px - radius, py - radius, px + radius, py + radius), fill=0)
    return np.asarray(image.resize((canvas, canvas), Image.Resampling.BOX), dtype=np.uint8)


def drawn_digits(per_class: int = 100, seed: int = 2026, canvas: int = CANVAS) -> ImageSplit:
    """``per_class`` drawings of each digit 0-9 as uint8 (N, canvas, canvas, 1), labels (N,); the same
    for the same seed. The held-out drawn set uses the default seed; training must use others."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = np.stack([draw_digit(int(d), rng, canvas) for d in labels])[..., None]
    return ImageSplit(images, labels.astype(np.int64))
