"""The book's building blocks (Chapter 4): each concept one small module.

Shape notation: N batch, C channels, H/W height/width, T tokens, D model width,
nh heads, hs head size (D = nh * hs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ConvBNAct(nn.Sequential):
    """Convolution -> BatchNorm -> activation. (N, Cin, H, W) -> (N, Cout, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, act: str | None = "relu"):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """The basic ResNet block: y = act(x' + F(x)), with x' a 1x1 projection when the shape changes.

    (N, Cin, H, W) -> (N, Cout, H/stride, W/stride)
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(c_in, c_out, 3, stride, act), ConvBNAct(c_out, c_out, 3, 1, None))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else ConvBNAct(c_in, c_out, 1, stride, None)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.skip(x) + self.body(x))


class FeedForward(nn.Sequential):
    """The transformer's MLP: Linear -> GELU -> Dropout -> Linear. (..., D) -> (..., D)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (book 5.x).

    forward(x (N, T, D), mask (T, T) bool or additive float, optional) -> (N, T, D).
    ``mask`` True (or 0.0) means "may attend"; pass it explicitly rather than ``is_causal``,
    so that graphs with a KV cache stay correct.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # 3 x (N, T, D)
        # (N, T, D) -> (N, nh, T, hs)
        q, k, v = (z.view(n, t, self.num_heads, d // self.num_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(n, t, d)  # (N, nh, T, hs) -> (N, T, D)
        return self.proj(y)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + FFN(LN(x)). (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class LearnedPositionalEmbedding(nn.Module):
    """Adds a trained vector per position. (N, T, D) -> (N, T, D), T <= max_len."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return x + self.pos[:, offset : offset + x.shape[1]]


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """The original transformer's fixed encoding. positions (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[..., None] * freqs  # (..., half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
