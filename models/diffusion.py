"""A class-conditional denoising diffusion model (book 7.x, after Ho et al. 2020): a U-Net that, given
an image noised to step t and a class label, estimates the noise that was added.

The noise schedule is data: ``alphas_cumprod`` (T,) is a buffer, saved with the weights and read by
every sampler (serve's numpy loops, the exported sampler graph). Step t's noisy image is
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I).

The network (Nichol & Dhariwal's improved-DDPM U-Net, small): a time embedding (sinusoidal + MLP)
plus a class embedding (``num_classes`` + 1 rows: the last is the null label of classifier-free
guidance) drive every residual block (GroupNorm, SiLU, 3x3 conv, the embedding added between the two
convolutions); the resolution halves level by level down to ``attention_at`` where self-attention
runs over the pixels; the decoder doubles it back, concatenating the encoder's map of the same
level (U-Net skips). The output convolution starts at zero, so the first estimate is "no noise".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import MultiHeadAttention, sinusoidal_embedding


@dataclass
class DiffusionConfig:
    in_chans: int = 1  # (int) image channels
    image_size: int = 16  # (int) image side, pixels (a multiple of 2 ** (len(widths) - 1))
    num_classes: int = 10  # (int) conditioning classes; label num_classes is the null (unconditional) label
    widths: tuple[int, ...] = (32, 64, 96)  # (list[int]) channels per level; each level halves the resolution
    blocks: int = 1  # (int) residual blocks per level (the decoder has one more, for the skips)
    attention_at: int = 4  # (int) self-attention at this side and below (0: none)
    heads: int = 4  # (int) attention heads
    groups: int = 8  # (int) GroupNorm groups (divides every width)
    emb_dim: int = 128  # (int) time + class embedding width
    timesteps: int = 1000  # (int) T, steps of the noising process
    schedule: str = "cosine"  # (str) cosine (Nichol & Dhariwal) | linear (Ho et al.: beta 1e-4 -> 0.02)
    dropout: float = 0.0  # (float) in the residual blocks

    def __post_init__(self):
        if not self.widths or min(self.widths) < 1 or any(w % self.groups for w in self.widths):
            raise ValueError(f"widths must be positive multiples of groups ({self.groups}), got {self.widths}")
        if self.image_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"image_size {self.image_size} must be a multiple of {2 ** (len(self.widths) - 1)}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be cosine or linear, got {self.schedule!r}")
        if self.timesteps < 2 or self.num_classes < 1 or self.blocks < 1 or self.emb_dim % 2:
            raise ValueError("timesteps must be >= 2, num_classes and blocks >= 1, emb_dim even")
        if any(w % self.heads for w, s in zip(self.widths, self.sides) if s <= self.attention_at):
            raise ValueError(f"heads ({self.heads}) must divide the widths of the attention levels")

    @property
    def sides(self) -> list[int]:
        return [self.image_size // 2 ** i for i in range(len(self.widths))]


def noise_schedule(name: str, steps: int) -> torch.Tensor:
    """abar_t for t = 0..T-1 (float64, decreasing from ~1 to ~0)."""
    if name == "linear":
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0)
    s = 0.008  # cosine: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas clipped at 0.999
    f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


class ResBlock(nn.Module):
    """(N, Cin, H, W) and the embedding (N, E) -> (N, Cout, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Pre-norm self-attention over the H x W pixels as tokens. (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = MultiHeadAttention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(n, c, h, w)


class Level(nn.Module):
    """Residual blocks at one resolution, then self-attention where the level is small enough."""

    def __init__(self, c_in: int, c_out: int, count: int, attention: bool, cfg: DiffusionConfig):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in if i == 0 else c_out, c_out, cfg.emb_dim, cfg.groups, cfg.dropout)
                                    for i in range(count))
        self.attn = SelfAttention2d(c_out, cfg.heads, cfg.groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return self.attn(x) if self.attn is not None else x


class DiffusionUNet(nn.Module):
    """x_t (N, C, S, S), t int64 (N,) in [0, T), label int64 (N,) in [0, K] (K: null) -> eps (N, C, S, S)."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("alphas_cumprod", noise_schedule(cfg.schedule, cfg.timesteps).float())
        e = cfg.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, e)
        w, sides = cfg.widths, cfg.sides
        self.stem = nn.Conv2d(cfg.in_chans, w[0], 3, padding=1)
        self.down = nn.ModuleList(Level(w[max(i - 1, 0)], w[i], cfg.blocks, sides[i] <= cfg.attention_at, cfg)
                                  for i in range(len(w)))
        self.pool = nn.ModuleList(nn.Conv2d(w[i], w[i], 3, stride=2, padding=1) for i in range(len(w) - 1))
        self.middle = Level(w[-1], w[-1], 1, cfg.attention_at > 0, cfg)
        self.up = nn.ModuleList(Level(w[i] + (w[i + 1] if i + 1 < len(w) else w[i]), w[i], cfg.blocks + 1,
                                      sides[i] <= cfg.attention_at, cfg) for i in reversed(range(len(w))))
        self.unpool = nn.ModuleList(nn.Conv2d(w[i + 1], w[i + 1], 3, padding=1) for i in reversed(range(len(w) - 1)))
        self.out_norm = nn.GroupNorm(cfg.groups, w[0])
        self.out = nn.Conv2d(w[0], cfg.in_chans, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_label(self) -> int:
        return self.cfg.num_classes

    def embed(self, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """t (N,), label (N,) -> (N, E)."""
        return self.time_mlp(sinusoidal_embedding(t, self.cfg.emb_dim)) + self.label_emb(label)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        emb = self.embed(t, label)  # (N, E)
        h = self.stem(x)  # (N, w0, S, S)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, emb)  # (N, w_i, S / 2^i, S / 2^i)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.middle(h, emb)  # (N, w_last, s, s)
        for j, level in enumerate(self.up):
            h = level(torch.cat([h, skips.pop()], 1), emb)  # one level coarser -> this level's width
            if j < len(self.unpool):
                h = self.unpool[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))  # (N, C, S, S)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 noised to step t: sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. (N, C, S, S)."""
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


class GuidedDenoiser(nn.Module):
    """Classifier-free guidance (Ho & Salimans) in one call: the conditional and unconditional passes
    batched together, eps = eps_u + g (eps_c - eps_u) (g = 1: conditional alone; 0: unconditional).
    x (N, C, S, S), t (N,), label (N,), guidance (N,) -> eps (N, C, S, S)."""

    def __init__(self, net: DiffusionUNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(label, self.net.null_label)
        eps = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([label, null]))  # (2N, C, S, S)
        n = x.shape[0]
        cond, uncond = eps[:n], eps[n:]  # slices, not chunk: a chunk of a dynamic batch exports as a sequence
        return uncond + guidance.view(-1, 1, 1, 1) * (cond - uncond)
