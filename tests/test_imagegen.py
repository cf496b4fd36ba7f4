"""Image generation: the samplers' invariants, the guided denoiser, the sampler graph against the numpy
loop, bad requests, and (slow) the smoke bundle end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from serve.bundle import BundleError
from serve.tasks import imagegen as loop
from tests.conftest import ROOT, run_cli


def _oracle(x0: np.ndarray, abar: np.ndarray):
    """A denoiser that knows the clean image: the noise that makes x_t out of x0 at step t."""

    def eps(x, t, label, guidance):
        a = abar[t]
        return ((x - math.sqrt(a) * x0) / math.sqrt(1 - a)).astype(np.float32)

    return eps


@pytest.mark.parametrize("steps", [1, 2, 7, 25, 100, 1000])
def test_timesteps_run_from_pure_noise_to_the_clean_image(steps):
    ts = loop.timesteps(1000, steps)
    assert ts[0] == 999 and ts[-1] == -1 and len(ts) == steps + 1
    assert (np.diff(ts) < 0).all() and ts[-2] >= 0


@pytest.mark.parametrize("sampler", loop.SAMPLERS)
@pytest.mark.parametrize("steps", [1, 3, 10, 50])
def test_every_sampler_lands_on_the_image_a_perfect_denoiser_knows(sampler, steps):
    """With the true noise at every step, DDIM, DDPM and DPM-Solver++ all end on x0 (the invariant of a
    sampler; a wrong coefficient or timestep shows as a miss)."""
    from models.diffusion import noise_schedule

    abar = noise_schedule("cosine", 1000).numpy()
    rng = np.random.default_rng(steps)
    x0 = np.clip(rng.standard_normal((3, 1, 8, 8)), -1, 1).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    s = loop.Sampling(sampler, steps, 1.0)
    *_, (_, x, _) = loop.sample_steps(_oracle(x0, abar), abar, noise, np.zeros(3, np.int64), s)
    np.testing.assert_allclose(x, x0, atol=2e-3)


def test_guidance_mixes_the_conditional_and_unconditional_estimates():
    from models.diffusion import DiffusionConfig, DiffusionUNet, GuidedDenoiser

    torch.manual_seed(0)
    net = DiffusionUNet(DiffusionConfig(widths=(8, 16), groups=4, heads=2, emb_dim=16, attention_at=8, timesteps=50))
    torch.nn.init.normal_(net.out.weight, std=0.1)  # the zero-initialized head would make every estimate 0
    x, t, label = torch.randn(2, 1, 16, 16), torch.tensor([3, 40]), torch.tensor([2, 7])
    guided = GuidedDenoiser(net).eval()
    with torch.no_grad():
        cond, uncond = net(x, t, label), net(x, t, torch.full_like(label, 10))
        torch.testing.assert_close(guided(x, t, label, torch.ones(2)), cond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided(x, t, label, torch.zeros(2)), uncond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided(x, t, label, torch.full((2,), 3.0)), uncond + 3 * (cond - uncond),
                                   atol=1e-4, rtol=1e-4)
    assert not torch.allclose(cond, uncond), "the label must change the estimate"


@pytest.fixture(scope="module")
def tiny_graphs(tmp_path_factory):
    """A tiny denoiser exported, and the sampler graph assembled from it."""
    from export.torch_to_onnx import assemble_onnx, export_onnx
    from models.diffusion import DiffusionConfig, DiffusionUNet
    from pipeline.tasks.base import resolve
    from pipeline.tasks.imagegen import ImageGen, sampler_graph

    torch.manual_seed(0)
    task = ImageGen()
    cfg = resolve(task, "smoke")
    net = DiffusionUNet(cfg.model)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    from pipeline.tasks.imagegen import DigitImages
    from pipeline.data.images import ImageSplit

    split = ImageSplit(np.zeros((1, 16, 16, 1), np.uint8), np.zeros(1, np.int64))
    graphs = task.graphs(net.eval(), DigitImages("none", split, split, split, [str(i) for i in range(10)]), cfg)
    out = tmp_path_factory.mktemp("imagegen")
    den, smp = graphs["denoiser"], graphs["sampler"]
    export_onnx(den.module, den.example, den.contract, out / "denoiser.onnx", den.metadata)
    assemble_onnx(smp.assemble[1], out / "denoiser.onnx", smp.contract, out / "sampler.onnx", smp.metadata)
    return out, net, graphs


def test_the_sampler_graph_is_the_numpy_ddim_loop(tiny_graphs):
    """sampler.onnx (one call, the loop inside) equals serve's numpy DDIM over denoiser.onnx and the torch
    reference; steps outside [1, T] are clamped as the contract says."""
    from serve.runtime import OrtSession

    out, net, graphs = tiny_graphs
    den, smp = OrtSession(out / "denoiser.onnx"), OrtSession(out / "sampler.onnx")
    abar = net.alphas_cumprod.double().numpy()
    noise = loop.noise_like((5, 1, 16, 16), 3)
    labels = np.array([0, 3, 9, 10, 4])
    for steps in (1, 4, 12):
        numpy_loop = loop.sample(loop.denoiser(den), abar, noise, labels, loop.Sampling("ddim", steps, 2.0))
        graph = loop.sampler_graph(smp, noise, labels, 2.0, steps)
        with torch.no_grad():
            ref = graphs["sampler"].module(torch.from_numpy(noise), torch.from_numpy(labels),
                                           torch.full((5,), 2.0), torch.tensor(steps)).numpy()
        assert graph.shape == (5, 16, 16, 1) and graph.dtype == np.uint8
        assert np.abs(graph.astype(int) - numpy_loop).max() <= 1
        assert np.abs(ref.astype(int) - numpy_loop).max() <= 1
    clamp_lo = loop.sampler_graph(smp, noise, labels, 2.0, 0)
    np.testing.assert_array_equal(clamp_lo, loop.sampler_graph(smp, noise, labels, 2.0, 1))
    total = len(abar)
    big = loop.sampler_graph(smp, noise[:1], labels[:1], 2.0, 10_000)
    np.testing.assert_array_equal(big, loop.sampler_graph(smp, noise[:1], labels[:1], 2.0, total))


def test_the_sampler_graph_describes_itself(tiny_graphs):
    import onnx

    out, net, _ = tiny_graphs
    meta = {p.key: p.value for p in onnx.load(str(out / "sampler.onnx")).metadata_props}
    abar = [float(a) for a in meta["alphas_cumprod"].split(",")]
    np.testing.assert_allclose(abar, net.alphas_cumprod.numpy(), rtol=1e-6)
    assert meta["null_label"] == "10" and meta["image_size"] == "16" and meta["task"] == "imagegen"
    ops = {n.op_type for n in onnx.load(str(out / "sampler.onnx")).graph.node}
    assert "Loop" in ops


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be"), ({"steps": 2.5}, "steps must be"), ({"guidance": -1.0}, "guidance must be"),
    ({"guidance": float("nan")}, "guidance must be"), ({"guidance": 1e9}, "guidance must be"),
    ({"sampler": "euler"}, "sampler must be"), ({"eta": 2.0}, "eta must be"),
])
def test_bad_sampling_settings_are_one_readable_error(kwargs, message):
    with pytest.raises(BundleError, match=message):
        loop.Sampling(**kwargs)


def test_steps_beyond_the_schedule_are_refused():
    with pytest.raises(BundleError, match="at most 1000"):
        loop.Sampling(steps=10_000).checked(1000)


@pytest.mark.parametrize("digit, count, seed, message", [
    (11, 1, 0, "label must be"), (-1, 1, 0, "label must be"), ("7", 1, 0, "label must be"),
    (3, 0, 0, "images must be"), (3, 10_000, 0, "images must be"), (3, 1, 1.5, "seed must be"),
    (3, 1, -4, "seed must be"), (3, 1, 2**64, "seed must be"), (3, 1, "x", "seed must be"),
])
def test_bad_requests_are_one_readable_error(digit, count, seed, message):
    with pytest.raises(BundleError, match=message):
        loop.check_request(digit, count, seed, [str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------
# The smoke bundle, end to end (slow)


@pytest.fixture(scope="session")
def imagegen_bundle(smoke_bundles):
    """The smoke imagegen bundle, judged by the session's smoke classify bundle."""
    return smoke_bundles("imagegen")


@pytest.mark.slow
def test_the_bundle_is_judged_on_what_it_draws(imagegen_bundle):
    m = json.loads((imagegen_bundle / "manifest.json").read_text())
    assert set(m["graphs"]) == {"denoiser", "sampler"}
    fp32 = m["variants"]["fp32"]
    for key in ("accuracy", "dpm", "frechet", "diversity", "blank", "real_accuracy"):
        assert np.isfinite(fp32[key]), key
    assert m["parity"]["test"]["max_pixel_diff"] <= 2 and m["parity"]["sampler"]["max_pixel_diff"] <= 2
    assert m["info"]["classifier"]["bundle"].endswith(m["info"]["classifier"]["bundle"].split("/")[-1])
    for v, entry in m["variants"].items():
        assert entry["status"] in ("accepted", "rejected", "failed"), v
        if entry["status"] == "accepted":
            assert set(m["graphs"]["sampler"]["files"]) >= {v} or v == "openvino"


@pytest.mark.slow
def test_the_model_cards_snippet_draws_with_onnxruntime_alone(imagegen_bundle, tmp_path):
    card = (imagegen_bundle / "MODEL_CARD.md").read_text()
    code = card.split("```python", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=imagegen_bundle, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    im = np.asarray(Image.open(imagegen_bundle / "sevens.png"))
    assert im.shape[:2] == (64, 8 * 64)
    (imagegen_bundle / "sevens.png").unlink()


@pytest.mark.slow
def test_the_app_generates_through_the_api(imagegen_bundle):
    from serve.runtime import Bundle

    b = Bundle.open(imagegen_bundle)
    *_, (images, final, line) = loop.generate(b, 3, 4, loop.Sampling("ddim", 5, 2.0), 7)
    assert final and images.shape == (4, 16, 16, 1) and "sampler.onnx" in line
    *previews, (again, _, line2) = loop.generate(b, 3, 4, loop.Sampling("ddim", 5, 2.0), 7, preview_every=2)
    assert previews and "denoiser.onnx" in line2
    assert np.abs(again.astype(int) - images).max() <= 2, "the loop and the graph draw the same images"
    for bad in [dict(digit=12), dict(count=0), dict(seed=-1)]:
        args = {"digit": 3, "count": 2, "seed": 0, **bad}
        with pytest.raises(BundleError):
            list(loop.generate(b, args["digit"], args["count"], loop.Sampling(), args["seed"]))


@pytest.fixture(scope="module")
def image_app(imagegen_bundle, tmp_path_factory):
    from tests.serve.conftest import served

    with served([imagegen_bundle], tmp_path_factory, concurrency=4) as (url, _):
        yield url


@pytest.fixture(scope="module")
def image_client(image_app):
    import os

    from gradio_client import Client

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return Client(image_app, verbose=False)


@pytest.mark.slow
def test_the_image_tab_streams_previews_then_the_gallery(image_client):
    job = image_client.submit("3", 4, "ddim", 5, 2.0, 0, "fp32", api_name="/generate")
    gallery, line = job.result()
    assert len(gallery) == 4 and "4 images in" in line
    updates = job.outputs()
    assert len(updates) >= 2, "previews come before the samples"


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("3", 4, "ddim", 0, 2.0, 0, "fp32"), "steps must be"),
    (("3", 4, "ddim", 5, -1.0, 0, "fp32"), "guidance must be"),
    (("3", 10_000, "ddim", 5, 2.0, 0, "fp32"), "images must be"),
    (("3", 4, "ddim", 5, 2.0, 1.5, "fp32"), "seed must be"),
    (("12", 4, "ddim", 5, 2.0, 0, "fp32"), "unknown digit"),
    (("3", 4, "ddim", 10_000, 2.0, 0, "fp32"), "at most"),
])
def test_bad_requests_get_one_readable_message_and_the_server_keeps_serving(image_client, args, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        image_client.predict(*args, api_name="/generate")
    gallery, _ = image_client.predict("1", 1, "dpm++2m", 3, 1.0, 5, "fp32", api_name="/generate")
    assert len(gallery) == 1


@pytest.mark.slow
def test_chromium_sees_the_images_appear(image_app):
    """In the browser: the Image tab, 6 images of a 5 asked for; previews then a gallery of 6 drawn images."""
    from tests.serve.test_browser import SCREENSHOTS, chromium_page

    with chromium_page() as page:
        page.goto(image_app)
        page.get_by_role("tab", name="Image").click()
        page.fill("#imagegen-count input[type=number]", "6")
        page.press("#imagegen-count input[type=number]", "Enter")
        page.click("#imagegen-run")
        page.wait_for_function("() => document.querySelector('#imagegen-line textarea').value.includes('images in')",
                               timeout=60_000)
        page.wait_for_function("() => [...document.querySelectorAll('#imagegen-gallery img')]"
                               ".filter(i => i.complete && i.naturalWidth > 0).length >= 6", timeout=30_000)
        line = page.input_value("#imagegen-line textarea")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "imagegen-gallery.png"))
    assert line.startswith("6 images in"), line
