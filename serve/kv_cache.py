"""The KV cache of a decoder graph, as every decode loop in ``serve/`` feeds it (numpy only).

A decoder-step graph takes, beside its own inputs, ``past_key_values.{i}.key`` / ``.value`` float32
(N, H, P, Dh) per layer (P = 0 before the first token: an empty cache) and returns
``present.{i}.key`` / ``.value`` (N, H, P + T, Dh) for the T tokens it read (Hugging Face Optimum /
onnxruntime-genai names). The text GPT, the proof task's encoder-decoder and the speech decoder
(its beam search reorders rows: :meth:`KVCache.select`) use this module. An encoder-decoder's decoder
also takes ``cross_key_values.{i}.key`` / ``.value`` (N, H, S, Dh): the cross-attention keys and values
of the encoder's states, which its encoder graph outputs under the same names (:func:`cross_names`).

Shapes: N batch, H heads, P cached tokens, T new tokens, Dh head dim, S padded length.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

PAST, PRESENT, CROSS = "past_key_values.", "present.", "cross_key_values."


class CacheSpec(NamedTuple):
    """A graph's cache geometry (from the manifest's ``info``), and its context (the most tokens the
    cache plus the new ones may hold; 0 when the graph states none)."""

    layers: int
    heads: int
    head_dim: int
    context: int = 0

    @classmethod
    def of(cls, info: Mapping[str, Any]) -> "CacheSpec":
        return cls(int(info["layers"]), int(info["heads"]), int(info["head_dim"]), int(info.get("context", 0)))

    def empty(self, batch: int) -> dict[str, np.ndarray]:
        """The cache before the first call: (N, H, 0, Dh) keys and values per layer."""
        z = np.zeros((batch, self.heads, 0, self.head_dim), dtype=np.float32)
        return {name: z for name in past_names(self.layers)}


def past_names(layers: int) -> list[str]:
    """``past_key_values.{i}.key``, ``past_key_values.{i}.value`` per layer, in graph order."""
    return [f"{PAST}{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def cross_names(layers: int) -> list[str]:
    """``cross_key_values.{i}.key``, ``.value`` per decoder layer: an encoder-decoder's cross-attention keys
    and values (N, H, S, Dh), output once by the encoder graph and fed as they are to every decoder step."""
    return [f"{CROSS}{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_name(past_name: str) -> str:
    """The output that feeds ``past_name`` at the next call."""
    return past_name.replace(PAST, PRESENT, 1)


def pad(rows: Sequence[Sequence[int] | bytes], side: str = "left", value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length token rows -> ids int64 (N, S) padded with ``value`` on ``side`` and the mask
    int64 (N, S) (1 = a token). A decoder's prompts are left-padded, so that every row's next token
    lands in the last column; an encoder's inputs right-padded."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    s = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), s), value, dtype=np.int64)
    mask = np.zeros((len(rows), s), dtype=np.int64)
    for i, r in enumerate(rows):
        if not len(r):
            continue
        tokens = np.frombuffer(r, dtype=np.uint8) if isinstance(r, (bytes, bytearray)) else np.asarray(r)
        cols = slice(s - len(r), s) if side == "left" else slice(0, len(r))
        ids[i, cols], mask[i, cols] = tokens, 1
    return ids, mask


class KVCache:
    """One batch's cache between the calls of a decoder graph: ``feeds`` go into the next call,
    ``update`` takes that call's ``present.*`` outputs. Every field is set here; ``snapshot`` and
    ``restore`` let a benchmark time the same step again from the same cache."""

    def __init__(self, spec: CacheSpec, batch: int):
        self.spec, self.batch = spec, batch
        self.names = past_names(spec.layers)
        self.past: dict[str, np.ndarray] = spec.empty(batch)

    @property
    def length(self) -> int:
        """P: the tokens the cache holds."""
        return int(self.past[self.names[0]].shape[2]) if self.names else 0

    def feeds(self) -> dict[str, np.ndarray]:
        return dict(self.past)

    def update(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Take the present keys and values of a call's ``outputs`` (N, H, P + T, Dh) as the cache."""
        self.past = {name: outputs[present_name(name)] for name in self.names}

    def select(self, rows: np.ndarray) -> None:
        """Keep the cache rows ``rows`` (N',) int, in that order (a beam search's surviving parents)."""
        self.past = {name: np.ascontiguousarray(v[rows]) for name, v in self.past.items()}
        self.batch = len(rows)

    def reset(self, batch: int | None = None) -> None:
        """Empty the cache (for ``batch`` rows, default the same)."""
        self.batch = self.batch if batch is None else batch
        self.past = self.spec.empty(self.batch)

    def snapshot(self) -> dict[str, np.ndarray]:
        return dict(self.past)

    def restore(self, snapshot: Mapping[str, np.ndarray]) -> None:
        self.past = dict(snapshot)
