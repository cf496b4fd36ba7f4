"""A classify deployable over any registered architecture, without data or training."""
import dataclasses

import torch

from pipeline.tasks import get_task
from pipeline.tasks.base import resolve
from pipeline.tasks.classify import Deployable

CLASSIFY = get_task("classify")


def classify_setup(arch: str, in_chans: int = 1, image_size: int = 16, seed: int = 0, peak: float = 1.0):
    """(config, deployable, contract); ``peak`` scales the last layer so probabilities are not near uniform."""
    cfg = resolve(CLASSIFY, "smoke", {"model": {"name": arch}})
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_chans=in_chans, num_classes=10,
                                                             image_size=image_size))
    torch.manual_seed(seed)
    model = CLASSIFY.build_model(None, cfg).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(peak)
    return cfg, Deployable(model), CLASSIFY.contract(cfg)


def random_images(n, h, w, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, generator=g).numpy()
