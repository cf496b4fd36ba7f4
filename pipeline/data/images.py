"""Labelled images: scikit-learn's bundled handwritten digits, or an image folder per class.

Images are uint8 arrays (N, H, W, C), exactly what the exported graph takes as ``image``.
Digits are drawn as a scan would show them: dark ink on white paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


@dataclass
class ImageSplit:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageData:
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    class_names: list[str]
    source: str


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices (train, val, test): each class split by the same val/test fractions, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = (int(round(len(idx) * f)) for f in fractions)
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def _split(images: np.ndarray, labels: np.ndarray, fractions, seed: int) -> tuple[ImageSplit, ...]:
    return tuple(ImageSplit(images[i], labels[i]) for i in stratified_split(labels, fractions, seed))


def load_digits(fractions: tuple[float, float] = (0.1, 0.2), seed: int = 0) -> ImageData:
    """The 1,797 8x8 digit scans bundled with scikit-learn (values 0..16 of ink), split train/val/test."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    ink = bunch.images.astype(np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    images = np.round(255.0 * (1.0 - ink)).astype(np.uint8)[..., None]  # dark ink on white: (N, 8, 8, 1)
    labels = bunch.target.astype(np.int64)
    train, val, test = _split(images, labels, fractions, seed)
    return ImageData(train, val, test, [str(d) for d in range(10)], "scikit-learn digits")


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, channels), decoded as the app decodes uploads
    (:func:`serve.inputs.decode_image`: every mode, transparency on white, the same size limit);
    an unusable file is a PipelineError naming it."""
    from PIL import Image

    from serve.inputs import InputError, decode_image

    try:
        rgb = decode_image(path)
    except InputError as e:
        raise PipelineError(f"{path}: {e}") from None
    im = Image.fromarray(rgb)
    if channels == 1:
        im = im.convert("L")  # ITU-R 601 luma, exact for grey sources
    im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


def _scan_classes(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise PipelineError(f"image folder {root} has no class folders (expected {root}/<class>/<image files>)")
    files, labels = [], []
    for i, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    raise PipelineError(f"not an image file (by its suffix): {f}")
                files.append(f)
                labels.append(i)
    if not files:
        raise PipelineError(f"image folder {root} has no images in its class folders {classes}")
    empty = [name for i, name in enumerate(classes) if i not in set(labels)]
    if empty:
        raise PipelineError(f"class folder {root / empty[0]} has no images; add some or remove the folder")
    if len(classes) < 2:
        raise PipelineError(f"image folder {root} has one class folder ({classes[0]!r}); a classifier needs at "
                            f"least two: {root}/<class>/<image files>, one folder per class")
    return files, labels, classes


def load_image_folder(root: str | Path, channels: int, size: int, fractions=(0.1, 0.2), seed: int = 0) -> ImageData:
    """``root/<class>/*.png`` (split here), or ``root/{train,val,test}/<class>/*`` (splits as given)."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"image folder not found: {root}")

    def read(dir_: Path, classes: list[str] | None = None):
        files, labels, found = _scan_classes(dir_)
        if classes is not None and found != classes:
            raise PipelineError(f"{dir_} has classes {found}, but {root}/train has {classes}")
        images = np.stack([read_image(f, channels, size) for f in files])
        return images, np.asarray(labels, dtype=np.int64), found

    if (root / "train").is_dir() and (root / "test").is_dir():
        images, labels, classes = read(root / "train")
        test = ImageSplit(*read(root / "test", classes)[:2])
        if (root / "val").is_dir():
            train, val = ImageSplit(images, labels), ImageSplit(*read(root / "val", classes)[:2])
        else:
            train, val, _ = _split(images, labels, (fractions[0], 0.0), seed)
    else:
        images, labels, classes = read(root)
        train, val, test = _split(images, labels, fractions, seed)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise PipelineError(f"image folder {root}: the {name} split is empty; add more images per class")
    return ImageData(train, val, test, classes, str(root))
