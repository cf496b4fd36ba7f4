"""SSD, the single-shot detector (book 6.2): a ResNet backbone's feature maps at several scales, each
cell of each map holding a few default boxes, and per default box a class (background or one of K)
and a regression of its box. Decoding and NMS are not here: the network gives raw predictions.

Boxes are (x1, y1, x2, y2) in input pixels; default boxes (cx, cy, w, h). Offsets follow SSD's
encoding: (dx, dy) = (centre shift) / (default size * 0.1), (dw, dh) = log(size ratio) / 0.2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.layers import ResidualBlock
from models.resnet import ResNet, ResNetConfig

VARIANCES = (0.1, 0.2)  # SSD's scaling of centre and size offsets


@dataclass
class SSDConfig:
    in_chans: int = 3  # (int) image channels
    num_classes: int = 10  # (int) object classes K (background is one more)
    widths: tuple[int, ...] = (24, 48, 96, 128)  # (list[int]) backbone stage channels (ResNet, stem stride 2)
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # (list[int]) residual blocks per backbone stage
    extra: tuple[int, ...] = (128,)  # (list[int]) channels of SSD's extra stride-2 stages after the backbone
    levels: int = 3  # (int) how many of the deepest maps (backbone, then extra) carry default boxes
    box_scale: float = 1.5  # (float) a level's smallest default box is this many times its stride
    aspects: tuple[float, ...] = (1.0, 0.6, 0.35)  # (list[float]) default box width / height
    act: str = "relu"  # (str) relu | gelu

    def __post_init__(self):
        if len(self.widths) != len(self.blocks) or min(self.widths + self.blocks + self.extra, default=1) < 1:
            raise ValueError("widths and blocks need one positive entry per stage")
        if self.num_classes < 1 or self.in_chans < 1:
            raise ValueError("num_classes and in_chans must be >= 1")
        if not 1 <= self.levels <= len(self.widths) + len(self.extra):
            raise ValueError(f"levels must be between 1 and {len(self.widths) + len(self.extra)}")
        if not self.aspects or min(self.aspects) <= 0 or self.box_scale <= 0:
            raise ValueError("aspects and box_scale must be > 0")

    @property
    def boxes_per_cell(self) -> int:
        return 2 * len(self.aspects)  # two sizes per aspect


class DefaultBoxes(nn.Module):
    """(height, width) of the input (multiples of the deepest stride) -> default boxes (B, 4) cx, cy,
    w, h in input pixels, in the order of :class:`SSD`'s outputs: per level, per cell (row by row),
    per box. Computed from the sizes, so an exported graph builds them for any input size."""

    def __init__(self, strides: list[int], box_scale: float, aspects: tuple[float, ...]):
        super().__init__()
        self.strides = list(strides)
        self.sizes = []  # per level: (A, 2) widths and heights, two sizes per aspect
        for s in self.strides:
            small = box_scale * s
            large = math.sqrt(small * box_scale * 2 * s)  # between this level's and the next's
            self.sizes.append([(side * math.sqrt(a), side / math.sqrt(a)) for a in aspects for side in (small, large)])

    def forward(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        out = []
        for s, sizes in zip(self.strides, self.sizes):
            wh = torch.tensor(sizes, dtype=torch.float32, device=device)  # (A, 2)
            ys = (torch.arange(height // s, device=device, dtype=torch.float32) + 0.5) * s
            xs = (torch.arange(width // s, device=device, dtype=torch.float32) + 0.5) * s
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
            centres = torch.stack([cx, cy], -1).reshape(-1, 1, 2).expand(-1, wh.shape[0], 2)  # (h * w, A, 2)
            out.append(torch.cat([centres, wh.expand_as(centres)], -1).reshape(-1, 4))
        return torch.cat(out, 0)


class SSD(nn.Module):
    """(N, C, H, W) normalized, H and W multiples of :attr:`stride` -> class logits (N, B, K + 1)
    (class 0 background) and box offsets (N, B, 4), on the B default boxes of ``self.default_boxes(H, W)``."""

    def __init__(self, cfg: SSDConfig):
        super().__init__()
        self.cfg = cfg
        backbone = ResNet(ResNetConfig(in_chans=cfg.in_chans, num_classes=2, widths=cfg.widths, blocks=cfg.blocks,
                                       act=cfg.act, stem_stride=2))
        backbone.head = nn.Identity()  # timm's reset_classifier(0): the features are what is used
        self.backbone = backbone
        extra, c_in = [], cfg.widths[-1]
        for width in cfg.extra:
            extra.append(ResidualBlock(c_in, width, 2, cfg.act))
            c_in = width
        self.extra = nn.ModuleList(extra)
        channels = list(backbone.feature_channels) + list(cfg.extra)
        strides = list(backbone.feature_strides) + [backbone.feature_strides[-1] * 2**(i + 1) for i in range(len(cfg.extra))]
        self.channels, self.strides = channels[-cfg.levels:], strides[-cfg.levels:]
        self.default_boxes = DefaultBoxes(self.strides, cfg.box_scale, cfg.aspects)
        a, k = cfg.boxes_per_cell, cfg.num_classes + 1
        self.cls_heads = nn.ModuleList(nn.Conv2d(c, a * k, 3, padding=1) for c in self.channels)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c in self.channels)
        for head in self.cls_heads:  # start from "mostly background" (RetinaNet's prior), stable early loss
            nn.init.zeros_(head.weight)
            with torch.no_grad():
                head.bias.view(a, k)[:, 0] = math.log(k * 10)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the deepest map's stride)."""
        return self.strides[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps that carry default boxes, shallowest first: (N, channels[l], H / strides[l], W / strides[l])."""
        maps = self.backbone.forward_features(x)
        for block in self.extra:
            maps.append(block(maps[-1]))
        return maps[-self.cfg.levels:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = x.shape[0], self.cfg.num_classes + 1
        logits, offsets = [], []
        for fmap, cls_head, box_head in zip(self.features(x), self.cls_heads, self.box_heads):
            # (N, A * k, h, w) -> (N, h * w * A, k): cells row by row, A default boxes per cell
            logits.append(cls_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, k))
            offsets.append(box_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(logits, 1), torch.cat(offsets, 1)


# ---------------------------------------------------------------------------------------------
# Boxes


def to_xyxy(cxcywh: torch.Tensor) -> torch.Tensor:
    c, wh = cxcywh[..., :2], cxcywh[..., 2:]
    return torch.cat([c - wh / 2, c + wh / 2], -1)


def to_cxcywh(xyxy: torch.Tensor) -> torch.Tensor:
    return torch.cat([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, 4) and (Q, 4) xyxy -> (P, Q) intersection over union."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-9)


def encode(boxes: torch.Tensor, defaults: torch.Tensor) -> torch.Tensor:
    """boxes (..., 4) xyxy matched to defaults (..., 4) cxcywh -> offsets (..., 4)."""
    b = to_cxcywh(boxes)
    centre = (b[..., :2] - defaults[..., :2]) / (defaults[..., 2:] * VARIANCES[0])
    size = torch.log(b[..., 2:].clamp_min(1e-3) / defaults[..., 2:]) / VARIANCES[1]
    return torch.cat([centre, size], -1)


def decode(offsets: torch.Tensor, defaults: torch.Tensor) -> torch.Tensor:
    """offsets (..., 4) on defaults (..., 4) cxcywh -> boxes (..., 4) xyxy (the inverse of :func:`encode`)."""
    centre = defaults[..., :2] + offsets[..., :2] * VARIANCES[0] * defaults[..., 2:]
    size = defaults[..., 2:] * torch.exp((offsets[..., 2:] * VARIANCES[1]).clamp(max=8.0))
    return to_xyxy(torch.cat([centre, size], -1))


def match(boxes: torch.Tensor, labels: torch.Tensor, defaults: torch.Tensor, threshold: float = 0.5
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's ground truth boxes (G, 4) xyxy and labels (G,) 0..K-1 onto the defaults (B, 4)
    cxcywh: each default takes the box it overlaps most when IoU >= threshold, and each box also its
    best default. -> targets (B,) (0 background, 1 + label) and the matched boxes (B, 4)."""
    if boxes.numel() == 0:
        return torch.zeros(len(defaults), dtype=torch.long, device=defaults.device), to_xyxy(defaults)
    iou = box_iou(to_xyxy(defaults), boxes)  # (B, G)
    best_iou, best_box = iou.max(1)  # (B,)
    forced = iou.argmax(0)  # (G,) each box's best default
    best_box[forced] = torch.arange(len(boxes), device=boxes.device)
    best_iou[forced] = 1.0
    targets = torch.where(best_iou >= threshold, labels[best_box] + 1, torch.zeros_like(best_box))
    return targets, boxes[best_box]
