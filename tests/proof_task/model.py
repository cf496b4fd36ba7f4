"""A small encoder-decoder transformer, written from scratch (torch only), for the proof task.

Shapes: N batch, S source length, T target length (tokens fed this call), P past length (tokens
already in the KV cache), H heads, Dh head dim, D = H * Dh model dim, V vocabulary.

- encoder: token + position embedding, self-attention blocks with a key padding mask;
- decoder: token + position embedding (positions P..P+T-1), causal self-attention over a KV cache
  (the cache holds the keys and values of the P previous tokens; P may be 0), cross-attention to
  the encoder memory (with the memory's padding mask), a feed-forward, and the output head.

Attention is the book's one module, ``models.layers.MultiHeadAttention``: self-attention in the
encoder, self-attention over a KV cache and cross-attention to the memory in the decoder. Masks are
explicit ("may attend", boolean or additive). ``is_causal=True`` is never used: with a KV cache the
queries are the *last* T of P + T keys, which a top-left causal mask gets wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import MultiHeadAttention, additive_mask


@dataclass
class ReverserConfig:
    vocab_size: int = 29  # (int) tokens: PAD, BOS, EOS and the letters a-z
    dim: int = 64  # (int) model width D
    heads: int = 4  # (int) attention heads H (dim must be a multiple)
    layers: int = 2  # (int) blocks in the encoder and in the decoder, each
    ffn: int = 128  # (int) hidden width of the feed-forward
    max_len: int = 16  # (int) positions: longest source, and longest decode (cache plus new tokens)

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if min(self.vocab_size, self.dim, self.heads, self.layers, self.ffn, self.max_len) < 1:
            raise ValueError("every size must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class Embedding(nn.Module):
    """Token ids (N, T) and their positions (T,) -> (N, T, D)."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.token = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = nn.Embedding(cfg.max_len, cfg.dim)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.token(ids) + self.position(positions)[None]  # (N, T, D)


class FeedForward(nn.Module):
    """(N, T, D) -> (N, T, D): Linear -> GELU -> Linear."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.up, self.down = nn.Linear(cfg.dim, cfg.ffn), nn.Linear(cfg.ffn, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class EncoderBlock(nn.Module):
    """Pre-norm self-attention (padding keys masked) and feed-forward: (N, S, D) -> (N, S, D)."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(cfg.dim), MultiHeadAttention(cfg.dim, cfg.heads)
        self.norm2, self.ffn = nn.LayerNorm(cfg.dim), FeedForward(cfg)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.ffn(self.norm2(x))


class DecoderBlock(nn.Module):
    """Causal self-attention over the cache plus the new tokens, cross-attention to the memory,
    feed-forward. (N, T, D) and the past keys/values (N, H, P, Dh) -> (N, T, D) and the present
    keys/values (N, H, P + T, Dh)."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(cfg.dim), MultiHeadAttention(cfg.dim, cfg.heads)
        self.norm2, self.cross_attn = nn.LayerNorm(cfg.dim), MultiHeadAttention(cfg.dim, cfg.heads)
        self.norm3, self.ffn = nn.LayerNorm(cfg.dim), FeedForward(cfg)

    def forward(self, x, past_k, past_v, causal_bias, memory, memory_mask):
        y, k, v = self.self_attn.forward_cached(self.norm1(x), past_k, past_v, causal_bias)  # k, v (N, H, P + T, Dh)
        x = x + y
        # cross-attention: the memory's keys and values recomputed per step (small S)
        x = x + self.cross_attn(self.norm2(x), memory_mask, source=memory)
        return x + self.ffn(self.norm3(x)), k, v


class Encoder(nn.Module):
    """tokens (N, S) int64, mask (N, S) (1 = real token) -> memory (N, S, D)."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (S,)
        x = self.embed(tokens, positions)
        key_mask = mask.bool()[:, None, None, :]  # (N, 1, 1, S)
        for block in self.blocks:
            x = block(x, key_mask)
        return self.norm(x)


class Decoder(nn.Module):
    """ids (N, T), memory (N, S, D), its mask (N, S) and a cache per layer -> logits (N, T, V) and
    the updated cache."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, ids, memory, memory_mask, past: list[tuple[torch.Tensor, torch.Tensor]]):
        p, t = past[0][0].shape[2], ids.shape[1]
        positions = p + torch.arange(t, device=ids.device)  # (T,): P .. P+T-1
        keys = torch.arange(p + t, device=ids.device)  # (P+T,)
        causal = additive_mask(keys[None, :] <= positions[:, None])  # (T, P+T): query i sees keys up to P+i
        cross = memory_mask.bool()[:, None, None, :]  # (N, 1, 1, S)
        x = self.embed(ids, positions)
        present = []
        for block, (pk, pv) in zip(self.blocks, past):
            x, k, v = block(x, pk, pv, causal, memory, cross)
            present.append((k, v))
        return self.head(self.norm(x)), present


class Reverser(nn.Module):
    """The encoder-decoder. ``forward`` is teacher-forced (training); ``encode`` and ``step`` are
    what the two exported graphs run."""

    def __init__(self, cfg: ReverserConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def empty_cache(self, n: int, device=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Past length 0: (N, H, 0, Dh) keys and values per layer."""
        shape = (n, self.cfg.heads, 0, self.cfg.head_dim)
        return [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in range(self.cfg.layers)]

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens, mask)  # (N, S, D)

    def step(self, input_ids, memory, memory_mask, past, temperature):
        """One decode call: logits (N, T, V) / temperature and the present cache (P + T long)."""
        logits, present = self.decoder(input_ids, memory, memory_mask, past)
        return logits / temperature, present

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: source (N, S), mask (N, S), decoder inputs (N, T) -> logits (N, T, V)."""
        memory = self.encode(src, src_mask)
        logits, _ = self.decoder(tgt_in, memory, src_mask, self.empty_cache(src.shape[0], src.device))
        return logits
