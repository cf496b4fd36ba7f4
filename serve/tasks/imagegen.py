"""Image generation: the numpy samplers over the denoiser graph, and the Image tab.

numpy only. The graphs (``pipeline/tasks/imagegen.py`` builds them):

- ``denoiser``: ``x`` float32 (N, C, S, S), ``t`` int64 (N,) in [0, T), ``label`` int64 (N,) in
  [0, K] (K: the null label, unconditional), ``guidance`` float32 (N,) -> ``eps`` (N, C, S, S), the
  guided noise estimate (the conditional and unconditional passes batched inside the graph);
- ``sampler``: ``noise`` (N, C, S, S), ``label``, ``guidance``, ``steps`` int64 () -> ``images``
  uint8 (N, S, S, 1): the whole DDIM loop (eta 0) below, inside an ONNX ``Loop``.

Time runs on T discrete steps with the schedule abar_t (the bundle's ``info.alphas_cumprod``). A
sampler of n steps visits t_i = T (n - i) // n - 1, i = 0..n-1 ("trailing" spacing: the first step
starts from pure noise at t = T - 1), the step after the last being the clean image (abar = 1).
Pixel values are ink in [-1, 1] (1: full ink); images are dark ink on white paper.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, Whole, choice_input, guarded_stream, number_input, setting, setting_specs
from serve.tensors import TensorSpec

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
SAMPLERS = ("ddim", "ddpm", "dpm++2m")
MAX_IMAGES = 256  # the server's limit per request
MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampling:
    """How images are drawn. Invalid values are a BundleError naming the setting."""

    sampler: str = "ddim"  # ddim | ddpm (ancestral) | dpm++2m (DPM-Solver++ 2M, for few steps)
    steps: int = 25  # denoising steps, 1..T
    guidance: float = 2.0  # classifier-free guidance scale: 0 unconditional, 1 conditional, > 1 stronger
    eta: float = 0.0  # DDIM's noise: 0 deterministic, 1 as DDPM

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise BundleError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise BundleError(f"steps must be a whole number >= 1, got {self.steps!r}")
        if not (isinstance(self.guidance, (int, float)) and 0 <= self.guidance <= MAX_GUIDANCE):
            raise BundleError(f"guidance must be a number in [0, {MAX_GUIDANCE:g}], got {self.guidance!r}")
        if not (isinstance(self.eta, (int, float)) and 0 <= self.eta <= 1):
            raise BundleError(f"eta must be in [0, 1], got {self.eta!r}")

    def checked(self, timesteps: int) -> "Sampling":
        if self.steps > timesteps:
            raise BundleError(f"steps must be at most {timesteps} (the model's noise schedule has {timesteps} steps), "
                              f"got {self.steps}")
        return self


def timesteps(total: int, steps: int) -> np.ndarray:
    """(steps + 1,) int64: t_0 = T - 1 > t_1 > ... > t_{n-1} >= 0, then -1 (the clean image)."""
    i = np.arange(steps + 1, dtype=np.int64)
    return total * (steps - i) // steps - 1


def noise_like(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The starting noise of a seed: float32 standard normal, the same on every machine."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def to_images(x: np.ndarray) -> np.ndarray:
    """ink (N, C, S, S) in [-1, 1] -> uint8 (N, S, S, C), dark ink on white (what sampler.onnx returns)."""
    return np.round((1.0 - np.clip(x, -1.0, 1.0)) * np.float32(127.5)).astype(np.uint8).transpose(0, 2, 3, 1)


def denoiser(run: Runner) -> Callable[..., np.ndarray]:
    """A runner of the ``denoiser`` graph as eps(x, t, label, guidance); t a scalar step for the batch."""

    def eps(x: np.ndarray, t: int, label: np.ndarray, guidance: np.ndarray) -> np.ndarray:
        feeds = {"x": x, "t": np.full(len(x), t, np.int64), "label": label, "guidance": guidance}
        return run(feeds)["eps"]

    return eps


def sample_steps(eps_fn: Callable[..., np.ndarray], abar: np.ndarray, noise: np.ndarray, label: np.ndarray,
                 s: Sampling, seed: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Run sampler ``s`` from ``noise`` (N, C, S, S): yields (step, x_t, x0 estimate) after each of
    ``s.steps`` steps; the last x_t is the sample. ``seed`` draws DDPM's and eta's fresh noise."""
    abar = np.asarray(abar, np.float64)
    ts = timesteps(len(abar), s.steps)
    a_of = lambda t: 1.0 if t < 0 else float(abar[t])  # noqa: E731
    guidance = np.full(len(noise), s.guidance, np.float32)
    rng = np.random.default_rng(seed + 1)  # apart from the starting noise's stream
    x = noise.astype(np.float32)
    previous = None  # DPM-Solver++: the last x0 estimate and its lambda step
    for i in range(s.steps):
        t, tp = int(ts[i]), int(ts[i + 1])
        a, ap = a_of(t), a_of(tp)
        e = eps_fn(x, t, label, guidance).astype(np.float32)
        x0 = np.clip((x - np.float32(math.sqrt(1 - a)) * e) / np.float32(math.sqrt(a)), -1.0, 1.0)
        if s.sampler == "dpm++2m":
            x = _dpm_solver_2m(x, x0, a, ap, previous)
            previous = (x0, _lambda(a), _lambda(ap))
        else:
            # DDIM (Song et al.) with eta of DDPM's variance (ddpm: eta 1, the posterior q(x_tp | x_t, x0)). The
            # noise direction is the one consistent with the *clipped* x0: keeping the network's own eps put
            # back what the clipping took out, and at guidance 2 the samples' judged accuracy fell from 100%
            # to 80% (25 steps; 58% at 50), where DPM-Solver++, which uses x0 alone, kept 100%
            eta = 1.0 if s.sampler == "ddpm" else s.eta
            var = eta**2 * (1 - ap) / (1 - a) * (1 - a / ap)
            e_hat = (x - np.float32(math.sqrt(a)) * x0) / np.float32(math.sqrt(1 - a))
            x = np.float32(math.sqrt(ap)) * x0 + np.float32(math.sqrt(max(1 - ap - var, 0.0))) * e_hat
            if var > 0:
                x = x + np.float32(math.sqrt(var)) * rng.standard_normal(x.shape, dtype=np.float32)
        if not np.isfinite(x).all():
            raise BundleError(f"the denoiser returned non-finite values at step {i + 1} of {s.steps}")
        yield i, x.astype(np.float32), x0


def _lambda(a: float) -> float:
    """log(alpha / sigma) of abar = a (inf at the clean image)."""
    return math.inf if a >= 1.0 else 0.5 * math.log(a / (1 - a))


def _dpm_solver_2m(x: np.ndarray, x0: np.ndarray, a: float, ap: float,
                   previous: tuple[np.ndarray, float, float] | None) -> np.ndarray:
    """One DPM-Solver++(2M) step (Lu et al. 2022, data prediction, multistep) from abar a to ap; the
    first step and the last (onto the clean image) are first order."""
    if ap >= 1.0:
        return x0
    lam, lam_p = _lambda(a), _lambda(ap)
    h = lam_p - lam
    sigma, sigma_p, alpha_p = math.sqrt(1 - a), math.sqrt(1 - ap), math.sqrt(ap)
    d = x0
    if previous is not None:
        x0_prev, lam_prev, _ = previous
        r = (lam - lam_prev) / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    return np.float32(sigma_p / sigma) * x - np.float32(alpha_p * math.expm1(-h)) * d


def sample(eps_fn: Callable[..., np.ndarray], abar: np.ndarray, noise: np.ndarray, label: np.ndarray,
           s: Sampling, seed: int = 0) -> np.ndarray:
    """The final samples, uint8 (N, S, S, C)."""
    x = noise
    for _, x, _ in sample_steps(eps_fn, abar, noise, label, s, seed):
        pass
    return to_images(x)


def sampler_graph(run: Runner, noise: np.ndarray, label: np.ndarray, guidance: float, steps: int) -> np.ndarray:
    """One call of ``sampler.onnx``: the DDIM loop (eta 0) inside the graph. uint8 (N, S, S, 1)."""
    feeds = {"noise": noise.astype(np.float32), "label": label.astype(np.int64),
             "guidance": np.full(len(noise), guidance, np.float32), "steps": np.asarray(steps, np.int64)}
    return run(feeds)["images"]


# ---------------------------------------------------------------------------------------------
# The app


def whole(value):
    """A whole float (what sliders and number boxes send) as an int; anything else as it is."""
    return int(value) if isinstance(value, float) and math.isfinite(value) and value.is_integer() else value


def check_request(digit: int, count: int, seed, labels: list[str]) -> tuple[int, int, int]:
    """The tab's and API's inputs -> (label, count, seed), or a BundleError saying what is wrong."""
    if not isinstance(digit, (int, np.integer)) or isinstance(digit, bool) or not 0 <= digit < len(labels):
        raise BundleError(f"label must be one of 0..{len(labels) - 1} ({', '.join(labels)}), got {digit!r}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= MAX_IMAGES:
        raise BundleError(f"images must be a whole number from 1 to {MAX_IMAGES}, got {count!r}")
    seed = whole(seed)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise BundleError(f"seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return int(digit), int(count), int(seed)


def generate(bundle: Bundle, digit: int, count: int, s: Sampling, seed: int, variant: str = "fp32",
             preview_every: int = 0) -> Iterator[tuple[np.ndarray, bool, str]]:
    """Yields (uint8 images (N, S, S, 1), final?, a line on what ran): previews every ``preview_every``
    steps (0: none), then the samples. DDIM at eta 0 without previews is one call of sampler.onnx."""
    info = bundle.info
    abar = np.asarray(info["alphas_cumprod"], np.float64)
    s = s.checked(len(abar))
    label, count, seed = check_request(digit, count, seed, info["labels"])
    c, side = int(info["channels"]), int(info["image_size"])
    noise = noise_like((count, c, side, side), seed)
    labels = np.full(count, label, np.int64)
    start = time.perf_counter()
    if s.sampler == "ddim" and s.eta == 0 and not preview_every and "sampler" in bundle.graphs:
        images = sampler_graph(bundle.session("sampler", variant), noise, labels, s.guidance, s.steps)
        what = f"one call of sampler.onnx ({bundle.describe(variant)})"
    else:
        eps = denoiser(bundle.session("denoiser", variant))
        x = noise
        for i, x, x0 in sample_steps(eps, abar, noise, labels, s, seed):
            if preview_every and (i + 1) % preview_every == 0 and i + 1 < s.steps:
                yield to_images(x0), False, f"step {i + 1} of {s.steps}"
        images = to_images(x)
        what = f"{s.sampler} over denoiser.onnx, {s.steps} calls ({bundle.describe(variant)})"
    seconds = time.perf_counter() - start
    yield images, True, f"{count} images in {seconds:.2f} s ({1000 * seconds / count:.1f} ms an image): {what}"


class ImageTab(TaskTab):
    task = "imagegen"
    title = "Image"
    endpoints = ("generate",)

    def check(self, bundle: Bundle) -> None:
        info = bundle.info
        if set(bundle.graphs) - {"denoiser", "sampler"} or "denoiser" not in bundle.graphs:
            raise BundleError(f"{bundle.path}: not an image generation bundle (graphs denoiser and sampler)")
        abar = info.get("alphas_cumprod")
        if not (isinstance(abar, list) and len(abar) >= 2 and all(isinstance(a, float) and 0 < a < 1 for a in abar)):
            raise BundleError(f"{bundle.path}: info.alphas_cumprod must be the noise schedule (floats in (0, 1))")
        labels = info.get("labels")
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise BundleError(f"{bundle.path}: info.labels must be the class names")
        if not all(isinstance(info.get(k), int) and info[k] > 0 for k in ("channels", "image_size")):
            raise BundleError(f"{bundle.path}: info.channels and info.image_size must be positive integers")

    def whole(self, bundle: Bundle) -> Whole:
        """``imagegen``: a label (and settings) -> images uint8 (N, S, S, C), the tab's sampling without previews."""
        info, d = bundle.info, bundle.inference

        def run(tensors: dict[str, np.ndarray], params: dict[str, Any], variant: str | None) -> dict[str, np.ndarray]:
            get = functools.partial(setting, tensors, params)
            s = Sampling(get("sampler", d.get("sampler", "ddim")), whole(get("steps", d.get("steps", 25))),
                         get("guidance", d.get("guidance", 2.0)))
            *_, (images, _, _) = generate(bundle, whole(get("label", None)), whole(get("count", 1)), s,
                                          whole(get("seed", 0)), variant or bundle.default_variant)
            return {"images": images}

        side, c = int(info["image_size"]), int(info["channels"])
        label = TensorSpec("label", "INT64", (1,), f"class, 0..{len(info['labels']) - 1}")
        settings = setting_specs(count=("INT64", f"images, 1..{MAX_IMAGES}"), steps=("INT64", "denoising steps"),
                                 guidance=("FP32", f"0..{MAX_GUIDANCE:g}"), seed=("INT64", "0.."),
                                 sampler=("BYTES", ", ".join(SAMPLERS)))
        return Whole((label, *settings), (TensorSpec("images", "UINT8", (-1, side, side, c), "dark ink on white"),), run)

    def build(self, bundle: Bundle) -> None:
        import gradio as gr

        info, defaults = bundle.info, bundle.inference
        labels = info["labels"]

        def run(digit, count, sampler, steps, guidance, seed, variant):
            label = labels.index(digit) if digit in labels else digit
            count, steps, seed = (whole(v) for v in (count, steps, seed))
            s = Sampling(sampler, steps, float(guidance) if isinstance(guidance, (int, float)) else guidance)
            every = max(1, s.steps // 5)
            for images, final, line in generate(bundle, label, count, s, seed, variant, preview_every=every):
                shown = [(im[..., 0] if im.shape[-1] == 1 else im, f"{labels[label]}") for im in images]
                yield shown, line

        gr.Markdown(f"**{bundle.name}**: a class-conditional diffusion U-Net ({info['image_size']}x"
                    f"{info['image_size']}), classifier-free guidance inside `denoiser.onnx`. DDIM runs as one "
                    "call of `sampler.onnx` through the API; here the images appear as they denoise.")
        with gr.Row():
            with gr.Column():
                digit = gr.Dropdown(labels, value=labels[0], label="Digit", elem_id="imagegen-digit")
                count = gr.Slider(1, 64, value=16, step=1, label="Images", elem_id="imagegen-count")
                sampler = gr.Radio(list(SAMPLERS), value=defaults.get("sampler", "ddim"), label="Sampler",
                                   info="ddim: deterministic; ddpm: adds noise each step; dpm++2m: for few steps",
                                   elem_id="imagegen-sampler")
                steps = gr.Slider(1, 100, value=defaults.get("steps", 25), step=1, label="Steps", elem_id="imagegen-steps")
                guidance = gr.Slider(0, 8, value=defaults.get("guidance", 2.0), step=0.25, label="Guidance",
                                     info="0: unconditional, 1: conditional, more: stronger", elem_id="imagegen-guidance")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="imagegen-seed")
                variant = gr.Radio(bundle.variants(), value=bundle.default_variant, label="Variant",
                                   info=variant_info(bundle.variants()), elem_id="imagegen-variant")
                button = gr.Button("Generate", variant="primary", elem_id="imagegen-run")
            with gr.Column():
                gallery = gr.Gallery(label="Samples", columns=8, height=420, elem_id="imagegen-gallery")
                line = gr.Textbox(label="What ran", interactive=False, elem_id="imagegen-line")
        for component in (count, steps, guidance, seed):
            number_input(component)
        choice_input(digit, "digit")
        choice_input(sampler, "sampler")
        choice_input(variant, "variant")
        button.click(guarded_stream(run), [digit, count, sampler, steps, guidance, seed, variant], [gallery, line],
                     api_name="generate")
