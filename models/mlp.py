"""Multi-layer perceptron (book 5.1): flatten, then Linear -> activation -> dropout, repeated."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.classifiers import ClassifierConfig
from models.layers import activation


@dataclass
class MLPConfig(ClassifierConfig):
    hidden: tuple[int, ...] = (256, 128)  # (list[int]) width of each hidden layer
    act: str = "relu"  # (str) relu | gelu
    dropout: float = 0.1  # (float) dropout after each hidden layer


class MLP(nn.Module):
    """(N, C, H, W) float -> (N, K) logits."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        dims = [cfg.in_chans * cfg.image_size**2, *cfg.hidden]
        layers: list[nn.Module] = [nn.Flatten()]  # (N, C, H, W) -> (N, C*H*W)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), activation(cfg.act), nn.Dropout(cfg.dropout)]
        layers.append(nn.Linear(dims[-1], cfg.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
