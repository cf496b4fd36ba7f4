"""Object detection: SSD on scenes of digits, with decoding and NonMaxSuppression inside the graph.

Graph ``model``: ``image`` uint8 (N, H, W, 3) of any size, ``score_threshold`` and ``iou_threshold``
float32 scalars (set at run time) -> the layout of TensorRT's EfficientNMS: ``num_detections`` int64
(N,), ``boxes`` float32 (N, K, 4) x1 y1 x2 y2 in input pixels, ``scores`` float32 (N, K), ``labels``
int64 (N, K); image i's detections are its first num_detections[i] rows, best first, and the rest
is padding (boxes and scores 0, labels -1). Metrics: COCO mAP@0.5 and mAP@0.5:0.95 from pycocotools.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from export.contract import Bound, DimRange, ExportContract, TensorSpec
from export.verify import TorchRunner
from export.ops import nms  # noqa: F401 - registers torch.ops.littlebook.nms
from models.ssd import SSD, decode, encode, match
from pipeline.data.scenes import SceneData, load_coco
from pipeline.tasks.base import Graph, Metric, RunConfig
from pipeline.tasks.scenes import INT8, SIDE, SceneTask, ScenePreprocess, batches

MAX_DETECTIONS = 100  # K: rows per image in the outputs (and most boxes kept per class)
EVAL_SCORE = 0.05  # mAP is measured on every detection above this score (the whole precision-recall curve)
NEGATIVES_PER_POSITIVE = 3  # hard negative mining (SSD): the most confident background mistakes, 3 per object
MATCH_IOU = 0.5  # a default box is responsible for an object it overlaps this much
PARITY_SCORE = 0.3  # boxes compared for parity: the reference's detections above this score


@dataclass
class DetectInference:
    score_threshold: float = 0.4  # (float) the served default: detections scoring above this are kept
    iou_threshold: float = 0.45  # (float) the served default: a box overlapping a better one of its class more is dropped

    def __post_init__(self):
        for name in ("score_threshold", "iou_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


PRESETS = {
    "smoke": {"model": {"widths": [8, 16, 24, 32], "extra": [32]},
              "data": {"train_scenes": 64, "val_scenes": 8, "test_scenes": 16, "stress_scenes": 4, "held_out_scenes": 4},
              "train": {"epochs": 2, "batch_size": 16, "lr": 3e-3, "warmup_epochs": 0.0},
              "optimize": {"calibration_samples": 16, **INT8}, "benchmark": {"batch_sizes": [1, 4], "seconds": 0.1, "torch_compile": False}},
    "quick": {"data": {"train_scenes": 12000},
              "train": {"epochs": 4, "batch_size": 32, "lr": 3e-3, "warmup_epochs": 0.2}, "optimize": INT8},
    "full": {"model": {"widths": [32, 64, 128, 192], "blocks": [1, 2, 2, 2], "extra": [192, 192], "levels": 4},
             "data": {"train_scenes": 60000},
             "train": {"epochs": 30, "batch_size": 64, "lr": 2e-3, "warmup_epochs": 1.0}, "optimize": INT8},
}


class Detector(nn.Module):
    """images uint8 (N, H, W, 3) -> class logits (N, B, K + 1), box offsets (N, B, 4), default boxes (B, 4)."""

    def __init__(self, net: SSD):
        super().__init__()
        self.preprocess = ScenePreprocess(net.stride)
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.preprocess(image)  # (N, 3, H', W')
        logits, offsets = self.net(x)
        return logits, offsets, self.net.default_boxes(x.shape[2], x.shape[3], x.device)


class DetectionOutput(nn.Module):
    """SSD's raw predictions -> EfficientNMS's padded layout: decode, softmax, per-class NMS (ONNX
    NonMaxSuppression), each image's best ``k`` detections."""

    def __init__(self, k: int = MAX_DETECTIONS):
        super().__init__()
        self.k = k

    def forward(self, logits: torch.Tensor, offsets: torch.Tensor, defaults: torch.Tensor, image: torch.Tensor,
                score_threshold: torch.Tensor, iou_threshold: torch.Tensor):
        n, h, w, k = image.shape[0], image.shape[1], image.shape[2], self.k
        boxes = decode(offsets.float(), defaults)  # (N, B, 4) in padded-input pixels
        limit = torch.stack([torch.scalar_tensor(w), torch.scalar_tensor(h)]).to(boxes.device).repeat(2)  # (4,) w h w h
        boxes = torch.minimum(boxes.clamp_min(0.0), limit)  # inside the image
        scores = torch.softmax(logits.float(), -1)[..., 1:].transpose(1, 2)  # (N, K, B), background dropped
        selected = torch.ops.littlebook.nms(boxes, scores, k, iou_threshold, score_threshold)  # (M, 3)
        b, c, i = selected[:, 0], selected[:, 1], selected[:, 2]
        s = scores[b, c, i]  # (M,)
        order = torch.argsort(b.double() * 2.0 - s.double())  # image by image, best first
        b, c, i, s = b[order], c[order], i[order], s[order]
        counts = torch.zeros(n, dtype=torch.int64, device=image.device).scatter_add(0, b, torch.ones_like(b))  # (N,)
        rank = torch.arange(b.shape[0], device=image.device) - (torch.cumsum(counts, 0) - counts)[b]  # (M,)
        keep = rank < k
        b, c, i, s, rank = b[keep], c[keep], i[keep], s[keep], rank[keep]
        out_boxes = torch.zeros(n, k, 4, device=image.device).index_put((b, rank), boxes[b, i])
        out_scores = torch.zeros(n, k, device=image.device).index_put((b, rank), s)
        out_labels = torch.full((n, k), -1, dtype=torch.int64, device=image.device).index_put((b, rank), c)
        return counts.clamp(max=k), out_boxes, out_scores, out_labels


class Deployable(nn.Module):
    """What is exported: image, score_threshold, iou_threshold -> num_detections, boxes, scores, labels."""

    def __init__(self, detector: Detector, k: int = MAX_DETECTIONS):
        super().__init__()
        self.detector = detector
        self.postprocess = DetectionOutput(k)

    def forward(self, image: torch.Tensor, score_threshold: torch.Tensor, iou_threshold: torch.Tensor):
        logits, offsets, defaults = self.detector(image)
        return self.postprocess(logits, offsets, defaults, image, score_threshold, iou_threshold)


# ---------------------------------------------------------------------------------------------
# Training


def multibox_loss(logits: torch.Tensor, offsets: torch.Tensor, defaults: torch.Tensor, boxes: list[torch.Tensor],
                  labels: list[torch.Tensor]) -> torch.Tensor:
    """SSD's loss: cross-entropy over every object's default boxes and the hardest background ones
    (NEGATIVES_PER_POSITIVE per object), plus smooth L1 on the objects' box offsets, per object."""
    targets, matched = zip(*(match(b, l, defaults, MATCH_IOU) for b, l in zip(boxes, labels)))
    targets, matched = torch.stack(targets), torch.stack(matched)  # (N, B), (N, B, 4)
    positive = targets > 0
    n_pos = positive.sum(1)  # (N,)
    k = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, k), targets.reshape(-1), reduction="none").view_as(targets)
    background = ce.detach().masked_fill(positive, -1.0)  # hard negatives: background boxes with the largest loss
    rank = background.argsort(1, descending=True).argsort(1)
    negative = rank < (NEGATIVES_PER_POSITIVE * n_pos.clamp_min(2))[:, None]
    objects = n_pos.sum().clamp_min(1)
    cls = (ce * (positive | negative)).sum() / objects
    target_offsets = encode(matched[positive], defaults.expand_as(matched)[positive])
    loc = F.smooth_l1_loss(offsets.float()[positive], target_offsets, reduction="sum") / objects
    return cls + loc


# ---------------------------------------------------------------------------------------------
# Detections and their scores


@dataclass
class Detections:
    """One image's detections: boxes (n, 4) x1 y1 x2 y2, scores (n,), labels (n,), best first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def unpad(outputs: dict[str, np.ndarray]) -> list[Detections]:
    """The graph's padded outputs -> each image's detections."""
    return [Detections(outputs["boxes"][j, :n], outputs["scores"][j, :n], outputs["labels"][j, :n])
            for j, n in enumerate(outputs["num_detections"].astype(int))]


def thresholds(score: float, iou: float) -> dict[str, np.ndarray]:
    return {"score_threshold": np.array(score, np.float32), "iou_threshold": np.array(iou, np.float32)}


def detect_scenes(run: Any, scenes, score: float, iou: float) -> list[Detections]:
    """Every scene's detections through ``run`` (feeds -> outputs: an ORT session, TensorRT or torch)."""
    out: list[Detections] = []
    for _, images in batches(scenes):
        out += unpad(run({"image": images, **thresholds(score, iou)}))
    return out


def coco_scores(scenes, detections: list[Detections]) -> dict[str, float]:
    """COCO mAP@0.5 and mAP@0.5:0.95 (percent) by pycocotools over ``scenes``' ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for j, (scene, det) in enumerate(zip(scenes, detections)):
        h, w = scene.image.shape[:2]
        images.append({"id": j, "width": w, "height": h})
        for box, label in zip(scene.boxes, scene.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": j, "category_id": int(label) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": j, "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    if not annotations:
        return {"map50": math.nan, "map": math.nan}
    classes = {a["category_id"] for a in annotations} | {r["category_id"] for r in results}
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in sorted(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return {"map50": 0.0, "map": 0.0}
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, MAX_DETECTIONS]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": 100.0 * float(ev.stats[1]), "map": 100.0 * float(ev.stats[0])}


def box_parity(reference: list[Detections], candidate: list[Detections]) -> dict[str, float]:
    """How well a candidate's boxes land on the reference's confident ones (score >= PARITY_SCORE):
    the share matched by a box of the same label with IoU >= 0.99, and the least such IoU."""
    ious = []
    for ref, cand in zip(reference, candidate):
        for box, score, label in zip(ref.boxes, ref.scores, ref.labels):
            if score < PARITY_SCORE:
                continue
            same = cand.boxes[cand.labels == label]
            if not len(same):
                ious.append(0.0)
                continue
            lt, rb = np.maximum(same[:, :2], box[:2]), np.minimum(same[:, 2:], box[2:])
            inter = np.clip(rb - lt, 0, None).prod(1)
            union = (box[2:] - box[:2]).prod() + (same[:, 2:] - same[:, :2]).prod(1) - inter
            ious.append(float((inter / np.maximum(union, 1e-9)).max()))
    ious_ = np.array(ious) if ious else np.ones(1)
    return {"matched_boxes": float((ious_ >= 0.99).mean()), "min_box_iou": float(ious_.min()),
            "compared_boxes": float(len(ious))}


# ---------------------------------------------------------------------------------------------
# The task


class Detect(SceneTask):
    """Digit detection: ``image`` (+ thresholds) -> num_detections, boxes, scores, labels."""

    name = "detect"
    quick_minutes = 11.4  # train, export, optimize, benchmark (measured)
    architectures = ("ssd",)
    default_model = "ssd"
    presets = PRESETS
    metric = Metric("map50", "max", tolerance=1.0, unit="%")
    InferenceConfig = DetectInference
    usage = """```python
import numpy as np, onnxruntime as ort
from PIL import Image, ImageDraw

session = ort.InferenceSession("model.onnx")
labels = session.get_modelmeta().custom_metadata_map["labels"].split(",")
picture = Image.open("scene.png").convert("RGB")
num, boxes, scores, classes = session.run(None, {
    "image": np.asarray(picture)[None],                     # uint8 [1, H, W, 3], any size
    "score_threshold": np.array(0.4, np.float32),           # set at run time
    "iou_threshold": np.array(0.45, np.float32)})
draw = ImageDraw.Draw(picture)
for box, score, c in zip(boxes[0, :num[0]], scores[0, :num[0]], classes[0, :num[0]]):
    draw.rectangle(box.tolist(), outline=(255, 0, 0), width=2)
    draw.text((box[0], max(0, box[1] - 11)), f"{labels[c]} {score:.2f}", fill=(255, 0, 0))
picture.save("detections.png")
```"""

    wrapper = Detector
    user_loader = staticmethod(load_coco)

    def step(self, model: Detector, batch: dict, device: torch.device, generator: torch.Generator):
        images = batch["images"].to(device, non_blocking=True)
        logits, offsets, defaults = model(images)
        loss = multibox_loss(logits, offsets, defaults, [b.to(device) for b in batch["boxes"]],
                             [l.to(device) for l in batch["labels"]])
        return loss, images.shape[0]

    @torch.inference_mode()
    def evaluate(self, model: Detector, data_set: Dataset, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        was_training = model.training
        model.eval()
        run = TorchRunner(Deployable(model), self.contract(), device)  # the graph as PyTorch runs it
        scenes = data_set.scenes
        scores = coco_scores(scenes, detect_scenes(run, scenes, EVAL_SCORE, DetectInference.iou_threshold))
        losses = []
        for index, images in batches(scenes):
            logits, offsets, defaults = model(torch.from_numpy(images).to(device))
            loss = multibox_loss(logits, offsets, defaults, [torch.from_numpy(scenes[i].boxes).to(device) for i in index],
                                 [torch.from_numpy(scenes[i].labels).to(device) for i in index])
            losses.append((float(loss), len(index)))
        scores["loss"] = sum(l * n for l, n in losses) / sum(n for _, n in losses)
        model.train(was_training)
        return scores

    # -- export, verification, benchmark ----------------------------------------------------------

    def contract(self, cfg: RunConfig | None = None) -> ExportContract:
        """The graph's I/O; the same for every config (K = MAX_DETECTIONS rows, any image size)."""
        k = MAX_DETECTIONS
        return ExportContract(
            inputs=(TensorSpec("image", "uint8", ("batch", "height", "width", 3), "RGB pixels in [0, 255], any size"),
                    TensorSpec("score_threshold", "float32", (), "keep detections scoring above this, in [0, 1]"),
                    TensorSpec("iou_threshold", "float32", (), "drop a box overlapping a better one of its class by "
                               "more than this IoU, in [0, 1]")),
            outputs=(TensorSpec("num_detections", "int64", ("batch",), "valid rows per image"),
                     TensorSpec("boxes", "float32", ("batch", k, 4), "x1, y1, x2, y2 in input pixels, best first"),
                     TensorSpec("scores", "float32", ("batch", k), "class probability; 0 in padding"),
                     TensorSpec("labels", "int64", ("batch", k), "class index into labels; -1 in padding")),
            dims={"batch": DimRange(1, 8, 256), "height": SIDE, "width": SIDE},
            parity=(Bound("map50_diff", "<=", 0.5), Bound("matched_boxes", ">=", 0.99)),
            exact=("detector.preprocess", "detector.net.default_boxes", "postprocess"),
        )

    def graphs(self, model: Detector, data: SceneData, cfg: RunConfig) -> dict[str, Graph]:
        metadata = {
            "task": self.name, "labels": ",".join(data.class_names), "architecture": cfg.model_name,
            "inputs": "image: uint8 [N,H,W,3] RGB, any size; score_threshold, iou_threshold: float32 scalars",
            "outputs": f"num_detections int64 [N]; boxes float32 [N,{MAX_DETECTIONS},4] x1,y1,x2,y2 pixels; scores "
                       f"float32 [N,{MAX_DETECTIONS}]; labels int64 [N,{MAX_DETECTIONS}] (-1 padding). EfficientNMS layout",
            "data": data.source,
        }
        images = np.stack([data.test[0].image, data.test[0].image])
        example = {"image": torch.from_numpy(images), "score_threshold": torch.tensor(0.3),
                   "iou_threshold": torch.tensor(0.45)}
        return {"model": Graph(Deployable(model), self.contract(cfg), example, metadata)}

    def infer(self, runners, items, cfg: RunConfig) -> list[Detections]:
        return detect_scenes(runners["model"], items, EVAL_SCORE, cfg.inference.iou_threshold)

    def score(self, outputs: list[Detections], items, cfg: RunConfig) -> dict[str, float]:
        return coco_scores(items, outputs)

    def parity(self, reference: list[Detections], candidate: list[Detections], items=None) -> dict[str, float]:
        out = box_parity(reference, candidate)
        if items is not None:
            a, b = coco_scores(items, reference), coco_scores(items, candidate)
            out["map50_diff"] = abs(a["map50"] - b["map50"]) if not math.isnan(a["map50"]) else 0.0
        return out

    def calibration(self, data: SceneData, samples: int, cfg: RunConfig):
        feeds = thresholds(EVAL_SCORE, cfg.inference.iou_threshold)
        return {"model": ({"image": images, **feeds} for images in self.calibration_images(data, samples))}

    def bench_call(self, runners, case, cfg: RunConfig):
        images = np.stack([s.image for s in case.items])
        feeds = {"image": images, **thresholds(cfg.inference.score_threshold, cfg.inference.iou_threshold)}
        run = runners["model"]
        return lambda: unpad(run(feeds))

    def describe_output(self, output: Detections, names: list[str]) -> str:
        shown = [f"{names[c]} ({s:.2f})" for c, s in zip(output.labels, output.scores) if s >= PARITY_SCORE]
        return "found " + (", ".join(shown) or "nothing") + f" (score >= {PARITY_SCORE})"

    def info(self, data: SceneData, cfg: RunConfig) -> dict:
        return {"labels": list(data.class_names), "max_detections": MAX_DETECTIONS}
