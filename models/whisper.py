"""A Whisper-style speech recognizer (book 5.x, Radford et al. 2022): a log-mel front end, a
convolutional stem, a Transformer encoder with sinusoidal positions, and a Transformer decoder that
writes characters with cross-attention to the encoder's states. A CTC head on the encoder (Graves
2006) helps it learn alignments in a CPU budget, and its reading is exported beside the states: the
decode loop keeps it where it scores better than the decoder's (serve's ``rescore``).

Shapes: N batch, L samples (16 kHz), M mel bands, F mel frames (10 ms), S encoder frames (F / 4,
40 ms), T new tokens, P cached tokens, H heads, Dh head dim, D = H * Dh, V vocabulary.

- :class:`LogMel`: waveform (N, L) and lengths (N,) -> log-mel (N, M, F) normalized to [-1, 1] per
  utterance (its loudest band and frame is 1: a quiet and a loud reading of a text look alike), and
  zero on the frames past each row's length, so a padded row reads exactly as the same audio alone;
- :meth:`Whisper.encode`: -> states (N, S, D) and their mask (N, S) (1 = real);
- :meth:`Whisper.cross_cache`: states -> per decoder layer the cross-attention keys/values (N, H, S, Dh),
  once per recording (the exported encoder graph ends with them);
- :meth:`Whisper.step`: token ids (N, T), the states' mask, per decoder layer the cached self-attention
  keys/values (N, H, P, Dh) and the cross keys/values -> logits (N, T, V) and the caches with the new
  tokens (the exported decoder graph; P = 0 at the first step);
- :meth:`Whisper.ctc_log_probs`: states -> CTC log-probs (N, S * U, V), U labels a frame;
- :meth:`Whisper.forward`: teacher-forced training: -> logits (N, T, V) and CTC log-probs (N, S * U, V).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import FeedForward, MultiHeadAttention, TransformerBlock, additive_mask, sinusoidal_embedding

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values (N, H, P, Dh)


@dataclass
class WhisperConfig:
    vocab_size: int = 41  # (int) tokens: PAD (= the CTC blank), BOS, EOS and the characters
    sample_rate: int = 16000  # (int) Hz of the waveform input
    n_fft: int = 512  # (int) STFT size (a 32 ms Hann window)
    hop: int = 160  # (int) samples between mel frames (10 ms)
    n_mels: int = 64  # (int) mel bands M
    dim: int = 192  # (int) model width D
    heads: int = 4  # (int) attention heads H (dim must be a multiple)
    encoder_layers: int = 4  # (int) encoder blocks
    decoder_layers: int = 2  # (int) decoder blocks
    mlp_ratio: float = 4.0  # (float) feed-forward width as a multiple of dim
    dropout: float = 0.1  # (float) dropout in attention, feed-forwards and embeddings (training only)
    max_tokens: int = 96  # (int) decoder positions: BOS, the characters and EOS of the longest transcript
    stem: str = "conv1d"  # (str) conv1d: Whisper's, mel bands as channels | conv2d: over time and frequency
    stem_channels: int = 32  # (int) conv2d stem: channels of its two convolutions
    ctc_upsample: int = 1  # (int) CTC labels per encoder frame (training only): 2 lets fast speech (more
    #                        characters than 40 ms frames) be aligned

    def __post_init__(self):
        if min(self.vocab_size, self.sample_rate, self.n_fft, self.hop, self.n_mels, self.dim, self.heads,
               self.encoder_layers, self.decoder_layers, self.max_tokens, self.ctc_upsample) < 1 or self.mlp_ratio <= 0:
            raise ValueError("every size must be >= 1 and mlp_ratio > 0")
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"dim ({self.dim}) must be even and a multiple of heads ({self.heads})")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels ({self.n_mels}) must be at most n_fft / 2 + 1 ({self.n_fft // 2 + 1})")
        if self.stem not in ("conv1d", "conv2d") or self.stem_channels < 1:
            raise ValueError(f"stem must be conv1d or conv2d (got {self.stem!r}) and stem_channels >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """Triangular filters on the Slaney mel scale, each of unit area (librosa's default): (M, n_fft/2 + 1)."""

    def hz_to_mel(f):
        f = torch.as_tensor(f, dtype=torch.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + torch.log(torch.clamp(f, min=1e-9) / 1000.0) / (math.log(6.4) / 27.0)
        return torch.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        lin = m * (200.0 / 3)
        log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (m - 15.0))
        return torch.where(m >= 15.0, log, lin)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (K,)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(0.0)), float(hz_to_mel(sample_rate / 2)), n_mels + 2,
                                     dtype=torch.float64))  # (M + 2,)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (M, 1) each
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (M, K)
    return (weights * (2.0 / (upper - lower))).float()


def frames_after(lengths: torch.Tensor, hop: int) -> torch.Tensor:
    """Mel frames (the STFT pads n_fft / 2 on each side) that hold a row's samples: L // hop + 1."""
    return torch.div(lengths, hop, rounding_mode="floor") + 1


def halved(count: torch.Tensor) -> torch.Tensor:
    """Frames after a stride-2 convolution with padding 1 and kernel 3: ceil(count / 2)."""
    return torch.div(count + 1, 2, rounding_mode="floor")


class LogMel(nn.Module):
    """waveform (N, L) float32 in [-1, 1], lengths (N,) int64 -> log-mel (N, M, F), frames (N,) int64.

    The power spectrum is a short-time Fourier transform written as a strided convolution whose
    kernels are the Hann-windowed cosines and sines of the DFT (what ``torch.stft(center=False)``
    computes, to float rounding): ONNX's STFT operator needs a static signal length in OpenVINO and
    does not exist in TensorRT, a Conv runs everywhere. Then the mel matrix (a constant), log10, a floor
    8 decades under the row's loudest value (Whisper's), scaled so that value is 1 and the floor -1.
    Frames past a row's length are 0."""

    DYNAMIC_RANGE = 8.0  # decades kept under the loudest value
    QUIET = -4.0  # log10 power under which a row's loudest value is not raised to 1 (silence stays low)

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.n_fft, self.hop = cfg.n_fft, cfg.hop
        k = torch.arange(cfg.n_fft // 2 + 1, dtype=torch.float64)[:, None]  # (K, 1) frequency bins
        t = torch.arange(cfg.n_fft, dtype=torch.float64)[None]  # (1, n_fft)
        window = torch.hann_window(cfg.n_fft, dtype=torch.float64)
        angle = 2 * math.pi * k * t / cfg.n_fft
        dft = torch.cat([torch.cos(angle), -torch.sin(angle)]) * window  # (2K, n_fft): real, imaginary rows
        self.register_buffer("dft", dft.float()[:, None], persistent=False)  # (2K, 1, n_fft)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("filters", mel_filters(cfg.sample_rate, cfg.n_fft, cfg.n_mels), persistent=False)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, samples = waveform.shape
        keep = torch.arange(samples, device=waveform.device)[None] < lengths[:, None]  # (N, L)
        x = F.pad(torch.where(keep, waveform, 0.0), (self.n_fft // 2, self.n_fft // 2))  # (N, L + n_fft)
        if self.training:  # the same numbers (to float rounding) by FFT: 20x fewer operations to train on
            spec = torch.stft(x, self.n_fft, self.hop, window=self.window,
                              center=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2  # (N, K, F), F = L // hop + 1
        else:
            spec = F.conv1d(x[:, None], self.dft, stride=self.hop)  # (N, 2K, F)
            real, imag = spec.chunk(2, dim=1)
            power = real ** 2 + imag ** 2  # (N, K, F)
        logmel = torch.log10(torch.clamp(self.filters @ power, min=1e-10))  # (N, M, F)
        frames = frames_after(lengths, self.hop)  # (N,)
        valid = (torch.arange(logmel.shape[-1], device=x.device)[None] < frames[:, None])[:, None]  # (N, 1, F)
        top = torch.where(valid, logmel, -30.0).amax(dim=(1, 2), keepdim=True)  # (N, 1, 1)
        top = torch.clamp(top, min=self.QUIET)
        logmel = torch.maximum(logmel, top - self.DYNAMIC_RANGE)
        scaled = (logmel - top) / (self.DYNAMIC_RANGE / 2) + 1.0  # [-1, 1]
        return torch.where(valid, scaled, 0.0), frames


class Stem(nn.Module):
    """log-mel (N, M, F) and its frames (N,) -> (N, S, D), S = ceil(ceil(F / 2) / 2), and the frames
    (N,): three GELU convolutions of width 3, the last two with stride 2. Each one's input is zero
    past the row's frames, as its own padding is, so padding a batch changes nothing."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(cfg.n_mels, cfg.dim, 3, padding=1),
                                    nn.Conv1d(cfg.dim, cfg.dim, 3, stride=2, padding=1),
                                    nn.Conv1d(cfg.dim, cfg.dim, 3, stride=2, padding=1)])

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = x * (torch.arange(x.shape[-1], device=x.device)[None] < frames[:, None])[:, None].to(x.dtype)
            x = F.gelu(conv(x))  # (N, D, F'), F' = F or ceil(F / 2)
            if conv.stride[0] == 2:
                frames = halved(frames)
        return x.transpose(1, 2), frames  # (N, S, D)


class Stem2d(nn.Module):
    """log-mel (N, M, F) and its frames (N,) -> (N, S, D), S = ceil(ceil(F / 2) / 2), and the frames (N,):
    two GELU 3x3 convolutions of stride 2 over time and frequency (ESPnet's subsampling; a formant a few
    bands higher, another voice, reads through the same kernels), then a linear map of each frame's
    channels x bands to D. Each one's input is zero past the row's frames, as in :class:`Stem`."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        c = cfg.stem_channels
        self.convs = nn.ModuleList([nn.Conv2d(1, c, 3, stride=2, padding=1), nn.Conv2d(c, c, 3, stride=2, padding=1)])
        bands = (cfg.n_mels + 1) // 2
        bands = (bands + 1) // 2
        self.proj = nn.Linear(c * bands, cfg.dim)

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)[:, None]  # (N, 1, F, M)
        for conv in self.convs:
            x = x * (torch.arange(x.shape[2], device=x.device)[None] < frames[:, None])[:, None, :, None].to(x.dtype)
            x = F.gelu(conv(x))  # (N, C, F', M'), F' = ceil(F / 2)
            frames = halved(frames)
        return self.proj(x.permute(0, 2, 1, 3).flatten(2)), frames  # (N, S, D)


class DecoderBlock(nn.Module):
    """Causal self-attention over the cache and the new tokens, cross-attention to the encoder's
    states through their keys and values (computed once per recording, :meth:`Whisper.cross_cache`),
    feed-forward (pre-norm): (N, T, D), the past (N, H, P, Dh) and the cross keys/values (N, H, S, Dh)
    -> (N, T, D), the present."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.ln1, self.self_attn = nn.LayerNorm(cfg.dim), MultiHeadAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.ln2, self.cross_attn = nn.LayerNorm(cfg.dim), MultiHeadAttention(cfg.dim, cfg.heads, cfg.dropout)
        self.ln3, self.ffn = nn.LayerNorm(cfg.dim), FeedForward(cfg.dim, hidden, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, past_k, past_v, causal, cross_k, cross_v, cross_bias):
        y, k, v = self.self_attn.forward_cached(self.ln1(x), past_k, past_v, causal)  # k, v (N, H, P + T, Dh)
        x = x + self.drop(y)
        q = self.cross_attn.queries(self.ln2(x))  # (N, H, T, Dh)
        x = x + self.drop(self.cross_attn.attend_cached(q, cross_k, cross_v, cross_bias))
        return x + self.drop(self.ffn(self.ln3(x))), k, v


class Whisper(nn.Module):
    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg)
        self.stem = Stem(cfg) if cfg.stem == "conv1d" else Stem2d(cfg)
        self.encoder = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                     for _ in range(cfg.encoder_layers))
        self.encoder_ln = nn.LayerNorm(cfg.dim)
        self.ctc = nn.Linear(cfg.dim, cfg.vocab_size * cfg.ctc_upsample)
        self.token = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = nn.Embedding(cfg.max_tokens, cfg.dim)
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.decoder_layers))
        self.decoder_ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """waveform (N, L), lengths (N,) -> states (N, S, D), states_mask (N, S) int64, log-mel (N, M, F)."""
        logmel, frames = self.logmel(waveform, lengths)
        x, frames = self.stem(logmel, frames)  # (N, S, D), (N,)
        s = x.shape[1]
        mask = torch.arange(s, device=x.device)[None] < frames[:, None]  # (N, S)
        x = self.drop(x + sinusoidal_embedding(torch.arange(s, device=x.device), self.cfg.dim).to(x.dtype))
        keys = mask[:, None, None, :]  # (N, 1, 1, S)
        for block in self.encoder:
            x = block(x, keys)
        return self.encoder_ln(x), mask.long(), logmel

    def empty_cache(self, n: int, device=None) -> list[KV]:
        shape = (n, self.cfg.heads, 0, self.cfg.head_dim)
        return [(torch.zeros(shape, device=device), torch.zeros(shape, device=device))
                for _ in range(self.cfg.decoder_layers)]

    def cross_cache(self, states: torch.Tensor) -> list[KV]:
        """states (N, S, D) -> per decoder layer its cross-attention keys and values (N, H, S, Dh): computed
        once per recording (the encoder graph outputs them), not at every decoder step."""
        return [block.cross_attn.keys_values(states) for block in self.decoder]

    def ctc_log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """states (N, S, D) -> CTC log-probs (N, S * U, V): U = ``ctc_upsample`` labels a frame, blank = PAD."""
        u = self.cfg.ctc_upsample
        return F.log_softmax(self.ctc(states).float().unflatten(-1, (u, -1)).flatten(1, 2), dim=-1)

    def step(self, input_ids: torch.Tensor, states_mask: torch.Tensor, past: list[KV], cross: list[KV]
             ) -> tuple[torch.Tensor, list[KV]]:
        """ids (N, T), states_mask (N, S), past per layer (N, H, P, Dh), cross keys/values per layer
        (N, H, S, Dh) -> logits (N, T, V), present per layer (N, H, P + T, Dh)."""
        p, t = past[0][0].shape[2], input_ids.shape[1]
        positions = p + torch.arange(t, device=input_ids.device)  # (T,)
        keys = torch.arange(p + t, device=input_ids.device)  # (P + T,)
        causal = additive_mask(keys[None, :] <= positions[:, None])  # (T, P + T)
        cross_bias = additive_mask(states_mask.bool())[:, None, None, :]  # (N, 1, 1, S)
        x = self.drop(self.token(input_ids) + self.position(positions)[None])
        present = []
        for block, (pk, pv), (ck, cv) in zip(self.decoder, past, cross):
            x, k, v = block(x, pk, pv, causal, ck, cv, cross_bias)
            present.append((k, v))
        return self.head(self.decoder_ln(x)), present

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor, tokens_in: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing: waveform (N, L), lengths (N,), decoder inputs (N, T) -> logits (N, T, V),
        CTC log-probs (N, S * U, V) and their frames per row (N,), U = ``ctc_upsample``."""
        states, mask, _ = self.encode(waveform, lengths)
        logits, _ = self.step(tokens_in, mask, self.empty_cache(waveform.shape[0], waveform.device),
                              self.cross_cache(states))
        return logits, self.ctc_log_probs(states), mask.sum(1) * self.cfg.ctc_upsample
