"""What detection and segmentation share: scenes as data (built-in or the user's), the graph's
pre-processing, batching, held-out sets, calibration, benchmark cases and example files.

Both graphs take ``image`` uint8 (N, H, W, 3) of any size (within the contract's range) and run the
network at the image's own resolution: digits keep the pixel size they were trained at, whatever the
scene's size. Inside: scaling to [0, 1], normalization, and padding right and bottom to a multiple of
the network's stride (padding reads as the mean colour).
"""
from __future__ import annotations

import io
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import models
from models.layers import channels_first
from export.contract import DimRange
from pipeline.data.images import load_digits
from pipeline.data.scenes import HELD_OUT_WORDS, Scene, SceneData, generated
from pipeline.errors import PipelineError
from pipeline.tasks.base import BenchCase, BenchmarkConfig, EvalSet, RunConfig, Task, with_model_fields

EVAL_BATCH = 16  # scenes per graph call when scoring and checking parity
IGNORE = 255  # mask value of padding: no class, no loss
# the graphs' image sides: a 1x1 image is refused with a clear line rather than read as a scene; 40
# and more pad to at least two cells of the deepest map (the exported graph is valid for all of them)
SIDE = DimRange(40, 128, 2048)
# INT8 quantizes the arithmetic only (Conv, MatMul, Gemm): with the quantizer's default set, the raw
# scores and box offsets that feed the exact post-processing were quantized too (detect mAP@0.5 95.8 -> 41.8)
INT8 = {"int8_ops": ["Conv", "MatMul", "Gemm"]}


@dataclass
class SceneDataConfig:
    # (str) "scenes": composed from scikit-learn's digit scans (pipeline/data/scenes.py); otherwise
    # the user's data: detect takes a COCO json (images beside it or in images/), segment a folder
    # with images/ and masks/ (PNG, pixel value = class, 0 background; classes.txt names them)
    source: str = "scenes"
    train_scenes: int = 12000  # (int) built-in scenes per epoch of training (drawn lazily, each its own seed)
    val_scenes: int = 100  # (int) built-in validation scenes
    test_scenes: int = 500  # (int) built-in held-out scenes the metric is measured on
    stress_scenes: int = 200  # (int) built-in scenes of a composition never trained on (other sizes, backgrounds)
    # (int) built-in scenes in each held-out set of what people make (pipeline/data/scenes.py,
    # HELD_OUT_STYLES): "drawn" (pen drawings by a hand no network trains on), "photo" (a photo of
    # paper), "large" (digits up to a third of the image); 0: none
    held_out_scenes: int = 200
    # (str) the built-in training scenes: "people" (scans and pen drawings, 12-88 px, plain, ruled and
    # squared paper, a third photographed), "scans" (the enlarged scans alone, 12-48 px: before issue 28)
    train_style: Literal["people", "scans"] = "people"
    scene_seed: int = 0  # (int) seeds the scenes
    val_fraction: float = 0.1  # (float) share of the scans (or the user's images) for validation
    test_fraction: float = 0.2  # (float) share of the scans (or the user's images) held out for testing
    split_seed: int = 0  # (int) fixes the split

    def __post_init__(self):
        for name in ("train_scenes", "val_scenes", "test_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.stress_scenes, self.held_out_scenes, self.scene_seed, self.split_seed) < 0:
            raise ValueError("stress_scenes, held_out_scenes, scene_seed and split_seed must be >= 0")
        if not (0 <= self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")


@dataclass
class SceneBenchmarkConfig(BenchmarkConfig):
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # (list[int]) scenes per call (held-out 128x128 scenes)


class ScenePreprocess(nn.Module):
    """image uint8 (N, H, W, 3) -> normalized (N, 3, H', W'), H' and W' the sides padded up to a
    multiple of ``stride`` (the padding is 0, the mean colour)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = channels_first(image).float() / 255.0  # (N, 3, H, W)
        x = (x - self.mean) / self.std
        h, w, s = x.shape[2], x.shape[3], self.stride
        # the sides rounded up by floor division: inductor (torch 2.13, dynamic shapes) fails on the
        # modulo of a symbolic size ("TensorReferenceAnalysis has no attribute python_mod")
        return F.pad(x, (0, (w + s - 1) // s * s - w, 0, (h + s - 1) // s * s - h))  # (N, 3, H', W')

    @torch.no_grad()
    def fit(self, scenes: Sequence[Scene], count: int = 256) -> None:
        """Mean and std per channel from training scenes."""
        pixels = np.concatenate([scenes[i].image.reshape(-1, 3) for i in range(min(count, len(scenes)))])
        x = torch.from_numpy(pixels).float() / 255.0
        self.mean.copy_(x.mean(0).view(1, 3, 1, 1))
        self.std.copy_(x.std(0).clamp_min(1e-3).view(1, 3, 1, 1))


class SceneDataset(Dataset):
    """Scenes as (image uint8 (H, W, 3), boxes (n, 4), labels (n,), mask (H, W) or None) tensors."""

    def __init__(self, scenes: Sequence[Scene]):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int):
        s = self.scenes[i]
        mask = None if s.mask is None else torch.from_numpy(s.mask)
        return torch.from_numpy(s.image), torch.from_numpy(s.boxes), torch.from_numpy(s.labels), mask


def collate_scenes(items: list) -> dict[str, Any]:
    """Scenes of any sizes -> images (N, H, W, 3) uint8 padded right and bottom to the largest (with
    the training scenes' mean grey), boxes and labels as lists, masks (N, H, W) (IGNORE in padding)."""
    h = max(it[0].shape[0] for it in items)
    w = max(it[0].shape[1] for it in items)
    images = torch.full((len(items), h, w, 3), 128, dtype=torch.uint8)
    masks = torch.full((len(items), h, w), IGNORE, dtype=torch.uint8)
    for i, (image, _, _, mask) in enumerate(items):
        images[i, : image.shape[0], : image.shape[1]] = image
        if mask is not None:
            masks[i, : mask.shape[0], : mask.shape[1]] = mask
    return {"images": images, "boxes": [it[1] for it in items], "labels": [it[2] for it in items],
            "masks": masks if items[0][3] is not None else None}


def batches(scenes: Sequence[Scene], size: int = EVAL_BATCH) -> Iterator[tuple[list[int], np.ndarray]]:
    """Indices and stacked images (n, H, W, 3) of scenes of one size, at most ``size`` at a time, in order."""
    start = 0
    while start < len(scenes):
        shape = scenes[start].image.shape
        end = start + 1
        while end < len(scenes) and end - start < size and scenes[end].image.shape == shape:
            end += 1
        yield list(range(start, end)), np.stack([scenes[i].image for i in range(start, end)])
        start = end


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class SceneTask(Task):
    """What detection and segmentation share; a subclass names its network wrapper, how the user's
    data is read, and its training step (:meth:`step`)."""

    DataConfig = SceneDataConfig
    BenchmarkConfig = SceneBenchmarkConfig
    train_unit = "images"
    bench_unit = "images"
    collate = staticmethod(collate_scenes)
    # the trainable module: network -> images uint8 (N, H, W, 3) in, with ScenePreprocess as .preprocess
    wrapper: ClassVar[Callable[[nn.Module], nn.Module]]
    # data.source (a path) -> SceneData: a COCO json, a folder of images and masks
    user_loader: ClassVar[Callable[[str, tuple[float, float], int], SceneData]]
    extra_classes: ClassVar[int] = 0  # the network's classes beyond the labels (segment: background)

    @abstractmethod
    def step(self, model: nn.Module, batch: dict, device: torch.device, generator: torch.Generator):
        """The training step on a collated batch (:func:`collate_scenes`): (loss, images)."""

    def make_training_step(self, cfg: RunConfig):
        return self.step

    def complete_config(self, data: SceneData, cfg: RunConfig) -> RunConfig:
        return with_model_fields(cfg, num_classes=len(data.class_names) + self.extra_classes)

    def build_model(self, data: SceneData | None, cfg: RunConfig) -> nn.Module:
        """With ``data``, the normalization statistics come from its training scenes."""
        model = self.wrapper(models.create_model(cfg.model_name, cfg.model))
        if data is not None:
            model.preprocess.fit(data.train)
        return model

    def load_data(self, cfg: RunConfig) -> SceneData:
        d = cfg.data
        if d.source != "scenes":
            return type(self).user_loader(d.source, (d.val_fraction, d.test_fraction), d.split_seed)
        digits = load_digits((d.val_fraction, d.test_fraction), d.split_seed)
        splits = (digits.train, digits.val, digits.test)
        return generated(tuple(s.images for s in splits), tuple(s.labels for s in splits),
                         (d.train_scenes, d.val_scenes, d.test_scenes), d.scene_seed, d.stress_scenes,
                         d.held_out_scenes, d.train_style)

    def describe_data(self, data: SceneData) -> str:
        return data.source

    def dataset(self, data: SceneData, split: str, cfg: RunConfig) -> Dataset:
        return SceneDataset(getattr(data, split))

    def eval_sets(self, data: SceneData, cfg: RunConfig) -> list[EvalSet]:
        sets = [EvalSet("test", "held-out scenes (128x128, 1-6 digits, test-split scans)" if cfg.data.source == "scenes"
                        else "the held-out share of the images", data.test, len(data.test))]
        if len(data.stress):
            sets.append(EvalSet("stress", "scenes of a composition never trained on: 224x160, 4-10 digits, checkered, "
                                "speckled and streaked backgrounds (test-split scans)", data.stress, len(data.stress),
                                scored=True))
        sets += [EvalSet(name, HELD_OUT_WORDS[name], scenes, len(scenes), scored=True)
                 for name, scenes in data.held_out.items()]  # (built-in scenes only; none when held_out_scenes=0)
        return sets

    def benchmark_cases(self, data: SceneData, cfg: RunConfig) -> list[BenchCase]:
        first = data.test[0].image.shape
        same = [s for s in data.test if s.image.shape == first]
        cases = []
        for n in cfg.benchmark.batch_sizes:
            cases.append(BenchCase({"batch": n}, [same[i % len(same)] for i in range(n)], n))
        return cases

    def calibration_images(self, data: SceneData, samples: int) -> Iterator[np.ndarray]:
        scenes = [data.train[i] for i in range(min(samples, len(data.train)))]
        for _, images in batches(scenes, 16):
            yield images

    @abstractmethod
    def describe_output(self, output: Any, names: list[str]) -> str:
        """One scene's served output in words (for the samples)."""

    def samples(self, runners, data: SceneData, cfg: RunConfig) -> list[dict[str, str]]:
        """What the exported model finds on a few held-out and stress scenes, beside the truth."""
        picked = [("test", i, data.test[i]) for i in range(min(3, len(data.test)))]
        picked += [("stress", i, data.stress[i]) for i in range(min(2, len(data.stress)))]
        outputs = self.infer(runners, [s for _, _, s in picked], cfg)
        return [{"prompt": f"{name} scene {i} ({'x'.join(map(str, s.image.shape[1::-1]))}) holding "
                           f"{', '.join(data.class_names[c] for c in s.labels) or 'nothing'}: ",
                 "continuation": self.describe_output(out, data.class_names)}
                for (name, i, s), out in zip(picked, outputs)]

    def examples(self, data: SceneData, cfg: RunConfig, count: int = 12) -> list[tuple[str, bytes]]:
        """Held-out scenes as PNG files, named by what they hold (the app's "new scene" draws from them)."""
        out = []
        for name, scenes in (("test", data.test), ("stress", data.stress), *data.held_out.items()):
            for i in range(min(count if name == "test" else count // 3, len(scenes))):
                digits = "-".join(data.class_names[c] for c in scenes[i].labels) or "empty"
                out.append((f"{name}{i:02d}_{digits}.png", png(scenes[i].image)))
        if not out:
            raise PipelineError("no held-out scenes to show")
        return out
