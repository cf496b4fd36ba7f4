"""ResNet (book 5.2): a conv stem, stages of residual blocks, global average pooling, a linear head.

Split as timm splits it: :meth:`ResNet.forward_features` is the backbone (one feature map per
stage, for dense heads such as a detector's), :meth:`ResNet.forward_head` the classifier on the last.
"""
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
    stem_stride: int = 1  # (int) the stem's stride: 1 for small images, 2 (or 4) for scenes a detector reads


class ResNet(nn.Module):
    """(N, C, S, S) float -> (N, K) logits."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        if len(cfg.widths) != len(cfg.blocks):
            raise ValueError(f"widths {cfg.widths} and blocks {cfg.blocks} must have the same length")
        self.cfg = cfg
        self.stem = ConvBNAct(cfg.in_chans, cfg.widths[0], 3, cfg.stem_stride, cfg.act)  # (N, w0, S/stem, S/stem)
        stages: list[nn.Module] = []
        c_in = cfg.widths[0]
        self.stage_ends: list[int] = []  # index in self.stages of each stage's last block
        for i, (width, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(ResidualBlock(c_in, width, stride, cfg.act))
                c_in = width
            self.stage_ends.append(len(stages) - 1)
        # one flat Sequential (the checkpoints' parameter names): (N, w_last, S / 2^(stages-1), ...)
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in, cfg.num_classes)
        )

    @property
    def feature_channels(self) -> tuple[int, ...]:
        """Channels of each map :meth:`forward_features` returns."""
        return tuple(self.cfg.widths)

    @property
    def feature_strides(self) -> tuple[int, ...]:
        """Input pixels per feature-map cell, per stage: stem_stride times 1, 2, 4, ..."""
        return tuple(self.cfg.stem_stride * 2**i for i in range(len(self.cfg.widths)))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, H, W) -> one map per stage, (N, widths[i], H / stride_i, W / stride_i) (rounded up), the deepest last."""
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.stages):
            x = block(x)
            if i in self.stage_ends:
                out.append(x)
        return out

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The stage maps -> (N, K) logits, from the deepest."""
        return self.head(features[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
