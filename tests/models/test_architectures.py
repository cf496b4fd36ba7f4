"""Every registered image classifier: builds from its config, forward shape, backward, config round
trip (the GPT has its own tests in test_gpt.py, the SSD and U-Net in test_dense.py)."""
import dataclasses

import pytest
import torch

import models
from pipeline.tasks.classify import Classify

CLASSIFIERS = sorted(Classify.architectures)

# per architecture, the non-default fields the tests build it with (small, and not the defaults, so a
# field the module ignores shows up as a wrong parameter count)
CASES = {"mlp": {"hidden": (32, 16)}, "lenet": {"channels": (8, 16), "hidden": 24},
         "resnet": {"widths": (8, 16), "blocks": (1, 2)}, "vit": {"dim": 32, "depth": 2, "num_heads": 2}}


def test_every_registered_model_is_tested():
    assert set(CASES) | {"gpt", "ssd", "unet", "whisper", "diffusion"} == set(models.MODELS)  # whisper: test_whisper.py; diffusion: tests/test_imagegen.py
    assert set(CASES) == set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_forward_backward(name, in_chans):
    cfg = dataclasses.replace(models.config_class(name)(), in_chans=in_chans, num_classes=7, image_size=16,
                              **CASES[name])
    model = models.create_model(name, cfg)
    x = torch.randn(4, in_chans, 16, 16)
    logits = model(x)
    assert logits.shape == (4, 7)
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    small = sum(p.numel() for p in model.parameters())
    default = sum(p.numel() for p in models.create_model(name, dataclasses.replace(
        models.config_class(name)(), in_chans=in_chans, num_classes=7, image_size=16)).parameters())
    assert small < default < 5_000_000, "the CASES fields must shape the model"


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_rebuilt_from_config(name):
    """Habit 2: the config dataclass alone rebuilds the same module (same state-dict keys and shapes)."""
    a = models.create_model(name)
    cfg = models.config_class(name)(**dataclasses.asdict(a.cfg))
    b = models.create_model(name, cfg)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_unknown_model_lists_known():
    with pytest.raises(KeyError, match="known: diffusion, gpt, lenet, mlp, resnet, ssd, unet, vit, whisper"):
        models.create_model("alexnet")


def test_wrong_config_type():
    with pytest.raises(TypeError, match="takes a ViTConfig"):
        models.create_model("vit", models.config_class("mlp")())


def test_resnet_backbone_and_head_split():
    """timm's split: forward_features gives one map per stage (strides 1, 2, 4), forward_head the logits;
    together they are forward, and parameter names are those of the checkpoints before the split."""
    cfg = models.config_class("resnet")(widths=(8, 16, 32), blocks=(1, 2, 1), image_size=16)
    model = models.create_model("resnet", cfg).eval()
    x = torch.randn(2, 1, 20, 12)
    feats = model.forward_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 20, 12), (2, 16, 10, 6), (2, 32, 5, 3)]
    assert model.feature_channels == (8, 16, 32) and model.feature_strides == (1, 2, 4)
    with torch.no_grad():
        split = model.forward_head(model.forward_features(x))
        whole = model.head(model.stages(model.stem(x)))
    assert torch.equal(split, whole) and torch.equal(model(x), whole)
    assert "stages.3.body.0.0.weight" in model.state_dict() and not any("stage_ends" in k for k in model.state_dict())
