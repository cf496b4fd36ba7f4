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
# a digit's width over its height, as a multiplier of its style's own shape: the held-out drawn set's
# narrow range (most handwriting), the wide and round digits people also draw (the held-out "wide" set),
# and the training drawings' range, which spans both
NARROW = (0.5, 0.8)
WIDE = (0.85, 1.4)
TRAIN_WIDTHS = (0.45, 1.4)


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24) -> list[tuple[float, float]]:
    """Points on an ellipse from angle ``start`` to ``end`` (degrees, 0 = right, 90 = down)."""
    t = np.radians(np.linspace(start, end, n))
    return list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t)))


def _chaikin(pts: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Corner-cutting: a smooth curve near the polyline ``pts`` (M, 2), through its end points."""
    for _ in range(rounds):
        q, r = 0.75 * pts[:-1] + 0.25 * pts[1:], 0.25 * pts[:-1] + 0.75 * pts[1:]
        pts = np.concatenate([pts[:1], np.stack([q, r], 1).reshape(-1, 2), pts[-1:]])
    return pts


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


def _smooth_path(points: list[tuple[float, float]], rounds: int = 3) -> list[tuple[float, float]]:
    """A smooth stroke near the polyline ``points`` (Chaikin's corner cutting), as a list of points."""
    return [tuple(p) for p in _chaikin(np.asarray(points, np.float64), rounds)]


# shapes drawn only into the training drawings (the held-out sets draw STYLES alone, so their seeds
# keep their drawings): an 8 in one stroke that crosses itself at the waist, a round 0 that closes
# with a tail, a 4 with an open top, a 7 with a hooked top
TRAINING_STYLES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[_arc(0.5, 0.5, 0.42, 0.46, -80, 300)]],
    4: [[[(0.35, 0.04), (0.12, 0.6), (0.9, 0.6)], [(0.68, 0.25), (0.64, 0.97)]]],
    7: [[[(0.1, 0.2), (0.18, 0.05), (0.88, 0.06), (0.55, 0.5), (0.42, 0.96)]]],
    8: [[_smooth_path([(0.8, 0.14), (0.5, 0.02), (0.2, 0.14), (0.25, 0.36), (0.5, 0.5), (0.8, 0.66), (0.78, 0.9),
                       (0.5, 0.99), (0.2, 0.88), (0.22, 0.66), (0.5, 0.5), (0.76, 0.36), (0.8, 0.14)])]],
}


def draw_digit(digit: int, rng: np.random.Generator, canvas: int = CANVAS, hand: float = 0.035,
               widths: tuple[float, float] = NARROW, training: bool = False) -> np.ndarray:
    """One drawing of ``digit``: uint8 (canvas, canvas), dark ink (0) on white (255); ``hand``: how
    far a person's control points wander, in units of the digit's size; ``widths``: the range of its
    width over its height (log-uniform), as a multiplier of the style's shape; ``training``: the
    styles include :data:`TRAINING_STYLES`."""
    from PIL import Image, ImageDraw

    styles = STYLES[digit] + (TRAINING_STYLES.get(digit, []) if training else [])
    style = styles[rng.integers(len(styles))]
    height = rng.uniform(0.35, 0.85)  # of the canvas
    width = height * _ratio(rng, widths, digit)
    slant, angle = rng.uniform(-0.35, 0.35), np.radians(rng.uniform(-15, 15))
    cos, sin = np.cos(angle), np.sin(angle)
    centre = rng.uniform(0.5 - (1 - height) / 2 * 0.8, 0.5 + (1 - height) / 2 * 0.8, size=2)
    brush = rng.uniform(*BRUSH) * canvas / CANVAS  # the same pen for the drawing's size on any canvas
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


def _ratio(rng: np.random.Generator, widths: tuple[float, float], digit: int) -> float:
    """A width multiplier in ``widths``: the narrow range as it always was drawn (uniform, so the seeds'
    drawings stay the same), any other log-uniform (as many digits wider than square as narrower). A 1
    is a stroke and its flag: drawn wider, its flag would grow into a 7's bar, so it stays narrow."""
    if tuple(widths) == NARROW:
        return float(rng.uniform(*NARROW))
    ratio = float(np.exp(rng.uniform(np.log(widths[0]), np.log(widths[1]))))
    return min(ratio, NARROW[1]) if digit == 1 else ratio


def drawn_digits(per_class: int = 100, seed: int = 2026, canvas: int = CANVAS, hand: float = 0.035,
                 widths: tuple[float, float] = NARROW, training: bool = False) -> ImageSplit:
    """``per_class`` drawings of each digit 0-9 as uint8 (N, canvas, canvas, 1), labels (N,); the same
    for the same seed. The held-out drawn set uses the default seed; training must use others."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = np.stack([draw_digit(int(d), rng, canvas, hand, widths, training) for d in labels])[..., None]
    return ImageSplit(images, labels.astype(np.int64))


# A second hand, written apart from STYLES and rendered another way, to check that what reads one
# drawing style is not tuned to it: key points joined by Chaikin-smoothed curves (no arcs), a pen
# whose width follows the pressure along each stroke, a tremor that drifts slowly along the path,
# overshoots and gaps where strokes meet, a 360x360 canvas.
OTHER_HAND: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[[(0.55, 0.0), (0.15, 0.2), (0.1, 0.7), (0.45, 1.0), (0.85, 0.75), (0.85, 0.2), (0.5, 0.0), (0.4, 0.1)]]],
    1: [[[(0.45, 0.0), (0.5, 1.0)]], [[(0.3, 0.15), (0.55, 0.0), (0.5, 1.0)]]],
    2: [[[(0.1, 0.25), (0.4, 0.0), (0.85, 0.15), (0.75, 0.5), (0.1, 1.0), (0.5, 0.95), (0.95, 1.0)]],
        [[(0.15, 0.2), (0.5, 0.0), (0.85, 0.3), (0.1, 1.0), (0.1, 0.98), (0.9, 0.98)]]],
    3: [[[(0.1, 0.1), (0.6, 0.0), (0.8, 0.25), (0.35, 0.48), (0.85, 0.7), (0.6, 1.0), (0.1, 0.9)]],
        [[(0.15, 0.0), (0.85, 0.0), (0.4, 0.4), (0.9, 0.65), (0.55, 1.0), (0.1, 0.85)]]],
    4: [[[(0.55, 0.0), (0.05, 0.7), (0.95, 0.7)], [(0.7, 0.35), (0.7, 1.0)]],
        [[(0.25, 0.0), (0.1, 0.6), (0.9, 0.6)], [(0.75, 0.0), (0.7, 1.0)]]],
    5: [[[(0.85, 0.0), (0.25, 0.0), (0.15, 0.45), (0.6, 0.35), (0.9, 0.7), (0.55, 1.0), (0.1, 0.88)]],
        [[(0.25, 0.0), (0.15, 0.45), (0.6, 0.38), (0.9, 0.72), (0.5, 1.0), (0.1, 0.85)], [(0.25, 0.0), (0.9, 0.02)]]],
    6: [[[(0.8, 0.0), (0.3, 0.35), (0.1, 0.75), (0.45, 1.0), (0.85, 0.75), (0.6, 0.5), (0.15, 0.65)]]],
    7: [[[(0.05, 0.0), (0.95, 0.0), (0.55, 0.5), (0.4, 1.0)]],
        [[(0.05, 0.05), (0.95, 0.0), (0.35, 1.0)], [(0.3, 0.5), (0.8, 0.48)]]],
    8: [[[(0.85, 0.1), (0.5, 0.0), (0.15, 0.2), (0.5, 0.48), (0.9, 0.75), (0.5, 1.0), (0.1, 0.75), (0.5, 0.48),
          (0.85, 0.2), (0.8, 0.05)]]],
    9: [[[(0.85, 0.2), (0.5, 0.0), (0.15, 0.2), (0.35, 0.5), (0.85, 0.3), (0.85, 0.05), (0.8, 0.55), (0.6, 1.0)]],
        [[(0.85, 0.25), (0.45, 0.0), (0.15, 0.25), (0.45, 0.5), (0.85, 0.25)], [(0.85, 0.15), (0.85, 1.0)]]],
}


def draw_other_hand(digit: int, rng: np.random.Generator, canvas: int = 360,
                    widths: tuple[float, float] | None = None) -> np.ndarray:
    """One drawing of ``digit`` by :data:`OTHER_HAND`: uint8 (canvas, canvas), dark ink on white;
    ``widths`` as for :func:`draw_digit` (None: this hand's own 0.45-0.85)."""
    from PIL import Image, ImageDraw

    style = OTHER_HAND[digit][rng.integers(len(OTHER_HAND[digit]))]
    height = rng.uniform(0.3, 0.9)
    width = height * (rng.uniform(0.45, 0.85) if widths is None else _ratio(rng, widths, digit))
    slant, angle = rng.uniform(-0.4, 0.3), np.radians(rng.uniform(-12, 12))
    centre = rng.uniform(0.5 - (1 - height) / 2 * 0.9, 0.5 + (1 - height) / 2 * 0.9, size=2)
    pen = rng.uniform(0.025, 0.09) * canvas  # pen width, pixels
    image = Image.new("L", (canvas * 2, canvas * 2), 255)
    draw = ImageDraw.Draw(image)
    for stroke in style:
        pts = np.asarray(stroke, dtype=np.float64) + rng.normal(0, 0.04, size=(len(stroke), 2))
        ends = rng.uniform(-0.05, 0.05, size=(2, 2))  # overshoot or gap at both ends
        pts[0] += ends[0]
        pts[-1] += ends[1]
        path = _chaikin(pts)
        drift = np.cumsum(rng.normal(0, 0.004, size=path.shape), axis=0)  # slow tremor
        path = path + drift - drift.mean(0) - 0.5
        x, y = path[:, 0] * width, path[:, 1] * height
        x = x - slant * y
        x, y = np.cos(angle) * x - np.sin(angle) * y, np.sin(angle) * x + np.cos(angle) * y
        xy = np.stack([(centre[0] + x) * canvas * 2, (centre[1] + y) * canvas * 2], 1)
        pressure = 0.7 + 0.3 * np.sin(np.linspace(0, np.pi, len(xy))) * rng.uniform(0.5, 1.0)
        for (a, b), p in zip(zip(xy[:-1], xy[1:]), pressure[1:]):  # a round dab at each joint
            r = pen * p
            draw.line([tuple(a), tuple(b)], fill=0, width=int(round(2 * r)))
            draw.ellipse((b[0] - r, b[1] - r, b[0] + r, b[1] + r), fill=0)
        r = pen * pressure[0]
        draw.ellipse((xy[0][0] - r, xy[0][1] - r, xy[0][0] + r, xy[0][1] + r), fill=0)
    return np.asarray(image.resize((canvas, canvas), Image.Resampling.BOX), dtype=np.uint8)


def other_hand_digits(per_class: int = 50, seed: int = 7, canvas: int = 360,
                      widths: tuple[float, float] | None = None) -> ImageSplit:
    """``per_class`` drawings of each digit by the second hand, as uint8 (N, canvas, canvas, 1)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = np.stack([draw_other_hand(int(d), rng, canvas, widths) for d in labels])[..., None]
    return ImageSplit(images, labels.astype(np.int64))


def font_digits(per_class: int = 50, seed: int = 11, canvas: int = 200) -> ImageSplit:
    """Typed digits: each of the TrueType fonts matplotlib ships (DejaVu, STIX, Computer Modern;
    upright, bold, italic) at random size, place, rotation and stroke weight, as uint8 (N, canvas,
    canvas, 1). Not drawings: a check that the model reads digits, not one generator's strokes."""
    from pathlib import Path

    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSerif", "DejaVuSerif-Italic",
             "DejaVuSansMono", "STIXGeneral", "STIXGeneralItalic", "STIXGeneralBol", "cmr10", "cmss10", "cmtt10"]
    fonts = [str(folder / f"{n}.ttf") for n in names if (folder / f"{n}.ttf").is_file()]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = []
    for d in labels:
        size = int(rng.uniform(0.3, 0.75) * canvas)
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], size)
        glyph = Image.new("L", (canvas, canvas), 255)
        ImageDraw.Draw(glyph).text((canvas / 2, canvas / 2), str(int(d)), fill=0, font=font, anchor="mm",
                                   stroke_width=int(rng.integers(0, max(1, size // 12))), stroke_fill=0)
        glyph = glyph.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR, fillcolor=255,
                             translate=tuple(rng.uniform(-0.15, 0.15, 2) * canvas))
        images.append(np.asarray(glyph, dtype=np.uint8))
    return ImageSplit(np.stack(images)[..., None], labels.astype(np.int64))


def scanned(drawings: ImageSplit, side: int = 8, margin: float = 1.0, levels: int = 17) -> ImageSplit:
    """Drawings made into scans like the digits: each cropped to its ink, centred on a square of
    paper (``margin`` times the ink's longer side), averaged down to side x side and quantized to
    ``levels`` grey levels (the scans' 17; 256: none). uint8 (N, side, side, 1), dark ink on white."""
    from PIL import Image

    out = []
    for image in drawings.images[..., 0]:
        ink = image < 128
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] if len(rows) else image
        paper_side = int(max(crop.shape) * margin)
        paper = np.full((paper_side, paper_side), 255, np.uint8)
        top, left = (paper_side - crop.shape[0]) // 2, (paper_side - crop.shape[1]) // 2
        paper[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
        small = np.asarray(Image.fromarray(paper).resize((side, side), Image.Resampling.BOX), dtype=np.float32)
        out.append(np.round(np.round((255 - small) / 255 * (levels - 1)) / (levels - 1) * 255).astype(np.uint8))
    return ImageSplit((255 - np.stack(out))[..., None], drawings.labels.copy())
