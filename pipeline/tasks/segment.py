"""Semantic segmentation: a U-Net on scenes of digits, argmax inside the graph.

Graph ``model``: ``image`` uint8 (N, H, W, 3) of any size -> ``mask`` uint8 (N, H, W) (0 background,
1 + class) and ``probs`` float32 (N, K + 1, H, W), both at the input's resolution. Metric: mean IoU
over the classes (background included) from the confusion matrix of the whole set.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from export.contract import Bound, DimRange, ExportContract, TensorSpec
from models.unet import UNet
from pipeline.data.scenes import SceneData, load_mask_folder
from pipeline.tasks.base import Graph, Metric, RunConfig
from pipeline.tasks.scenes import IGNORE, INT8, SIDE, SceneTask, ScenePreprocess, batches

PRESETS = {
    "smoke": {"model": {"widths": [8, 16, 24], "blocks": [1, 1, 1], "full": 8},
              "data": {"train_scenes": 64, "val_scenes": 8, "test_scenes": 16, "stress_scenes": 4, "held_out_scenes": 4},
              "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.0},
              "optimize": {"calibration_samples": 16, **INT8}, "benchmark": {"batch_sizes": [1, 4], "seconds": 0.1, "torch_compile": False}},
    "quick": {"data": {"train_scenes": 8000},
              "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.2}, "optimize": INT8},
    "full": {"model": {"widths": [32, 64, 128, 256], "blocks": [1, 2, 2, 2]}, "data": {"train_scenes": 40000},
             "train": {"epochs": 30, "batch_size": 32, "lr": 2e-3, "warmup_epochs": 1.0}, "optimize": INT8},
}


class Segmenter(nn.Module):
    """images uint8 (N, H, W, 3) -> logits (N, K, H, W) at the images' own size."""

    def __init__(self, net: UNet):
        super().__init__()
        self.preprocess = ScenePreprocess(net.stride)
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.net(self.preprocess(image))  # (N, K, H', W'), padded
        return logits[:, :, : image.shape[1], : image.shape[2]]


class MaskOutput(nn.Module):
    """logits (N, K, H, W) -> mask uint8 (N, H, W) (argmax) and probs (N, K, H, W) (softmax over K).
    The softmax is written out: ONNX Runtime's Softmax over axis 1 transposes the whole tensor and
    took a quarter of the graph's time at 128x128."""

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        e = torch.exp(logits - logits.amax(1, keepdim=True))
        return logits.argmax(1).to(torch.uint8), e / e.sum(1, keepdim=True)


class Deployable(nn.Module):
    """What is exported: ``image`` -> ``mask``, ``probs``."""

    def __init__(self, segmenter: Segmenter):
        super().__init__()
        self.segmenter = segmenter
        self.postprocess = MaskOutput()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.postprocess(self.segmenter(image))


def dice_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - the soft Dice coefficient of the object classes (background left out), pooled over the
    batch: unlike per-pixel cross-entropy it weighs a class by its overlap, not by its pixel count
    (digits cover about a tenth of a scene). logits (N, K, H, W), masks (N, H, W) with IGNORE."""
    keep = (masks != IGNORE)[:, None]  # (N, 1, H, W)
    probs = torch.softmax(logits.float(), 1) * keep
    target = F.one_hot(masks.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * keep
    inter = (probs * target).sum((0, 2, 3))[1:]  # (K - 1,)
    total = (probs + target).sum((0, 2, 3))[1:]
    present = target.sum((0, 2, 3))[1:] > 0
    dice = (2 * inter + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean() if present.any() else logits.sum() * 0.0


def confusion(masks: list[np.ndarray], truths: list[np.ndarray], classes: int) -> np.ndarray:
    """(classes, classes) pixel counts, [truth, predicted], over every scene (IGNORE pixels left out)."""
    total = np.zeros((classes, classes), np.int64)
    for pred, truth in zip(masks, truths):
        keep = truth != IGNORE
        t, p = truth[keep].astype(np.int64), np.minimum(pred[keep].astype(np.int64), classes - 1)
        total += np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)
    return total


def mask_scores(masks: list[np.ndarray], truths: list[np.ndarray], classes: int) -> dict[str, float]:
    """Mean IoU (percent) over the classes present in truth or prediction, and pixel accuracy."""
    cm = confusion(masks, truths, classes)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = tp[present] / union[present]
    return {"miou": 100.0 * float(iou.mean()) if present.any() else float("nan"),
            "pixel_accuracy": 100.0 * float(tp.sum() / max(1, cm.sum()))}


class Segment(SceneTask):
    """Digit segmentation: ``image`` -> ``mask`` (0 background, 1 + digit), ``probs``."""

    name = "segment"
    quick_minutes = 12.9  # train, export, optimize, benchmark (measured; its last minutes shared the CPU)
    architectures = ("unet",)
    default_model = "unet"
    presets = PRESETS
    metric = Metric("miou", "max", tolerance=1.0, unit="%")
    usage = """```python
import numpy as np, onnxruntime as ort
from PIL import Image

session = ort.InferenceSession("model.onnx")
labels = session.get_modelmeta().custom_metadata_map["labels"].split(",")  # labels[0] = background
picture = np.asarray(Image.open("scene.png").convert("RGB"))
mask, probs = session.run(None, {"image": picture[None]})  # mask uint8 [1, H, W], probs [1, K, H, W]
for c in np.unique(mask[0]):
    print(labels[c], f"{(mask[0] == c).mean():.1%} of the pixels")
colours = np.random.default_rng(0).integers(0, 255, (len(labels), 3), dtype=np.uint8)
colours[0] = 0
Image.fromarray((picture * 0.5 + colours[mask[0]] * 0.5).astype(np.uint8)).save("overlay.png")
```"""

    wrapper = Segmenter
    user_loader = staticmethod(load_mask_folder)
    extra_classes = 1  # background

    def step(self, model: Segmenter, batch: dict, device: torch.device, generator: torch.Generator):
        """Cross-entropy per pixel plus the Dice loss of the object classes (measured: mIoU after 300
        steps 24% with it, 16% without)."""
        images = batch["images"].to(device, non_blocking=True)
        masks = batch["masks"].to(device, non_blocking=True).long()  # (N, H, W), IGNORE in padding
        logits = model(images)
        loss = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE) + dice_loss(logits, masks)
        return loss, images.shape[0]

    @torch.inference_mode()
    def evaluate(self, model: Segmenter, data_set: Dataset, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        was_training = model.training
        model.eval()
        scenes = data_set.scenes
        masks, loss, pixels = [], 0.0, 0
        for index, images in batches(scenes):
            logits = model(torch.from_numpy(images).to(device)).float()
            truth = torch.from_numpy(np.stack([scenes[i].mask for i in index])).to(device).long()
            loss += F.cross_entropy(logits, truth, ignore_index=IGNORE, reduction="sum").item()
            pixels += int((truth != IGNORE).sum())
            masks += list(logits.argmax(1).to(torch.uint8).cpu().numpy())
        model.train(was_training)
        return {**mask_scores(masks, [s.mask for s in scenes], model.net.cfg.num_classes), "loss": loss / max(1, pixels)}

    # -- export, verification, benchmark ----------------------------------------------------------

    def contract(self, cfg: RunConfig) -> ExportContract:
        k = cfg.model.num_classes
        return ExportContract(
            inputs=(TensorSpec("image", "uint8", ("batch", "height", "width", 3), "RGB pixels in [0, 255], any size"),),
            outputs=(TensorSpec("mask", "uint8", ("batch", "height", "width"), "class per pixel, 0 background"),
                     TensorSpec("probs", "float32", ("batch", k, "height", "width"), "class probabilities per pixel")),
            dims={"batch": DimRange(1, 8, 256), "height": SIDE, "width": SIDE},
            parity=(Bound("mask_agreement", ">=", 0.999),),
            exact=("segmenter.preprocess", "postprocess"),
        )

    def graphs(self, model: Segmenter, data: SceneData, cfg: RunConfig) -> dict[str, Graph]:
        k = cfg.model.num_classes
        metadata = {
            "task": self.name, "labels": ",".join(["background", *data.class_names]), "architecture": cfg.model_name,
            "inputs": "image: uint8 [N,H,W,3] RGB, any size",
            "outputs": f"mask: uint8 [N,H,W], index into labels (0 background); probs: float32 [N,{k},H,W]",
            "data": data.source,
        }
        example = {"image": torch.from_numpy(np.stack([data.test[0].image, data.test[0].image]))}
        return {"model": Graph(Deployable(model), self.contract(cfg), example, metadata)}

    def infer(self, runners, items, cfg: RunConfig) -> list[np.ndarray]:
        run, out = runners["model"], []
        for _, images in batches(items):
            out += list(run({"image": images})["mask"])
        return out

    def score(self, outputs: list[np.ndarray], items, cfg: RunConfig) -> dict[str, float]:
        return mask_scores(outputs, [s.mask for s in items], cfg.model.num_classes)

    def parity(self, reference: list[np.ndarray], candidate: list[np.ndarray], items=None) -> dict[str, float]:
        same = sum(int((a == b).sum()) for a, b in zip(reference, candidate))
        return {"mask_agreement": same / max(1, sum(a.size for a in reference))}

    def calibration(self, data: SceneData, samples: int, cfg: RunConfig):
        return {"model": ({"image": images} for images in self.calibration_images(data, samples))}

    def bench_call(self, runners, case, cfg: RunConfig):
        feeds, run = {"image": np.stack([s.image for s in case.items])}, runners["model"]
        return lambda: run(feeds)["mask"]

    def describe_output(self, output: np.ndarray, names: list[str]) -> str:
        counts = np.bincount(output.ravel(), minlength=len(names) + 1)
        shown = [f"{names[c - 1]} ({counts[c] / output.size:.1%})" for c in np.argsort(-counts) if c > 0 and counts[c]]
        return "labelled " + (", ".join(shown) or "nothing") + " of the pixels"

    def info(self, data: SceneData, cfg: RunConfig) -> dict:
        return {"labels": ["background", *data.class_names]}
