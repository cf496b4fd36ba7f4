"""Scenes of digits for detection and segmentation, composed offline from the digit scans.

A scene is an RGB image holding a few digits (scikit-learn's 8x8 scans, enlarged, slanted, turned
and coloured) over a textured, noisy background, with each digit's box (x1, y1, x2, y2 in pixels)
and class, and a mask of classes per pixel (0 background, 1 + digit). Everything follows from a seed:
scene ``i`` of a set is drawn from ``numpy.random.default_rng([seed, i])``, so a set can be
regenerated, extended or read lazily (training reads scenes by index, never holding them all).

Training scenes take only training-split scans and test scenes only test-split scans; a
:class:`Style` fixes the composition (size, digit count and scale, backgrounds), and the stress
style is one the networks never trained on (other sizes, more digits, other backgrounds).

User data: a COCO json with its images (:func:`load_coco`) or an image folder with a mask folder
(:func:`load_mask_folder`), both into the same :class:`Scene` lists.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError

ALPHA_EDGE = 0.5  # a pixel belongs to a digit (mask, box) where the digit's ink covers more than this


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (n, 4) float32, x1 y1 x2 y2 in pixels (x2, y2 exclusive)
    labels: np.ndarray  # (n,) int64, class index
    mask: np.ndarray | None = None  # (H, W) uint8: 0 background, 1 + class index; None: no masks


@dataclass(frozen=True)
class Style:
    """How scenes are composed."""

    height: int = 96
    width: int = 96
    digits: tuple[int, int] = (1, 6)  # fewest, most digits per scene (fewer when they do not fit)
    scale: tuple[int, int] = (12, 48)  # digit height in pixels, drawn uniformly
    rotation: float = 12.0  # degrees, either way
    max_overlap: float = 0.15  # a digit covers at most this share of a neighbour's box
    backgrounds: tuple[str, ...] = ("noise", "gradient", "waves")
    dark: float = 0.25  # share of scenes with light digits on a dark background
    noise: float = 0.04  # most pixel noise (std, in [0, 1] units)
    log_scale: bool = False  # digit heights log-uniform in ``scale`` (as many 12-24 px digits as 48-96 px)
    drawn: float = 0.0  # share of digits drawn with a pen (pipeline/data/drawn.py) instead of enlarged scans
    hand: str = "training"  # the drawings' generator: "training" (the sketchpad's, with its training
    # shapes and seeds) or "other" (the second hand, which no network trains on)
    photo: float = 0.0  # share of scenes photographed: uneven light, a shadow, slight perspective, blur, JPEG


PAPERS = ("noise", "gradient", "ruled", "squared")  # what people write on
# training: the scans and drawings (half each), 12 to 88 px (nearly the side), plain or ruled or squared
# paper, a third of the scenes photographed
TRAIN_STYLE = Style(scale=(12, 88), log_scale=True,
                    backgrounds=("noise", "gradient", "waves", "ruled", "squared"), drawn=0.5, photo=0.3)
TRAIN_STYLES = {"people": TRAIN_STYLE, "scans": Style()}  # data.train_style; "scans": before issue 28
TEST_STYLE = Style(height=128, width=128)
# what no network trained on: other sizes and aspect, up to 10 digits, other backgrounds
STRESS_STYLE = Style(height=160, width=224, digits=(4, 10), backgrounds=("checker", "speckle", "lines"),
                     dark=0.4, noise=0.06)
# held out, by the second hand (no network trains on its drawings) and test-split scans
HELD_OUT_STYLES = {
    "drawn": Style(height=160, width=160, digits=(2, 6), scale=(20, 60), backgrounds=PAPERS, dark=0.0,
                   noise=0.06, drawn=1.0, hand="other"),
    "photo": Style(height=160, width=208, digits=(2, 6), scale=(16, 56), backgrounds=PAPERS, dark=0.0,
                   drawn=0.6, hand="other", photo=1.0),
    "large": Style(height=240, width=320, digits=(2, 5), scale=(50, 107), backgrounds=PAPERS, dark=0.1,
                   drawn=0.6, hand="other"),
}
HELD_OUT_WORDS = {  # what each holds, for people (the manifest's and the Models tab's descriptions)
    "drawn": "160x160 paper (plain, ruled, squared), 2-6 digits drawn 20-60 px tall by a hand no network trains on",
    "photo": "208x160 photos of paper: uneven light, shadows, perspective, blur, JPEG; drawn digits and scans",
    "large": "320x240 paper, 2-5 digits 50-107 px tall (up to a third of the width), drawn and scanned",
}
HELD_OUT_SEEDS = {"drawn": 4, "photo": 5, "large": 6}  # + data.scene_seed (train 0, val 1, test 2, stress 3)


def _colour(rng: np.random.Generator, lum: tuple[float, float]) -> np.ndarray:
    """A random RGB colour (3,) in [0, 1] whose luminance lies in ``lum``."""
    for _ in range(100):
        c = rng.uniform(0, 1, 3)
        y = c @ np.array([0.299, 0.587, 0.114])
        if lum[0] <= y <= lum[1]:
            return c
    return np.full(3, (lum[0] + lum[1]) / 2)


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field (h, w) in about [-1, 1]: a coarse grid, enlarged bicubically."""
    from PIL import Image

    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC))


def background(rng: np.random.Generator, h: int, w: int, kind: str, base: np.ndarray) -> np.ndarray:
    """(h, w, 3) float in [0, 1] around colour ``base``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "noise":  # blotches
        field_ = 0.12 * _smooth(rng, h, w, int(rng.integers(3, 8)))[..., None] * rng.uniform(0.5, 1, 3)
    elif kind == "gradient":  # one colour fading into another of about the same brightness
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None]
        field_ = (t - t.mean()) * rng.uniform(-0.3, 0.3, 3)
    elif kind == "waves":  # faint ripples
        k = rng.uniform(0.05, 0.3, 2) * rng.choice([-1, 1], 2)
        field_ = 0.08 * np.sin(k[0] * xx + k[1] * yy + rng.uniform(0, 6.3))[..., None] * np.ones(3)
    elif kind == "checker":  # tiles of two shades
        cell = int(rng.integers(6, 20))
        field_ = 0.12 * (((yy // cell + xx // cell) % 2) - 0.5)[..., None] * rng.uniform(0.5, 1, 3)
    elif kind == "speckle":  # salt and pepper
        field_ = 0.25 * (rng.random((h, w, 1)) < 0.04) * rng.choice([-1, 1], (h, w, 1))
    elif kind in ("ruled", "squared"):  # a writing pad's lines every 10-24 px, blue or grey, faint
        cell, phase = rng.uniform(10, 24), rng.uniform(0, 24)
        tint = rng.uniform(0.05, 0.25) * np.array([1.0, 0.7, 0.2]) if rng.random() < 0.6 else np.full(3, 0.15)
        def near(t: np.ndarray) -> np.ndarray:  # 1 on a line, fading to 0 a pixel away
            m = (t + phase) % cell
            return np.clip(1.2 - np.minimum(m, cell - m), 0, 1)

        lines = near(yy) if kind == "ruled" else np.maximum(near(yy), near(xx))
        field_ = -lines[..., None] * tint
    elif kind == "lines":  # thin strokes that are not digits
        field_ = np.zeros((h, w, 1), np.float32)
        for _ in range(int(rng.integers(3, 8))):
            angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5) * max(h, w)
            d = np.abs(np.cos(angle) * (xx - w / 2) + np.sin(angle) * (yy - h / 2) - offset)
            field_[..., 0] -= 0.15 * np.clip(1.5 - d, 0, 1)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return np.clip(base + field_, 0, 1)


def render_digit(scan: np.ndarray, height: int, rng: np.random.Generator, rotation: float) -> np.ndarray:
    """An 8x8 scan (ink in [0, 1]) -> its ink (h, w) float in [0, 1], ``height`` pixels tall, a little
    narrower or wider, slanted and turned (the patch grows to hold the turned digit)."""
    from PIL import Image

    width = max(4, int(round(height * rng.uniform(0.75, 1.05))))
    ink = Image.fromarray(scan.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BICUBIC)
    shear = rng.uniform(-0.2, 0.2)
    ink = ink.transform((width + int(abs(shear) * height) + 1, height), Image.Transform.AFFINE,
                        (1, shear, -max(shear, 0) * height, 0, 1, 0), resample=Image.Resampling.BILINEAR)
    ink = ink.rotate(rng.uniform(-rotation, rotation), resample=Image.Resampling.BILINEAR, expand=True)
    return np.clip(np.asarray(ink), 0, 1)


def drawn_ink(digit: int, height: int, rng: np.random.Generator, hand: str) -> np.ndarray:
    """A digit drawn with a pen (the drawing's own width, slant, turn and pen) -> its ink (h, w) float
    in [0, 1], ``height`` pixels tall."""
    from PIL import Image

    from pipeline.data.drawn import TRAIN_WIDTHS, draw_digit, draw_other_hand

    canvas = max(48, 2 * height)
    if hand == "training":
        paper = draw_digit(digit, rng, canvas, hand=0.07, widths=TRAIN_WIDTHS, training=True)
    elif hand == "other":
        paper = draw_other_hand(digit, rng, canvas, widths=TRAIN_WIDTHS)
    else:
        raise ValueError(f"unknown hand {hand!r}; known: training, other")
    ink = 1.0 - paper.astype(np.float32) / 255.0
    rows, cols = np.flatnonzero((ink > ALPHA_EDGE).any(1)), np.flatnonzero((ink > ALPHA_EDGE).any(0))
    if not len(rows):
        return np.zeros((height, 1), np.float32)
    ink = ink[max(0, rows[0] - 2) : rows[-1] + 3, max(0, cols[0] - 2) : cols[-1] + 3]
    scale = height / (rows[-1] + 1 - rows[0])
    size = (max(1, int(round(ink.shape[1] * scale))), max(1, int(round(ink.shape[0] * scale))))
    return np.clip(np.asarray(Image.fromarray(ink, mode="F").resize(size, Image.Resampling.BILINEAR)), 0, 1)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking the four points ``src`` (4, 2) to ``dst`` (4, 2)."""
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.append(np.linalg.solve(np.array(a, np.float64), dst.reshape(-1)), 1.0).reshape(3, 3)


def photograph(image: np.ndarray, mask: np.ndarray, boxes: list[np.ndarray], rng: np.random.Generator):
    """What a phone's photo of the paper adds to ``image`` (H, W, 3) float in [0, 1]: uneven light and
    a tint, often a soft shadow, slight perspective (the mask and boxes follow). Blur and JPEG come
    after the noise (:func:`compose`). Returns the image, mask and boxes."""
    from PIL import Image

    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.0 + 0.25 * _smooth(rng, h, w, 3) + rng.uniform(-0.1, 0.1) * ((xx / w - 0.5) + (yy / h - 0.5))
    image = image * light[..., None] * rng.uniform(0.85, 1.05, 3)
    if rng.random() < 0.6:  # a soft shadow over one side: a hand, a phone
        angle, edge = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2) * max(h, w)
        d = np.cos(angle) * (xx - w / 2) + np.sin(angle) * (yy - h / 2) - rng.uniform(-0.3, 0.3) * max(h, w)
        image = image * (1 - rng.uniform(0.2, 0.45) * np.clip(0.5 + d / edge, 0, 1))[..., None]
    image = np.clip(image, 0, 1)
    if rng.random() < 0.8:  # slight perspective: each corner moved up to 6% of the side
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
        moved = corners + rng.uniform(-0.06, 0.06, (4, 2)) * [w, h]
        back = _homography(moved, corners)  # output pixel -> input pixel, as PIL wants it
        coeffs = tuple((back / back[2, 2]).reshape(-1)[:8])
        fill = tuple(int(v) for v in np.round(np.median(image.reshape(-1, 3), 0) * 255))
        rgb = Image.fromarray(np.round(image * 255).astype(np.uint8))
        image = np.asarray(rgb.transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR,
                                         fillcolor=fill), dtype=np.float32) / 255.0
        mask = np.array(Image.fromarray(mask).transform((w, h), Image.Transform.PERSPECTIVE, coeffs,
                                                         Image.Resampling.NEAREST, fillcolor=0))
        forward = _homography(corners, moved)
        moved_boxes = []
        for x1, y1, x2, y2 in boxes:
            p = forward @ np.array([[x1, x2, x2, x1], [y1, y1, y2, y2], [1, 1, 1, 1]], np.float64)
            px, py = np.clip(p[0] / p[2], 0, w), np.clip(p[1] / p[2], 0, h)
            # whole pixels, outward: every pixel the warped mask gives the digit lies in its box
            moved_boxes.append(np.array([np.floor(px.min()), np.floor(py.min()), np.ceil(px.max()), np.ceil(py.max())],
                                        np.float32))
        boxes = moved_boxes
    return image, mask, boxes


def _developed(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo's last steps on uint8 (H, W, 3): a little out of focus, then JPEG."""
    import io

    from PIL import Image, ImageFilter

    picture = Image.fromarray(pixels)
    if rng.random() < 0.7:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.8:
        buf = io.BytesIO()
        picture.save(buf, format="JPEG", quality=int(rng.integers(30, 90)))
        picture = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.array(picture, dtype=np.uint8)  # a writable copy (torch.from_numpy takes it as is)


def compose(scans: np.ndarray, labels: np.ndarray, rng: np.random.Generator, style: Style) -> Scene:
    """One scene from ``scans`` (N, 8, 8) ink in [0, 1] with ``labels`` (N,)."""
    h, w = style.height, style.width
    dark = rng.random() < style.dark
    base = _colour(rng, (0.05, 0.35) if dark else (0.6, 0.97))
    image = background(rng, h, w, str(rng.choice(style.backgrounds)), base)
    mask = np.zeros((h, w), np.uint8)
    boxes, classes = [], []
    for _ in range(int(rng.integers(style.digits[0], style.digits[1] + 1))):
        i = int(rng.integers(len(scans)))
        top = min(style.scale[1], h - 2, w - 2)
        if style.log_scale:
            size = int(round(np.exp(rng.uniform(np.log(style.scale[0]), np.log(top + 0.5)))))
        else:
            size = int(rng.integers(style.scale[0], top + 1))
        if style.drawn and rng.random() < style.drawn:  # (no draw at all for a style without drawings)
            label = int(rng.integers(10))
            ink = drawn_ink(label, size, rng, style.hand)
        else:
            label = int(labels[i])
            ink = render_digit(scans[i], size, rng, style.rotation)
        on = ink > ALPHA_EDGE
        if not on.any():
            continue
        rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
        # the patch: the digit's box and the soft edge of its ink around it (m pixels)
        t, l = max(0, rows[0] - 2), max(0, cols[0] - 2)
        ink = ink[t : rows[-1] + 3, l : cols[-1] + 3]
        (by, bx), (bh, bw) = (rows[0] - t, cols[0] - l), (rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
        ph, pw = ink.shape
        if ph >= h or pw >= w:
            continue
        for _ in range(30):  # a place that covers no neighbour much
            y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
            box = np.array([x + bx, y + by, x + bx + bw, y + by + bh], np.float32)
            if all(_covered(box, b) <= style.max_overlap and _covered(b, box) <= style.max_overlap for b in boxes):
                break
        else:
            continue
        lum = (0.65, 1.0) if dark else (0.0, 0.4)
        colour = _colour(rng, lum)
        alpha = ink[..., None]
        region = image[y : y + ph, x : x + pw]
        image[y : y + ph, x : x + pw] = region * (1 - alpha) + colour * alpha
        mask[y : y + ph, x : x + pw][ink > ALPHA_EDGE] = 1 + label
        boxes.append(box)
        classes.append(label)
    photo = bool(style.photo) and rng.random() < style.photo
    if photo:
        image, mask, boxes = photograph(image, mask, boxes, rng)
    image = image + rng.normal(0, rng.uniform(0, style.noise), image.shape)
    pixels = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    if photo:
        pixels = _developed(pixels, rng)
    return Scene(pixels, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64), mask)


def _covered(a: np.ndarray, b: np.ndarray) -> float:
    """The share of box b's area that box a covers."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max(1e-6, (b[2] - b[0]) * (b[3] - b[1]))


class SceneSet(Sequence[Scene]):
    """``count`` scenes of one style from ``scans``, scene i drawn from default_rng([seed, i]) when read."""

    def __init__(self, scans: np.ndarray, labels: np.ndarray, style: Style, seed: int, count: int):
        if len(scans) == 0:
            raise PipelineError("no digit scans to compose scenes from")
        self.scans, self.labels, self.style, self.seed, self.count = scans, labels, style, seed, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.count))]
        if not -self.count <= i < self.count:
            raise IndexError(i)
        return compose(self.scans, self.labels, np.random.default_rng([self.seed, i % self.count]), self.style)


def scans_of(images: np.ndarray) -> np.ndarray:
    """Digit images (N, 8, 8, 1) uint8, dark ink on white -> ink (N, 8, 8) float in [0, 1]."""
    return 1.0 - images[..., 0].astype(np.float32) / 255.0


@dataclass
class SceneData:
    """Scenes per split, their class names and where they came from."""

    train: Sequence[Scene]
    val: Sequence[Scene]
    test: Sequence[Scene]
    class_names: list[str]
    source: str
    stress: Sequence[Scene] = field(default_factory=list)  # built-in scenes only
    held_out: dict[str, Sequence[Scene]] = field(default_factory=dict)  # built-in: HELD_OUT_STYLES' sets


def generated(split_images: tuple[np.ndarray, np.ndarray, np.ndarray], split_labels, counts: tuple[int, int, int],
              seed: int, stress: int = 0, held_out: int = 0, train_style: str = "people") -> SceneData:
    """Scenes from the digit splits: training scenes (of TRAIN_STYLES[train_style]) from training scans
    only, and so on; ``held_out`` scenes of each of HELD_OUT_STYLES (test-split scans, the second hand's
    drawings)."""
    (tr, va, te), (ltr, lva, lte) = [scans_of(x) for x in split_images], split_labels
    return SceneData(
        train=SceneSet(tr, ltr, TRAIN_STYLES[train_style], seed, counts[0]),
        val=list(SceneSet(va, lva, TEST_STYLE, seed + 1, counts[1])),
        test=list(SceneSet(te, lte, TEST_STYLE, seed + 2, counts[2])),
        class_names=[str(d) for d in range(10)],
        source=f"scenes of scikit-learn digits ({counts[0]} train / {counts[1]} val / {counts[2]} test)",
        stress=list(SceneSet(te, lte, STRESS_STYLE, seed + 3, stress)),
        held_out={name: list(SceneSet(te, lte, style, seed + HELD_OUT_SEEDS[name], held_out))
                  for name, style in HELD_OUT_STYLES.items()} if held_out else {},
    )


# ---------------------------------------------------------------------------------------------
# The user's own data


def _split_indices(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = (max(1, int(round(n * f))) if f > 0 else 0 for f in fractions)
    if n - n_val - n_test < 1:
        raise PipelineError(f"{n} images are too few to split into train / val / test")
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def _read_rgb(path: Path) -> np.ndarray:
    from serve.inputs import InputError, decode_image

    try:
        return decode_image(path)
    except InputError as e:
        raise PipelineError(f"{path}: {e}") from None


def load_coco(path: str | Path, fractions: tuple[float, float], seed: int) -> SceneData:
    """A COCO detection json (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``);
    image files relative to the json's folder or its ``images/`` folder. Categories become classes in
    order of id. A missing image or a malformed box is one PipelineError naming it."""
    path = Path(path)
    try:
        coco = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PipelineError(f"{path}: not a readable COCO json ({str(e).splitlines()[0]})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise PipelineError(f"{path}: a COCO json needs lists 'images', 'annotations' and 'categories'")
    try:
        cats = sorted(coco["categories"], key=lambda c: int(c["id"]))
        class_of = {int(c["id"]): i for i, c in enumerate(cats)}
        names = [str(c.get("name", c["id"])) for c in cats]
        images = {int(im["id"]): im for im in coco["images"]}
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{path}: malformed COCO categories or images ({e!r})") from None
    if not names or not images:
        raise PipelineError(f"{path}: no categories or no images")
    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    for k, ann in enumerate(coco["annotations"]):
        try:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            image_id, cat = int(ann["image_id"]), int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise PipelineError(f"{path}: annotation {k} needs image_id, category_id and bbox [x, y, w, h]") from None
        if image_id not in images or cat not in class_of:
            raise PipelineError(f"{path}: annotation {k} names an unknown image {image_id} or category {cat}")
        if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0 or x < 0 or y < 0:
            raise PipelineError(f"{path}: annotation {k} has a malformed box {ann['bbox']} (need x, y >= 0, w, h > 0)")
        per_image[image_id].append(([x, y, x + bw, y + bh], class_of[cat]))
    scenes = []
    for image_id, im in images.items():
        name = str(im.get("file_name", ""))
        found = next((p for p in (path.parent / name, path.parent / "images" / name) if name and p.is_file()), None)
        if found is None:
            raise PipelineError(f"{path}: image {name!r} (id {image_id}) is missing from {path.parent}")
        rgb = _read_rgb(found)
        anns = per_image[image_id]
        boxes = np.array([a[0] for a in anns], np.float32).reshape(-1, 4)
        if len(boxes) and (boxes[:, 2].max() > rgb.shape[1] + 1 or boxes[:, 3].max() > rgb.shape[0] + 1):
            raise PipelineError(f"{path}: a box of image {name!r} lies outside its {rgb.shape[1]}x{rgb.shape[0]} pixels")
        scenes.append(Scene(rgb, boxes, np.array([a[1] for a in anns], np.int64)))
    tr, va, te = _split_indices(len(scenes), fractions, seed)
    return SceneData([scenes[i] for i in tr], [scenes[i] for i in va], [scenes[i] for i in te], names,
                     f"{path} ({len(scenes)} images, {sum(len(s.labels) for s in scenes)} boxes)")


def load_mask_folder(path: str | Path, fractions: tuple[float, float], seed: int) -> SceneData:
    """A folder with ``images/`` and ``masks/`` (PNGs of the same stems, pixel value = class, 0
    background) and optionally ``classes.txt`` (one name per line, for classes 1, 2, ...)."""
    from PIL import Image

    root = Path(path)
    image_dir, mask_dir = root / "images", root / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise PipelineError(f"{root}: a segmentation folder needs images/ and masks/ folders")
    scenes, top = [], 0
    for file in sorted(p for p in image_dir.iterdir() if p.is_file()):
        mask_path = mask_dir / f"{file.stem}.png"
        if not mask_path.is_file():
            raise PipelineError(f"{file}: no mask {mask_path}")
        rgb = _read_rgb(file)
        try:
            with Image.open(mask_path) as m:
                mask = np.asarray(m if m.mode in ("L", "P") else m.convert("L"), dtype=np.uint8)
        except OSError as e:
            raise PipelineError(f"{mask_path}: not a readable mask PNG ({e})") from None
        if mask.shape != rgb.shape[:2]:
            raise PipelineError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                                f"{rgb.shape[1]}x{rgb.shape[0]}")
        top = max(top, int(mask.max()))
        scenes.append(Scene(rgb, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), mask))
    if not scenes or top == 0:
        raise PipelineError(f"{root}: no images, or masks with no class but background")
    names_file = root / "classes.txt"
    names = names_file.read_text().split("\n") if names_file.is_file() else []
    names = [n.strip() for n in names if n.strip()] or [f"class{i}" for i in range(1, top + 1)]
    if len(names) < top:
        raise PipelineError(f"{names_file}: {len(names)} names, but masks use classes up to {top}")
    tr, va, te = _split_indices(len(scenes), fractions, seed)
    return SceneData([scenes[i] for i in tr], [scenes[i] for i in va], [scenes[i] for i in te], names,
                     f"{root} ({len(scenes)} images with masks)")
