"""Pipeline side of the proof task: character-level sequence reversal ("abc" -> "cba").

It has the hard parts of the real sequence tasks and none of their size: two graphs (an encoder
and a decoder step with a KV cache whose past length is 0 at the first step), a scalar input
(``temperature``), variable-length batches (``collate`` pads), and a greedy numpy decode loop
(``serve_task.decode``) that is what is verified, scored and timed over torch and ORT alike.

Nothing here is registered globally: the test puts the model in ``models.MODELS``, the task in
``pipeline.tasks.TASKS`` and the tab in ``serve.tasks.TABS`` for its own duration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import models
from export.cache_graph import CacheStepGraph
from pipeline.tasks.cache import cache_tensors
from export.contract import Bound, DimRange, ExportContract, TensorSpec
from export.verify import TorchRunner
from pipeline.errors import PipelineError
from pipeline.tasks.base import BenchCase, BenchmarkConfig, EvalSet, Graph, Metric, RunConfig, Task, with_model_fields
from tests.proof_task import serve_task
from tests.proof_task.model import Reverser, ReverserConfig
from tests.proof_task.serve_task import BOS, EOS, LETTERS, PAD, VOCAB, CacheSpec, Decoded

EVAL_BATCH = 256  # texts per decode loop when scoring and checking parity


@dataclass
class DataConfig:
    max_length: int = 8  # (int) longest string; lengths are uniform in 1..max_length
    train_size: int = 20000  # (int) training strings
    val_size: int = 256  # (int) validation strings
    test_size: int = 512  # (int) test strings
    seed: int = 0  # (int) the splits come from seed, seed + 1, seed + 2 (independently of train.seed)

    def __post_init__(self):
        if min(self.max_length, self.train_size, self.val_size, self.test_size) < 1:
            raise ValueError("max_length and the split sizes must be >= 1")


@dataclass
class ReverseBenchmarkConfig(BenchmarkConfig):
    lengths: tuple[int, ...] = (4, 8)  # (list[int]) source lengths to time; each decodes length + 1 tokens

    def __post_init__(self):
        super().__post_init__()
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError("lengths must be >= 1 (at least one)")


@dataclass
class InferenceConfig:
    max_new_tokens: int = 10  # (int) longest decode (the reversed text plus EOS)
    temperature: float = 1.0  # (float) divides the logits inside the graph; greedy argmax ignores it

    def __post_init__(self):
        if self.max_new_tokens < 1 or not self.temperature > 0:
            raise ValueError("max_new_tokens must be >= 1 and temperature > 0")


PRESETS = {  # smoke / quick / full, on the step budget
    "smoke": {"model": {"name": "reverser", "dim": 64, "heads": 4, "layers": 2, "ffn": 128},
              "data": {"train_size": 20000, "test_size": 256},
              "train": {"steps": 300, "eval_every": 150, "batch_size": 64, "lr": 3e-3, "warmup_steps": 30,
                        "weight_decay": 0.01},
              "benchmark": {"batch_sizes": [1, 32], "lengths": [4, 8], "seconds": 0.1, "min_runs": 3, "torch_compile": False}},
    "quick": {"model": {"name": "reverser", "dim": 64, "heads": 4, "layers": 2, "ffn": 256},
              "train": {"steps": 3000, "eval_every": 500, "batch_size": 128, "lr": 2e-3, "warmup_steps": 100}},
    "full": {"model": {"name": "reverser", "dim": 128, "heads": 4, "layers": 2, "ffn": 512},
             "data": {"max_length": 12},
             "inference": {"max_new_tokens": 14},
             "train": {"steps": 20000, "eval_every": 2000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 500}},
}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class ReverseData:
    source: str
    max_length: int
    train: list[str]
    val: list[str]
    test: list[str]


def random_strings(count: int, max_length: int, seed: int, min_length: int = 1) -> list[str]:
    """``count`` lowercase strings, lengths uniform in min_length..max_length, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, max_length + 1, size=count)
    letters = np.array(list(LETTERS))
    return ["".join(letters[rng.integers(0, len(LETTERS), size=n)]) for n in lengths]


class ReverseDataset(Dataset):
    """(source ids (S,), reversed ids (S,)) int64 per string: lengths vary from sample to sample."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = torch.tensor(serve_task.encode(self.texts[i]), dtype=torch.int64)
        return src, src.flip(0)


def collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """Pad a list of variable-length pairs: src (N, S), src_mask (N, S) (1 = real), decoder
    inputs BOS + target (N, T) and labels target + EOS (N, T), both padded with PAD."""
    n = len(samples)
    s = max(len(src) for src, _ in samples)
    src = torch.full((n, s), PAD, dtype=torch.int64)
    mask = torch.zeros((n, s), dtype=torch.int64)
    tgt_in = torch.full((n, s + 1), PAD, dtype=torch.int64)
    tgt_out = torch.full((n, s + 1), PAD, dtype=torch.int64)
    for row, (x, y) in enumerate(samples):
        k = len(x)
        src[row, :k], mask[row, :k] = x, 1
        tgt_in[row, 0], tgt_in[row, 1 : k + 1] = BOS, y
        tgt_out[row, :k], tgt_out[row, k] = y, EOS
    return src, mask, tgt_in, tgt_out


# ---------------------------------------------------------------------------------------------
# The graphs


def cache_spec(mcfg: ReverserConfig) -> CacheSpec:
    return CacheSpec(mcfg.layers, mcfg.heads, mcfg.head_dim)


def contracts(mcfg: ReverserConfig) -> dict[str, ExportContract]:
    """The two graphs' I/O: encoder, and decoder step with one past key/value per layer."""
    parity = (Bound("exact_agreement", ">=", 1.0), Bound("max_abs_logit_diff", "<=", 1e-3))
    batch, src = DimRange(1, 32, 1024), DimRange(1, 8, mcfg.max_len)
    encoder = ExportContract(
        inputs=(TensorSpec("tokens", "int64", ("batch", "src_len"), "letter ids (a = 3 ... z = 28), PAD = 0 after"),
                TensorSpec("tokens_mask", "int64", ("batch", "src_len"), "1 for a letter, 0 for padding")),
        outputs=(TensorSpec("memory", "float32", ("batch", "src_len", mcfg.dim), "encoder states"),),
        dims={"batch": batch, "src_len": src}, parity=parity)
    past, present = cache_tensors(cache_spec(mcfg))
    decoder = ExportContract(
        inputs=(TensorSpec("input_ids", "int64", ("batch", "seq"), "BOS, then the previous step's token"),
                TensorSpec("memory", "float32", ("batch", "src_len", mcfg.dim), "the encoder's output"),
                TensorSpec("memory_mask", "int64", ("batch", "src_len"), "the encoder's tokens_mask"),
                *past,
                TensorSpec("temperature", "float32", (), "divides the logits (scalar)")),
        outputs=(TensorSpec("logits", "float32", ("batch", "seq", mcfg.vocab_size), "next-token logits / temperature"),
                 *present),
        dims={"batch": batch, "src_len": src, "seq": DimRange(1, 1, mcfg.max_len),
              "past": DimRange(0, 4, mcfg.max_len - 1)},
        parity=parity)
    return {"encoder": encoder, "decoder": decoder}


class EncoderGraph(nn.Module):
    """tokens (N, S), tokens_mask (N, S) -> memory (N, S, D)."""

    def __init__(self, model: Reverser):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode(tokens, tokens_mask)


def decoder_step_graph(model: Reverser) -> CacheStepGraph:
    """The decoder step: input_ids, memory, memory_mask, past_key_values.{i}.key/value per layer,
    temperature (the contract's order) -> logits and present.{i}.key/value."""
    return CacheStepGraph(model, "step", model.cfg.layers, leading=3)


def torch_runners(model: Reverser, device: str = "cpu") -> dict[str, TorchRunner]:
    c = contracts(model.cfg)
    return {"encoder": TorchRunner(EncoderGraph(model), c["encoder"], device),
            "decoder": TorchRunner(decoder_step_graph(model), c["decoder"], device)}


# ---------------------------------------------------------------------------------------------
# Training and torch-side evaluation


def training_step(model: nn.Module, batch, device: torch.device, generator: torch.Generator):
    """Teacher-forced cross-entropy over the real target tokens (reversed text + EOS)."""
    src, mask, tgt_in, tgt_out = (t.to(device, non_blocking=True) for t in batch)
    logits = model(src, mask, tgt_in)  # (N, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
    return loss, int((tgt_out != PAD).sum())


def run_loop(runners, texts: list[str], max_new_tokens: int, temperature: float, cache: CacheSpec) -> Decoded:
    """serve_task.decode over ``texts``, EVAL_BATCH at a time; the logits are NaN past a batch's stop."""
    texts_out, logits = [], np.full((len(texts), max_new_tokens, len(VOCAB)), np.nan, dtype=np.float32)
    for i in range(0, len(texts), EVAL_BATCH):
        d = serve_task.decode(runners, texts[i : i + EVAL_BATCH], max_new_tokens, temperature, cache=cache)
        texts_out += d.texts
        logits[i : i + len(d.texts), : d.logits.shape[1]] = d.logits
    return Decoded(texts_out, logits)


def exact_match(outputs: list[str], texts: list[str]) -> float:
    return 100.0 * float(np.mean([o == t[::-1] for o, t in zip(outputs, texts)]))


@torch.inference_mode()
def evaluate(model: Reverser, data_set: ReverseDataset, device: torch.device, max_new_tokens: int) -> dict[str, float]:
    """Teacher-forced loss, and exact match (%) of the greedy decode loop over the torch graphs."""
    was_training = model.training
    model.eval()
    loss, count = 0.0, 0
    for i in range(0, len(data_set), EVAL_BATCH):
        src, mask, tgt_in, tgt_out = (t.to(device) for t in collate([data_set[j] for j in
                                                                      range(i, min(len(data_set), i + EVAL_BATCH))]))
        logits = model(src, mask, tgt_in).float()
        loss += F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, reduction="sum").item()
        count += int((tgt_out != PAD).sum())
    decoded = run_loop(torch_runners(model, str(device)), data_set.texts, max_new_tokens, 1.0, cache_spec(model.cfg))
    model.train(was_training)
    return {"loss": loss / count, "exact_match": exact_match(decoded.texts, data_set.texts)}


# ---------------------------------------------------------------------------------------------
# The task


class Reverse(Task):
    """Reverse a lowercase string. Graphs ``encoder`` and ``decoder`` (one step, KV cache)."""

    name = "reverse"
    architectures = ("reverser",)
    default_model = "reverser"
    presets = PRESETS
    metric = Metric("exact_match", "max", tolerance=3.0, unit="%")
    DataConfig = DataConfig
    BenchmarkConfig = ReverseBenchmarkConfig
    InferenceConfig = InferenceConfig
    train_unit = "tokens"
    bench_unit = "tokens"
    collate = staticmethod(collate)
    usage = """```python
import numpy as np, onnxruntime as ort
from tests.proof_task.serve_task import greedy_decode  # the numpy loop: encoder once, decoder per token

enc, dec = ort.InferenceSession("encoder.onnx"), ort.InferenceSession("decoder.onnx")
runners = {"encoder": lambda f: dict(zip(["memory"], enc.run(None, f))),
           "decoder": lambda f: dict(zip([o.name for o in dec.get_outputs()], dec.run(None, f)))}
print(greedy_decode(runners, ["hello"], 10, cache={"layers": 2, "heads": 4, "head_dim": 16}))  # ['olleh']
```"""

    # -- data and model ------------------------------------------------------------------------

    def load_data(self, cfg: RunConfig) -> ReverseData:
        d = cfg.data
        return ReverseData(f"random strings a-z, lengths 1..{d.max_length}", d.max_length,
                           random_strings(d.train_size, d.max_length, d.seed),
                           random_strings(d.val_size, d.max_length, d.seed + 1),
                           random_strings(d.test_size, d.max_length, d.seed + 2))

    def describe_data(self, data: ReverseData) -> str:
        return f"{data.source} [{len(data.train)} train / {len(data.val)} val / {len(data.test)} test]"

    def complete_config(self, data: ReverseData, cfg: RunConfig) -> RunConfig:
        cfg = with_model_fields(cfg, vocab_size=len(VOCAB))
        need = max(data.max_length + 1, cfg.inference.max_new_tokens, *cfg.benchmark.lengths)
        if cfg.model.max_len < need:
            raise PipelineError(f"model.max_len {cfg.model.max_len} is too short: the data, inference.max_new_tokens "
                                f"and benchmark.lengths need {need}")
        longest = max(data.max_length, *cfg.benchmark.lengths)
        if cfg.inference.max_new_tokens < longest + 1:
            raise PipelineError(f"inference.max_new_tokens must be >= {longest + 1}: the longest data or benchmark "
                                "string, plus EOS")
        return cfg

    def build_model(self, data: ReverseData | None, cfg: RunConfig) -> Reverser:
        return models.create_model(cfg.model_name, cfg.model)

    def dataset(self, data: ReverseData, split: str, cfg: RunConfig) -> ReverseDataset:
        return ReverseDataset(getattr(data, split))

    def make_training_step(self, cfg: RunConfig):
        return training_step

    def evaluate(self, model: Reverser, data_set: ReverseDataset, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        return evaluate(model, data_set, device, max_new_tokens=cfg.inference.max_new_tokens)

    # -- export, verification, benchmark ----------------------------------------------------------

    def graphs(self, model: Reverser, data: ReverseData, cfg: RunConfig) -> dict[str, Graph]:
        mcfg = cfg.model
        c = contracts(mcfg)
        metadata = {"task": self.name, "architecture": cfg.model_name, "vocabulary": ",".join(VOCAB),
                    "cache": f"layers={mcfg.layers},heads={mcfg.heads},head_dim={mcfg.head_dim}"}
        tokens, mask = serve_task.pad_batch([serve_task.encode(t) for t in ("abcde", "xyz")])  # (2, 5), one row padded
        tokens, mask = torch.from_numpy(tokens), torch.from_numpy(mask)
        with torch.no_grad():
            memory = model.encode(tokens, mask)
        # past length 3 and 2 new tokens: sizes other than 0 and 1, which torch.export would specialize
        gen = torch.Generator().manual_seed(0)
        past = {n: torch.randn(2, mcfg.heads, 3, mcfg.head_dim, generator=gen) for n in serve_task.past_names(mcfg.layers)}
        dec_example = {"input_ids": torch.tensor([[BOS, 7], [BOS, 28]]), "memory": memory, "memory_mask": mask,
                       **past, "temperature": torch.tensor(1.0)}
        return {"encoder": Graph(EncoderGraph(model), c["encoder"], {"tokens": tokens, "tokens_mask": mask},
                                 {**metadata, "graph": "encoder"}),
                "decoder": Graph(decoder_step_graph(model), c["decoder"], dec_example,
                                 {**metadata, "graph": "decoder step"})}

    def eval_sets(self, data: ReverseData, cfg: RunConfig) -> list[EvalSet]:
        longest = random_strings(64, data.max_length, cfg.data.seed + 3, min_length=data.max_length)
        return [EvalSet("test", "the held-out test strings", data.test, len(data.test)),
                EvalSet("longest", f"strings of the longest length {data.max_length} (the longest caches)",
                        longest, len(longest))]

    def infer(self, runners, items: list[str], cfg: RunConfig) -> Decoded:
        inf = cfg.inference
        return run_loop(runners, items, inf.max_new_tokens, inf.temperature, cache_spec(cfg.model))

    def score(self, outputs: Decoded, items: list[str], cfg: RunConfig) -> dict[str, float]:
        return {"exact_match": exact_match(outputs.texts, items)}

    def parity(self, reference: Decoded, candidate: Decoded, items=None) -> dict[str, float]:
        """Share of identical decoded texts, and the largest logit difference over every decode
        step of the rows decoded identically (their steps saw the same inputs)."""
        same = np.array([a == b for a, b in zip(reference.texts, candidate.texts)])
        a, b = reference.logits[same].astype(np.float64), candidate.logits[same].astype(np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        diff = float(np.abs(a - b)[both].max()) if both.any() else float("inf")
        return {"exact_agreement": float(same.mean()), "max_abs_logit_diff": diff}

    def benchmark_cases(self, data: ReverseData, cfg: RunConfig) -> list[BenchCase]:
        cases = []
        for n in cfg.benchmark.batch_sizes:
            for length in cfg.benchmark.lengths:
                items = random_strings(n, length, cfg.data.seed + 100 + length, min_length=length)
                cases.append(BenchCase({"batch": n, "length": length}, items, units=n * (length + 1)))
        return cases

    def examples(self, data: ReverseData, cfg: RunConfig) -> list[tuple[str, bytes]]:
        return [("examples.txt", ("\n".join(data.test[:16]) + "\n").encode())]

    def info(self, data: ReverseData, cfg: RunConfig) -> dict:
        m = cfg.model
        return {"vocabulary": list(VOCAB), "max_length": data.max_length,
                "cache": {"layers": m.layers, "heads": m.heads, "head_dim": m.head_dim}}
