"""Training throughput of the `full` presets' networks on a GPU, bf16 autocast as the pipeline trains:
the GPT (tokens/s and model FLOP utilisation), the classifier's ResNet, the detector's SSD and the U-Net
(images/s), eager and torch.compile, with each ConvNet's strided convolutions both ways (the CPU-only
NCHW copy of ``StridedConv2d`` on, and NHWC throughout).

    python benchmarks/gpu_train_throughput.py [--steps 30] [--out results.json]

Needs torch and this repository's ``models/`` only (no data set: the GPT reads the Python standard
library's own documentation, ``pydoc_data``, the ConvNets random images), so it runs on a bare CUDA image.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.layers import StridedConv2d  # noqa: E402

PEAK_BF16 = 989e12  # dense bf16 FLOP/s of an H100 / H200 SXM (NVIDIA's datasheet)
# the full presets (pipeline/tasks/*.py), as plain values: this script imports no pipeline code
GPT_FULL = dict(context=1024, dim=512, heads=8, layers=8, dropout=0.1)
CONVNETS = {  # name: (architecture, config, batch, image side, channels)
    "classify resnet": ("resnet", dict(image_size=32, widths=(64, 128, 256), blocks=(2, 2, 2), dropout=0.1), 128, 32, 1),
    "detect ssd": ("ssd", dict(widths=(32, 64, 128, 192), blocks=(1, 2, 2, 2), extra=(192, 192), levels=4), 64, 128, 3),
    "segment unet": ("unet", dict(widths=(32, 64, 128, 256), blocks=(1, 2, 2, 2)), 32, 128, 3),
}


def timed(step, steps: int) -> list[float]:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def gpt_rows(steps: int, batch: int = 64) -> list[dict]:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics.values()).encode()
    data = torch.tensor(list(text), dtype=torch.long, device="cuda")
    cfg = models.config_class("gpt")(**GPT_FULL)
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = models.create_model("gpt", cfg).cuda().train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        run = torch.compile(model) if compiled else model
        t = cfg.context

        def step():
            starts = torch.randint(0, len(data) - t - 1, (batch,), device="cuda")
            idx = starts[:, None] + torch.arange(t + 1, device="cuda")
            x, y = data[idx[:, :-1]], data[idx[:, 1:]]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(run(x).float().view(-1, 256), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        sec = statistics.median(timed(step, steps))
        tokens = batch * t / sec
        flops = 6 * params + 12 * cfg.layers * cfg.dim * t  # per token: weights, and attention over the context
        rows.append({"model": "textgen gpt (full)", "mode": "compile" if compiled else "eager", "batch": batch,
                     "ms_per_step": sec * 1000, "tokens_per_s": tokens, "params": params,
                     "mfu": tokens * flops / PEAK_BF16})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def conv_rows(steps: int) -> list[dict]:
    rows = []
    original = StridedConv2d.forward
    for name, (arch, kw, batch, side, chans) in CONVNETS.items():
        for layout in ("nhwc", "nchw-strided"):
            # nchw-strided: the CPU workaround forced on (its copies around every strided convolution)
            StridedConv2d.forward = (lambda self, x: nn.Conv2d.forward(self, x.contiguous()).contiguous(
                memory_format=torch.channels_last)) if layout == "nchw-strided" else original
            for compiled in ((False, True) if layout == "nhwc" else (False,)):  # compiling takes a minute a cell
                torch.manual_seed(0)
                fields = {**kw, "in_chans": chans} if arch == "resnet" else kw
                if arch != "resnet":
                    fields = {**fields, "num_classes": 11}
                model = models.create_model(arch, models.config_class(arch)(**fields)).cuda().train()
                model = model.to(memory_format=torch.channels_last)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
                run = torch.compile(model) if compiled else model
                x = torch.randn(batch, chans, side, side, device="cuda").contiguous(memory_format=torch.channels_last)

                def loss_of(out):
                    if isinstance(out, (tuple, list)):
                        return sum(loss_of(o) for o in out)
                    return out.float().square().mean()

                def step():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = loss_of(run(x))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                try:
                    sec = statistics.median(timed(step, steps))
                    rows.append({"model": name, "layout": layout, "mode": "compile" if compiled else "eager",
                                 "batch": batch, "side": side, "ms_per_step": sec * 1000, "images_per_s": batch / sec})
                except Exception as e:  # noqa: BLE001 - one failing cell is reported, the rest go on
                    rows.append({"model": name, "layout": layout, "mode": "compile" if compiled else "eager",
                                 "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(json.dumps(rows[-1]), flush=True)
    StridedConv2d.forward = original
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    info = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    print(json.dumps(info), flush=True)
    rows = gpt_rows(args.steps) + conv_rows(args.steps)
    if args.out:
        Path(args.out).write_text(json.dumps({**info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
