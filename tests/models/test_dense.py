"""The dense-prediction networks: SSD (default boxes, box coding, matching) and the U-Net."""
import dataclasses

import pytest
import torch

import models
from models.ssd import SSDConfig, box_iou, decode, encode, match, to_xyxy
from models.unet import UNetConfig

SMALL_SSD = SSDConfig(widths=(8, 16, 24, 32), extra=(32,), num_classes=5)


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_ssd_outputs_one_row_per_default_box(size):
    net = models.create_model("ssd", SMALL_SSD)
    logits, offsets = net(torch.randn(2, 3, *size))
    defaults = net.default_boxes(*size)
    assert logits.shape == (2, len(defaults), 6) and offsets.shape == (2, len(defaults), 4)
    cells = sum((size[0] // s) * (size[1] // s) for s in net.strides)
    assert len(defaults) == cells * SMALL_SSD.boxes_per_cell
    # default boxes sit on their cells: centres inside the image, sizes growing with the stride
    assert (defaults[:, 0] < size[1]).all() and (defaults[:, 1] < size[0]).all()
    first, last = defaults[0], defaults[-1]
    assert last[2:].prod() > first[2:].prod()


def test_encode_decode_round_trip():
    defaults = torch.tensor([[20.0, 20.0, 12.0, 12.0], [50.0, 40.0, 30.0, 20.0]])
    boxes = torch.tensor([[14.0, 12.0, 27.0, 30.0], [30.0, 35.0, 70.0, 52.0]])
    assert torch.allclose(decode(encode(boxes, defaults), defaults), boxes, atol=1e-4)


def test_match_gives_every_object_a_default_box():
    defaults = torch.tensor([[10.0, 10.0, 8.0, 8.0], [30.0, 30.0, 8.0, 8.0], [30.0, 30.0, 16.0, 16.0]])
    boxes = torch.tensor([[24.0, 24.0, 37.0, 37.0], [0.0, 0.0, 30.0, 30.0]])  # the 2nd overlaps little
    targets, matched = match(boxes, torch.tensor([3, 1]), defaults, 0.5)
    assert targets.tolist().count(2) >= 1 and targets.tolist().count(4) >= 1  # labels + 1
    iou = box_iou(to_xyxy(defaults), boxes)
    assert iou.max(0).values.min() < 0.5  # the forced match was needed
    empty, _ = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), defaults)
    assert (empty == 0).all()


@pytest.mark.parametrize("size", [(32, 32), (48, 80)])
def test_unet_gives_logits_per_pixel(size):
    cfg = UNetConfig(widths=(8, 16, 24), blocks=(1, 1, 1), full=8, num_classes=4)
    net = models.create_model("unet", cfg)
    x = torch.randn(2, 3, *size)
    out = net(x)
    assert out.shape == (2, 4, *size) and size[0] % net.stride == 0
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name, cfg", [("ssd", SMALL_SSD), ("unet", UNetConfig(widths=(8, 16), blocks=(1, 2)))])
def test_rebuilt_from_config(name, cfg):
    a = models.create_model(name, cfg)
    b = models.create_model(name, models.config_class(name)(**dataclasses.asdict(a.cfg)))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in models.create_model(name).parameters())


def test_bad_configs_say_why():
    with pytest.raises(ValueError, match="levels"):
        SSDConfig(levels=9)
    with pytest.raises(ValueError, match="widths and blocks"):
        UNetConfig(widths=(8, 16), blocks=(1,))
