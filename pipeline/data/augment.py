"""Training augmentation of the network's view of an image: (N, c, S, S) floats, paper 1, ink 0.

It runs after the graph's pre-processing (crop to the ink, resize), so it changes what the network
sees, not what the crop finds. Two levels, chosen by ``data.augment``:

- ``affine``: rotation, scale and shift, the classic digit augmentation;
- ``strokes``: what makes an 8x8 scan look like a digit drawn with a mouse or a finger: slant
  (shear), a narrower or wider hand (anisotropic scale), rotation, a wobble of the hand (a smooth
  elastic field), a thinner or thicker pen (grey-level erosion / dilation, grey levels), sharp
  or soft stroke edges (grey levels, blur).

Every draw comes from the training loop's generator, so a run and its resume see the same images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LEVELS = ("none", "affine", "strokes")
REFERENCE_SIDE = 24  # pen and blur sizes are given for a view of this side and scale with the view


@dataclass(frozen=True)
class Ranges:
    degrees: float = 12.0  # rotation, uniform in [-degrees, degrees]
    scale: tuple[float, float] = (0.9, 1.1)  # size, both axes
    aspect: tuple[float, float] = (1.0, 1.0)  # width / height multiplier
    shear: float = 0.0  # slant: x += shear * y, uniform in [-shear, shear]
    shift: float = 0.12  # of the half-side, each axis
    elastic: float = 0.0  # std of the smooth displacement, in half-sides
    pen: tuple[float, float] = (0.0, 0.0)  # pen thickness change, in pixels of a 24-pixel view (< 0 thinner)
    # grey levels: ink -> (ink - level + width / 2) / width, clipped; a high level keeps the middle
    # of a blurred stroke (thin), a small width gives sharp edges (a drawn line); None: unchanged
    level: tuple[float, float] | None = None
    width: tuple[float, float] = (1.0, 1.0)
    blur: float = 0.0  # share of images blurred (sigma uniform in [0.4, 1.0] pixels of a 24-pixel view)


RANGES = {
    "affine": Ranges(),
    "strokes": Ranges(degrees=15.0, scale=(0.85, 1.05), aspect=(0.8, 1.15), shear=0.35, shift=0.06,
                      elastic=0.03, pen=(-1.0, 0.3), level=(0.3, 0.7), width=(0.1, 0.6), blur=0.3),
}


def augment(view: torch.Tensor, generator: torch.Generator, level: str) -> torch.Tensor:
    """A random variant of each view (N, c, S, S) at ``level`` (one of LEVELS)."""
    if level == "none":
        return view
    r = RANGES[level]
    n, _, s, _ = view.shape
    dev = view.device
    px = s / REFERENCE_SIDE  # one pixel of the reference view, in this view's pixels

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)  # (N,)

    ink = 1.0 - view  # (N, c, S, S), paper 0: what leaves the frame is paper
    # geometry: output -> input map of grid_sample, the inverse of rotate(shear(scale(x))) + shift
    angle = uniform(-r.degrees, r.degrees) * math.pi / 180
    size = uniform(*r.scale)
    sx, sy = size * uniform(*r.aspect), size
    shear = uniform(-r.shear, r.shear)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward A = R @ [[1, -shear], [0, 1]] @ diag(sx, sy) (y down: a positive shear leans the top right)
    a = torch.stack([torch.stack([cos * sx, (-cos * shear - sin) * sy], 1),
                     torch.stack([sin * sx, (-sin * shear + cos) * sy], 1)], 1)  # (N, 2, 2)
    shift = torch.stack([uniform(-r.shift, r.shift), uniform(-r.shift, r.shift)], 1)  # (N, 2)
    inv = torch.linalg.inv(a)  # (N, 2, 2)
    theta = torch.cat([inv, -(inv @ shift[:, :, None])], dim=2)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)  # (N, S, S, 2)
    if r.elastic > 0:
        field = torch.randn(n, 2, 4, 4, device=dev, generator=generator) * r.elastic
        grid = grid + F.interpolate(field, size=(s, s), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ink = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if r.pen != (0.0, 0.0):  # grey-level dilation (t > 0) or erosion (t < 0), t pixels of the view
        t = (uniform(*r.pen) * px).clamp(-1.0, 1.0)[:, None, None, None]  # a 3x3 max/min filter moves 1 pixel
        thick = F.max_pool2d(ink, 3, 1, 1)
        thin = -F.max_pool2d(-ink, 3, 1, 1)
        ink = torch.where(t > 0, ink + t * (thick - ink), ink + (-t) * (thin - ink))
    if r.level is not None:
        width = uniform(*r.width)[:, None, None, None]
        ink = ((ink - uniform(*r.level)[:, None, None, None] + width / 2) / width).clamp(0.0, 1.0)
    if r.blur > 0:
        sigma = uniform(0.4, 1.0) * px  # (N,)
        x = torch.arange(-2, 3, device=dev, dtype=ink.dtype)  # (5,)
        k = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None] ** 2))  # (N, 5)
        k = k / k.sum(1, keepdim=True)
        blurred = _separable(ink, k)
        pick = (torch.rand(n, device=dev, generator=generator) < r.blur)[:, None, None, None]
        ink = torch.where(pick, blurred, ink)
    return (1.0 - ink).clamp(0.0, 1.0)


def _separable(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x (N, c, S, S) convolved with each image's own 1-D kernel k (N, 5) along both axes."""
    n, c, s, _ = x.shape
    flat = x.reshape(1, n * c, s, s)  # one group per image and channel
    kk = k.repeat_interleave(c, dim=0)  # (N*c, 5)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0)), kk[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2)), kk[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, s, s)
