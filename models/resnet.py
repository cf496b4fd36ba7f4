"""ResNet (book 5.2): a conv stem, stages of residual blocks, global average pooling, a linear head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.classifiers import ClassifierConfig
from models.layers import ConvBNAct, ResidualBlock


@dataclass
class ResNetConfig(ClassifierConfig):
    widths: tuple[int, ...] = (32, 64, 128)  # (list[int]) channels per stage; stages after the first halve H and W
    blocks: tuple[int, ...] = (1, 1, 1)  # (list[int]) residual blocks per stage
    act: str = "relu"  # (str) relu | gelu
    dropout: float = 0.0  # (float) dropout before the head


class ResNet(nn.Module):
    """(N, C, S, S) float -> (N, K) logits."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        if len(cfg.widths) != len(cfg.blocks):
            raise ValueError(f"widths {cfg.widths} and blocks {cfg.blocks} must have the same length")
        self.cfg = cfg
        self.stem = ConvBNAct(cfg.in_chans, cfg.widths[0], 3, 1, cfg.act)  # (N, w0, S, S)
        stages: list[nn.Module] = []
        c_in = cfg.widths[0]
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(ResidualBlock(c_in, width, stride, cfg.act))
                c_in = width
        self.stages = nn.Sequential(*stages)  # (N, w_last, S / 2^(stages-1), ...)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
