"""U-Net (book 6.3): an encoder that halves the resolution level by level, a decoder that doubles it
back, and at each level a skip connection carrying the encoder's map to the decoder, so the per-pixel
classes keep their fine detail. Logits per pixel at the input's resolution.

The encoder is the classifiers' ResNet split as timm splits it (:meth:`ResNet.forward_features`: one
map per stage) with a stride-2 stem, as in the detector: recognising a digit needs depth at low
resolution, which residual stages give cheaply. A light full-resolution branch is the first skip.

As in FCN's skip architecture, the two deepest maps also predict classes directly, upsampled and
added to the decoder's: measured here, a decoder alone learned where the ink is but not which digit
(its class probabilities on ink stayed uniform for 600 steps) while a deep map learned the digit at
once; the sum gives the decoder's edges and the deep maps' identities.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import ConvBNAct
from models.resnet import ResNet, ResNetConfig


@dataclass
class UNetConfig:
    in_chans: int = 3  # (int) image channels
    num_classes: int = 11  # (int) classes per pixel, background included
    widths: tuple[int, ...] = (24, 48, 96, 128)  # (list[int]) encoder stage channels, strides 2, 4, 8, 16, ...
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # (list[int]) residual blocks per encoder stage
    full: int = 16  # (int) channels of the full-resolution skip branch
    act: str = "relu"  # (str) relu | gelu

    def __post_init__(self):
        if len(self.widths) < 2 or len(self.widths) != len(self.blocks) or min(self.widths + self.blocks) < 1:
            raise ValueError(f"widths and blocks need the same number (>= 2) of positive entries, got "
                             f"{self.widths} and {self.blocks}")
        if self.num_classes < 2 or self.in_chans < 1 or self.full < 1:
            raise ValueError("num_classes must be >= 2, in_chans and full >= 1")


class Up(nn.Module):
    """Decoder step: the deeper map (N, Cdeep, h, w) and the skip (N, Cout, 2h, 2w) -> (N, Cout, 2h, 2w):
    a 1x1 projection, nearest 2x upsampling, the skip added (as LinkNet and FPN merge; U-Net's
    concatenation tripled the decoder's cost, which is most of the network's at full resolution),
    then a 3x3 convolution."""

    def __init__(self, c_deep: int, c_out: int, act: str):
        super().__init__()
        self.project = ConvBNAct(c_deep, c_out, 1, 1, None)
        self.merge = ConvBNAct(c_out, c_out, 3, 1, act)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.merge(skip + F.interpolate(self.project(deep), scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """(N, C, H, W) normalized, H and W multiples of :attr:`stride` -> logits (N, K, H, W)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        encoder = ResNet(ResNetConfig(in_chans=cfg.in_chans, num_classes=2, widths=cfg.widths, blocks=cfg.blocks,
                                      act=cfg.act, stem_stride=2))
        encoder.head = nn.Identity()  # the stage maps are what is used
        self.encoder = encoder
        self.full = ConvBNAct(cfg.in_chans, cfg.full, 3, 1, cfg.act)  # (N, full, H, W)
        w = list(cfg.widths)
        # deepest first: stage i+1 up onto stage i, then stage 0 (stride 2) up onto the full-resolution branch
        self.up = nn.ModuleList([Up(w[i + 1], w[i], cfg.act) for i in reversed(range(len(w) - 1))]
                                + [Up(w[0], cfg.full, cfg.act)])
        self.head = nn.Conv2d(cfg.full, cfg.num_classes, 1)
        self.deep_heads = nn.ModuleList(nn.Conv2d(c, cfg.num_classes, 1) for c in w[-2:])  # strides 8 and 16 (default)

    @property
    def stride(self) -> int:
        return self.encoder.feature_strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.full(x), *self.encoder.forward_features(x)]  # strides 1, 2, 4, ...
        deep = [head(f) for head, f in zip(self.deep_heads, skips[-2:])]  # (N, K, H / s, W / s)
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())  # (N, w, H / s, W / s), one level finer each time
        logits = self.head(y)  # (N, K, H, W)
        for d, f in zip(deep, self.encoder.feature_strides[-2:]):
            logits = logits + F.interpolate(d, scale_factor=float(f), mode="bilinear", align_corners=False)
        return logits
