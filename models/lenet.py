"""LeNet-style ConvNet (book 5.2): two conv -> act -> max-pool stages, then an MLP head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.classifiers import ClassifierConfig
from models.layers import activation


@dataclass
class LeNetConfig(ClassifierConfig):
    channels: tuple[int, int] = (32, 64)  # (list[int]) channels of the two conv stages
    hidden: int = 128  # (int) width of the hidden fully connected layer
    act: str = "relu"  # (str) relu | gelu
    dropout: float = 0.25  # (float) dropout before each fully connected layer


class LeNet(nn.Module):
    """(N, C, S, S) float -> (N, K) logits; 5x5 convs keep the size, each max-pool halves it."""

    def __init__(self, cfg: LeNetConfig):
        super().__init__()
        if cfg.image_size % 4:
            raise ValueError(f"LeNet needs image_size divisible by 4, got {cfg.image_size}")
        self.cfg = cfg
        c1, c2 = cfg.channels
        self.features = nn.Sequential(
            nn.Conv2d(cfg.in_chans, c1, 5, padding=2), activation(cfg.act), nn.MaxPool2d(2),  # (N, c1, S/2, S/2)
            nn.Conv2d(c1, c2, 5, padding=2), activation(cfg.act), nn.MaxPool2d(2),  # (N, c2, S/4, S/4)
        )
        flat = c2 * (cfg.image_size // 4) ** 2
        self.head = nn.Sequential(
            nn.Flatten(),  # (N, c2 * S/4 * S/4)
            nn.Dropout(cfg.dropout), nn.Linear(flat, cfg.hidden), activation(cfg.act),
            nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
