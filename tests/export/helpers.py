"""A classify deployable over any registered architecture, without data or training."""
import dataclasses

import torch

from pipeline.tasks import classify
from pipeline.tasks.base import resolve


def classify_setup(arch: str, in_chans: int = 1, image_size: int = 16):
    cfg = resolve(classify, "smoke", {"model": {"name": arch}})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_chans=in_chans, num_classes=10,
                                                             image_size=image_size))
    torch.manual_seed(0)
    model = classify.build_model(cfg).eval()
    return cfg, classify.deployable(model), classify.contract(cfg)


def random_images(n, h, w, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, generator=g).numpy()
