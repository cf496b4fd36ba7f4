"""Verification: run two implementations over the same held-out batches and compare.

The task supplies how to compare (``parity``) and score (``score``) graph outputs; this module
only runs things and gates on the contract's bounds.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from export.contract import Bound, check_parity
from export.torch_to_onnx import ExportError

Outputs = list[list[np.ndarray]]  # per batch, the graph's outputs in order
Batches = Iterable[tuple[dict[str, np.ndarray], np.ndarray]]


def torch_runner(module: torch.nn.Module) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """A numpy-in numpy-out call of a deployable module (eval mode, CPU, inference mode)."""
    module = module.eval().cpu()

    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]

    return run


def collect(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], batches: Batches) -> tuple[Outputs, list]:
    outputs, targets = [], []
    for inputs, target in batches:
        outputs.append(run(inputs))
        targets.append(target)
    return outputs, targets


def gate(measured: dict[str, float], bounds: tuple[Bound, ...], what: str) -> None:
    """Raise ExportError naming every broken bound."""
    broken = check_parity(measured, bounds)
    if broken:
        raise ExportError(f"{what} does not match PyTorch: " + "; ".join(broken))
