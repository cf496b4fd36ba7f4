"""Image classification: data, model config, loss, metrics, deployable wrapper and export contract.

Graph: ``image`` uint8 (N, H, W, C) of any size -> ``probs`` float32 (N, K). Inside: channel
reduction (grey models take grey or RGB), antialiased resize to the network's size, normalization,
the network, softmax.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import models
from models.layers import channels_first
from export.contract import Bound, DimRange, ExportContract, TensorSpec
from pipeline.data.augment import augment
from pipeline.data.drawn import NARROW, TRAIN_WIDTHS, WIDE, drawn_digits, font_digits, other_hand_digits, scanned
from pipeline.data.images import ImageData, ImageSplit, load_digits, load_image_folder
from pipeline.errors import PipelineError
from pipeline.tasks.base import BenchCase, EvalSet, Graph, Metric, RunConfig, Task, with_model_fields

EVAL_BATCH = 256  # images per graph call when scoring and checking parity
DIGITS = [str(d) for d in range(10)]
DRAWN_PER_CLASS = 100  # the held-out drawn-digit set: 1,000 sketchpad drawings
TRAIN_DRAWING_SEED = 10_000  # + data.split_seed: training drawings' seeds, far from the held-out 2026
WIDE_SEEDS = (2027, 8)  # the held-out wide set: both hands' seeds, apart from the drawn and hand2 sets' own


@dataclass
class DataConfig:
    source: str = "digits"  # (str) "digits" (scikit-learn's scans) or a path to an image folder per class
    channels: int = 1  # (int) 1: grey (the graph takes grey or RGB); 3: RGB (the graph takes RGB)
    load_size: int = 32  # (int) image-folder images are resized to this square size when loaded
    val_fraction: float = 0.1  # (float) share of each class held out for validation
    test_fraction: float = 0.2  # (float) share of each class held out for the test split
    split_seed: int = 0  # (int) fixes the split, independently of train.seed
    # (str) training augmentation of the network's view (pipeline/data/augment.py): "none", "affine"
    # (rotation, scale, shift), "strokes" (affine + slant, aspect, elastic wobble, pen width, grey
    # levels, blur: scans made to look drawn), "auto": strokes for the digits, affine otherwise
    augment: Literal["auto", "none", "affine", "strokes"] = "auto"
    # (str) "ink": the graph crops each image to its ink and centres it on square paper, as the digits
    # were scanned (a raw drawing then reads like a scan); "none": the whole image; "auto": ink for
    # the digits, none for an image folder
    crop: Literal["auto", "ink", "none"] = "auto"
    # (int) digits only (ignored for an image folder): this many drawings per digit
    # (pipeline/data/drawn.py, training seeds, never the held-out seed) are scanned to 8x8 like the
    # digits and added to the training split
    drawings: int = 100
    # (str) the training drawings' shapes: "all" (widths from narrow to wide and round, and the shapes
    # only training draws: one-stroke 8s, round 0s, open 4s, hooked 7s), "wide" (the widths, the
    # held-out sets' shapes only), "narrow" (the held-out drawn set's widths and shapes, as before issue 28)
    drawing_shapes: Literal["all", "wide", "narrow"] = "all"
    # (int) digits only: held-out drawings per digit in the drawn set (100 per digit, 1,000 in all, by
    # default); the second hand's, the wide and the typed set get half as many each (the wide set by
    # both hands). Every variant is scored on all four
    held_out_drawings: int = DRAWN_PER_CLASS

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not (0 <= self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        if self.split_seed < 0:
            raise ValueError(f"split_seed must be >= 0, got {self.split_seed}")
        if self.drawings < 0:
            raise ValueError(f"drawings must be >= 0, got {self.drawings}")
        if self.held_out_drawings < 1:
            raise ValueError(f"held_out_drawings must be >= 1, got {self.held_out_drawings}")

    @property
    def crop_to_ink(self) -> bool:
        return self.crop == "ink" or (self.crop == "auto" and self.source == "digits")

    @property
    def augment_level(self) -> str:
        if self.augment == "auto":
            return "strokes" if self.source == "digits" else "affine"
        return self.augment


PRESETS = {  # smoke / quick / full
    "smoke": {"model": {"name": "lenet", "channels": [16, 32], "hidden": 64}, "data": {"held_out_drawings": 20},
              "train": {"epochs": 20, "batch_size": 64, "lr": 4e-3, "warmup_epochs": 0.0},
              "optimize": {"calibration_samples": 64}, "benchmark": {"batch_sizes": [1, 32], "seconds": 0.1, "torch_compile": False}},
    "quick": {"model": {"name": "resnet", "image_size": 24, "widths": [32, 64, 128], "blocks": [1, 1, 1]},
              "train": {"epochs": 40, "batch_size": 64, "lr": 3e-3}},
    "full": {"model": {"name": "resnet", "image_size": 32, "widths": [64, 128, 256], "blocks": [2, 2, 2],
                       "dropout": 0.1},
             "data": {"drawings": 200},
             "train": {"epochs": 150, "batch_size": 128, "lr": 2e-3, "warmup_epochs": 5.0}},
}


# ---------------------------------------------------------------------------------------------
# Pre-processing inside the graph: crop to the ink (a drawing and a scan meet here)

SUPERSAMPLE = 4  # the crop is sampled at this many points per output pixel, then averaged
INK_LEVEL = 0.5  # a pixel is ink for the bounding box above this share of the image's own contrast
MIN_CONTRAST = 0.25  # contrast is stretched at most 1 / MIN_CONTRAST times (a faint smudge stays faint)
STRAY = 0.02  # the box leaves out up to this share of the ink on each side (a stray dot or speck)
MARGIN = 1.15  # paper side / the ink's longer side, as the scans were framed
MIN_SIDE = 0.1  # of the image's longer side: a dot is not blown up to fill the paper


def crop_to_ink(ink: torch.Tensor, size: int) -> torch.Tensor:
    """ink (N, c, H, W) in [0, 1] (0 = white) -> (N, c, size, size): each image's ink, measured from
    its own paper and stretched to its own contrast, cropped to the box that holds its ink (but for
    STRAY of it on each side), centred on a square of paper MARGIN times the box's longer side, and
    resized. An image with no ink keeps its whole frame. Standard ONNX ops only (ReduceMean/Max,
    CumSum, GridSample, AveragePool), valid for a batch of images of one size."""
    h, w = ink.shape[2], ink.shape[3]
    # the paper: the mean of the pixels lighter than the image's mean (robust to the bright halo
    # that sharpening resamplers leave around strokes on grey paper, which the lightest pixel is not)
    mean = ink.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    light = (ink <= mean).to(ink.dtype)
    paper = (ink * light).sum(dim=(1, 2, 3), keepdim=True) / light.sum(dim=(1, 2, 3), keepdim=True)
    contrast = (ink.amax(dim=(1, 2, 3), keepdim=True) - paper).clamp_min(MIN_CONTRAST)
    mask = ((ink.amax(dim=1) - paper[:, 0]) / contrast[:, 0] > INK_LEVEL).to(ink.dtype)  # (N, H, W)

    def extent(profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) ink per row or column -> start and end (N,) of the span that holds all but STRAY of
        the ink on each side, to a fraction of a pixel (so a scan and its enlargement agree); no
        ink: 0 and L."""
        after = profile.cumsum(dim=1)  # (N, L): ink up to and including each row
        total = after[:, -1:]  # (N, 1)
        before = after - profile
        cut, rows = STRAY * total, profile.clamp_min(1e-6)
        start = ((cut - before) / rows).clamp(0.0, 1.0).sum(dim=1)  # whole rows, then the part of one
        end = ((cut - (total - after)) / rows).clamp(0.0, 1.0).sum(dim=1)  # the same from the other side
        return start, profile.shape[1] - end

    y0, y1 = extent(mask.sum(dim=2))  # (N,) rows
    x0, x1 = extent(mask.sum(dim=1))  # (N,) columns
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2  # (N,) centre in input pixels
    side = (torch.maximum(y1 - y0, x1 - x0) * MARGIN).clamp_min(MIN_SIDE * torch.sym_max(h, w))  # (N,) paper side
    k = size * SUPERSAMPLE
    u = (torch.arange(k, device=ink.device, dtype=ink.dtype) + 0.5) / k - 0.5  # (k,) in (-1/2, 1/2)
    gx = 2 * (cx[:, None] + u[None, :] * side[:, None]) / w - 1  # (N, k) grid_sample's [-1, 1]
    gy = 2 * (cy[:, None] + u[None, :] * side[:, None]) / h - 1  # (N, k)
    grid = torch.stack([gx[:, None, :].expand(-1, k, -1), gy[:, :, None].expand(-1, -1, k)], dim=-1)  # (N, k, k, 2)
    crop = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N, c, k, k)
    crop = ((crop - paper) / contrast).clamp(0.0, 1.0)  # paper 0, darkest ink 1; outside the image: paper
    return F.avg_pool2d(crop, SUPERSAMPLE)  # (N, c, size, size)


class Preprocess(nn.Module):
    """uint8 or float images (N, H, W, C) in [0, 255] -> normalized float (N, c, S, S).

    Two steps, so that training can augment between them: the call turns any image into the
    network's S x S view in [0, 1] (paper 1, ink 0), :meth:`normalize` standardizes it. A grey
    network (c = 1) averages whatever channels come in. With ``crop`` (digits) the view is cropped
    to the ink, as the digits were scanned: a raw 280x280 drawing and an 8x8 scan meet here, inside
    the graph, so every app that embeds ``model.onnx`` gets the same.
    """

    def __init__(self, in_chans: int, size: int, crop: bool = False):
        super().__init__()
        self.in_chans, self.size, self.crop = in_chans, size, crop
        self.register_buffer("mean", torch.full((1, in_chans, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_chans, 1, 1), 0.5))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """images (N, H, W, C) in [0, 255] -> the view (N, c, S, S) in [0, 1]."""
        x = image.float() / 255.0  # (N, H, W, C)
        if self.in_chans == 1:
            x = x.mean(dim=-1, keepdim=True)  # (N, H, W, 1)
        x = channels_first(x)  # (N, c, H, W)
        if self.crop:
            return 1.0 - crop_to_ink(1.0 - x, self.size)  # (N, c, S, S)
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)

    def normalize(self, view: torch.Tensor) -> torch.Tensor:
        return (view - self.mean) / self.std  # (N, c, S, S)

    @torch.no_grad()
    def fit(self, images: np.ndarray) -> None:
        """Set mean/std per channel from training images (N, H, W, C) uint8."""
        x = self(torch.from_numpy(images[:2048]))  # [0, 1], the network's view
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))


class ImageClassifier(nn.Module):
    """images (N, H, W, C) -> logits (N, K); ``augment`` (training) changes the network's view."""

    def __init__(self, net: nn.Module, in_chans: int, size: int, crop: bool = False):
        super().__init__()
        self.preprocess = Preprocess(in_chans, size, crop)
        self.net = net

    def forward(self, image: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        view = self.preprocess(image)  # (N, c, S, S) in [0, 1]
        if augment is not None:
            view = augment(view)
        return self.net(self.preprocess.normalize(view))


class Deployable(nn.Module):
    """What is exported: ``image`` uint8 (N, H, W, C) -> ``probs`` float32 (N, K)."""

    def __init__(self, classifier: ImageClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(image).float(), dim=-1)


# ---------------------------------------------------------------------------------------------
# Training


def make_training_step(cfg: RunConfig):
    """The training step: images -> the network's view, augmented at data.augment -> cross-entropy."""
    level = cfg.data.augment_level

    def training_step(model: nn.Module, batch, device: torch.device, generator: torch.Generator):
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        logits = model(images, augment=lambda view: augment(view, generator, level))
        return F.cross_entropy(logits.float(), labels), labels.numel()

    return training_step


@torch.inference_mode()
def evaluate(model: nn.Module, data_set: Dataset, device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (percent) over ``data_set``."""
    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for i in range(0, len(data_set), batch_size):
        images, labels = data_set[i : i + batch_size]
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(-1) == labels).sum().item()
        count += labels.numel()
    model.train(was_training)
    return {"loss": loss / count, "accuracy": 100.0 * correct / count}




def _resized(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, S, S, 1) drawings resized to ``side`` a side (a set holds images of one size)."""
    from PIL import Image

    if images.shape[1] == side:
        return images
    return np.stack([np.asarray(Image.fromarray(i[..., 0]).resize((side, side), Image.Resampling.BOX))
                     for i in images])[..., None]


@functools.lru_cache(maxsize=4)
def drawn_sets(per_class: int = DRAWN_PER_CLASS) -> tuple[EvalSet, ...]:
    """Digits as people draw them (none ever trained on), scored and judged beside the test split:
    the sketchpad drawings, a second hand drawn by another generator, wide and round digits by both
    hands, and typed digits."""
    drawn = drawn_digits(per_class)
    half = max(1, per_class // 2)
    hand2, fonts = other_hand_digits(half), font_digits(half)
    one, two = drawn_digits(half, seed=WIDE_SEEDS[0], widths=WIDE), other_hand_digits(half, seed=WIDE_SEEDS[1], widths=WIDE)
    wide = ImageSplit(np.concatenate([one.images, _resized(two.images, one.images.shape[1])]),
                      np.concatenate([one.labels, two.labels]))
    return (EvalSet("drawn", f"{len(drawn)} digits drawn as on the 280x280 sketchpad (pipeline/data/drawn.py, "
                    "seed 2026)", drawn, len(drawn), scored=True),
            EvalSet("hand2", f"{len(hand2)} digits by a second hand: other strokes, pen pressure, tremor, a 360x360 "
                    "canvas (drawn.other_hand_digits)", hand2, len(hand2), scored=True),
            EvalSet("wide", f"{len(wide)} wide and round digits ({WIDE[0]}-{WIDE[1]} times a style's width) by "
                    "both hands, half each", wide, len(wide), scored=True),
            EvalSet("fonts", f"{len(fonts)} typed digits in matplotlib's fonts at random size, place, angle and "
                    "weight (drawn.font_digits)", fonts, len(fonts), scored=True))


# ---------------------------------------------------------------------------------------------
# The task


class Classify(Task):
    """Image classification. Graph ``model``: ``image`` uint8 (N, H, W, C) of any size -> ``probs`` (N, K)."""

    name = "classify"
    quick_minutes = 5.0  # train, export, optimize, benchmark (measured)
    architectures = ("mlp", "lenet", "resnet", "vit")
    default_model = "resnet"
    presets = PRESETS
    metric = Metric("accuracy", "max", tolerance=0.5, unit="%")
    DataConfig = DataConfig
    usage = """```python
import numpy as np, onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("model.onnx")
labels = session.get_modelmeta().custom_metadata_map["labels"].split(",")
image = np.asarray(Image.open("digit.png").convert("L"))[None, :, :, None]  # uint8 [1, H, W, 1]
probs = session.run(["probs"], {"image": image})[0][0]
print(labels[int(probs.argmax())], float(probs.max()))
```"""

    # -- data and model ------------------------------------------------------------------------

    def load_data(self, cfg: RunConfig) -> ImageData:
        d = cfg.data
        fractions = (d.val_fraction, d.test_fraction)
        if d.source == "digits":
            if d.channels != 1:
                raise PipelineError("the digits are grey: use data.channels=1 with data.source=digits")
            data = load_digits(fractions, d.split_seed)
            if d.drawings:  # sketchpad-style drawings of a training seed, scanned as the digits were
                extra = scanned(drawn_digits(d.drawings, seed=TRAIN_DRAWING_SEED + d.split_seed, hand=0.07,
                                             widths=NARROW if d.drawing_shapes == "narrow" else TRAIN_WIDTHS,
                                             training=d.drawing_shapes == "all"))
                data.train = ImageSplit(np.concatenate([data.train.images, extra.images]),
                                        np.concatenate([data.train.labels, extra.labels]))
                data.source += f" + {len(extra)} scanned drawings"
            return data
        return load_image_folder(d.source, d.channels, d.load_size, fractions, d.split_seed)

    def describe_data(self, data: ImageData) -> str:
        return f"{data.source} [{len(data.train)} train / {len(data.val)} val / {len(data.test)} test]"

    def complete_config(self, data: ImageData, cfg: RunConfig) -> RunConfig:
        return with_model_fields(cfg, in_chans=cfg.data.channels, num_classes=len(data.class_names))

    def build_model(self, data: ImageData | None, cfg: RunConfig) -> ImageClassifier:
        """With ``data``, the normalization statistics come from its training split."""
        net = models.create_model(cfg.model_name, cfg.model)
        model = ImageClassifier(net, cfg.model.in_chans, cfg.model.image_size, cfg.data.crop_to_ink)
        if data is not None:
            model.preprocess.fit(data.train.images)
        return model

    def dataset(self, data: ImageData, split: str, cfg: RunConfig) -> Dataset:
        part: ImageSplit = getattr(data, split)
        return TensorDataset(torch.from_numpy(part.images), torch.from_numpy(part.labels))

    def make_training_step(self, cfg: RunConfig):
        return make_training_step(cfg)

    def evaluate(self, model: nn.Module, data_set: Dataset, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        return evaluate(model, data_set, device)

    # -- export, verification, benchmark ----------------------------------------------------------

    def contract(self, cfg: RunConfig) -> ExportContract:
        chans: str | int = "channels" if cfg.model.in_chans == 1 else cfg.model.in_chans
        dims = {"batch": DimRange(1, 32, 1024), "height": DimRange(8, 28, 4096), "width": DimRange(8, 28, 4096)}
        if chans == "channels":
            dims["channels"] = DimRange(1, 1, 4)
        return ExportContract(
            inputs=(TensorSpec("image", "uint8", ("batch", "height", "width", chans), "pixels in [0, 255], any size; "
                               + ("dark ink on light paper, sent as drawn or scanned: the graph crops each image to its "
                                  "ink and centres it" if cfg.data.crop_to_ink else "resized inside")),),
            outputs=(TensorSpec("probs", "float32", ("batch", cfg.model.num_classes), "class probabilities, sum 1"),),
            dims=dims,
            parity=(Bound("max_abs_diff", "<=", 1e-4), Bound("top1_agreement", ">=", 1.0)),
            exact=("classifier.preprocess",),  # the crop's box and contrast stay exact in fp16 and int8
        )

    def graphs(self, model: ImageClassifier, data: ImageData, cfg: RunConfig) -> dict[str, Graph]:
        metadata = {
            "task": self.name,
            "labels": ",".join(data.class_names),
            "architecture": cfg.model_name,
            "inputs": "image: uint8 [N,H,W,C], pixels 0..255, any size ("
                      + ("dark ink on light paper, cropped to the ink and resized inside" if cfg.data.crop_to_ink
                         else "resized inside") + "); "
                      + ("grey network: any channel count is averaged" if cfg.model.in_chans == 1 else "RGB"),
            "outputs": f"probs: float32 [N,{cfg.model.num_classes}], softmax over labels in order",
            "data": data.source,
        }
        example = {"image": torch.from_numpy(data.test.images[:2])}
        return {"model": Graph(Deployable(model), self.contract(cfg), example, metadata)}

    def eval_sets(self, data: ImageData, cfg: RunConfig, scale: int = 4) -> list[EvalSet]:
        """The test split, and the same images as inputs the network never saw in training: enlarged
        (nearest) ``scale`` times, so the graph's antialiased resize shrinks them, and in RGB."""
        big = np.kron(data.test.images, np.ones((1, scale, scale, 1), dtype=np.uint8))
        if big.shape[-1] == 1:
            big = np.repeat(big, 3, axis=-1)
        sets = [EvalSet("test", "the held-out test split", data.test, len(data.test)),
                EvalSet("stress", f"the test split enlarged {scale}x, RGB", ImageSplit(big, data.test.labels),
                        len(data.test))]
        if data.class_names == DIGITS:  # a digit model is also scored on digits drawn as on the sketchpad
            sets += drawn_sets(cfg.data.held_out_drawings)  # generated once per process and size
        return sets

    def infer(self, runners, items: ImageSplit, cfg: RunConfig) -> np.ndarray:
        """probs (N, K) of every image, EVAL_BATCH images per graph call."""
        run = runners["model"]
        return np.concatenate([run({"image": items.images[i : i + EVAL_BATCH]})["probs"]
                               for i in range(0, len(items), EVAL_BATCH)])

    def score(self, outputs: np.ndarray, items: ImageSplit, cfg: RunConfig) -> dict[str, float]:
        return {"accuracy": 100.0 * float((outputs.argmax(-1) == items.labels).mean())}

    def parity(self, reference: np.ndarray, candidate: np.ndarray, items=None) -> dict[str, float]:
        a, b = reference.astype(np.float64), candidate.astype(np.float64)
        return {"max_abs_diff": float(np.abs(a - b).max()),
                "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean())}

    def calibration(self, data: ImageData, samples: int, cfg: RunConfig) -> dict[str, Iterator[dict]]:
        images = data.train.images[:samples]
        return {"model": ({"image": images[i : i + 32]} for i in range(0, len(images), 32))}

    def benchmark_cases(self, data: ImageData, cfg: RunConfig) -> list[BenchCase]:
        cases = []
        for n in cfg.benchmark.batch_sizes:
            idx = np.arange(n) % len(data.test)
            cases.append(BenchCase({"batch": n}, ImageSplit(data.test.images[idx], data.test.labels[idx]), n))
        return cases

    def examples(self, data: ImageData, cfg: RunConfig, per_class: int = 2, scale: int = 8) -> list[tuple[str, bytes]]:
        """Held-out test images as PNG files, ``per_class`` of each label, enlarged (nearest) to be seen."""
        from PIL import Image

        out = []
        for c, label in enumerate(data.class_names):
            for i in np.flatnonzero(data.test.labels == c)[:per_class]:
                image = data.test.images[i]
                if image.shape[0] < 64:
                    image = np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8))
                buf = io.BytesIO()
                Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
                out.append((f"{label}_{i}.png", buf.getvalue()))
        return out

    def info(self, data: ImageData, cfg: RunConfig) -> dict:
        return {"labels": list(data.class_names)}
