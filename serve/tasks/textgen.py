"""Text generation: the numpy decode loop over the KV-cache graph, bits/byte, and the Text tab.

numpy only (the graph runs through whatever runner it is handed: an ORT session, a TensorRT engine,
or the torch module behind ``export.verify.TorchRunner`` for the pipeline's reference). The app,
the pipeline's export verification, scoring and benchmark all run *this* loop.

The graph ``model`` (Hugging Face Optimum / onnxruntime-genai decoder-with-past names):

- ``input_ids`` int64 (N, S): UTF-8 bytes, 0..255 (the prompt, then one byte per step);
- ``attention_mask`` int64 (N, P + S): 1 for a byte, 0 for left padding (cache and new bytes);
- ``past_key_values.{i}.key`` / ``.value`` float32 (N, H, P, Dh) per layer; P = 0 for the prompt
  -> ``logits`` float32 (N, S, 256) and ``present.{i}.key`` / ``.value`` (N, H, P + S, Dh).

Positions are counted from the mask inside the graph: a left-padded prompt reads as itself alone.
"""
from __future__ import annotations

import codecs
import functools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.kv_cache import CacheSpec, KVCache, pad, past_names, present_name  # noqa: F401 (loop.past_names ...)
from serve.inputs import InputError, as_text, echo, number
from serve.runtime import Bundle
from serve.tasks.base import (TaskTab, Whole, choice_input, guarded_stream, number_input, setting, setting_specs,
                              takes_request, text_input)
from serve.tensors import TensorSpec

GRAPH = "model"
VOCAB = 256
MAX_NEW_TOKENS = 1024  # the server's limit per request (the loop itself has none)
MAX_PROMPT_BYTES = 100_000  # a longer prompt is refused before anything is encoded
MAX_PROMPTS = 64  # prompts in one protocol request (one batch of the loop)
STREAM_EVERY = 0.03  # seconds between the streamed updates of the Text tab (the text arrives as it grows)
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


SERVED = "served"  # the tab's choice that runs each call on the benchmark's fastest variant for it


def call_axes(feeds: Mapping[str, np.ndarray]) -> dict[str, int | str]:
    """A call of the graph as the benchmark's cases name it: batch size, phase (prefill: the cache is
    empty; decode: one step on a cache) and context (the mask's width: prompt bytes, or cache + 1)."""
    past = feeds["past_key_values.0.key"].shape[2]
    return {"batch": int(feeds["input_ids"].shape[0]), "phase": "decode" if past else "prefill",
            "context": int(feeds["attention_mask"].shape[1])}


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Sampling:
    """How the next byte is chosen. temperature 0 is greedy (argmax); top_k 0 and top_p 1 keep every
    byte; seed None draws a fresh seed. Invalid values are a BundleError naming the setting."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 200
    seed: int | None = None
    stop: tuple[bytes, ...] = ()

    def __post_init__(self):
        t, p = self.temperature, self.top_p
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
            raise InputError(f"temperature must be a number >= 0 (0: greedy), got {echo(t)}")
        if not (isinstance(p, (int, float)) and math.isfinite(p) and 0 < p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {echo(p)}")
        if not (_is_int(self.top_k) and self.top_k >= 0):
            raise InputError(f"top_k must be an integer >= 0 (0: off), got {echo(self.top_k)}")
        if not (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1):
            raise InputError(f"max_new_tokens must be an integer >= 1, got {echo(self.max_new_tokens)}")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed < 2**63):
            raise InputError(f"seed must be an integer >= 0 (or empty for a random one), got {echo(self.seed)}")
        if any(not isinstance(s, bytes) or not s for s in self.stop):
            raise InputError("stop sequences must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def choose(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> np.ndarray:
    """logits (N, V) -> the next byte per row (N,) int64: argmax when greedy, else a draw from the
    temperature-scaled distribution restricted to the top k bytes and to the top-p nucleus."""
    if s.greedy:
        return logits.argmax(-1).astype(np.int64)
    # the max first, then the temperature: a tiny temperature gives -inf for every byte but the best
    # (dividing first overflowed to inf - inf = NaN)
    with np.errstate(over="ignore"):  # -x / tiny -> -inf: exactly what it should be
        z = (logits.astype(np.float64) - logits.max(-1, keepdims=True)) / s.temperature  # (N, V), max 0
    if s.top_k and s.top_k < z.shape[-1]:
        kth = np.partition(z, -s.top_k, axis=-1)[:, -s.top_k, None]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if s.top_p < 1:
        order = np.argsort(-probs, axis=-1)  # (N, V) most likely first
        sorted_p = np.take_along_axis(probs, order, -1)
        keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < s.top_p  # the first byte always stays
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The loop


def encode(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate (possible in JSON strings): not text
        raise InputError(f"the prompt is not valid Unicode text ({e.reason} at character {e.start})") from None


def left_pad(rows: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings -> input_ids int64 (N, S) left-padded with 0, attention_mask int64 (N, S)."""
    return pad(rows, "left")


class Decoder:
    """One batch's state over the graph: the bytes of each row, the prompt's ids (left-padded), the
    attention mask over everything read so far, and the KV cache. ``prefill`` reads prompts, ``step``
    feeds one byte per row; each returns the next-byte logits. With ``use_cache=False`` every call re-reads the whole sequence
    with an empty cache (the reference and the benchmark's "without cache" rows). ``snapshot`` and
    ``restore`` put the state back, so a benchmark can time the same step again."""

    def __init__(self, runner: Runner, spec: CacheSpec, use_cache: bool = True):
        self.runner, self.spec, self.use_cache = runner, spec, use_cache
        self.rows: list[bytearray] = []
        self.ids, self.mask = pad([])  # (N, S) each, the last call's
        self.cache = KVCache(spec, 0)

    def _run(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray]) -> np.ndarray:
        out = self.runner({"input_ids": ids, "attention_mask": mask, **past})
        if self.use_cache:
            self.cache.update(out)
        return out["logits"]  # (N, S, V)

    def prefill(self, prompts: list[bytes]) -> np.ndarray:
        """Prompts (each non-empty, at most ``context`` bytes) -> logits (N, S, V) of every position."""
        self.rows = [bytearray(p) for p in prompts]
        self.ids, self.mask = left_pad(prompts)
        self.cache.reset(len(prompts))
        return self._run(self.ids, self.mask, self.cache.feeds())

    def step(self, token: np.ndarray) -> np.ndarray:
        """token (N,) int64 -> next-byte logits (N, V). A full context slides: the cache is rebuilt
        from the last three quarters of each row."""
        for row, t in zip(self.rows, token):
            row.append(int(t))
        if not self.use_cache:
            keep = self.spec.context
            self.ids, self.mask = left_pad([bytes(r[-keep:]) for r in self.rows])
            return self._run(self.ids, self.mask, self.spec.empty(len(self.rows)))[:, -1]
        if self.mask.shape[1] + 1 > self.spec.context:
            return self.prefill([bytes(r[-(self.spec.context * 3 // 4):]) for r in self.rows])[:, -1]
        self.mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), np.int64)], axis=1)
        return self._run(token[:, None].astype(np.int64), self.mask, self.cache.feeds())[:, -1]

    def snapshot(self) -> tuple:
        return self.ids, self.mask, self.cache.snapshot(), [bytes(r) for r in self.rows]

    def restore(self, state: tuple) -> None:
        self.ids, self.mask, past, rows = state
        self.cache.restore(past)
        self.rows = [bytearray(r) for r in rows]


@dataclass
class Step:
    """What one step of :func:`generate` produced, per row."""

    tokens: np.ndarray  # (N,) the byte chosen (-1 for a finished row)
    logits: np.ndarray  # (N, V) the logits it was chosen from
    text: list[str]  # the new text that can be shown now (complete UTF-8 characters, no partial stop)
    done: np.ndarray  # (N,) bool
    data: list[bytes] | None = None  # the last step only: each row's generated bytes, stop sequence removed


@dataclass
class Completion:
    texts: list[str]
    data: list[bytes]  # the generated bytes (stop sequence removed)
    logits: np.ndarray  # (N, steps, V) every step's logits (NaN after a row finished)
    prefill_logits: np.ndarray  # (N, S, V) the prompt's logits (left-padded rows: NaN on the padding)
    truncated: list[int] = field(default_factory=list)  # bytes dropped from the start of each prompt
    seconds: float = 0.0
    steps: int = 0


def prepare(prompts: list[str | bytes], context: int) -> tuple[list[bytes], list[int]]:
    """Prompts -> bytes that fit the context (the last ``context - 1`` bytes are kept: the graph
    reads at most ``context`` positions and one more byte is generated) and how many were dropped."""
    if not prompts:
        raise InputError("no prompt given")
    out, dropped = [], []
    for p in prompts:
        data = encode(p)
        if not data:
            raise InputError("the prompt is empty: type the start of a text")
        if len(data) > MAX_PROMPT_BYTES:
            raise InputError(f"the prompt has {len(data)} bytes; at most {MAX_PROMPT_BYTES} are read")
        keep = max(1, context - 1)
        dropped.append(max(0, len(data) - keep))
        out.append(data[-keep:])
    return out, dropped


class _Stream:
    """Per row: bytes generated, the text released so far. Text is released whole UTF-8 characters
    at a time (an incremental decoder), and never the start of what might become a stop sequence."""

    def __init__(self, stop: tuple[bytes, ...]):
        self.stop = stop
        self.data = bytearray()
        self.released = 0  # bytes of ``data`` handed to the decoder
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.done = False

    def push(self, byte: int) -> str:
        self.data.append(byte)
        for s in self.stop:
            if self.data.endswith(s):
                del self.data[len(self.data) - len(s):]
                self.done = True
                return self.flush()
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.data.endswith(s[:k])), default=0)
        return self._release(len(self.data) - hold)

    def _release(self, upto: int) -> str:
        piece = bytes(self.data[self.released:upto])
        self.released = max(self.released, upto)
        return self.decoder.decode(piece)

    def flush(self) -> str:
        return self._release(len(self.data)) + self.decoder.decode(b"", final=True)


def generate(runner: Runner, prompts: list[str | bytes], sampling: Sampling, spec: CacheSpec,
             use_cache: bool = True) -> Iterator[Step]:
    """Generate ``sampling.max_new_tokens`` bytes per prompt (fewer when every row has hit a stop
    sequence), one :class:`Step` per byte. Prompts of a batch are left-padded."""
    data, _ = prepare(prompts, spec.context)
    rng = np.random.default_rng(sampling.seed)
    decoder = Decoder(runner, spec, use_cache)
    logits = decoder.prefill(data)[:, -1]  # (N, V)
    streams = [_Stream(sampling.stop) for _ in data]
    for i in range(sampling.max_new_tokens):
        token = choose(logits, sampling, rng)
        done = np.array([s.done for s in streams])
        token = np.where(done, -1, token)
        text = ["" if s.done else s.push(int(t)) for s, t in zip(streams, token)]
        last = i == sampling.max_new_tokens - 1
        finished = np.array([s.done for s in streams])
        if last or finished.all():
            text = [t + ("" if d else s.flush()) for t, s, d in zip(text, streams, done)]
            yield Step(token, logits, text, np.ones(len(streams), bool), [bytes(s.data) for s in streams])
            return
        yield Step(token, logits, text, finished)
        logits = decoder.step(np.where(token < 0, 0, token))  # finished rows are fed a byte and ignored


def complete(runner: Runner, prompts: list[str | bytes], sampling: Sampling, spec: CacheSpec,
             use_cache: bool = True) -> Completion:
    """:func:`generate` to the end: the texts, bytes, every step's logits and the prompt's logits."""
    t0 = time.perf_counter()
    data, dropped = prepare(prompts, spec.context)
    texts = [""] * len(data)
    steps_logits = []
    prefill = None

    def capture(feeds):  # the first call is the prefill: keep its logits for parity checks
        nonlocal prefill
        out = runner(feeds)
        if prefill is None:
            prefill = np.where(feeds["attention_mask"][..., None] > 0, out["logits"], np.nan)
        return out

    for step in generate(capture, data, sampling, spec, use_cache):
        steps_logits.append(np.where(step.tokens[:, None] < 0, np.nan, step.logits))  # NaN once a row is done
        texts = [a + b for a, b in zip(texts, step.text)]
    return Completion(texts, step.data, np.stack(steps_logits, 1), prefill, dropped, time.perf_counter() - t0,
                      len(steps_logits))


# ---------------------------------------------------------------------------------------------
# Bits per byte


def bits_per_byte(runner: Runner, data: bytes, spec: CacheSpec, batch: int = 8) -> float:
    """Cross-entropy of ``data`` in bits per byte, read in windows of ``context`` bytes that overlap
    by half: each byte after the first window is predicted with at least context/2 bytes before it.
    The first byte has no context and is not counted. Runs the graph with an empty cache."""
    n, ctx = len(data), spec.context
    if n < 2:
        raise InputError("at least 2 bytes are needed to measure bits per byte")
    arr = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    length = min(ctx, n)
    stride = max(1, ctx // 2)
    starts = list(range(0, n - length + 1, stride))
    if starts[-1] != n - length:
        starts.append(n - length)
    plan, scored = [], 1  # (window start, first target within it); bytes before ``scored`` are counted
    for s in starts:
        plan.append((s, scored - s))
        scored = s + length
    total, count = 0.0, 0
    for i in range(0, len(plan), batch):
        group = plan[i:i + batch]
        ids = np.stack([arr[s:s + length] for s, _ in group])  # (B, L)
        past = spec.empty(len(group))
        logits = runner({"input_ids": ids, "attention_mask": np.ones_like(ids), **past})["logits"].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - (np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top)  # (B, L, V)
        for row, (_, first) in enumerate(group):
            target = ids[row, first:]  # byte j is predicted by the logits at j - 1
            total -= float(np.take_along_axis(logp[row, first - 1:-1], target[:, None], -1).sum())
            count += len(target)
    return total / count / math.log(2)


# ---------------------------------------------------------------------------------------------
# The tab


def sampling_from(temperature: Any, top_k: Any, top_p: Any, max_new_tokens: Any, seed: Any,
                  limit: int = MAX_NEW_TOKENS, stop: tuple[bytes, ...] = ()) -> Sampling:
    """The tab's (or API's) raw values -> Sampling, each checked with a readable message; max new
    tokens above the server's ``limit`` is refused (not clamped: the caller asked for more)."""
    new = number(max_new_tokens, "max new tokens", integer=True)
    if new > limit:
        raise InputError(f"max new tokens {new} is over this server's limit of {limit}")
    seed_value = None if seed in (None, "", -1, "-1") else number(seed, "seed", integer=True)
    return Sampling(temperature=number(temperature, "temperature"), top_k=number(top_k, "top_k", integer=True),
                    top_p=number(top_p, "top_p"), max_new_tokens=new, seed=seed_value, stop=stop)


class TextTab(TaskTab):
    task = "textgen"
    title = "Text"
    endpoints = ("generate",)

    def check(self, bundle: Bundle) -> None:
        try:
            spec = CacheSpec.of(bundle.info)
        except (KeyError, TypeError, ValueError):
            spec = None
        if spec is None or min(spec) < 1:
            raise BundleError(f"{bundle.path}: info must give layers, heads, head_dim and context (each >= 1)")

    def whole(self, bundle: Bundle) -> Whole:
        """``textgen``: prompts (BYTES, one per row) -> their continuations, one batch of the decode loop."""
        spec, d = CacheSpec.of(bundle.info), bundle.inference

        def run(tensors: dict[str, np.ndarray], params: dict[str, Any], variant: str | None) -> dict[str, np.ndarray]:
            prompts = list(tensors["prompt"].reshape(-1))
            if not 1 <= len(prompts) <= MAX_PROMPTS:
                raise InputError(f"prompt must hold 1 to {MAX_PROMPTS} texts, got {len(prompts)}")
            get = functools.partial(setting, tensors, params)
            sampling = sampling_from(get("temperature", d.get("temperature", 0.8)), get("top_k", d.get("top_k", 0)),
                                     get("top_p", d.get("top_p", 0.95)),
                                     get("max_new_tokens", d.get("max_new_tokens", 200)), get("seed", None))
            runner = bundle.served(GRAPH, call_axes) if variant is None else bundle.session(GRAPH, variant)
            texts = [""] * len(prompts)
            for step in generate(runner, prompts, sampling, spec):
                texts = [a + b for a, b in zip(texts, step.text)]
            out = np.empty(len(texts), dtype=object)
            out[:] = [t.encode() for t in texts]
            return {"text": out}

        settings = setting_specs(max_new_tokens=("INT64", f"bytes to generate, 1..{MAX_NEW_TOKENS}"),
                                 temperature=("FP32", "0: greedy"), top_k=("INT64", "0: off"), top_p=("FP32", "nucleus"),
                                 seed=("INT64", "-1 or absent: random"))
        def batch_key(tensors: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
            """Generations with the same settings share one decode loop, except seeded sampling (its draws
            would depend on the company); the rows' texts are what each would get alone otherwise."""
            get = functools.partial(setting, tensors, params)
            values = tuple(str(get(n, None)) for n in ("max_new_tokens", "temperature", "top_k", "top_p", "seed"))
            greedy = get("temperature", d.get("temperature", 0.8)) in (0, 0.0)
            return values if greedy or get("seed", None) in (None, -1) else None

        return Whole((TensorSpec("prompt", "BYTES", (-1,), "UTF-8 prompts, one per row"), *settings),
                     (TensorSpec("text", "BYTES", (-1,), "each prompt's continuation, UTF-8"),), run,
                     gather=MAX_PROMPTS, stacked=("prompt",), batch_key=batch_key)

    def build(self, bundle: Bundle) -> None:
        import gradio as gr

        spec = CacheSpec.of(bundle.info)
        d = bundle.inference

        stops: dict[str, threading.Event] = {}  # per page (session): set by Stop, read by its running generation

        @takes_request
        def run(prompt, temperature, top_k, top_p, max_new_tokens, seed, variant, request=None):
            """Streams (text so far, status line) as bytes are generated; Stop ends it where it is."""
            session = getattr(request, "session_hash", None) or ""
            stopped = stops[session] = threading.Event()
            prompt = as_text(prompt, "the prompt")
            sampling = sampling_from(temperature, top_k, top_p, max_new_tokens, seed)
            data, dropped = prepare([prompt or ""], spec.context)
            note = (f"the prompt is longer than the model's context: its first {dropped[0]} bytes were dropped; "
                    if dropped[0] else "")
            runner = bundle.served(GRAPH, call_axes) if variant == SERVED else bundle.session(GRAPH, variant)

            def ran() -> str:
                if variant != SERVED:
                    return bundle.describe(variant)
                return "served: " + ", ".join(f"{n} call{'s' * (n > 1)} on {v}" for v, n in runner.used.items())

            text, t0, count, shown_at = "", time.perf_counter(), 0, 0.0
            try:
                for step in generate(runner, data, sampling, spec):
                    if stopped.is_set():
                        yield text, f"{note}stopped after {count} bytes in {time.perf_counter() - t0:.2f} s ({ran()})"
                        return
                    count += 1
                    text += step.text[0]
                    now = time.perf_counter()
                    if step.text[0] and now - shown_at >= STREAM_EVERY:  # each update costs the server ~1 ms
                        shown_at = now
                        yield text, f"{note}{count} bytes, {count / (now - t0):.0f} tokens/s ({ran()})"
            finally:
                if stops.get(session) is stopped:
                    del stops[session]
            seconds = time.perf_counter() - t0
            yield text, (f"{note}done: {count} bytes in {seconds:.2f} s, {count / seconds:.0f} tokens/s (a token "
                         f"is a byte; {ran()})")

        variants = [("served (the fastest per call)", SERVED), *bundle.variants()]
        served = ("each call (the prompt, then each step) on the variant the benchmark measured fastest for its "
                  "length of context; the status says which ran")
        gr.Markdown(f"**{bundle.name}**: a byte-level GPT ({bundle.info.get('layers')} layers, context "
                    f"{spec.context} bytes) trained on {bundle.manifest.get('data', 'text')}. It continues "
                    "your text one byte at a time, with a KV cache, in the browser's stream.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=4, elem_id="text-prompt",
                                    value="The return value of this function is")
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=float(d.get("temperature", 0.8)), step=0.05,
                                            label="Temperature", info="0: greedy", elem_id="text-temperature")
                    top_k = gr.Slider(0, VOCAB, value=int(d.get("top_k", 0)), step=1, label="Top-k", info="0: off",
                                      elem_id="text-top-k")
                    top_p = gr.Slider(0.05, 1, value=float(d.get("top_p", 0.95)), step=0.05, label="Top-p",
                                      elem_id="text-top-p")
                with gr.Row():
                    max_new = gr.Slider(1, MAX_NEW_TOKENS, value=int(d.get("max_new_tokens", 200)), step=1,
                                        label="Max new bytes", elem_id="text-max-new")
                    seed = gr.Number(value=0, precision=0, label="Seed (empty or -1: random)", elem_id="text-seed")
                variant = gr.Radio(variants, value=SERVED, label="Variant", elem_id="text-variant",
                                   info=variant_info(bundle.variants(), served))
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="text-generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="text-stop")
            with gr.Column():
                output = gr.Textbox(label="Continuation", lines=14, interactive=False, elem_id="text-output")
                status = gr.Textbox(label="Status", interactive=False, elem_id="text-status")
        examples = bundle.file("examples/prompts.txt")
        if examples:
            lines = [x for x in examples.read_text(encoding="utf-8").split("\n") if x.strip()][:6]
            gr.Examples(examples=[[x] for x in lines], inputs=[prompt], label="Held-out prompts")
        choice_input(variant, "variant")
        text_input(prompt, "the prompt")
        for setting in (temperature, top_k, top_p, max_new, seed):
            number_input(setting)
        go.click(guarded_stream(run), [prompt, temperature, top_k, top_p, max_new, seed, variant],
                 [output, status], api_name="generate")

        @takes_request
        def stop_it(request=None):
            """The page's running generation ends at its next byte, keeping its text (a cancel would drop it)."""
            if (event := stops.get(getattr(request, "session_hash", None) or "")) is not None:
                event.set()

        stop.click(stop_it, None, None, api_name=False, queue=False)
