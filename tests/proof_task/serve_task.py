"""Serve side of the proof task: the vocabulary, the greedy decode loop and the tab.

numpy (and, through ``serve``, onnxruntime) only: this module never imports torch, ``models``,
``pipeline`` or ``export``. The same loop runs over ORT sessions, TensorRT engines and the torch
modules (``export.verify.TorchRunner``): each runner is a callable named inputs -> named outputs.

Graphs (shapes: N batch, S source length, T new tokens, P past length, H heads, Dh head dim):

- ``encoder``: ``tokens`` int64 (N, S), ``tokens_mask`` int64 (N, S) (1 = real character)
  -> ``memory`` float32 (N, S, D);
- ``decoder``: ``input_ids`` int64 (N, T), ``memory``, ``memory_mask`` int64 (N, S),
  ``past_key_values.{i}.key`` / ``.value`` float32 (N, H, P, Dh) per layer (P = 0 at the first
  step), ``temperature`` float32 scalar -> ``logits`` float32 (N, T, V) (divided by the
  temperature) and ``present.{i}.key`` / ``.value`` (N, H, P + T, Dh).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from serve.bundle import BundleError
from serve.kv_cache import CacheSpec, KVCache, pad, past_names, present_name  # noqa: F401 (the task's names)
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, guarded

PAD, BOS, EOS = 0, 1, 2
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", *LETTERS)
_ID = {c: i for i, c in enumerate(VOCAB) if len(c) == 1}


def encode(text: str) -> list[int]:
    """'abc' -> [3, 4, 5]; an empty text or a character outside a-z is a BundleError (shown to people)."""
    if not text:
        raise BundleError("the text is empty: type a few lowercase letters")
    bad = sorted({c for c in text if c not in _ID})
    if bad:
        raise BundleError(f"only lowercase letters a-z are known; got {', '.join(map(repr, bad))}")
    return [_ID[c] for c in text]


def decode_ids(ids: Any) -> str:
    """Token ids -> text, up to the first EOS (PAD and BOS are dropped)."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i > EOS:
            out.append(VOCAB[i])
    return "".join(out)


def pad_batch(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length id lists -> ids int64 (N, S) right-padded with PAD, and the mask int64 (N, S)."""
    return pad(seqs, "right", PAD)


@dataclass
class Decoded:
    """What the loop produced: the texts, and every step's logits (N, steps, V) for parity checks."""

    texts: list[str]
    logits: np.ndarray


def decode(runners: Mapping[str, Any], texts: list[str], max_new_tokens: int, temperature: float = 1.0, *,
           cache: CacheSpec | Mapping[str, int]) -> Decoded:
    """Greedy decoding of one batch of variable-length texts: the encoder once, then one decoder
    call per new token, each on the previous call's KV cache (past length 0 at the first step).
    A row stops at EOS (it is fed PAD after); the loop stops when every row has, or after
    ``max_new_tokens``. ``temperature`` scales the logits inside the graph (argmax is unchanged)."""
    if not texts:
        return Decoded([], np.zeros((0, 0, len(VOCAB)), np.float32))
    if max_new_tokens < 1 or not temperature > 0:
        raise BundleError("max_new_tokens must be >= 1 and temperature > 0")
    spec = cache if isinstance(cache, CacheSpec) else CacheSpec(**cache)
    ids, mask = pad_batch([encode(t) for t in texts])
    n = len(texts)
    memory = runners["encoder"]({"tokens": ids, "tokens_mask": mask})["memory"]  # (N, S, D)
    kv = KVCache(spec, n)
    token = np.full((n, 1), BOS, dtype=np.int64)  # (N, 1)
    temp = np.asarray(temperature, dtype=np.float32)  # a scalar: shape ()
    out = np.full((n, max_new_tokens), PAD, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    steps = []
    for step in range(max_new_tokens):
        result = runners["decoder"]({"input_ids": token, "memory": memory, "memory_mask": mask, **kv.feeds(),
                                     "temperature": temp})
        logits = result["logits"][:, -1]  # (N, V)
        steps.append(logits)
        nxt = np.where(done, PAD, logits.argmax(-1)).astype(np.int64)  # (N,)
        out[:, step] = nxt
        done |= nxt == EOS
        if done.all():
            break
        kv.update(result)  # (N, H, P + 1, Dh)
        token = nxt[:, None]
    return Decoded([decode_ids(row) for row in out], np.stack(steps, axis=1))


def greedy_decode(runners: Mapping[str, Any], texts: list[str], max_new_tokens: int, temperature: float = 1.0, *,
                  cache: CacheSpec | Mapping[str, int]) -> list[str]:
    """The decoded texts of :func:`decode`."""
    return decode(runners, texts, max_new_tokens, temperature, cache=cache).texts


# ---------------------------------------------------------------------------------------------
# The tab


class ReverseTab(TaskTab):
    task = "reverse"
    title = "Reverse"
    endpoints = ("reverse",)

    def build(self, bundle: Bundle) -> None:
        import gradio as gr

        cache = CacheSpec(**bundle.info["cache"])
        defaults = bundle.inference
        max_new_tokens = int(defaults.get("max_new_tokens", 10))
        temperature = float(defaults.get("temperature", 1.0))

        def reverse(text, variant):
            text = (text or "").strip()
            if len(text) >= max_new_tokens:
                raise BundleError(f"the text has {len(text)} letters; this model decodes at most "
                                  f"{max_new_tokens - 1} (inference.max_new_tokens = {max_new_tokens})")
            return greedy_decode(bundle.runners(variant), [text], max_new_tokens, temperature, cache=cache)[0]

        variants = bundle.variants()
        gr.Markdown(f"**{bundle.name}**: an encoder graph and a decoder-step graph with a KV cache reverse "
                    f"lowercase words (up to {bundle.info.get('max_length', '?')} letters in training).")
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Letters a-z", elem_id="reverse-input")
                variant = gr.Radio(variants, value=variants[0], label="Variant", elem_id="reverse-variant")
                button = gr.Button("Reverse", variant="primary", elem_id="reverse-btn")
            output = gr.Textbox(label="Reversed", interactive=False, elem_id="reverse-output")
        examples = bundle.file("examples/examples.txt")
        if examples:
            gr.Examples(examples=[[line] for line in examples.read_text().split()[:8]], inputs=[text])
        button.click(guarded(reverse), [text, variant], [output], api_name="reverse")
