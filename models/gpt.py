"""GPT (book 5.3, nanoGPT-style): a decoder-only transformer over byte tokens.

Token embeddings and positions, pre-LayerNorm transformer blocks (causal multi-head attention
through ``scaled_dot_product_attention``, a GELU MLP), a final LayerNorm and an output head tied to
the token embedding. Positions are ``rotary`` (default: queries and keys rotated by their position,
so attention sees offsets; it learns long contexts in a CPU budget, see the README) or ``learned``
(nanoGPT's position embedding added to the token embedding). Two paths over the same weights:

- :meth:`GPT.forward` (training, scoring whole windows): ids (N, T) -> logits (N, T, V), causal;
- :meth:`GPT.forward_cached` (generation): new ids (N, T), an attention mask (N, P + T) over the
  cached and new tokens (0 = padding: prompts of a batch are left-padded) and per layer the cached
  keys/values (N, H, P, Dh), P >= 0 -> logits (N, T, V) and the caches with the new tokens appended.
  Positions come from the mask (the i-th real token of a row is at position i), so a left-padded
  prompt is read exactly as the same prompt alone.

Shapes: N batch, T new tokens, P cached tokens, H heads, Dh head dim, D = H * Dh, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.layers import TransformerBlock, additive_mask

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values (N, H, P, Dh)


@dataclass
class GPTConfig:
    vocab_size: int = 256  # (int) tokens: the 256 byte values
    context: int = 512  # (int) positions: the longest sequence (cache plus new tokens) it reads
    dim: int = 256  # (int) model width D
    heads: int = 4  # (int) attention heads H (dim must be a multiple)
    layers: int = 4  # (int) transformer blocks
    mlp_ratio: float = 4.0  # (float) MLP width as a multiple of dim
    dropout: float = 0.0  # (float) dropout after attention, in the MLP and on the embeddings
    # (str) rotary: queries and keys rotated by position (relative offsets); learned: a position
    # embedding added to the token embedding (each absolute position learned on its own)
    position: Literal["rotary", "learned"] = "rotary"

    def __post_init__(self):
        if min(self.vocab_size, self.context, self.dim, self.heads, self.layers) < 1 or self.mlp_ratio <= 0:
            raise ValueError("every size must be >= 1 and mlp_ratio > 0")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size (dim / heads), got {self.head_dim}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.token = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = nn.Embedding(cfg.context, cfg.dim) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        rotary = cfg.position == "rotary"
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout, rotary)
                                    for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.head.weight = self.token.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():  # residual projections scaled down with depth (GPT-2)
            if name.endswith(("attn.proj.weight", "ffn.3.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """ids (N, T) int64 -> logits (N, T, V): each position sees itself and the earlier ones.
        ``positions`` (N, T) or (T,), each < context: where the bytes sit (default 0..T-1; training
        may place a short window anywhere in the context so every position embedding learns)."""
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids, positions)  # (N, T, D)
        for block in self.blocks:
            x = block(x, is_causal=True, positions=positions)
        return self.head(self.ln(x))

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids (N, T) -> (N, T, D): the token embedding, plus the position's when positions are learned."""
        x = self.token(ids)
        return self.drop(x if self.position is None else x + self.position(positions))

    def forward_cached(self, ids: torch.Tensor, attention_mask: torch.Tensor,
                       past: list[KV]) -> tuple[torch.Tensor, list[KV]]:
        """ids (N, T), attention_mask (N, P + T) int (1 = a token, 0 = left padding), past: one (keys,
        values) (N, H, P, Dh) per layer -> logits (N, T, V) and the present caches (N, H, P + T, Dh)."""
        t = ids.shape[1]
        p = past[0][0].shape[2]
        real = attention_mask.bool()  # (N, P + T)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, p:]  # (N, T): count of real tokens before
        keys = torch.arange(p + t, device=ids.device)  # (P + T,)
        queries = keys[p:, None]  # (T, 1): the new tokens' indices among the keys
        # a query sees the real keys up to itself; a padding query sees itself (finite, and ignored)
        mask = ((keys[None] <= queries)[None] & real[:, None]) | (keys[None] == queries)[None]  # (N, T, P + T)
        # the mask as one additive bias (0 or -inf), built once for every layer
        bias = additive_mask(mask)[:, None]  # (N, 1, T, P + T)
        x = self.embed(ids, positions)  # (N, T, D)
        present = []
        for block, (k, v) in zip(self.blocks, past):
            x, k, v = block.forward_cached(x, k, v, bias, positions)
            present.append((k, v))
        return self.head(self.ln(x)), present

    def empty_cache(self, batch: int, device: torch.device | str = "cpu") -> list[KV]:
        """The cache before the first call: P = 0."""
        z = torch.zeros(batch, self.cfg.heads, 0, self.cfg.head_dim, device=device)
        return [(z, z) for _ in self.blocks]
