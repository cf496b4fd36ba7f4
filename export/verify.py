"""Verification: the torch side of a comparison, and the gate on the contract's parity bounds.

The task supplies what to run (its loop over graph runners), how to compare the outputs
(``parity``) and how to score them; this module runs torch modules the way ONNX Runtime runs
graphs (named numpy inputs -> named numpy outputs) and gates on the bounds.
"""
from __future__ import annotations

import numpy as np
import torch

from export.contract import Bound, ExportContract, check_parity
from export.torch_to_onnx import ExportError


class TorchRunner:
    """A deployable module called like an ONNX graph: named inputs (passed in the contract's order),
    outputs named by the contract.

    ``provider`` names it in benchmark rows and the app's latency lines.
    """

    provider = "torch eager"

    def __init__(self, module: torch.nn.Module, contract: ExportContract, device: str = "cpu"):
        self.module = module.eval().to(device)
        self.device = device
        self.output_names = contract.output_names
        self.input_names = contract.input_names

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"inputs must be {self.input_names}, got {sorted(feeds)}")
        # by name, into the contract's order: the module's signature (which the exporter also follows);
        # names such as ``past_key_values.0.key`` are not Python identifiers, so never keywords
        args = (torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names)
        with torch.inference_mode():
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        if len(out) != len(self.output_names):
            raise ValueError(f"the module returned {len(out)} outputs; the contract names {self.output_names}")
        return {name: o.cpu().numpy() for name, o in zip(self.output_names, out)}


def gate(measured: dict[str, float], bounds: tuple[Bound, ...], what: str) -> None:
    """Raise ExportError naming every broken bound."""
    broken = check_parity(measured, bounds)
    if broken:
        raise ExportError(f"{what} does not match PyTorch: " + "; ".join(broken))
