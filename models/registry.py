"""The one registry of architectures: name -> (config dataclass, module class).

Every model file is imported here explicitly, so a name is known as soon as ``models`` is.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from torch import nn

from models.diffusion import DiffusionConfig, DiffusionUNet
from models.gpt import GPT, GPTConfig
from models.lenet import LeNet, LeNetConfig
from models.mlp import MLP, MLPConfig
from models.resnet import ResNet, ResNetConfig
from models.ssd import SSD, SSDConfig
from models.unet import UNet, UNetConfig
from models.vit import ViT, ViTConfig
from models.whisper import Whisper, WhisperConfig

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPConfig, MLP),
    "lenet": (LeNetConfig, LeNet),
    "resnet": (ResNetConfig, ResNet),
    "vit": (ViTConfig, ViT),
    "gpt": (GPTConfig, GPT),
    "ssd": (SSDConfig, SSD),
    "unet": (UNetConfig, UNet),
    "whisper": (WhisperConfig, Whisper),
    "diffusion": (DiffusionConfig, DiffusionUNet),
}


def _lookup(name: str) -> tuple[type, type[nn.Module]]:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def config_class(name: str) -> type:
    """The hyperparameter dataclass of architecture ``name``."""
    return _lookup(name)[0]


def create_model(name: str, cfg: Any = None) -> nn.Module:
    """Build architecture ``name`` from its config dataclass (defaults when ``cfg`` is None)."""
    cfg_cls, module_cls = _lookup(name)
    cfg = cfg_cls() if cfg is None else cfg
    if not (is_dataclass(cfg) and isinstance(cfg, cfg_cls)):
        known = ", ".join(f.name for f in fields(cfg_cls))
        raise TypeError(f"model {name!r} takes a {cfg_cls.__name__} ({known}), got {type(cfg).__name__}")
    return module_cls(cfg)
