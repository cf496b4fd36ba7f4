"""Text generation: a byte-level GPT on English prose, exported with a KV cache.

Graph ``model`` (one graph for prompt and decode; Optimum / onnxruntime-genai names):
``input_ids`` int64 (N, S), ``attention_mask`` int64 (N, P + S), ``past_key_values.{i}.key|value``
float32 (N, H, P, Dh) -> ``logits`` float32 (N, S, 256), ``present.{i}.key|value`` (N, H, P + S, Dh).
P = 0 for the prompt. Bytes are tokens (256): there is no tokenizer to ship.

What is verified, scored and timed is serve's numpy loop (``serve/tasks/textgen.py``) over ORT
sessions and over the torch module alike: greedy continuations of held-out prompts byte for byte,
the prompt's logits, and bits per byte of the held-out documents.
"""
from __future__ import annotations

import json
import lzma
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import models
from export.cache_graph import CacheStepGraph
from export.contract import Bound, DimRange, ExportContract, TensorSpec
from export.genai import genai_files
from models.gpt import GPT
from pipeline.data import text as corpus
from pipeline.errors import PipelineError
from pipeline.tasks.cache import cache_tensors
from pipeline.tasks.base import BenchCase, BenchmarkConfig, EvalSet, Graph, Metric, RunConfig, Task, with_model_fields
from serve.bundle import BundleError
from serve.tasks import textgen as loop
from serve.tasks.textgen import CacheSpec, Completion, Sampling

STRESS_FILE = Path(__file__).resolve().parent.parent / "data" / "english_prose.txt"
SAMPLE_SEED = 1234  # the bundle's sample continuations


@dataclass
class DataConfig:
    # (str) "stdlib": the Python standard library's own documentation (pydoc topics, module docstrings);
    # or a path: a .txt/.md file or a folder of them
    source: str = "stdlib"
    val_fraction: float = 0.05  # (float) share of documents held out for validation
    test_fraction: float = 0.05  # (float) share of documents held out for the test split
    block: int = 256  # (int) training window length in bytes (<= model.context)
    prompts: int = 24  # (int) held-out prompts whose greedy continuations are checked byte for byte
    prompt_bytes: int = 96  # (int) length of those prompts
    eval_bytes: int = 0  # (int) bytes of each held-out split scored for bits/byte; 0: all of it

    def __post_init__(self):
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum to less than 1")
        if self.block < 2 or self.prompts < 1 or self.prompt_bytes < 1 or self.eval_bytes < 0:
            raise ValueError("block must be >= 2, prompts and prompt_bytes >= 1, eval_bytes >= 0")


@dataclass
class InferenceConfig:
    """The app's defaults and what verification decodes."""

    temperature: float = 0.8  # (float) the app's default; 0 is greedy
    top_k: int = 0  # (int) the app's default; 0: off
    top_p: float = 0.95  # (float) the app's default nucleus
    max_new_tokens: int = 200  # (int) the app's default length, in bytes
    parity_tokens: int = 64  # (int) bytes of each greedy continuation compared between backends

    def __post_init__(self):
        try:
            Sampling(self.temperature, self.top_k, self.top_p, self.max_new_tokens)  # the loop's own checks
        except BundleError as e:
            raise ValueError(str(e)) from None
        if self.parity_tokens < 1:
            raise ValueError("parity_tokens must be >= 1")


@dataclass
class TextBenchmarkConfig(BenchmarkConfig):
    batch_sizes: tuple[int, ...] = (1, 8, 32)  # (list[int]) prompts per call
    prompt_lengths: tuple[int, ...] = (128, 512)  # (list[int]) prefill cases: prompt bytes
    contexts: tuple[int, ...] = (32, 128, 512)  # (list[int]) decode cases: bytes attended by the new one
    seconds: float = 1.0  # (float) time budget per backend and case

    def __post_init__(self):
        super().__post_init__()
        if not self.prompt_lengths or not self.contexts or min(*self.prompt_lengths, *self.contexts) < 1:
            raise ValueError("prompt_lengths and contexts must be >= 1 (at least one each)")


PRESETS = {
    "smoke": {"model": {"name": "gpt", "context": 64, "dim": 32, "heads": 2, "layers": 2},
              "data": {"block": 64, "prompts": 4, "prompt_bytes": 24, "eval_bytes": 3000},
              "train": {"steps": 30, "eval_every": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5},
              "inference": {"parity_tokens": 16},
              "optimize": {"calibration_samples": 16},
              "benchmark": {"batch_sizes": [1, 2], "prompt_lengths": [32], "contexts": [8, 64], "seconds": 0.05, "torch_compile": False,
                            "min_runs": 2}},
    "quick": {"model": {"name": "gpt", "context": 512, "dim": 128, "heads": 4, "layers": 4},
              "data": {"block": 512},
              "train": {"steps": 1500, "eval_every": 750, "batch_size": 8, "lr": 3e-3, "warmup_steps": 50,
                        "weight_decay": 0.1, "beta2": 0.95},
              # static QDQ read 5.4 to 5.7 bits/byte here (rejected): straight to dynamic, saving the try
              "optimize": {"int8": "dynamic", "openvino_int8": "weights"}},
    "full": {"model": {"name": "gpt", "context": 1024, "dim": 512, "heads": 8, "layers": 8, "dropout": 0.1},
             "data": {"block": 1024},
             "train": {"steps": 20000, "eval_every": 1000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 500,
                       "weight_decay": 0.1, "beta2": 0.95}},
}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class TextData:
    source: str
    splits: dict[str, list[corpus.Document]]
    bytes: dict[str, bytes]  # train / val / test as one stream each
    stress: bytes  # English of another kind: never trained on

    def describe(self) -> str:
        n = {k: len(v) for k, v in self.splits.items()}
        kb = {k: len(v) // 1024 for k, v in self.bytes.items()}
        return (f"{self.source} [{n['train']} / {n['val']} / {n['test']} documents, "
                f"{kb['train']} / {kb['val']} / {kb['test']} kB train / val / test]")


class Windows(Dataset):
    """Every window of ``block + 1`` bytes of one split: index i starts at byte i (the sampler's
    shuffle makes them random windows). (block + 1,) int64: inputs [:-1], targets [1:]."""

    def __init__(self, data: bytes, block: int):
        self.data = data
        self.array = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
        self.block = min(block, len(data) - 1)

    def __len__(self) -> int:
        return max(0, len(self.data) - self.block)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.array[i:i + self.block + 1].long()


@dataclass
class TextItems:
    """A held-out set: ``text`` is scored in bits/byte, ``prompts`` are continued greedily."""

    text: bytes
    prompts: list[bytes]


@dataclass
class TextOutputs:
    bits_per_byte: float
    completion: Completion


@dataclass
class BenchItems:
    phase: str  # "prefill" (the prompt, one call) or "decode" (one more byte on a cache of context - 1)
    prompts: list[bytes]
    use_cache: bool = True


def prompts_from(text: bytes, count: int, length: int, seed: int) -> list[bytes]:
    """``count`` prompts of at most ``length`` bytes cut from ``text`` at deterministic places, each
    ending after a space and starting on a word (or at least at a UTF-8 character boundary)."""
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    if len(text) <= length + 1:
        return [text[: max(1, len(text) - 1)]] * count
    for start in rng.integers(0, len(text) - length - 1, size=count):
        end = int(start) + length
        space = text.rfind(b" ", int(start) + length // 2, end)
        end = space + 1 if space > 0 else end
        begin = end - length
        space = text.find(b" ", begin, begin + length // 3)  # start on a word where one starts soon
        begin = space + 1 if space >= 0 and begin > 0 else begin
        while 0 < begin < end - 1 and (text[begin] & 0xC0) == 0x80:  # not inside a multi-byte character
            begin += 1
        out.append(text[begin:end])
    return out


# ---------------------------------------------------------------------------------------------
# The graph


def cache_spec(m) -> CacheSpec:
    return CacheSpec(m.layers, m.heads, m.dim // m.heads, m.context)


def contract(m) -> ExportContract:
    past, present = cache_tensors(cache_spec(m), "bytes")
    return ExportContract(
        inputs=(TensorSpec("input_ids", "int64", ("batch", "seq"), "UTF-8 bytes 0..255 (prompts left-padded)"),
                TensorSpec("attention_mask", "int64", ("batch", "past+seq"),
                           "1 for a byte, 0 for left padding, over the cache and the new bytes"),
                *past),
        outputs=(TensorSpec("logits", "float32", ("batch", "seq", m.vocab_size), "next-byte logits"), *present),
        dims={"batch": DimRange(1, 1, 256), "seq": DimRange(1, 1, m.context), "past": DimRange(0, min(64, m.context - 1), m.context - 1)},
        parity=(Bound("greedy_agreement", ">=", 1.0), Bound("max_abs_prefill_logit_diff", "<=", 1e-3),
                Bound("bits_per_byte_diff", "<=", 0.01)),
    )


def cached_gpt(model: GPT) -> CacheStepGraph:
    """The deployable graph: input_ids, attention_mask, past_key_values.{i}.key/value (contract order)
    -> logits, present.{i}.key/value."""
    return CacheStepGraph(model, "forward_cached", model.cfg.layers, leading=2)


def _windowed_runner(model: GPT, device: torch.device) -> Callable:
    """A runner for bits/byte over the training path (empty cache, every byte real): the same
    numbers as the cached graph, faster, for evaluation during training."""

    def run(feeds):
        with torch.inference_mode():
            ids = torch.from_numpy(feeds["input_ids"]).to(device)
            return {"logits": model(ids).float().cpu().numpy()}

    return run


# ---------------------------------------------------------------------------------------------
# The task


class TextGen(Task):
    name = "textgen"
    quick_minutes = 16.7  # train, export, optimize, benchmark (measured)
    architectures = ("gpt",)
    default_model = "gpt"
    presets = PRESETS
    metric = Metric("bits_per_byte", "min", tolerance=0.05, unit=" bits/byte")
    DataConfig = DataConfig
    BenchmarkConfig = TextBenchmarkConfig
    InferenceConfig = InferenceConfig
    train_unit = "tokens"
    bench_unit = "tokens"
    usage = """```python
import numpy as np, onnxruntime as ort

session = ort.InferenceSession("model.onnx")
meta = session.get_modelmeta().custom_metadata_map
layers, heads, head_dim = (int(meta[k]) for k in ("layers", "heads", "head_dim"))
ids = np.frombuffer("The return value is".encode(), np.uint8).astype(np.int64)[None]  # bytes are tokens
past = {f"past_key_values.{i}.{kv}": np.zeros((1, heads, 0, head_dim), np.float32)
        for i in range(layers) for kv in ("key", "value")}
out = bytearray()
for _ in range(80):  # greedy, one byte per call on the KV cache
    mask = np.ones((1, past["past_key_values.0.key"].shape[2] + ids.shape[1]), np.int64)
    logits, *present = session.run(None, {"input_ids": ids, "attention_mask": mask, **past})
    past = dict(zip(past, present))
    ids = logits[:, -1:].argmax(-1)
    out.append(int(ids[0, 0]))
print(out.decode("utf-8", errors="replace"))
```
Sampling (temperature, top-k, top-p, stop sequences, batches with left padding) and bits/byte of a
text file: `serve/tasks/textgen.py` (numpy only): `generate`, `complete`, `bits_per_byte`.

With onnxruntime-genai (`pip install onnxruntime-genai`), the bundle folder is a model folder as it
is (`genai_config.json`, and a byte-level `tokenizer.json`: token id = byte value; the NUL byte ends
a generation):
```python
import onnxruntime_genai as og
model = og.Model("path/to/bundle"); tokenizer = og.Tokenizer(model)
params = og.GeneratorParams(model); params.set_search_options(do_sample=False, max_length=200)
generator = og.Generator(model, params); generator.append_tokens(tokenizer.encode("The return value"))
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
```"""

    # -- data and model ------------------------------------------------------------------------

    def load_data(self, cfg: RunConfig) -> TextData:
        d = cfg.data
        if d.source == "stdlib":
            docs = corpus.stdlib_documents()
            source = f"the Python {corpus.python_version()} standard library's documentation"
        else:
            docs = corpus.user_documents(d.source)
            source = str(d.source)
        if len(docs) < 3:
            raise PipelineError(f"{source}: {len(docs)} document(s); at least 3 are needed (train, val, test)")
        splits = corpus.split_documents(docs, d.val_fraction, d.test_fraction)
        data = {k: corpus.as_bytes(v) for k, v in splits.items()}
        if d.eval_bytes:
            data["val"], data["test"] = data["val"][: d.eval_bytes], data["test"][: d.eval_bytes]
        return TextData(source, splits, data, STRESS_FILE.read_bytes())

    def describe_data(self, data: TextData) -> str:
        return data.describe()

    def complete_config(self, data: TextData, cfg: RunConfig) -> RunConfig:
        cfg = with_model_fields(cfg, vocab_size=loop.VOCAB)
        if cfg.data.block > cfg.model.context:
            raise PipelineError(f"data.block {cfg.data.block} is longer than model.context {cfg.model.context}")
        b = cfg.benchmark
        if max(*b.prompt_lengths, *b.contexts) > cfg.model.context:
            raise PipelineError(f"benchmark prompt_lengths / contexts must be <= model.context {cfg.model.context}")
        return cfg

    def build_model(self, data: TextData | None, cfg: RunConfig) -> GPT:
        return models.create_model(cfg.model_name, cfg.model)

    def dataset(self, data: TextData, split: str, cfg: RunConfig) -> Windows:
        return Windows(data.bytes[split], cfg.data.block)

    def make_training_step(self, cfg: RunConfig):
        def step(model: nn.Module, batch: torch.Tensor, device: torch.device, generator: torch.Generator):
            batch = batch.to(device, non_blocking=True)  # (N, block + 1)
            logits = model(batch[:, :-1])  # (N, block, V)
            return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten()), batch[:, 1:].numel()

        return step

    def evaluate(self, model: GPT, data_set: Windows, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        was_training = model.training
        model.eval()
        bpb = loop.bits_per_byte(_windowed_runner(model, device), data_set.data, cache_spec(model.cfg))
        model.train(was_training)
        return {"loss": bpb * math.log(2), "bits_per_byte": bpb}

    # -- export, verification, benchmark ----------------------------------------------------------

    def graphs(self, model: GPT, data: TextData, cfg: RunConfig) -> dict[str, Graph]:
        m = cfg.model
        # past length 3 and 2 new bytes, one row left-padded: sizes other than 0 and 1 (torch.export
        # would specialize those)
        gen = torch.Generator().manual_seed(0)
        past = {n: torch.randn(2, m.heads, 3, m.dim // m.heads, generator=gen) for n in loop.past_names(m.layers)}
        example = {"input_ids": torch.tensor([[84, 104], [101, 32]]),
                   "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]), **past}
        metadata = {"task": self.name, "architecture": cfg.model_name, "vocabulary": "bytes (256): UTF-8",
                    "context": str(m.context), "layers": str(m.layers), "heads": str(m.heads),
                    "head_dim": str(m.dim // m.heads), "special_bytes": "none: no BOS/EOS; prompts are left-padded "
                    "(attention_mask 0) and generation stops at max length or a stop sequence",
                    "data": data.source}
        return {"model": Graph(cached_gpt(model), contract(m), example, metadata)}

    def eval_sets(self, data: TextData, cfg: RunConfig) -> list[EvalSet]:
        d = cfg.data
        test = TextItems(data.bytes["test"], prompts_from(data.bytes["test"], d.prompts, d.prompt_bytes, 7))
        stress = TextItems(data.stress, prompts_from(data.stress, max(1, d.prompts // 4), d.prompt_bytes, 8))
        return [EvalSet("test", "the held-out documents", test, len(test.text)),
                EvalSet("stress", "English prose of other kinds (stories, news, letters, recipes; never trained on)",
                        stress, len(stress.text), scored=True)]

    def infer(self, runners, items: TextItems, cfg: RunConfig) -> TextOutputs:
        """Greedy continuations of the prompts (8 per batch, left-padded) and bits/byte of the text."""
        spec = cache_spec(cfg.model)
        runner = runners["model"]
        greedy = Sampling(temperature=0.0, max_new_tokens=cfg.inference.parity_tokens)
        parts = [loop.complete(runner, items.prompts[i:i + 8], greedy, spec) for i in range(0, len(items.prompts), 8)]
        width = max(p.prefill_logits.shape[1] for p in parts)
        prefill = np.concatenate([np.pad(p.prefill_logits, ((0, 0), (width - p.prefill_logits.shape[1], 0), (0, 0)),
                                         constant_values=np.nan) for p in parts])
        completion = Completion([t for p in parts for t in p.texts], [b for p in parts for b in p.data],
                                np.concatenate([p.logits for p in parts]), prefill)
        return TextOutputs(loop.bits_per_byte(runner, items.text, spec), completion)

    def score(self, outputs: TextOutputs, items: TextItems, cfg: RunConfig) -> dict[str, float]:
        return {"bits_per_byte": outputs.bits_per_byte}

    def parity(self, reference: TextOutputs, candidate: TextOutputs, items=None) -> dict[str, float]:
        a, b = reference.completion, candidate.completion
        same = [x == y for x, y in zip(a.data, b.data)]
        both = np.isfinite(a.prefill_logits) & np.isfinite(b.prefill_logits)
        diff = np.abs(a.prefill_logits.astype(np.float64) - b.prefill_logits)[both]
        agree = sum(sum(p == q for p, q in zip(x, y)) for x, y in zip(a.data, b.data))
        return {"greedy_agreement": float(np.mean(same)),
                "greedy_byte_agreement": agree / max(1, sum(len(x) for x in a.data)),
                "max_abs_prefill_logit_diff": float(diff.max()) if diff.size else float("inf"),
                "bits_per_byte_diff": abs(reference.bits_per_byte - candidate.bits_per_byte)}

    def calibration(self, data: TextData, samples: int, cfg: RunConfig) -> dict[str, Any]:
        """Windows of training text with an empty cache (the prompt's call, which INT8 must get right)."""
        m, block = cfg.model, min(cfg.data.block, cfg.model.context)
        arr = np.frombuffer(data.bytes["train"], dtype=np.uint8).astype(np.int64)
        starts = np.random.default_rng(0).integers(0, len(arr) - block, size=samples)

        def batches():
            for i in range(0, samples, 8):
                ids = np.stack([arr[s:s + block] for s in starts[i:i + 8]])
                empty = np.zeros((len(ids), m.heads, 0, m.dim // m.heads), np.float32)
                yield {"input_ids": ids, "attention_mask": np.ones_like(ids),
                       **{n: empty for n in loop.past_names(m.layers)}}

        return {"model": batches()}

    def benchmark_cases(self, data: TextData, cfg: RunConfig) -> list[BenchCase]:
        b, cases = cfg.benchmark, []

        def cut(n: int, length: int) -> list[bytes]:
            """``n`` consecutive pieces of ``length`` bytes of the test text (repeated when it is short)."""
            text = data.bytes["test"] * (1 + n * length // max(1, len(data.bytes["test"])))
            return [text[i * length:(i + 1) * length] for i in range(n)]

        for n in b.batch_sizes:
            for length in b.prompt_lengths:
                cases.append(BenchCase({"batch": n, "phase": "prefill", "context": length, "cache": "yes"},
                                       BenchItems("prefill", cut(n, length)), units=n * length))
            for context in b.contexts:
                prompts = cut(n, max(1, context - 1))
                cases.append(BenchCase({"batch": n, "phase": "decode", "context": context, "cache": "yes"},
                                       BenchItems("decode", prompts), units=n))
                cases.append(BenchCase({"batch": n, "phase": "decode", "context": context, "cache": "no"},
                                       BenchItems("decode", prompts, use_cache=False), units=n,
                                       backends=("torch eager",)))
        return cases

    def call_axes(self, graph: str, feeds) -> dict[str, int | str]:
        return loop.call_axes(feeds)  # batch, phase (prefill / decode) and context, as the cases name them

    def bench_call(self, runners, case: BenchCase, cfg: RunConfig) -> Callable[[], Any]:
        """prefill: the prompt's call; decode: one step of the loop (feed a byte, choose the next) on a
        cache of ``context - 1`` bytes, reset before each timed call."""
        items: BenchItems = case.items
        spec, runner = cache_spec(cfg.model), runners["model"]
        greedy = Sampling(temperature=0.0, max_new_tokens=1)
        rng = np.random.default_rng(0)
        if items.phase == "prefill":
            return lambda: loop.Decoder(runner, spec).prefill(items.prompts)
        decoder = loop.Decoder(runner, spec, use_cache=items.use_cache)
        logits = decoder.prefill(items.prompts)[:, -1]
        token = loop.choose(logits, greedy, rng)
        state = decoder.snapshot()

        def one_step():
            decoder.restore(state)
            return loop.choose(decoder.step(token), greedy, rng)

        return one_step

    def samples(self, runners, data: TextData, cfg: RunConfig) -> list[dict[str, str]]:
        """Continuations of held-out prompts with the served defaults (seeded): what the model writes."""
        inf = cfg.inference
        prompts = prompts_from(data.bytes["test"], 3, 64, 11) + prompts_from(data.stress, 1, 64, 12)
        sampling = Sampling(inf.temperature, inf.top_k, inf.top_p, min(inf.max_new_tokens, 160), SAMPLE_SEED)
        out = loop.complete(runners["model"], prompts, sampling, cache_spec(cfg.model))
        return [{"prompt": p.decode("utf-8", errors="replace"), "continuation": t} for p, t in zip(prompts, out.texts)]

    def baselines(self, data: TextData, cfg: RunConfig) -> dict[str, dict[str, float]]:
        """xz (LZMA, preset 9 extreme) given the training text first: the bits it adds per held-out byte."""
        return {"xz -9e (train text as context)": {"bits_per_byte": xz_bits_per_byte(data.bytes["train"],
                                                                                      data.bytes["test"]),
                                                   "stress": xz_bits_per_byte(data.bytes["train"], data.stress)}}

    def bundle_files(self, data: TextData, cfg: RunConfig) -> dict[str, bytes]:
        """onnxruntime-genai runs ``model.onnx`` as it is with these: its config and a byte-level
        tokenizer (HF ``tokenizer.json``: token id = byte value)."""
        m = cfg.model
        return {name: json.dumps(value, ensure_ascii=False, indent=1).encode()
                for name, value in genai_files(m.layers, m.heads, m.dim // m.heads, m.context, loop.VOCAB).items()}

    def examples(self, data: TextData, cfg: RunConfig) -> list[tuple[str, bytes]]:
        prompts = prompts_from(data.bytes["test"], 6, 48, 13)
        lines = [p.decode("utf-8", errors="replace").replace("\n", " ").strip() for p in prompts]
        return [("prompts.txt", ("\n".join(lines) + "\n").encode())]

    def info(self, data: TextData, cfg: RunConfig) -> dict:
        m = cfg.model
        return {"vocabulary": "bytes", "context": m.context, "layers": m.layers, "heads": m.heads,
                "head_dim": m.dim // m.heads}


def xz_bits_per_byte(context: bytes, text: bytes) -> float:
    """Bits per byte that xz needs for ``text`` after ``context``: (|xz(context + text)| -
    |xz(context)|) * 8 / |text|."""
    def size(b: bytes) -> int:
        return len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))

    return (size(context + corpus.SEPARATOR.encode() + text) - size(context)) * 8 / len(text)

