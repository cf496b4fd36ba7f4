"""A decoder step with a KV cache as a graph with flat inputs and outputs, the layout every exported
decoder here has (and Optimum's, onnxruntime-genai's): the step's leading inputs, then
``past_key_values.{i}.key`` / ``.value`` per layer, then its trailing inputs -> the step's outputs, then
``present.{i}.key`` / ``.value`` per layer. The names are the contract's (``serve.kv_cache`` names
them, ``pipeline.tasks.cache.cache_tensors`` declares them); this module only flattens.
"""
from __future__ import annotations

import torch
from torch import nn


class CacheStepGraph(nn.Module):
    """``getattr(model, method)(*leading, past, *trailing) -> (outputs, present)`` as a flat graph:
    past and present are lists of (keys, values) (N, H, P, Dh) per layer; ``outputs`` a tensor or a
    tuple of them. ``*inputs``: how many there are depends on the layer count. With ``cross``, the
    trailing inputs are ``cross_key_values.{i}.key`` / ``.value`` per layer (an encoder-decoder's cross-
    attention cache, (N, H, S, Dh) each), passed to the method as one list of pairs after the past."""

    def __init__(self, model: nn.Module, method: str, layers: int, leading: int, cross: bool = False):
        super().__init__()
        self.model, self.method, self.layers, self.leading, self.cross = model, method, layers, leading, cross

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cut = self.leading + 2 * self.layers
        head, flat, tail = inputs[: self.leading], inputs[self.leading: cut], inputs[cut:]
        past = _pairs(flat)  # (N, H, P, Dh) each
        if self.cross:
            tail = (_pairs(tail),)  # (N, H, S, Dh) each
        outputs, present = getattr(self.model, self.method)(*head, past, *tail)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return (*outputs, *(t for kv in present for t in kv))  # present (N, H, P + T, Dh) each


def _pairs(flat) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """key0, value0, key1, value1, ... -> [(key0, value0), (key1, value1), ...]."""
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
