"""Training speed of the ConvNets by the memory layout they run in, side by side:

- ``mixed``: what the pipeline uses: channels_last (NHWC strides) throughout, strided convolutions
  reading contiguous NCHW (``models.layers.channels_first``, ``StridedConv2d``);
- ``nchw``: contiguous NCHW throughout;
- ``nhwc``: channels_last throughout, strided convolutions included (what a bare permute of
  (N, H, W, C) images gave before issue 21: torch 2.13's oneDNN on AVX-512 corrupts memory in the NHWC
  backward of strided convolutions).

Each layout runs in processes of its own, in alternating rounds, so a crash is a result rather than
the end of the benchmark.

    .venv/bin/python benchmarks/train_layout.py [--preset quick] [--rounds 3] [--steps 10]

Prints the CPU, and a markdown table of the median ms per training step (forward, backward, AdamW) per
task and layout, with each layout's ratio to ``mixed`` (above 1: mixed is faster).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# images (N, H, W) per task, at the quick presets' training batch sizes (classify: a raw drawing's size)
LAYOUTS = ("mixed", "nchw", "nhwc")
SHAPES = {"classify": (64, 32, 32), "detect": (32, 96, 96), "segment": (16, 96, 96)}


def worker(layout: str, preset: str, steps: int) -> dict[str, float]:
    """Median ms per training step of each ConvNet task, its input in ``layout``."""
    import torch

    from torch import nn

    import pipeline.tasks.classify as classify
    import pipeline.tasks.scenes as scenes
    from models.layers import StridedConv2d
    from tests.pipeline.layout_probe import conv_tasks, floats

    if layout != "mixed":
        StridedConv2d.forward = nn.Conv2d.forward
        for module in (classify, scenes):
            module.channels_first = ((lambda image: image.permute(0, 3, 1, 2)) if layout == "nhwc"
                                     else (lambda image: image.permute(0, 3, 1, 2).contiguous()))
    torch.manual_seed(0)
    out = {}
    for name, model, channels in conv_tasks(preset):
        n, h, w = SHAPES.get(name, (16, 64, 64))
        images = torch.randint(0, 256, (n, h, w, channels), dtype=torch.uint8)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        times = []
        for i in range(steps + 3):
            t0 = time.perf_counter()
            loss = floats(model(images))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.preset, args.steps)))
        return
    import torch

    from serve.bundle import cpu_info, cpu_line

    print(f"CPU: {cpu_line(cpu_info())}; torch {torch.__version__}, dispatch {torch.backends.cpu.get_cpu_capability()}")
    results: dict[str, dict[str, list[float]]] = {layout: {} for layout in LAYOUTS}
    crashes: dict[str, list[int]] = {layout: [] for layout in LAYOUTS}
    for r in range(args.rounds):
        for layout in LAYOUTS:
            proc = subprocess.run([sys.executable, __file__, "--worker", layout, "--preset", args.preset,
                                   "--steps", str(args.steps)], capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                crashes[layout].append(proc.returncode)
                print(f"round {r + 1}: {layout} died (exit {proc.returncode}): "
                      f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}", flush=True)
                continue
            for task, ms in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                results[layout].setdefault(task, []).append(ms)
            print(f"round {r + 1}: {layout} " + "  ".join(f"{t} {v:.1f} ms" for t, v in
                                                          json.loads(proc.stdout.strip().splitlines()[-1]).items()),
                  flush=True)
    med = lambda v: statistics.median(v) if v else None  # noqa: E731
    print("\n| task (batch, H x W) | " + " | ".join(f"{l} ms/step" for l in LAYOUTS) + " | nchw / mixed | nhwc / mixed |")
    print("| --- |" + " ---: |" * (len(LAYOUTS) + 2))
    for task, (n, h, w) in SHAPES.items():
        ms = {layout: med(results[layout].get(task)) for layout in LAYOUTS}
        cells = [f"{ms[l]:.1f}" if ms[l] else "died" for l in LAYOUTS]
        ratios = [f"{ms[l] / ms['mixed']:.2f}" if ms[l] and ms["mixed"] else "-" for l in ("nchw", "nhwc")]
        print(f"| {task} ({n}, {h}x{w}) | " + " | ".join(cells + ratios) + " |")
    for layout, codes in crashes.items():
        if codes:
            print(f"{layout}: {len(codes)} of {args.rounds} processes died (exit {sorted(set(codes))})")


if __name__ == "__main__":
    main()
