"""The memory layout ConvNets train in (issue 21): channels_last throughout (models.layers.channels_first),
strided convolutions reading contiguous NCHW (models.layers.StridedConv2d), since torch 2.13's oneDNN
corrupts memory in the NHWC backward of strided convolutions on AVX-512 CPUs."""
import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from models.layers import StridedConv2d, channels_first
from pipeline.tasks import TASKS
from pipeline.tasks.base import build_model, resolve
from serve.bundle import cpu_info
from tests.conftest import ROOT
from tests.pipeline.layout_probe import conv_tasks, floats

# a convolution's backward in oneDNN's verbose log: kernel, its source's properties and layout, its problem
BACKWARD = re.compile(r"onednn_verbose,.*?,exec,cpu,convolution,([^,]+),backward_(?:data|weights),"
                      r"src:f32:(\w*):blocked:(\w+).*?,(mb\w+)")
CHANNELS_LAST = torch.channels_last


def test_channels_first_gives_nhwc_strides_and_the_same_values():
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    x = channels_first(images)
    assert x.shape == (2, 3, 5, 7) and x.is_contiguous(memory_format=CHANNELS_LAST) and not x.is_contiguous()
    assert torch.equal(x, images.permute(0, 3, 1, 2))


@contextlib.contextmanager
def strided_reads():
    """What every StridedConv2d's convolution reads: a list of (stride, is contiguous NCHW)."""
    original, read = nn.Conv2d.forward, []

    def forward(self, x):
        if isinstance(self, StridedConv2d):
            read.append((self.stride, x.is_contiguous()))
        return original(self, x)

    nn.Conv2d.forward = forward
    try:
        yield read
    finally:
        nn.Conv2d.forward = original


def test_strided_conv_reads_nchw_in_training_and_equals_a_plain_conv():
    conv = StridedConv2d(8, 16, 1, stride=2, bias=False)
    plain = nn.Conv2d(8, 16, 1, stride=2, bias=False).requires_grad_(False)
    plain.weight.copy_(conv.weight)
    x = torch.randn(4, 8, 12, 12).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    with strided_reads() as read:
        y = conv(x)
    assert read == [((2, 2), True)] and y.is_contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(y, plain(x))
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", [n for n, _, _ in conv_tasks("smoke")])
def test_every_convolution_in_training_sees_the_chosen_layout(name):
    """One forward + backward of the task's own trainable module on (N, H, W, C) images: the network's
    input is channels_last, every strided convolution reads contiguous NCHW, the others channels_last."""
    task = TASKS[name]
    cfg = resolve(task, "smoke", {"model": {"name": "resnet"}} if name == "classify" else {})
    model = build_model(task, None, cfg).train()
    seen: list[tuple[str, tuple, bool, bool]] = []

    def record(where):
        return lambda mod, args: seen.append((where, mod.stride, args[0].is_contiguous(),
                                              args[0].is_contiguous(memory_format=CHANNELS_LAST)))

    # StridedConv2d's own forward makes the copy: its hook sees what the layer is given, the inner call what it reads
    hooks = [m.register_forward_pre_hook(record(where)) for where, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and not isinstance(m, StridedConv2d)]
    strided = [m for m in model.modules() if isinstance(m, StridedConv2d)]
    channels = getattr(cfg.model, "in_chans", 3)
    net_input = []
    hooks.append(model.net.register_forward_pre_hook(lambda m, a: net_input.append(a[0])))
    try:
        with strided_reads() as read:
            floats(model(torch.randint(0, 256, (4, 40, 56, channels), dtype=torch.uint8))).backward()
    finally:
        for h in hooks:
            h.remove()
    assert seen and strided, f"{name}: expected plain and strided convolutions"
    assert net_input[0].is_contiguous(memory_format=CHANNELS_LAST), f"{name}: the network's input is not channels_last"
    assert len(read) == len(strided) and all(nchw for _, nchw in read), f"{name}: a strided convolution read NHWC"
    assert not [where for where, stride, _, _ in seen if stride != (1, 1)], f"{name}: a strided nn.Conv2d"
    if channels > 1:  # a one-channel image is both layouts at once, and torch then picks NCHW for what follows
        wrong = [where for where, _, _, nhwc in seen if not nhwc]
        assert not wrong, f"{name}: stride-1 convolutions not fed channels_last: {wrong[:3]}"


@pytest.mark.slow
def test_training_steps_run_in_a_process_of_their_own():
    """The probe's training steps (every ConvNet task, images of several sizes) end normally, and no
    strided convolution's backward reads torch's NHWC tensors in place. Before the fix this process died
    on AVX-512 (glibc: "double free or corruption"); on an AVX2 CPU it runs the same steps on AVX2 kernels."""
    proc = subprocess.run([sys.executable, "-m", "tests.pipeline.layout_probe", "smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "ONEDNN_VERBOSE": "1", "PYTHONPATH": str(ROOT)})
    out = proc.stdout + proc.stderr
    kernels = BACKWARD.findall(out)
    isa = sorted({k.split(":")[-1] for k, _, _, _ in kernels})
    capability = re.search(r"cpu capability: (\S+)", out)
    print(f"cpu flags: {cpu_info()['flags']}; torch dispatch: {capability and capability[1]}; "
          f"oneDNN convolution backward kernels: {', '.join(isa) or 'none (not oneDNN)'}")
    assert proc.returncode == 0, f"the probe died (exit {proc.returncode}): {out[-1500:]}"
    assert out.count("training steps ok") == len(list(conv_tasks("smoke")))
    if torch.backends.mkldnn.is_available():  # the log was read: this check is not vacuous
        assert kernels, "no oneDNN convolution backward in the verbose log: its format changed?"
    # "a" in a tensor's properties: oneDNN chose the layout itself (format `any`) and works in its own
    # buffers; without it, oneDNN runs on torch's tensor in place, which in NHWC (acdb) and strided
    # (sh2 / sw2 in the problem) is the call that corrupted memory
    in_place = [(k, problem) for k, props, tag, problem in kernels
                if tag == "acdb" and "a" not in props and re.search(r"s[hw][2-9]", problem)]
    assert not in_place, f"strided convolution backward on torch's NHWC tensors: {in_place[:3]}"
