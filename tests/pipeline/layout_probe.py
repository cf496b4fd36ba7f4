"""Training steps of every ConvNet task through its own preprocessing, in a process of its own.

``python -m tests.pipeline.layout_probe [PRESET]``: for each registered task whose trainable module
holds convolutions, a few forward + backward steps on random uint8 images (N, H, W, C) of several
sizes, as the training loop runs them. Prints the CPU capability torch dispatches to and one line per
task. Run with ``ONEDNN_VERBOSE=1`` it also lists the oneDNN primitives (tests/pipeline/test_layout.py
reads them). On torch 2.13 + AVX-512 this process died (SIGSEGV, or glibc's "corrupted double-linked
list") while the networks got NHWC-strided inputs.
"""
from __future__ import annotations

import inspect
import sys

import torch

from torch import nn

from pipeline.tasks import TASKS
from pipeline.tasks.base import build_model, resolve

SHAPES = ((16, 48, 48), (8, 96, 96), (4, 64, 80), (1, 33, 47), (32, 96, 96), (1, 128, 128), (2, 160, 224))  # (N, H, W) per step


def conv_tasks(preset: str):
    """(name, trainable module, channels) for each registered task with a Conv2d in its module."""
    for name, task in TASKS.items():
        cfg = resolve(task, preset)
        if name == "classify":
            cfg = resolve(task, preset, {"model": {"name": "resnet"}})  # the strided shortcuts of the quick preset
        model = build_model(task, None, cfg)
        takes_images = len(inspect.signature(model.forward).parameters) == 1  # (a denoiser also takes t, label)
        if takes_images and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            yield name, model, getattr(cfg.model, "in_chans", 3)


def floats(out) -> torch.Tensor:
    """A scalar that every float output feeds (a stand-in loss)."""
    if isinstance(out, torch.Tensor):
        return out.float().square().mean() if out.is_floating_point() else out.new_zeros((), dtype=torch.float32)
    return sum(floats(o) for o in out)


def main(preset: str = "smoke") -> None:
    torch.manual_seed(0)
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}", flush=True)
    for name, model, channels in conv_tasks(preset):
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for n, h, w in SHAPES:
            images = torch.randint(0, 256, (n, h, w, channels), dtype=torch.uint8)
            loss = floats(model(images))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"{name}: {len(SHAPES)} training steps ok", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
