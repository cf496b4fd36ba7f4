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


def channels_first(image: torch.Tensor) -> torch.Tensor:
    """Images (N, H, W, C) -> (N, C, H, W) in channels_last memory (NHWC strides), the layout the
    ConvNets here run in: on CPU, oneDNN's NHWC kernels trained the detector and the U-Net 1.2x faster
    than contiguous NCHW (benchmarks/train_layout.py). Strided convolutions read NCHW instead
    (:class:`StridedConv2d`). In ONNX this is the Transpose a permute always was: the memory-format
    copy adds no operator."""
    return image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # (N, C, H, W)


class StridedConv2d(nn.Conv2d):
    """A convolution with stride > 1 that reads contiguous NCHW and hands back channels_last.

    With torch 2.13's oneDNN on AVX-512 CPUs, the backward of a strided convolution on NHWC tensors
    (``brgconv_strided`` backward_data, ``jit_1x1`` backward_weights: a ResNet's shortcut and its
    downsampling 3x3) writes outside its buffers and the process dies, sooner or later (SIGSEGV or
    glibc's "corrupted double-linked list"). From contiguous NCHW, oneDNN picks its layout itself and
    works in buffers of its own, which never crashed; stride-1 convolutions on NHWC never did either.
    (N, Cin, H, W) -> (N, Cout, H / stride, W / stride), channels_last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # the fault is oneDNN's (CPU); cuDNN runs NHWC as it is, and fastest
            return super().forward(x)
        # on CPU always, not only when gradients are on: the kernels, and so the rounding, are then the
        # same in training, evaluation and export
        return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)


class ConvBNAct(nn.Sequential):
    """Convolution -> BatchNorm -> activation. (N, Cin, H, W) -> (N, Cout, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, act: str | None = "relu"):
        layers: list[nn.Module] = [
            (StridedConv2d if stride > 1 else nn.Conv2d)(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                                                         bias=False),
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


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer): each query/key channel pair is rotated by an angle that
    grows with the position, so q . k depends on the offset between two positions, not on where they
    are. x (N, nh, T, hs) and positions (T,) or (N, T) -> (N, nh, T, hs); hs even."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.float()[..., None] * self.inv_freq  # (T, hs/2) or (N, T, hs/2)
        if angles.dim() == 3:
            angles = angles[:, None]  # (N, 1, T, hs/2): the same for every head
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # channel i pairs with channel i + hs/2
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (book 5.x): queries from ``x``, keys and values from
    ``source`` (cross-attention) or from ``x`` itself (self-attention).

    One ``qkv`` projection holds the three weights; self-attention runs it as one matmul, cross-
    attention applies its query rows to ``x`` and its key/value rows to ``source``. Masks are explicit:
    ``mask`` True (or an additive 0.0) means "may attend"; pass it rather than ``is_causal`` wherever a
    KV cache is involved (the queries are then the *last* T of the keys, which a top-left causal mask
    gets wrong).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, rotary: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.rotary = Rotary(dim // num_heads) if rotary else None

    def split(self, z: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, nh, T, hs)."""
        n, t, d = z.shape
        return z.view(n, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, T, D) -> q (N, nh, T, hs), unrotated (cross-attention queries)."""
        d = x.shape[-1]
        return self.split(F.linear(x, self.qkv.weight[:d], self.qkv.bias[:d]))

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source (N, S, D) -> k, v (N, nh, S, hs) each: what a cross-attention cache holds (computed once
        per source, e.g. by an encoder graph, and reused at every decode step)."""
        d = source.shape[-1]
        k, v = F.linear(source, self.qkv.weight[d:], self.qkv.bias[d:]).split(d, dim=-1)
        return self.split(k), self.split(v)

    def heads(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Self-attention's (N, T, D) -> q, k, v (N, nh, T, hs) each; q and k rotated by ``positions`` (T,)
        or (N, T) when the attention is rotary (default positions 0..T-1)."""
        q, k, v = (self.split(z) for z in self.qkv(x).split(x.shape[-1], dim=-1))
        if self.rotary is not None:
            positions = torch.arange(x.shape[1], device=x.device) if positions is None else positions
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool = False) -> torch.Tensor:
        """q (N, nh, T, hs) over k, v (N, nh, K, hs) -> (N, T, D) after the output projection."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        n, _, t, _ = q.shape
        return self.proj(y.transpose(1, 2).reshape(n, t, -1))  # (N, nh, T, hs) -> (N, T, D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                positions: torch.Tensor | None = None, source: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, T, D) -> (N, T, D); ``source`` (N, S, D): cross-attention to it (``mask`` broadcastable
        to (N, nh, T, S), e.g. the source's padding as (N, 1, 1, S))."""
        if source is None:
            return self.attend(*self.heads(x, positions), mask, is_causal)
        return self.attend(self.queries(x), *self.keys_values(source), mask, is_causal)

    def forward_cached(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, bias: torch.Tensor,
                       positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention with a KV cache: x (N, T, D) are the new tokens, past_k / past_v (N, nh, P, hs)
        the cached keys and values of the P tokens before them (P may be 0; rotary keys are cached
        rotated); ``bias`` (N or 1, 1, T, P + T) float says which keys each new token may see: 0 where
        it may, -inf where not, added to the scores (one Add per layer, where a boolean ``masked_fill``
        was a broadcast Where, 5.6x slower in ONNX Runtime); ``positions`` (N, T) of the new tokens.
        Returns y (N, T, D) and the cache with the new tokens, k / v (N, nh, P + T, hs)."""
        q, k, v = self.heads(x, positions)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        return self.attend_cached(q, k, v, bias), k, v

    def attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """q (N, nh, T, hs) over a cache k, v (N, nh, K, hs) with an additive ``bias`` broadcastable to
        (N, nh, T, K) -> (N, T, D). Cross-attention over cached source keys uses it as it is."""
        # written out rather than scaled_dot_product_attention: its ONNX decomposition transposes and
        # scales the whole cache at every step (a copy of K per layer per token); here the scale goes
        # on q and ORT fuses the transpose into the MatMul
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (N, nh, T, K)
        weights = torch.softmax(scores + bias, dim=-1)
        n, _, t, _ = q.shape
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, -1))


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """A boolean "may attend" mask -> the additive bias the cached attention takes (0 or -inf)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + FFN(LN(x)). (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, rotary: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout, rotary)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask, is_causal, positions))
        return x + self.drop(self.ffn(self.ln2(x)))

    def forward_cached(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, bias: torch.Tensor,
                       positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` over new tokens x (N, T, D) with a KV cache (see MultiHeadAttention.forward_cached)."""
        y, k, v = self.attn.forward_cached(self.ln1(x), past_k, past_v, bias, positions)
        x = x + self.drop(y)
        return x + self.drop(self.ffn(self.ln2(x))), k, v


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
