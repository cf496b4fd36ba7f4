"""Speech recognition: a Whisper-style encoder-decoder over characters, trained on speech synthesized
by eSpeak NG (or the user's audio folder), exported as two graphs.

- ``encoder.onnx``: ``waveform`` float32 (N, L) at 16 kHz, ``lengths`` int64 (N,) -> ``states_mask``,
  ``log_mel`` (the log-mel spectrogram is computed inside: STFT, mel matrix, log), ``ctc_log_probs`` (the
  encoder's CTC head, which the loop weighs against the decoder where they differ) and
  ``cross_key_values.*`` (each decoder layer's cross-attention keys and values of the encoder's states);
- ``decoder.onnx``: ``input_ids``, ``states_mask``, ``past_key_values.*``, ``cross_key_values.*`` ->
  ``logits``, ``present.*`` (the text task's naming).

What is verified, scored and timed is serve's loop (``serve/tasks/asr.py``: voice activity, segments,
greedy or beam search) over ORT sessions and over the torch modules alike: transcripts of the
held-out voices word for word, the log-mel, CER and WER (``jiwer``).
"""
from __future__ import annotations

import io
import os
import wave as wavfile
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
from export.verify import TorchRunner
from models.whisper import Whisper
from pipeline.data import speech as sp
from pipeline.errors import PipelineError
from pipeline.tasks.base import BenchCase, BenchmarkConfig, EvalSet, Graph, Metric, RunConfig, Task, with_model_fields
from pipeline.tasks.cache import cache_tensors
from serve.bundle import BundleError
from serve.tasks import asr as loop
from serve.kv_cache import cross_names
from serve.tasks.asr import ALPHABET, BOS, EOS, PAD, RATE, VOCAB, CacheSpec, Decoding

EVAL_BATCH = 16  # segments per encoder call when scoring
CTC_WEIGHT = 0.5  # the encoder's CTC loss beside the decoder's cross-entropy
GROUP = 32  # utterances per forward pass in training (a larger batch runs in groups of this many)
SENTENCE_CHARS = 100  # the longest sentence of prose read (data.sentences): within the full model's 128 tokens


@dataclass
class DataConfig:
    # (str) "espeak": utterances synthesized by eSpeak NG; or a path: an audio folder (metadata.csv with
    # file_name,transcription, and the files)
    source: str = "espeak"
    train_size: int = 12000  # (int) training utterances (espeak)
    val_size: int = 200  # (int) validation utterances (voices of their own)
    test_size: int = 400  # (int) test utterances (voices never heard in training)
    stress_size: int = 100  # (int) stress utterances: rates, pitches and noise beyond training, long clips
    silence_size: int = 50  # (int) clips of silence or noise alone in the test set (must give no words)
    max_words: int = 8  # (int) words per utterance, 1..max_words
    empty_share: float = 0.04  # (float) training utterances that are silence or noise (the target is empty)
    window: float = 10.0  # (float) seconds the encoder takes at once; longer audio is cut at pauses
    # (float) share of training over which noise, reverb and speed perturbation grow from none to full (a
    # curriculum: clean speech first; on 2 cores the model then learns to align 2-3x sooner); 0: full from the start
    augment_ramp: float = 0.3
    # (float) share of training utterances that read a sentence of prose instead of the built-in words (open
    # vocabulary): sentences of the Python standard library's documentation (the text task's corpus) that
    # read as written; held-out documents' sentences, by the test voices, are then scored as "sentences"
    sentences: float = 0.0
    seed: int = 0  # (int) voices' split, texts and styles
    val_fraction: float = 0.1  # (float) audio folder: share held out for validation
    test_fraction: float = 0.1  # (float) audio folder: share held out for the test split
    # (str) where synthesized data sets are kept (built once per config); "": $LITTLEBOOK_CACHE or artifacts/.cache
    cache: str = ""

    def __post_init__(self):
        if min(self.train_size, self.val_size, self.test_size, self.max_words) < 1 or self.stress_size < 0 \
                or self.silence_size < 0:
            raise ValueError("train/val/test sizes and max_words must be >= 1; stress and silence sizes >= 0")
        if not 0 <= self.empty_share < 0.5 or not 1.0 <= self.window <= 30.0:
            raise ValueError("empty_share must be in [0, 0.5) and window in [1, 30] seconds")
        if not 0 <= self.augment_ramp <= 1:
            raise ValueError("augment_ramp must be in [0, 1] (a share of the training steps)")
        if not 0 <= self.sentences < 1:
            raise ValueError("sentences must be in [0, 1) (a share of the training utterances)")


@dataclass
class InferenceConfig:
    beam: int = 1  # (int) beam width; 1: greedy
    max_tokens: int = 96  # (int) characters a segment may have (EOS included), <= model.max_tokens
    batch: int = 8  # (int) segments per encoder call
    # (float) where the encoder's CTC head reads a segment otherwise than the decoder: both readings scored
    # (1 - w) x decoder + w x CTC log-likelihood, the better kept; 0: the decoder alone
    ctc_weight: float = 0.5

    def __post_init__(self):
        try:
            self.decoding()
        except BundleError as e:
            raise ValueError(str(e)) from None
        if self.batch < 1:
            raise ValueError("batch must be >= 1")

    def decoding(self) -> Decoding:
        return Decoding(self.beam, self.max_tokens, ctc_weight=self.ctc_weight)


@dataclass
class AsrBenchmarkConfig(BenchmarkConfig):
    batch_sizes: tuple[int, ...] = (1, 8)  # (list[int]) clips per call
    clip_seconds: tuple[float, ...] = (1.0, 5.0, 20.0)  # (list[float]) clip lengths to time
    seconds: float = 1.0
    min_runs: int = 3
    rounds: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not self.clip_seconds or min(self.clip_seconds) <= 0:
            raise ValueError("clip_seconds must be > 0 (at least one)")


PRESETS = {
    "smoke": {"model": {"name": "whisper", "n_mels": 32, "dim": 32, "heads": 2, "encoder_layers": 1,
                        "decoder_layers": 1, "max_tokens": 64, "dropout": 0.0},
              "data": {"train_size": 96, "val_size": 8, "test_size": 12, "stress_size": 4, "silence_size": 4,
                       "max_words": 3, "window": 6.0},
              "train": {"steps": 12, "eval_every": 12, "batch_size": 8, "lr": 2e-3, "warmup_steps": 2},
              "inference": {"max_tokens": 24},
              "optimize": {"calibration_samples": 8, "int8": "dynamic", "openvino_int8": "weights"},
              "benchmark": {"batch_sizes": [1, 2], "clip_seconds": [1.0, 3.0], "seconds": 0.05, "min_runs": 1,
                            "torch_compile": False}},
    # dropout off: it cost a fifth of each step here, and every utterance is a new noisy reading anyway
    "quick": {"model": {"name": "whisper", "stem": "conv2d", "dim": 144, "heads": 4, "encoder_layers": 4,
                        "decoder_layers": 2, "dropout": 0.0},
              # 2,400 steps: the CER falls steeply with the utterances seen (val 17.6% after 1,200 steps of 32, or
              # 2,400 of 16; 4.4% after 2,400 of 32: docs/asr.md)
              "train": {"steps": 2400, "eval_every": 1200, "batch_size": 32, "lr": 2e-3, "warmup_steps": 100,
                        "weight_decay": 0.05},
              "inference": {"beam": 4},
              "optimize": {"int8": "dynamic", "int8_ops": ["MatMul"], "openvino_int8": "weights"}},
    "full": {"model": {"name": "whisper", "stem": "conv2d", "n_mels": 80, "dim": 384, "heads": 6, "encoder_layers": 6,
                       "decoder_layers": 4, "max_tokens": 128},
             "data": {"train_size": 100000, "val_size": 400, "test_size": 1000, "stress_size": 300,
                      "sentences": 0.3},
             "train": {"steps": 20000, "eval_every": 2000, "batch_size": 128, "lr": 1e-3, "warmup_steps": 1000,
                       "weight_decay": 0.05},
             "inference": {"max_tokens": 128, "beam": 4},
             "optimize": {"int8": "dynamic", "int8_ops": ["MatMul"], "openvino_int8": "weights"}},
}

AUGMENT = sp.Augment()
TEST_NOISE = sp.Augment(snr_db=(10.0, 30.0), noise_p=0.5, gain_db=(-12.0, 0.0), shift_s=0.3, speed=(1.0, 1.0),
                        reverb_p=0.0)
STRESS_NOISE = sp.Augment(snr_db=(0.0, 8.0), noise_p=1.0, gain_db=(-30.0, 0.0), shift_s=0.5, speed=(0.8, 1.25),
                          reverb_p=0.5)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Items:
    """A held-out set: recordings float32 (L,) at 16 kHz and what they say ("" for silence)."""

    waves: list[np.ndarray]
    texts: list[str]


@dataclass
class AsrData:
    source: str
    train: sp.Speech
    val: Items
    test: Items
    stress: Items
    voices: dict[str, list[str]]
    sentences: Items | None = None  # held-out prose by the test voices (data.sentences > 0)


def _noisy(speech: sp.Speech, noise: sp.Augment, seed: int) -> Items:
    g = torch.Generator().manual_seed(seed)
    waves = [sp.augment(torch.from_numpy(speech.wave(i)), g, noise, speech=bool(speech.texts[i])).numpy()
             for i in range(len(speech))]
    return Items(waves, list(speech.texts))


def silence_clips(count: int, seed: int) -> list[np.ndarray]:
    """Recordings with no speech: digital silence, hiss, rumble, mains hum and clicks, at many levels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.uniform(0.5, 6.0) * RATE)
        t = np.arange(n) / RATE
        level = 10 ** (rng.uniform(-70, -20) / 20)
        kind = i % 5
        if kind == 0:
            x = np.zeros(n)
        elif kind == 1:
            x = rng.standard_normal(n) * level
        elif kind == 2:
            x = np.cumsum(rng.standard_normal(n)) * level / np.sqrt(n)
        elif kind == 3:
            x = np.sin(2 * np.pi * rng.choice([50, 60]) * t) * level * 3 + rng.standard_normal(n) * level / 10
        else:
            x = rng.standard_normal(n) * level / 10
            x[rng.integers(0, n, 6)] += level * 5
        out.append(np.clip(x, -1, 1).astype(np.float32))
    return out


def long_clips(speech: sp.Speech, count: int, seed: int, seconds: tuple[float, float] = (15.0, 35.0)) -> Items:
    """Utterances joined with pauses of 0.6-1.5 s into recordings longer than the encoder's window."""
    rng = np.random.default_rng(seed)
    waves, texts = [], []
    for _ in range(count):
        target, parts, words, total = rng.uniform(*seconds), [], [], 0.0
        while total < target:
            i = int(rng.integers(0, len(speech)))
            if not speech.texts[i]:
                continue
            gap = np.zeros(int(rng.uniform(0.6, 1.5) * RATE), np.float32)
            parts += [speech.wave(i), gap]
            words.append(speech.texts[i])
            total += (len(parts[-2]) + len(gap)) / RATE
        x = np.concatenate(parts)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * 10 ** (rng.uniform(-60, -40) / 20)
        waves.append(np.clip(x, -1, 1).astype(np.float32))
        texts.append(" ".join(words))
    return Items(waves, texts)


def cache_dir(d: DataConfig) -> Path:
    return Path(d.cache or os.environ.get("LITTLEBOOK_CACHE", "") or "artifacts/.cache")


def load_espeak(d: DataConfig) -> AsrData:
    voices = sp.split_variants(d.seed)
    names = {k: sp.voices_of(sp.ACCENTS, v) for k, v in voices.items()}
    cache = cache_dir(d)
    prose = corpus_sentences(SENTENCE_CHARS) if d.sentences else {"train": [], "test": []}
    train = sp.build(sp.plan(d.train_size, names["train"], d.seed, d.max_words, d.empty_share,
                             sentences=prose["train"], sentence_share=d.sentences), cache, label="train")
    val = sp.build(sp.plan(d.val_size, names["val"], d.seed + 1, d.max_words), cache, label="val")
    test = sp.build(sp.plan(d.test_size, names["test"], d.seed + 2, d.max_words), cache, label="test")
    stress = sp.build(sp.plan(d.stress_size, names["test"], d.seed + 3, d.max_words, stress=True), cache,
                      label="stress")
    test_items = _noisy(test, TEST_NOISE, d.seed + 12)
    silence = silence_clips(d.silence_size, d.seed + 14)
    test_items = Items(test_items.waves + silence, test_items.texts + [""] * len(silence))
    stress_items = _noisy(stress, STRESS_NOISE, d.seed + 13)
    longer = long_clips(test, max(1, d.stress_size // 10), d.seed + 15)
    stress_items = Items(stress_items.waves + longer.waves, stress_items.texts + longer.texts)
    source = (f"eSpeak NG speech ({len(sp.ACCENTS)} accents x voice variants: {len(voices['train'])} train, "
              f"{len(voices['val'])} val, {len(voices['test'])} test)")
    held = None
    if d.sentences:  # every job a held-out sentence
        source += f" with {d.sentences:.0%} sentences of prose"
        prose_test = sp.build(sp.plan(max(1, d.test_size // 2), names["test"], d.seed + 4, d.max_words,
                                      sentences=prose["test"], sentence_share=1.0), cache, label="sentences")
        held = _noisy(prose_test, TEST_NOISE, d.seed + 16)
    return AsrData(source, train, _noisy(val, TEST_NOISE, d.seed + 11), test_items, stress_items, voices, held)


def corpus_sentences(max_chars: int) -> dict[str, list[str]]:
    """The text task's corpus (the standard library's documentation), split by document as textgen splits
    it, as sentences that read as written: {"train": ..., "test": ...} (validation's documents unused)."""
    from pipeline.data import text
    from pipeline.tasks.textgen import DataConfig as TextConfig

    split = TextConfig()  # textgen's own split of the documents (its default fractions)
    parts = text.split_documents(text.stdlib_documents(), split.val_fraction, split.test_fraction)
    out = {k: [s for doc in parts[k] for s in sp.sentences_of(doc.text, max_chars)] for k in ("train", "test")}
    trained = set(out["train"])
    out["test"] = [s for s in out["test"] if s not in trained]  # a sentence both splits hold is trained on
    if not out["train"] or not out["test"]:
        raise PipelineError("the text corpus gave no sentences to read (data.sentences needs the standard library's "
                            "documentation)")
    return out


def load_folder(d: DataConfig) -> AsrData:
    speech = sp.audio_folder(d.source, ALPHABET, d.window)
    n = len(speech)
    if n < 3:
        raise PipelineError(f"{d.source}: {n} recording(s); at least 3 are needed (train, val, test)")
    order = np.random.default_rng(d.seed).permutation(n)
    k_val, k_test = max(1, round(d.val_fraction * n)), max(1, round(d.test_fraction * n))
    parts = {"val": order[:k_val], "test": order[k_val:k_val + k_test], "train": order[k_val + k_test:]}

    def subset(idx) -> sp.Speech:
        return sp.Speech.of([speech.audio[speech.offsets[i]:speech.offsets[i + 1]] for i in idx],
                            [speech.texts[i] for i in idx], ["user"] * len(idx))

    held = {k: subset(v) for k, v in parts.items() if k != "train"}
    items = {k: Items([s.wave(i) for i in range(len(s))], list(s.texts)) for k, s in held.items()}
    return AsrData(str(d.source), subset(parts["train"]), items["val"], items["test"], Items([], []), {})


class Utterances(Dataset):
    """(waveform (L,) float32, text) per utterance: lengths vary, the training step pads."""

    def __init__(self, speech: sp.Speech | None = None, items: Items | None = None):
        self.speech, self.items = speech, items

    def __len__(self) -> int:
        return len(self.speech) if self.speech is not None else len(self.items.texts)

    def lengths(self) -> list[int]:
        """Samples per recording (the training loop draws batches of similar length)."""
        if self.speech is not None:
            return np.diff(self.speech.offsets).tolist()
        return [len(w) for w in self.items.waves]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        if self.speech is not None:
            return torch.from_numpy(self.speech.wave(i)), self.speech.texts[i]
        return torch.from_numpy(self.items.waves[i]), self.items.texts[i]


def collate(samples: list[tuple[torch.Tensor, str]]) -> tuple[list[torch.Tensor], list[str]]:
    return [w for w, _ in samples], [t for _, t in samples]


def targets(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs BOS + characters and labels characters + EOS, PAD-padded: (N, T) each."""
    ids = [loop.encode_text(t) for t in texts]
    t = max(len(i) for i in ids) + 1
    tokens_in = torch.full((len(ids), t), PAD, dtype=torch.int64)
    labels = torch.full((len(ids), t), PAD, dtype=torch.int64)
    for row, i in enumerate(ids):
        tokens_in[row, 0], tokens_in[row, 1:len(i) + 1] = BOS, torch.tensor(i, dtype=torch.int64)
        labels[row, :len(i)], labels[row, len(i)] = torch.tensor(i, dtype=torch.int64), EOS
    return tokens_in, labels


def pad_batch(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    batch = torch.zeros(len(waves), int(lengths.max()), device=waves[0].device)
    for i, w in enumerate(waves):
        batch[i, :len(w)] = w
    return batch, lengths


# ---------------------------------------------------------------------------------------------
# The graphs


def cache_spec(m) -> CacheSpec:
    return CacheSpec(m.decoder_layers, m.heads, m.head_dim, m.max_tokens)


def contracts(m, window: float) -> dict[str, ExportContract]:
    samples = int(window * RATE)
    frames = (samples // m.hop + 1 + 3) // 4
    past, present = cache_tensors(cache_spec(m), "characters")
    cross = tuple(TensorSpec(n, "float32", ("batch", m.heads, "frames", m.head_dim),
                             "a decoder layer's cross-attention keys/values of the encoder's states (the encoder "
                             "outputs them once; each decoder step reads them as they are)")
                  for n in cross_names(m.decoder_layers))
    batch = DimRange(1, 1, 256)
    encoder = ExportContract(
        inputs=(TensorSpec("waveform", "float32", ("batch", "samples"),
                           f"mono audio at {RATE} Hz in [-1, 1], right-padded with anything"),
                TensorSpec("lengths", "int64", ("batch",), "the samples of each row that are audio")),
        outputs=(TensorSpec("states_mask", "int64", ("batch", "frames"),
                            "1 for an encoder frame (40 ms) of audio, 0 for padding"),
                 TensorSpec("log_mel", "float32", ("batch", m.n_mels, "mel_frames"),
                            "the log-mel spectrogram the encoder read, in [-1, 1], 0 past the audio"),
                 TensorSpec("ctc_log_probs", "float32", ("batch", "ctc_frames", m.vocab_size),
                            f"the encoder's CTC head: log-probs of {m.ctc_upsample} label(s) a frame, blank = pad"),
                 *cross),
        dims={"batch": batch, "samples": DimRange(1600, 5 * RATE, samples)},
        parity=(Bound("transcript_agreement", ">=", 1.0), Bound("max_abs_log_mel_diff", "<=", 1e-4)),
        exact=("model.logmel",))
    decoder = ExportContract(
        inputs=(TensorSpec("input_ids", "int64", ("batch", "seq"), "BOS, then the previous step's character"),
                TensorSpec("states_mask", "int64", ("batch", "frames"), "the encoder's states_mask"),
                *past, *cross),
        outputs=(TensorSpec("logits", "float32", ("batch", "seq", m.vocab_size), "next-character logits"),
                 *present),
        dims={"batch": batch, "frames": DimRange(1, 50, frames), "seq": DimRange(1, 1, m.max_tokens),
              "past": DimRange(0, 8, m.max_tokens - 1)},
        parity=(Bound("transcript_agreement", ">=", 1.0),))
    return {"encoder": encoder, "decoder": decoder}


class EncoderGraph(nn.Module):
    """waveform (N, L), lengths (N,) -> states_mask (N, S), log_mel (N, M, F), ctc_log_probs (N, S * U, V),
    then per decoder layer the cross-attention keys and values (N, H, S, Dh)."""

    def __init__(self, model: Whisper):
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states, mask, log_mel = self.model.encode(waveform, lengths)
        return (mask, log_mel, self.model.ctc_log_probs(states),
                *(t for kv in self.model.cross_cache(states) for t in kv))


def decoder_graph(model: Whisper) -> CacheStepGraph:
    """input_ids, states_mask, past_key_values.*, cross_key_values.* -> logits, present.*"""
    return CacheStepGraph(model, "step", model.cfg.decoder_layers, leading=2, cross=True)


def torch_runners(model: Whisper, window: float, device: str = "cpu") -> dict[str, TorchRunner]:
    c = contracts(model.cfg, window)
    return {"encoder": TorchRunner(EncoderGraph(model), c["encoder"], device),
            "decoder": TorchRunner(decoder_graph(model), c["decoder"], device)}


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Heard:
    """What the loop made of a held-out set: transcripts, and the log-mel of its first recordings."""

    texts: list[str]
    log_mel: np.ndarray


def error_rates(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """CER and WER (%) by jiwer over the recordings with speech; the share of silent ones heard as silent."""
    import jiwer

    pairs = [(h, r) for h, r in zip(hyps, refs) if r]
    out: dict[str, float] = {}
    if pairs:
        h, r = [p[0] for p in pairs], [p[1] for p in pairs]
        out["cer"] = 100.0 * float(jiwer.cer(r, h))
        out["wer"] = 100.0 * float(jiwer.wer(r, h))
        out["exact"] = 100.0 * float(np.mean([a == b for a, b in pairs]))
    silent = [h for h, r in zip(hyps, refs) if not r]
    if silent:
        out["silence_empty"] = 100.0 * float(np.mean([not h for h in silent]))
    return out


def decoding_of(cfg: RunConfig) -> tuple[Decoding, loop.Limits]:
    inf = cfg.inference
    return inf.decoding(), loop.Limits(cfg.data.window, batch=max(inf.batch, EVAL_BATCH))


# ---------------------------------------------------------------------------------------------
# The task


class Asr(Task):
    name = "asr"
    # train, export, optimize, benchmark: 13.5 measured on the EPYC at 1,200 steps, of which 7.3 training; 2,400
    # steps add 7.3 there and the torch.compile rows about 1 (estimated; measured on a Xeon: 13.2 minutes
    # without those rows, 9.8 of them training)
    quick_minutes = 22.0
    architectures = ("whisper",)
    default_model = "whisper"
    presets = PRESETS
    metric = Metric("cer", "min", tolerance=0.5, unit="%")
    DataConfig = DataConfig
    BenchmarkConfig = AsrBenchmarkConfig
    InferenceConfig = InferenceConfig
    train_unit = "utterances"
    bench_unit = "audio s"
    collate = staticmethod(collate)
    usage = """```python
import wave, numpy as np, onnxruntime as ort

encoder, decoder = ort.InferenceSession("encoder.onnx"), ort.InferenceSession("decoder.onnx")
meta = decoder.get_modelmeta().custom_metadata_map
vocab = meta["vocabulary"].split("|")  # token id -> character; 0 pad, 1 begin, 2 end
layers, heads, head_dim = (int(meta[k]) for k in ("layers", "heads", "head_dim"))
with wave.open("speech.wav") as f:  # 16 kHz mono 16-bit PCM (resample other files first)
    audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32)[None] / 32768
enc = encoder.run(None, {"waveform": audio, "lengths": np.array([audio.shape[1]])})
enc = dict(zip([o.name for o in encoder.get_outputs()], enc))  # states_mask, log_mel, cross_key_values.*
cross = {k: v for k, v in enc.items() if k.startswith("cross_key_values.")}  # per layer, once per recording
past = {f"past_key_values.{i}.{kv}": np.zeros((1, heads, 0, head_dim), np.float32)
        for i in range(layers) for kv in ("key", "value")}
token, text = np.array([[1]]), ""
for _ in range(int(meta["max_tokens"])):  # greedy, one character per call on the KV cache
    logits, *present = decoder.run(None, {"input_ids": token, "states_mask": enc["states_mask"], **past, **cross})
    past, token = dict(zip(past, present)), logits[:, -1:].argmax(-1)
    if token[0, 0] == 2:
        break
    text += vocab[token[0, 0]]
print(text)
```
This is the decoder alone, greedy. `serve/tasks/asr.py` (numpy only) adds what is served: the encoder's
CTC reading (`ctc_log_probs`) weighed against the decoder's where they differ (`rescore`), silence gating,
long recordings cut at pauses (with segment times), beam search and batches (`transcribe`, `transcribe_many`)."""

    # -- data and model ------------------------------------------------------------------------

    def load_data(self, cfg: RunConfig) -> AsrData:
        d = cfg.data
        return load_espeak(d) if d.source == "espeak" else load_folder(d)

    def describe_data(self, data: AsrData) -> str:
        return (f"{data.source} [{len(data.train)} train ({data.train.seconds() / 3600:.1f} h) / "
                f"{len(data.val.texts)} val / {len(data.test.texts)} test / {len(data.stress.texts)} stress]")

    def complete_config(self, data: AsrData, cfg: RunConfig) -> RunConfig:
        cfg = with_model_fields(cfg, vocab_size=len(VOCAB), sample_rate=RATE)
        longest = max((len(t) for t in data.train.texts), default=0) + 2
        if longest > cfg.model.max_tokens:
            raise PipelineError(f"model.max_tokens {cfg.model.max_tokens} is too short: the longest training "
                                f"transcript needs {longest} (BOS and EOS included)")
        if cfg.inference.max_tokens > cfg.model.max_tokens:
            raise PipelineError(f"inference.max_tokens must be <= model.max_tokens ({cfg.model.max_tokens})")
        return cfg

    def build_model(self, data: AsrData | None, cfg: RunConfig) -> Whisper:
        return models.create_model(cfg.model_name, cfg.model)

    def dataset(self, data: AsrData, split: str, cfg: RunConfig) -> Utterances:
        if split == "train":
            return Utterances(speech=data.train)
        return Utterances(items=getattr(data, split))

    def make_training_step(self, cfg: RunConfig):
        ctc_weight = CTC_WEIGHT

        def losses(model: nn.Module, waves: list[torch.Tensor], texts: list[str], device: torch.device) -> torch.Tensor:
            waveform, lengths = pad_batch(waves)
            tokens_in, labels = targets(texts)
            waveform, lengths = waveform.to(device), lengths.to(device)
            tokens_in, labels = tokens_in.to(device), labels.to(device)
            logits, ctc, frames = model(waveform, lengths, tokens_in)
            ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=PAD)
            chars = labels.masked_fill(labels == EOS, PAD)
            ctc_loss = F.ctc_loss(ctc.transpose(0, 1), chars, frames, (chars != PAD).sum(1), blank=PAD,
                                  zero_infinity=True)
            return ce + ctc_weight * ctc_loss

        ramp = cfg.data.augment_ramp

        def step(model: nn.Module, batch, device: torch.device, generator: torch.Generator, progress: float = 1.0):
            """Cross-entropy of the decoder (teacher-forced) + 0.5 x CTC on the encoder. The loop draws
            batches of similar length (``Utterances.lengths``); each group of up to 32 (sorted by length)
            becomes one recording length, every utterance placed at a random offset in it, with its noise
            over the whole length: no row is zero-padded, and the offset is the time-shift augmentation.
            The augmentation grows from clean speech to ``AUGMENT`` over the first ``augment_ramp`` of training."""
            waves, texts = batch
            aug = AUGMENT.at(progress / ramp) if ramp > 0 else AUGMENT
            waves = [sp.repace(w.to(device), generator, aug) if t else w.to(device) for w, t in zip(waves, texts)]
            order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
            total = torch.zeros((), device=device)
            for k in range(0, len(order), GROUP):
                part = order[k:k + GROUP]
                length = len(waves[part[-1]]) + int(float(torch.rand((), generator=generator)) * aug.shift_s * RATE)
                placed = [sp.augment(waves[i], generator, aug, speech=bool(texts[i]), length=length) for i in part]
                total = total + losses(model, placed, [texts[i] for i in part], device) * len(part)
            return total / len(order), len(texts)

        return step

    def evaluate(self, model: Whisper, data_set: Utterances, device: torch.device, cfg: RunConfig) -> dict[str, float]:
        was_training = model.training
        model.eval()
        items = data_set.items
        heard = self.infer(torch_runners(model, cfg.data.window, str(device)), items, cfg)
        model.train(was_training)
        rates = error_rates(heard.texts, items.texts)
        return {"cer": rates.get("cer", 0.0), "wer": rates.get("wer", 0.0)}

    # -- export, verification, benchmark ----------------------------------------------------------

    def graphs(self, model: Whisper, data: AsrData, cfg: RunConfig) -> dict[str, Graph]:
        m = cfg.model
        c = contracts(m, cfg.data.window)
        gen = torch.Generator().manual_seed(0)
        waveform = torch.randn(2, 24000, generator=gen) * 0.1
        lengths = torch.tensor([24000, 20000])
        with torch.no_grad():
            mask, _, _, *cross_kv = EncoderGraph(model.eval())(waveform, lengths)
        cross = dict(zip(cross_names(m.decoder_layers), cross_kv))
        past = {n: torch.randn(2, m.heads, 3, m.head_dim, generator=gen) for n in loop.past_names(m.decoder_layers)}
        dec_example = {"input_ids": torch.tensor([[BOS, 7], [BOS, 12]]), "states_mask": mask, **past, **cross}
        metadata = {"task": self.name, "architecture": cfg.model_name, "vocabulary": "|".join(VOCAB),
                    "special_tokens": f"pad={PAD},bos={BOS},eos={EOS}", "sample_rate": str(RATE),
                    "window_seconds": f"{cfg.data.window:g}", "max_tokens": str(cfg.inference.max_tokens),
                    "layers": str(m.decoder_layers), "heads": str(m.heads), "head_dim": str(m.head_dim),
                    "data": data.source}
        return {"encoder": Graph(EncoderGraph(model), c["encoder"], {"waveform": waveform, "lengths": lengths},
                                 {**metadata, "graph": "encoder"}),
                "decoder": Graph(decoder_graph(model), c["decoder"], dec_example, {**metadata, "graph": "decoder step"})}

    def eval_sets(self, data: AsrData, cfg: RunConfig) -> list[EvalSet]:
        sets = [EvalSet("test", f"held-out voices never heard in training ({len(data.voices.get('test', []))} "
                                "variants x 8 accents), noise at 10-30 dB on half, and clips of silence or noise alone",
                        data.test, len(data.test.texts))]
        if data.sentences is not None:
            sets.append(EvalSet("sentences", "sentences of held-out documents (open vocabulary) read by the held-out "
                                "voices", data.sentences, len(data.sentences.texts), scored=True))
        if data.stress.texts:
            sets.append(EvalSet("stress", "the held-out voices read faster, slower, higher and lower than in training, "
                                "noise at 0-8 dB, reverb, and recordings of 15-35 s", data.stress,
                                len(data.stress.texts), scored=True))
        return sets

    def infer(self, runners, items: Items, cfg: RunConfig) -> Heard:
        decoding, limits = decoding_of(cfg)
        heard = loop.transcribe_many(runners, items.waves, cache_spec(cfg.model), decoding, limits)
        first = [w[: int(cfg.data.window * RATE)] for w in items.waves[:4]]
        log_mel = loop.encode(runners, first)["log_mel"] if first else np.zeros((0, 0, 0), np.float32)
        return Heard([t.text for t in heard], log_mel)

    def score(self, outputs: Heard, items: Items, cfg: RunConfig) -> dict[str, float]:
        return error_rates(outputs.texts, items.texts)

    def parity(self, reference: Heard, candidate: Heard, items=None) -> dict[str, float]:
        same = [a == b for a, b in zip(reference.texts, candidate.texts)]
        a, b = reference.log_mel, candidate.log_mel
        diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size and a.shape == b.shape else 0.0
        return {"transcript_agreement": float(np.mean(same)) if same else 1.0, "max_abs_log_mel_diff": diff}

    def calibration(self, data: AsrData, samples: int, cfg: RunConfig) -> dict[str, Any] | None:
        return None  # dynamic INT8 (MatMul-heavy); static calibration would need decoder caches too

    def benchmark_cases(self, data: AsrData, cfg: RunConfig) -> list[BenchCase]:
        b, cases = cfg.benchmark, []
        source = data.test
        speech = [w for w, t in zip(source.waves, source.texts) if t] or source.waves
        joined = np.concatenate([np.concatenate([w, np.zeros(int(0.4 * RATE), np.float32)]) for w in speech])
        for n in b.batch_sizes:
            for seconds in b.clip_seconds:
                length = int(seconds * RATE)
                reps = 1 + (n * length) // max(1, len(joined))
                stream = np.tile(joined, reps)
                clips = [stream[i * length:(i + 1) * length] for i in range(n)]
                cases.append(BenchCase({"batch": n, "seconds": seconds}, Items(clips, [""] * n), units=n * seconds))
        return cases

    def call_axes(self, graph: str, feeds) -> dict[str, int | str]:
        return loop.call_axes(graph, feeds)

    def bench_call(self, runners, case: BenchCase, cfg: RunConfig) -> Callable[[], Any]:
        decoding, limits = decoding_of(cfg)
        limits = loop.Limits(limits.window, batch=max(8, case.axes["batch"]))
        spec = cache_spec(cfg.model)
        return lambda: loop.transcribe_many(runners, case.items.waves, spec, decoding, limits)

    def samples(self, runners, data: AsrData, cfg: RunConfig) -> list[dict[str, str]]:
        decoding, limits = decoding_of(cfg)
        picks = [i for i, t in enumerate(data.test.texts) if t][:4]
        heard = loop.transcribe_many(runners, [data.test.waves[i] for i in picks], cache_spec(cfg.model), decoding,
                                     limits)
        return [{"said": data.test.texts[i], "heard": h.text} for i, h in zip(picks, heard)]

    def examples(self, data: AsrData, cfg: RunConfig) -> list[tuple[str, bytes]]:
        out = []
        speech = [i for i, t in enumerate(data.test.texts) if t]
        for k, i in enumerate(speech[:6]):
            out.append((f"test{k:02d}_{data.test.texts[i].replace(' ', '-')[:40]}.wav", wav_bytes(data.test.waves[i])))
        if data.stress.waves:
            i = len(data.stress.waves) - 1  # a long recording
            out.append(("long_recording.wav", wav_bytes(data.stress.waves[i])))
        silent = [i for i, t in enumerate(data.test.texts) if not t]
        if silent:
            out.append(("silence.wav", wav_bytes(data.test.waves[silent[1 % len(silent)]])))
        return out

    def info(self, data: AsrData, cfg: RunConfig) -> dict:
        m = cfg.model
        return {"vocabulary": list(VOCAB), "sample_rate": RATE, "window": cfg.data.window,
                "max_tokens": cfg.inference.max_tokens,
                "cache": {"layers": m.decoder_layers, "heads": m.heads, "head_dim": m.head_dim},
                "voices": {k: len(v) for k, v in data.voices.items()}}


def wav_bytes(wave: np.ndarray) -> bytes:
    """float32 (L,) at 16 kHz -> a 16-bit PCM WAV file."""
    buf = io.BytesIO()
    with wavfile.open(buf, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(np.clip(np.round(wave * 32767), -32768, 32767).astype("<i2").tobytes())
    return buf.getvalue()
