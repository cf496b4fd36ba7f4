"""Vision Transformer (book 5.3): patches -> tokens, a class token, transformer blocks, a linear head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.classifiers import ClassifierConfig
from models.layers import LearnedPositionalEmbedding, StridedConv2d, TransformerBlock


@dataclass
class ViTConfig(ClassifierConfig):
    patch_size: int = 4  # (int) side of the square patches; must divide image_size
    dim: int = 128  # (int) token width D
    depth: int = 4  # (int) transformer blocks
    num_heads: int = 4  # (int) attention heads; must divide dim
    mlp_ratio: float = 2.0  # (float) feed-forward width as a multiple of dim
    dropout: float = 0.1  # (float) dropout in attention and feed-forward


class ViT(nn.Module):
    """(N, C, S, S) float -> (N, K) logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"patch_size {cfg.patch_size} must divide image_size {cfg.image_size}")
        self.cfg = cfg
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patchify = StridedConv2d(cfg.in_chans, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = LearnedPositionalEmbedding(num_patches + 1, cfg.dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patchify(x).flatten(2).transpose(1, 2)  # (N, D, S/p, S/p) -> (N, T, D), T = (S/p)^2
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (N, T+1, D)
        x = self.pos(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x[:, 0]))  # class token (N, D) -> (N, K)
