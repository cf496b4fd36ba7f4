"""Image generation: a class-conditional diffusion U-Net on drawn digits, guidance inside the graph,
and the whole DDIM sampler as one ONNX ``Loop``.

Graphs (``serve/tasks/imagegen.py`` documents their I/O and holds the samplers):

- ``denoiser``: x, t, label, guidance -> eps: :class:`models.diffusion.GuidedDenoiser`, exported;
- ``sampler``: noise, label, guidance, steps -> images uint8: the DDIM loop (eta 0) around the
  denoiser's graph in an ONNX ``Loop``, assembled with ``onnx.helper`` (the exporter writes no loop
  whose trip count is an input) from each variant's own denoiser file; its torch reference
  (:class:`DDIMSampler`) runs the same steps in Python.

What is verified, scored and timed is serve's numpy samplers over the graph runners. Each variant is
judged on what it draws: the share of its samples that the project's digit classifier (a classify
bundle's ``model.onnx``, named in the manifest) reads as the digit asked for, at 25 DDIM steps and at
10 DPM-Solver++ steps; beside it a Fréchet distance on that classifier's penultimate features and a
diversity ratio (mean pairwise distance within a class, generated over real), so that a variant
drawing black squares or one digit style cannot pass.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from export.contract import Bound, DimRange, ExportContract, TensorSpec
from models.diffusion import DiffusionUNet, GuidedDenoiser
from pipeline.data.drawn import drawn_digits, scanned
from pipeline.data.images import ImageSplit, load_image_folder
from pipeline.errors import PipelineError
from pipeline.tasks.base import BenchCase, BenchmarkConfig, EvalSet, Graph, Metric, RunConfig, Task, with_model_fields
from serve.bundle import BundleError, read_manifest
from serve.runtime import OrtSession
from serve.tasks import imagegen as loop
from serve.tasks.imagegen import Sampling

TRAIN_SEED = 31_000  # the training drawings' seeds (the held-out drawn set is drawn.py's default, 2026)
HELD_OUT_SEED = 2026
DRAW_CANVAS = 112  # drawn here, then cropped to the ink and shrunk to image_size
MARGIN = 1.3  # paper around the ink's longer side (MNIST: 28 / 20 = 1.4)


@dataclass
class DataConfig:
    # (str) "drawn": digits drawn as people draw them (pipeline/data/drawn.py, training seeds only);
    # or a path: an image folder per class
    source: str = "drawn"
    train_size: int = 20000  # (int) drawn training images (drawn: 20000 distinct drawings)
    held_out_per_class: int = 50  # (int) real images per class that samples are compared with (Fréchet, diversity)
    image_size: int = 16  # (int) image side, pixels
    label_dropout: float = 0.15  # (float) share of training steps' labels replaced by the null label (guidance)
    # (str) a classify bundle whose model.onnx judges the samples; "": the newest under the run's artifacts
    # folder (classify/), trained with the same preset when there is none
    classifier: str = ""
    seed: int = 0  # (int) the drawings' seeds and the split of an image folder

    def __post_init__(self):
        if self.train_size < 10 or self.held_out_per_class < 2 or not 8 <= self.image_size <= 64:
            raise ValueError("train_size must be >= 10, held_out_per_class >= 2 and image_size in [8, 64]")
        if not 0 < self.label_dropout < 1:
            raise ValueError("label_dropout must be in (0, 1): guidance needs both conditional and null steps")


@dataclass
class InferenceConfig:
    sampler: str = "ddim"  # (str) the app's default: ddim | ddpm | dpm++2m
    steps: int = 25  # (int) the app's default steps, and what the first scored set uses (DDIM)
    guidance: float = 2.0  # (float) classifier-free guidance scale (0 unconditional, 1 conditional)
    few_steps: int = 10  # (int) DPM-Solver++ steps of the second scored set
    eval_per_class: int = 20  # (int) samples per class that verify and score each variant

    def __post_init__(self):
        try:
            Sampling(self.sampler, self.steps, self.guidance)
            Sampling("dpm++2m", self.few_steps, self.guidance)
        except BundleError as e:
            raise ValueError(str(e)) from None
        if self.eval_per_class < 1:
            raise ValueError("eval_per_class must be >= 1")


@dataclass
class ImagegenBenchmarkConfig(BenchmarkConfig):
    batch_sizes: tuple[int, ...] = (1, 64)  # (list[int]) images per call
    steps: tuple[int, ...] = (10, 25, 50)  # (list[int]) DDIM steps to time
    seconds: float = 1.0
    min_runs: int = 2
    rounds: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not self.steps or min(self.steps) < 1:
            raise ValueError("steps must be >= 1 (at least one)")


PRESETS = {
    "smoke": {"model": {"widths": [8, 16], "attention_at": 8, "heads": 2, "groups": 4, "emb_dim": 32, "timesteps": 100},
              "data": {"train_size": 200, "held_out_per_class": 3},
              "train": {"steps": 20, "eval_every": 20, "batch_size": 32, "lr": 2e-3, "warmup_steps": 2},
              "inference": {"steps": 5, "few_steps": 3, "eval_per_class": 2},
              "optimize": {"calibration_samples": 16},
              "benchmark": {"steps": [2], "batch_sizes": [1, 2], "seconds": 0.05, "min_runs": 1,
                            "torch_compile": False}},
    # widths 16/32/64: 0.26 s a step of 128 here (32/64/64: 0.57 s)
    "quick": {"model": {"widths": [16, 32, 64], "emb_dim": 64, "heads": 4},
              "train": {"steps": 1600, "eval_every": 800, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100,
                        "weight_decay": 0.0, "ema": 0.995},
              # one timed call per cell after the warm-up: a 64 x 50-step call of the INT8 variant takes ~30 s here;
              # torch.compile adds ~2 min (its compiles at batch 1 and at larger batches, and its scoring)
              "benchmark": {"min_runs": 1, "seconds": 0.5}},
    "full": {"model": {"image_size": 32, "widths": [64, 128, 256], "blocks": 2, "attention_at": 8},
             "data": {"train_size": 200000, "image_size": 32},
             "train": {"steps": 40000, "eval_every": 5000, "batch_size": 256, "lr": 2e-4, "warmup_steps": 1000,
                       "weight_decay": 0.0, "ema": 0.9995},
             "inference": {"eval_per_class": 100}},
}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class DigitImages:
    source: str
    train: ImageSplit  # uint8 (N, S, S, C), dark ink on white
    val: ImageSplit
    held_out: ImageSplit  # the real images samples are compared with
    class_names: list[str]


def drawn(count: int, seed: int, side: int) -> ImageSplit:
    """``count`` drawings (about count / 10 per digit), each cropped to its ink and shrunk to side x side."""
    return scanned(drawn_digits(-(-count // 10), seed=seed, canvas=DRAW_CANVAS), side=side, margin=MARGIN, levels=256)


def to_ink(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, C) dark on white -> float32 (N, C, S, S) ink in [-1, 1] (1: full ink)."""
    return torch.from_numpy(1.0 - images.astype(np.float32) / 127.5).permute(0, 3, 1, 2).contiguous()


class Judge:
    """A classify bundle's ``model.onnx``, run by ONNX Runtime, with its penultimate features as a second
    output: the input of the last MatMul / Gemm before ``probs`` (the classifier's embedding)."""

    def __init__(self, bundle: Path):
        self.bundle = Path(bundle)
        try:
            manifest = read_manifest(self.bundle)
        except BundleError as e:
            raise PipelineError(f"data.classifier: {e}") from None
        if manifest.get("task") != "classify" or not (self.bundle / "model.onnx").is_file():
            raise PipelineError(f"data.classifier: {self.bundle} is not a finished classify bundle")
        self.labels = manifest.get("info", {}).get("labels") or []
        self.metric = manifest.get("metrics", {}).get("onnx_fp32", {}).get("accuracy")
        model = onnx.load(str(self.bundle / "model.onnx"))
        producer = {o: n for n in model.graph.node for o in n.output}
        name = model.graph.output[0].name
        while name in producer and producer[name].op_type not in ("MatMul", "Gemm"):
            name = producer[name].input[0]
        if name not in producer:
            raise PipelineError(f"data.classifier: no MatMul/Gemm before probs in {self.bundle / 'model.onnx'}")
        model.graph.output.append(helper.make_tensor_value_info(producer[name].input[0], TensorProto.FLOAT, None))
        self.session = OrtSession(model.SerializeToString(), name=f"{self.bundle.name}/model.onnx")
        self.output, self.feature = model.graph.output[0].name, producer[name].input[0]

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, C) -> probs (N, K), features (N, D)."""
        probs, feats = [], []
        for i in range(0, len(images), 256):
            out = self.session({"image": np.ascontiguousarray(images[i : i + 256])})
            probs.append(out[self.output])
            feats.append(out[self.feature].reshape(len(out[self.output]), -1))
        return np.concatenate(probs), np.concatenate(feats)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    import warnings

    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # few samples: a singular covariance, a root still well defined
        warnings.simplefilter("ignore")
        root, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(root)))


def spread(images: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between images of one class (ink in [0, 1]), averaged over classes."""
    out = []
    for c in np.unique(labels):
        x = images[labels == c].reshape(int((labels == c).sum()), -1).astype(np.float64) / 255.0
        if len(x) < 2:
            continue
        d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
        out.append(d[np.triu_indices(len(x), 1)].mean())
    return float(np.mean(out)) if out else float("nan")


# ---------------------------------------------------------------------------------------------
# The graphs


class DDIMSampler(nn.Module):
    """The torch reference of ``sampler.onnx``: noise (N, C, S, S), label (N,), guidance (N,), steps () ->
    images uint8 (N, S, S, C); the steps of serve's DDIM (eta 0), steps clamped into [1, T]."""

    def __init__(self, denoiser: GuidedDenoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, noise, label, guidance, steps):
        abar = self.denoiser.net.alphas_cumprod
        total = len(abar)
        n = min(max(int(steps), 1), total)
        x = noise
        for t, tp in zip(loop.timesteps(total, n)[:-1], loop.timesteps(total, n)[1:]):
            a = abar[t]
            ap = abar[tp] if tp >= 0 else torch.ones((), dtype=abar.dtype)
            e = self.denoiser(x, torch.full_like(label, int(t)), label, guidance)
            x0 = ((x - (1 - a).sqrt() * e) / a.sqrt()).clamp(-1, 1)
            x = ap.sqrt() * x0 + (1 - ap).sqrt() * (x - a.sqrt() * x0) / (1 - a).sqrt()  # eps of the clipped x0
        return torch.round((1 - x.clamp(-1, 1)) * 127.5).to(torch.uint8).permute(0, 2, 3, 1)


def topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` ordered so that each comes after the producers of its inputs (the checker requires it; an
    FP16 conversion appends its input casts at the end)."""
    done, out, pending = set(available), [], list(nodes)
    while pending:
        ready = [n for n in pending if all(not i or i in done for i in n.input)]
        if not ready:
            raise ValueError(f"the denoiser's graph has a cycle or an undefined input near {pending[0].name!r}")
        for n in ready:
            out.append(n)
            done.update(n.output)
        taken = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in taken]
    return out


def sampler_graph(step: onnx.ModelProto, alphas_cumprod: np.ndarray) -> onnx.ModelProto:
    """``sampler.onnx`` from a ``denoiser.onnx``: the DDIM loop (eta 0) in an ONNX ``Loop`` whose body
    holds the denoiser's nodes and weights. Inputs noise, label,
    guidance, steps (clamped into [1, T]); output images uint8 (N, S, S, C), dark ink on white."""
    step = onnx.inliner.inline_local_functions(step) if step.functions else step
    g = step.graph
    total = len(alphas_cumprod)
    outer_names = {"x": "x_cur", "t": "t_vec", "label": "label", "guidance": "guidance"}
    if [i.name for i in g.input] != list(outer_names) or [o.name for o in g.output] != ["eps"]:
        raise ValueError(f"the denoiser's I/O is {[i.name for i in g.input]} -> {[o.name for o in g.output]}")
    rename = dict(outer_names)
    for init in g.initializer:
        rename[init.name] = "denoiser/" + init.name
    for node in g.node:
        for o in node.output:
            if o:
                rename.setdefault(o, "denoiser/" + o)
    body_nodes = []
    for k, node in enumerate(g.node):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = f"denoiser/{node.name or k}"
        new.input[:] = [rename.get(i, i) if i else i for i in node.input]
        new.output[:] = [rename.get(o, o) if o else o for o in node.output]
        body_nodes.append(new)
    initializers = []
    for init in g.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = rename[init.name]
        initializers.append(new)

    def const(name: str, value, dtype) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))

    eps = rename["eps"]
    ext = np.concatenate([[1.0], np.asarray(alphas_cumprod, np.float32)]).astype(np.float32)  # abar at t + 1
    body = [
        const("T", total, np.int64), const("one", 1, np.int64), const("onef", 1.0, np.float32),
        helper.make_node("Sub", ["steps_c", "i"], ["left"]),  # steps - i
        helper.make_node("Mul", ["T", "left"], ["t_num"]),
        helper.make_node("Div", ["t_num", "steps_c"], ["t_div"]),  # T (steps - i) // steps (integer Div)
        helper.make_node("Sub", ["t_div", "one"], ["t"]),
        helper.make_node("Sub", ["left", "one"], ["left_p"]),
        helper.make_node("Mul", ["T", "left_p"], ["tp_num"]),
        helper.make_node("Div", ["tp_num", "steps_c"], ["tp_div"]),
        helper.make_node("Sub", ["tp_div", "one"], ["tp"]),
        helper.make_node("Add", ["t", "one"], ["t_idx"]),
        helper.make_node("Add", ["tp", "one"], ["tp_idx"]),
        helper.make_node("Gather", ["abar_ext", "t_idx"], ["a"]),
        helper.make_node("Gather", ["abar_ext", "tp_idx"], ["ap"]),
        helper.make_node("Shape", ["label"], ["n"]),
        helper.make_node("Expand", ["t", "n"], ["t_vec"]),
        *body_nodes,
        helper.make_node("Sqrt", ["a"], ["sa"]),
        helper.make_node("Sub", ["onef", "a"], ["one_a"]),
        helper.make_node("Sqrt", ["one_a"], ["s1a"]),
        helper.make_node("Mul", ["s1a", eps], ["noise_part"]),
        helper.make_node("Sub", ["x_cur", "noise_part"], ["signal"]),
        helper.make_node("Div", ["signal", "sa"], ["x0_raw"]),
        helper.make_node("Clip", ["x0_raw", "minus1", "plus1"], ["x0"]),
        helper.make_node("Sqrt", ["ap"], ["sap"]),
        helper.make_node("Sub", ["onef", "ap"], ["one_ap"]),
        helper.make_node("Sqrt", ["one_ap"], ["s1ap"]),
        helper.make_node("Mul", ["sa", "x0"], ["signal0"]),  # the noise direction of the clipped x0
        helper.make_node("Sub", ["x_cur", "signal0"], ["rest"]),
        helper.make_node("Div", ["rest", "s1a"], ["eps_hat"]),
        helper.make_node("Mul", ["sap", "x0"], ["part0"]),
        helper.make_node("Mul", ["s1ap", "eps_hat"], ["part1"]),
        helper.make_node("Add", ["part0", "part1"], ["x_next"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    x_spec = g.input[0].type.tensor_type.shape
    dims = ["batch" if d.dim_param else d.dim_value for d in x_spec.dim]
    c, side = dims[1], dims[2]
    # the denoiser's weights are the body's own initializers: as outer-scope values ORT could not pre-pack
    # them, and the loop ran 2.2x slower than the numpy loop over denoiser.onnx at batch 64 (3.9 s against
    # 1.8 s); inside, as fast. The image's rank is stated: OpenVINO converts a body's Conv only then
    body_graph = helper.make_graph(
        topological(body, {"i", "cond_in", "x_cur", "label", "guidance", "steps_c", "abar_ext", "minus1", "plus1",
                           *(init.name for init in initializers)}), "ddim_step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_cur", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_next", TensorProto.FLOAT, dims)], initializer=initializers)
    nodes = [
        const("T_lo", 1, np.int64), const("T_hi", total, np.int64),
        helper.make_node("Clip", ["steps", "T_lo", "T_hi"], ["steps_c"]),
        helper.make_node("Loop", ["steps_c", "", "noise"], ["x_final"], body=body_graph),
        helper.make_node("Clip", ["x_final", "minus1", "plus1"], ["x_clipped"]),
        helper.make_node("Sub", ["one_out", "x_clipped"], ["paper"]),
        helper.make_node("Mul", ["paper", "half255"], ["levels"]),
        helper.make_node("Round", ["levels"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["pixels"], to=TensorProto.UINT8),
        helper.make_node("Transpose", ["pixels"], ["images"], perm=[0, 2, 3, 1]),
    ]
    inits = [numpy_helper.from_array(ext, "abar_ext"), numpy_helper.from_array(np.float32(-1.0), "minus1"),
             numpy_helper.from_array(np.float32(1.0), "plus1"), numpy_helper.from_array(np.float32(1.0), "one_out"),
             numpy_helper.from_array(np.float32(127.5), "half255")]
    graph = helper.make_graph(
        nodes, "ddim_sampler",
        [helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", c, side, side]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("guidance", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("steps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", side, side, c])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)
    model.producer_name = "littlebook-onnx"
    return model


# ---------------------------------------------------------------------------------------------
# Held-out requests


@dataclass
class Requests:
    """What an eval set asks for: labels (N,) from seeded noise, with one sampler; ``graph``: one call of
    sampler.onnx instead of the numpy loop over denoiser.onnx."""

    labels: np.ndarray
    seed: int
    sampling: Sampling
    graph: bool = False


class ImageGen(Task):
    """Class-conditional digit generation: denoiser (guided noise estimate) and sampler (DDIM in a Loop)."""

    name = "imagegen"
    quick_minutes = 30.0  # train, export, optimize, benchmark (measured)
    architectures = ("diffusion",)
    default_model = "diffusion"
    presets = PRESETS
    metric = Metric("accuracy", "max", tolerance=2.0, unit="%")
    DataConfig = DataConfig
    BenchmarkConfig = ImagegenBenchmarkConfig
    InferenceConfig = InferenceConfig
    bench_unit = "images"
    requires = {"classify": "classifier"}  # bundles of other tasks it needs: task -> its data.<field>
    usage = """```python
import numpy as np, onnxruntime as ort
from PIL import Image

sampler = ort.InferenceSession("sampler.onnx")  # the whole DDIM loop (guidance inside) in one call
meta = sampler.get_modelmeta().custom_metadata_map
side, channels = int(meta["image_size"]), int(meta["channels"])
digit, count = 7, 8
noise = np.random.default_rng(0).standard_normal((count, channels, side, side), dtype=np.float32)
(images,) = sampler.run(None, {"noise": noise, "label": np.full(count, digit, np.int64),
                               "guidance": np.full(count, 2.0, np.float32), "steps": np.array(25, np.int64)})
Image.fromarray(np.concatenate(list(images[..., 0]), axis=1)).resize((count * 64, 64)).save("sevens.png")
```"""

    # -- data and model ------------------------------------------------------------------------

    def load_data(self, cfg: RunConfig) -> DigitImages:
        d = cfg.data
        if d.source == "drawn":
            train = drawn(d.train_size, TRAIN_SEED + d.seed, d.image_size)
            val = drawn(200, TRAIN_SEED + 7919 + d.seed, d.image_size)
            held = drawn(10 * d.held_out_per_class, HELD_OUT_SEED, d.image_size)
            return DigitImages(f"drawn digits at {d.image_size}x{d.image_size}", train, val, held,
                               [str(i) for i in range(10)])
        data = load_image_folder(d.source, 1, d.image_size, seed=d.seed)
        return DigitImages(data.source, data.train, data.val, data.test, data.class_names)

    def describe_data(self, data: DigitImages) -> str:
        return (f"{data.source} [{len(data.train)} train / {len(data.held_out)} held-out real images, "
                f"{len(data.class_names)} classes]")

    def complete_config(self, data: DigitImages, cfg: RunConfig) -> RunConfig:
        return with_model_fields(cfg, num_classes=len(data.class_names), in_chans=data.train.images.shape[-1],
                                 image_size=cfg.data.image_size)

    def build_model(self, data, cfg: RunConfig) -> nn.Module:
        return DiffusionUNet(cfg.model)

    def dataset(self, data: DigitImages, split, cfg: RunConfig) -> Dataset:
        part = {"train": data.train, "val": data.val, "test": data.held_out}[split]
        return TensorDataset(to_ink(part.images), torch.from_numpy(part.labels))

    def make_training_step(self, cfg: RunConfig):
        """Ho et al.'s simple loss: the noise of a random step t, estimated (MSE), the label dropped to the
        null label with probability data.label_dropout (classifier-free guidance learns both)."""
        p = cfg.data.label_dropout

        def step(model: DiffusionUNet, batch, device: torch.device, generator: torch.Generator):
            x0, label = (b.to(device, non_blocking=True) for b in batch)
            n = len(x0)
            t = torch.randint(0, model.cfg.timesteps, (n,), generator=generator).to(device)
            eps = torch.randn(x0.shape, generator=generator).to(device)
            drop = (torch.rand(n, generator=generator) < p).to(device)
            label = torch.where(drop, torch.full_like(label, model.null_label), label)
            return F.mse_loss(model(model.q_sample(x0, t, eps), t, label).float(), eps), n

        return step

    def judge(self, cfg: RunConfig) -> Judge:
        if getattr(self, "_judge", None) is None or self._judge.bundle != Path(cfg.data.classifier):
            if not cfg.data.classifier:
                raise PipelineError("data.classifier: no classify bundle named (set data.classifier=PATH)")
            self._judge = Judge(Path(cfg.data.classifier))
        return self._judge

    @torch.inference_mode()
    def evaluate(self, model: DiffusionUNet, data_set: Dataset, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        """The noise-estimation loss on the split at fixed steps and noise, and the judged accuracy of a
        few samples per class (DDIM, the inference steps, through the torch module)."""
        was = model.training
        model.eval()
        x0, labels = data_set.tensors
        g = torch.Generator().manual_seed(0)
        t = torch.randint(0, model.cfg.timesteps, (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = F.mse_loss(model(model.q_sample(x0.to(device), t.to(device), eps.to(device)), t.to(device),
                                labels.to(device)).float(), eps.to(device)).item()
        per = max(1, min(10, cfg.inference.eval_per_class))
        req = Requests(np.repeat(np.arange(cfg.model.num_classes), per), 99, Sampling("ddim", cfg.inference.steps,
                                                                                       cfg.inference.guidance))
        den = GuidedDenoiser(model)
        run = lambda feeds: {"eps": den(*(torch.from_numpy(feeds[k]).to(device)  # noqa: E731
                                          for k in ("x", "t", "label", "guidance"))).float().cpu().numpy()}
        images = self._draw(run, req, cfg)
        model.train(was)
        return {"accuracy": self._accuracy(images, req.labels, cfg), "loss": loss}

    # -- export, verification, benchmark ----------------------------------------------------------

    def contracts(self, cfg: RunConfig) -> tuple[ExportContract, ExportContract]:
        c, s = cfg.model.in_chans, cfg.model.image_size
        batch = {"batch": DimRange(1, 64, 1024)}
        denoiser = ExportContract(
            inputs=(TensorSpec("x", "float32", ("batch", c, s, s), "the noisy image, ink in [-1, 1]"),
                    TensorSpec("t", "int64", ("batch",), f"step, 0..{cfg.model.timesteps - 1}"),
                    TensorSpec("label", "int64", ("batch",), f"class, 0..{cfg.model.num_classes} (last: none)"),
                    TensorSpec("guidance", "float32", ("batch",), "guidance scale (0: unconditional, 1: conditional)")),
            outputs=(TensorSpec("eps", "float32", ("batch", c, s, s), "the guided noise estimate"),),
            dims=batch, parity=(Bound("max_pixel_diff", "<=", 2.0),))
        sampler = ExportContract(
            inputs=(TensorSpec("noise", "float32", ("batch", c, s, s), "the starting noise, standard normal"),
                    TensorSpec("label", "int64", ("batch",), "class to draw"),
                    TensorSpec("guidance", "float32", ("batch",), "guidance scale"),
                    TensorSpec("steps", "int64", (), f"DDIM steps, clamped into [1, {cfg.model.timesteps}]")),
            outputs=(TensorSpec("images", "uint8", ("batch", s, s, c), "dark ink on white"),),
            dims=batch, parity=(Bound("max_pixel_diff", "<=", 2.0),))
        return denoiser, sampler

    def graphs(self, model: DiffusionUNet, data: DigitImages, cfg: RunConfig) -> dict[str, Graph]:
        abar = model.alphas_cumprod.double().numpy()
        den_contract, sampler_contract = self.contracts(cfg)
        c, s = cfg.model.in_chans, cfg.model.image_size
        meta = {"task": self.name, "labels": ",".join(data.class_names), "architecture": cfg.model_name,
                "image_size": str(s), "channels": str(c), "null_label": str(cfg.model.num_classes),
                "schedule": cfg.model.schedule, "timesteps": str(cfg.model.timesteps),
                "alphas_cumprod": ",".join(f"{a:.9g}" for a in abar), "data": data.source}
        den = GuidedDenoiser(model)
        example = {"x": torch.randn(2, c, s, s), "t": torch.tensor([5, 7]), "label": torch.tensor([1, 2]),
                   "guidance": torch.tensor([1.0, 2.0])}
        sampler_example = {"noise": torch.randn(2, c, s, s), "label": torch.tensor([1, 2]),
                           "guidance": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
        return {
            "denoiser": Graph(den, den_contract, example, {**meta, "inputs": "x [N,C,S,S], t [N], label [N], guidance [N]",
                                                           "outputs": "eps [N,C,S,S]: the guided noise estimate"}),
            "sampler": Graph(DDIMSampler(den), sampler_contract, sampler_example,
                             {**meta, "inputs": "noise [N,C,S,S], label [N], guidance [N], steps []",
                              "outputs": "images uint8 [N,S,S,C], dark ink on white"},
                             assemble=("denoiser", lambda step: sampler_graph(step, abar))),
        }

    def eval_sets(self, data: DigitImages, cfg: RunConfig) -> list[EvalSet]:
        inf, k = cfg.inference, cfg.model.num_classes
        labels = np.repeat(np.arange(k), inf.eval_per_class)
        ddim = Sampling("ddim", inf.steps, inf.guidance)
        n = len(labels)
        return [
            EvalSet("test", f"{n} samples, DDIM {inf.steps} steps (numpy loop over denoiser)", Requests(labels, 0, ddim), n),
            EvalSet("dpm", f"{n} samples, DPM-Solver++ {inf.few_steps} steps",
                    Requests(labels, 1, Sampling("dpm++2m", inf.few_steps, inf.guidance)), n, scored=True),
            EvalSet("sampler", f"{n} samples, DDIM {inf.steps} steps in one sampler.onnx call",
                    Requests(labels, 0, ddim, graph=True), n),
        ]

    def _draw(self, run, req: Requests, cfg: RunConfig) -> np.ndarray:
        c, s = cfg.model.in_chans, cfg.model.image_size
        noise = loop.noise_like((len(req.labels), c, s, s), req.seed)
        abar = self._abar(cfg)
        return loop.sample(loop.denoiser(run), abar, noise, req.labels, req.sampling, req.seed)

    def _abar(self, cfg: RunConfig) -> np.ndarray:
        from models.diffusion import noise_schedule

        return noise_schedule(cfg.model.schedule, cfg.model.timesteps).float().double().numpy()

    def infer(self, runners, items: Requests, cfg: RunConfig) -> np.ndarray:
        if items.graph:
            c, s = cfg.model.in_chans, cfg.model.image_size
            noise = loop.noise_like((len(items.labels), c, s, s), items.seed)
            return loop.sampler_graph(runners["sampler"], noise, items.labels, items.sampling.guidance,
                                      items.sampling.steps)
        return self._draw(runners["denoiser"], items, cfg)

    def _accuracy(self, images: np.ndarray, labels: np.ndarray, cfg: RunConfig) -> float:
        probs, _ = self.judge(cfg)(images)
        return 100.0 * float((probs.argmax(1) == labels).mean())

    def score(self, outputs: np.ndarray, items: Requests, cfg: RunConfig) -> dict[str, float]:
        probs, feats = self.judge(cfg)(outputs)
        real = self._real(cfg)
        ink = outputs.astype(np.float64)
        return {"accuracy": 100.0 * float((probs.argmax(1) == items.labels).mean()),
                "real_accuracy": real["accuracy"],
                "frechet": frechet(feats, real["features"]),
                "diversity": spread(outputs, items.labels) / real["spread"],
                "blank": 100.0 * float((ink.reshape(len(ink), -1).min(1) > 200).mean())}

    def _real(self, cfg: RunConfig) -> dict[str, Any]:
        """The held-out real images as the judge sees them (its accuracy, features, their spread): computed
        once per data config and classifier, not once per variant and scored set."""
        key = (cfg.data.source, cfg.data.held_out_per_class, cfg.data.image_size, cfg.data.seed, cfg.data.classifier)
        if getattr(self, "_real_key", None) != key:
            real = self.load_data(cfg).held_out
            probs, feats = self.judge(cfg)(real.images)
            self._real_key, self._real_seen = key, {
                "accuracy": 100.0 * float((probs.argmax(1) == real.labels).mean()), "features": feats,
                "spread": spread(real.images, real.labels)}
        return self._real_seen

    def parity(self, reference: np.ndarray, candidate: np.ndarray, items=None) -> dict[str, float]:
        diff = np.abs(reference.astype(np.int16) - candidate.astype(np.int16))
        return {"max_pixel_diff": float(diff.max()), "pixels_equal": float((diff == 0).mean())}

    def calibration(self, data: DigitImages, samples: int, cfg: RunConfig):
        """Denoiser inputs as sampling meets them: training images noised to random steps."""
        g = torch.Generator().manual_seed(5)
        x0 = to_ink(data.train.images[:samples])
        abar = torch.from_numpy(self._abar(cfg)).float()
        t = torch.randint(0, cfg.model.timesteps, (len(x0),), generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        x = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g)
        label = torch.from_numpy(data.train.labels[:samples])
        feeds = [{"x": x[i : i + 16].numpy(), "t": t[i : i + 16].numpy(), "label": label[i : i + 16].numpy(),
                  "guidance": np.full(len(x[i : i + 16]), cfg.inference.guidance, np.float32)}
                 for i in range(0, len(x0), 16)]
        return {"denoiser": iter(feeds)}

    def benchmark_cases(self, data: DigitImages, cfg: RunConfig) -> list[BenchCase]:
        b = cfg.benchmark
        steps = sorted(b.steps)
        cases = []
        for batch in b.batch_sizes:
            for n in steps:
                labels = np.arange(batch) % cfg.model.num_classes
                for graph in (False, True):
                    cases.append(BenchCase({"batch": batch, "steps": n, "loop": "sampler.onnx" if graph else "numpy"},
                                           Requests(labels, 3, Sampling("ddim", n, cfg.inference.guidance), graph), batch))
        return cases

    def examples(self, data: DigitImages, cfg: RunConfig) -> list[tuple[str, bytes]]:
        from PIL import Image

        out = []
        for c in range(len(data.class_names)):
            im = data.held_out.images[data.held_out.labels == c][0][..., 0]
            buf = io.BytesIO()
            Image.fromarray(im).resize((64, 64), Image.Resampling.NEAREST).save(buf, format="PNG")
            out.append((f"real_{data.class_names[c]}.png", buf.getvalue()))
        return out

    def info(self, data: DigitImages, cfg: RunConfig) -> dict[str, Any]:
        judge = self.judge(cfg)
        return {"labels": data.class_names, "channels": cfg.model.in_chans, "image_size": cfg.model.image_size,
                "null_label": cfg.model.num_classes, "schedule": cfg.model.schedule,
                "alphas_cumprod": [float(a) for a in self._abar(cfg)],
                "classifier": {"bundle": str(judge.bundle), "accuracy": judge.metric}}
