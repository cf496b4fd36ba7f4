"""Speech, offline: utterances synthesized by libespeak-ng (the ``espeakng-loader`` wheel, through
ctypes), or the user's audio folder.

- **Voices**: an English accent of eSpeak NG (8: US, RP, Scottish, Lancaster, West Midlands, New York,
  Caribbean, and plain ``en``) with a voice variant (its 100-odd ``!v`` variants, and none). A split
  owns whole variants: the test variants are never heard in training, in any accent.
- **Texts**: digit strings ("zero" ... "nine", "oh") and command words, 1-8 words; the transcript is
  characters, so the decoder spells, it does not pick a word.
- **Synthesis** varies rate, pitch, pitch range, word gap and amplitude per utterance, resamples
  22,050 Hz to 16 kHz, and runs in worker processes (eSpeak is not bit-repeatable inside one process).
  A data set is built once per config and cached on disk (``<cache>/speech-<hash>.npz``), so a run is
  reproducible and the next one starts at once.
- **Noise, gain, shift, speed and reverb** are added at training time (:func:`augment`, torch, the
  training step's seeded generator), never stored.
- **User data**: a folder with ``metadata.csv`` (``file_name,transcription``: Hugging Face's
  ``audiofolder`` layout), WAV / FLAC / OGG at any rate, read by :func:`serve.inputs.decode_audio`.
"""
from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from serve.inputs import InputError, decode_audio, resample

RATE = 16000
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")
COMMANDS = ("up", "down", "left", "right", "yes", "no", "on", "off", "stop", "go", "start", "open", "close",
            "back", "next", "play", "pause", "call", "home", "help", "cancel", "repeat", "forward", "faster",
            "slower", "lights", "music", "volume", "find", "show", "save", "menu", "select", "delete", "enter",
            "wait")
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc", "en-029")
ESPEAK_RATE = 22050
# eSpeak's parameters (espeak_PARAMETER) and their ranges in training; the stress set goes beyond
RATE_P, VOLUME_P, PITCH_P, RANGE_P, WORDGAP_P = 1, 2, 3, 4, 7


@dataclass(frozen=True)
class Style:
    """How one utterance is read: eSpeak's words per minute, pitch and range (0-100), gap between
    words (10 ms units) and amplitude (0-200)."""

    rate: int = 175
    pitch: int = 50
    range: int = 50
    gap: int = 0
    volume: int = 100


def variants() -> list[str]:
    """eSpeak NG's voice variants in the wheel, sorted ("" is the accent's own voice)."""
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return [""] + sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name)


def split_variants(seed: int, test_share: float = 0.15) -> dict[str, list[str]]:
    """Variants by split (train / val / test), whole variants to one split: ``test_share`` of them to
    test, as many to validation, fixed by ``seed``. The accent's own voice ("") is always trained on."""
    names = variants()
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names)) if names[i]]
    k = max(1, round(test_share * len(order)))
    return {"test": sorted(order[:k]), "val": sorted(order[k:2 * k]), "train": [""] + sorted(order[2 * k:])}


def random_text(rng: np.random.Generator, max_words: int) -> str:
    """1..max_words words: a digit string, a command sequence, or a mix (commands with numbers)."""
    n = int(rng.integers(1, max_words + 1))
    kind = rng.random()
    if kind < 0.4:
        words = rng.choice(DIGITS, n)
    elif kind < 0.8:
        words = rng.choice(COMMANDS, n)
    else:
        words = [rng.choice(DIGITS) if rng.random() < 0.5 else rng.choice(COMMANDS) for _ in range(n)]
    return " ".join(str(w) for w in words)


def random_style(rng: np.random.Generator, stress: bool = False) -> Style:
    """Training ranges; ``stress``: beyond them (faster, slower, higher, lower, longer gaps)."""
    if stress:
        return Style(int(rng.choice([int(rng.integers(95, 120)), int(rng.integers(270, 330))])),
                     int(rng.choice([int(rng.integers(0, 12)), int(rng.integers(88, 100))])),
                     int(rng.integers(0, 100)), int(rng.integers(10, 25)), int(rng.integers(40, 200)))
    return Style(int(rng.integers(120, 271)), int(rng.integers(15, 86)), int(rng.integers(15, 86)),
                 int(rng.integers(0, 10)), int(rng.integers(60, 160)))


# ---------------------------------------------------------------------------------------------
# Synthesis (one eSpeak per process)

_ESPEAK: "_Espeak | None" = None


class _Espeak:
    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, count, events):
            if count > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
            return 0

        self.callback = callback_type(collect)  # kept: the library calls it
        # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the audio has gone through the callback
        rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
        if rate != ESPEAK_RATE:
            raise PipelineError(f"libespeak-ng could not start (espeak_Initialize returned {rate})")
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    def say(self, text: str, voice: str, style: Style) -> np.ndarray:
        """int16 (L,) at 22,050 Hz."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise PipelineError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((RATE_P, style.rate), (PITCH_P, style.pitch), (RANGE_P, style.range),
                             (WORDGAP_P, style.gap), (VOLUME_P, style.volume)):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def synthesize(text: str, voice: str, style: Style) -> np.ndarray:
    """One utterance: int16 (L,) at 16 kHz."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = _Espeak()
    wave = _ESPEAK.say(text, voice, style).astype(np.float32) / 32768.0
    return np.clip(np.round(resample(wave, ESPEAK_RATE, RATE) * 32767.0), -32768, 32767).astype(np.int16)


def _synthesize_many(jobs: list[tuple[str, str, Style]]) -> list[np.ndarray]:
    return [synthesize(*job) for job in jobs]


# ---------------------------------------------------------------------------------------------
# Data sets


@dataclass
class Speech:
    """Utterances: int16 audio at 16 kHz in one array with offsets, their transcripts and voices."""

    audio: np.ndarray  # int16 (sum of lengths,)
    offsets: np.ndarray  # int64 (count + 1,)
    texts: list[str]
    voices: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def wave(self, i: int) -> np.ndarray:
        """float32 (L,) in [-1, 1]."""
        return self.audio[self.offsets[i]:self.offsets[i + 1]].astype(np.float32) / 32768.0

    def seconds(self) -> float:
        return len(self.audio) / RATE

    @classmethod
    def of(cls, waves: Sequence[np.ndarray], texts: list[str], voices: list[str]) -> "Speech":
        offsets = np.zeros(len(waves) + 1, np.int64)
        offsets[1:] = np.cumsum([len(w) for w in waves])
        audio = np.concatenate(list(waves)) if waves else np.zeros(0, np.int16)
        return cls(audio.astype(np.int16), offsets, list(texts), list(voices))


def plan(count: int, voice_names: list[str], seed: int, max_words: int, empty_share: float = 0.0,
         stress: bool = False, sentences: Sequence[str] = (), sentence_share: float = 0.0) -> list[tuple[str, str, Style]]:
    """``count`` (text, voice, style) jobs over ``voice_names``; ``empty_share`` of them say nothing
    (the text is "": silence, which training fills with noise); ``sentence_share`` of them read one of
    ``sentences`` (open vocabulary) instead of the built-in words."""
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(count):
        voice = str(rng.choice(voice_names))
        if rng.random() < empty_share:
            text = ""
        elif sentences and sentence_share and rng.random() < sentence_share:  # no draw without: the same plans
            text = sentences[int(rng.integers(len(sentences)))]
        else:
            text = random_text(rng, max_words)
        jobs.append((text, voice, random_style(rng, stress)))
    return jobs


WORD = re.compile(r"^[A-Za-z]+(?:'[a-z]+)?[,;:]?$")  # a word eSpeak reads as it is written


def sentences_of(text: str, max_chars: int, min_words: int = 2, max_words: int = 14) -> list[str]:
    """Sentences of prose that read aloud as they are written: every token a word of letters (an
    apostrophe inside, a comma after), no digits, symbols or code, ``min_words`` to ``max_words`` words and
    at most ``max_chars`` characters once normalized (:func:`normalize_text`); first occurrences, in order."""
    out, seen = [], set()
    for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", text):
        tokens = sentence.strip().rstrip(".!?").split()
        if not min_words <= len(tokens) <= max_words or not all(WORD.match(t) for t in tokens):
            continue
        said = normalize_text(" ".join(tokens))
        if len(said) <= max_chars and said not in seen:
            seen.add(said)
            out.append(said)
    return out


def voices_of(accents: Sequence[str], variant_names: Sequence[str]) -> list[str]:
    return [a + (f"+{v}" if v else "") for a in accents for v in variant_names]


def build(jobs: list[tuple[str, str, Style]], cache: Path | None, workers: int = 0, label: str = "speech") -> Speech:
    """Synthesize ``jobs`` (in worker processes), or load them from ``cache`` (a file named by their hash)."""
    key = hashlib.sha256(json.dumps([(t, v, s.__dict__) for t, v, s in jobs]).encode()).hexdigest()[:16]
    path = cache / f"speech-{key}.npz" if cache else None
    if path and path.is_file():
        try:
            with np.load(path) as z:
                return Speech(z["audio"], z["offsets"], json.loads(str(z["texts"])), json.loads(str(z["voices"])))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    silent = [t == "" for t, _, _ in jobs]
    todo = [(t or "", v, s) for t, v, s in jobs]
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [todo[i:i + 64] for i in range(0, len(todo), 64)]
    from tqdm import tqdm

    waves: list[np.ndarray] = []
    with ProcessPoolExecutor(workers) as pool, tqdm(total=len(todo), desc=f"synthesizing {label}", unit="utt",
                                                    leave=False, disable=None) as bar:
        for part in pool.map(_synthesize_many, chunks):
            waves += part
            bar.update(len(part))
    rng = np.random.default_rng(len(jobs))
    for i, quiet in enumerate(silent):  # silence of a plausible length (noise comes in training)
        if quiet:
            waves[i] = np.zeros(int(rng.integers(RATE // 2, 3 * RATE)), np.int16)
    speech = Speech.of(waves, [t for t, _, _ in jobs], [v for _, v, _ in jobs])
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, audio=speech.audio, offsets=speech.offsets, texts=json.dumps(speech.texts),
                 voices=json.dumps(speech.voices))
        os.replace(tmp, path)
    return speech


# ---------------------------------------------------------------------------------------------
# User data: an audio folder


def normalize_text(text: str) -> str:
    """A transcript as the model writes it: lower case, punctuation other than apostrophes dropped,
    single spaces."""
    text = re.sub(r"[^\w' ]+", " ", text.lower().replace("\u2019", "'"))
    return " ".join(text.replace("_", " ").split())


def audio_folder(root: str | Path, alphabet: str, limit_seconds: float) -> Speech:
    """``root/metadata.csv`` (``file_name,transcription``) and the files it names, at any rate."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise PipelineError(f"{root}: no metadata.csv (an audio folder has metadata.csv with the columns "
                            "file_name,transcription)")
    with meta.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file_name", "transcription"} <= set(reader.fieldnames):
            raise PipelineError(f"{meta}: the header must name file_name and transcription, got "
                                f"{','.join(reader.fieldnames or []) or 'nothing'}")
        rows = list(reader)
    if not rows:
        raise PipelineError(f"{meta}: no rows")
    waves, texts, missing = [], [], []
    for row in rows:
        name = (row.get("file_name") or "").strip()
        path = (root / name).resolve()
        if not name or root.resolve() not in path.parents or not path.is_file():
            missing.append(name or "(empty)")
            continue
        text = normalize_text(row.get("transcription") or "")
        unknown = sorted(set(text) - set(alphabet))
        if unknown:
            raise PipelineError(f"{meta}: {name}: the transcription has characters the model cannot write: "
                                f"{''.join(unknown)!r} (it writes {alphabet!r})")
        try:
            wave = decode_audio(path.read_bytes(), RATE)
        except InputError as e:
            raise PipelineError(f"{path}: {e}") from None
        if len(wave) > limit_seconds * RATE:
            raise PipelineError(f"{path}: {len(wave) / RATE:.1f} s; the model's window is {limit_seconds:g} s")
        waves.append(np.clip(np.round(wave * 32767.0), -32768, 32767).astype(np.int16))
        texts.append(text)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PipelineError(f"{meta} names {len(missing)} file(s) that are not in {root}: {shown}")
    return Speech.of(waves, texts, ["user"] * len(texts))


# ---------------------------------------------------------------------------------------------
# Augmentation (training time, torch)


@dataclass(frozen=True)
class Augment:
    snr_db: tuple[float, float] = (5.0, 30.0)  # noise level against the speech
    noise_p: float = 0.8  # share of utterances that get noise
    gain_db: tuple[float, float] = (-18.0, 6.0)
    shift_s: float = 0.4  # silence up to this long before (and after) the speech
    speed: tuple[float, float] = (0.9, 1.1)
    reverb_p: float = 0.3

    def at(self, strength: float) -> "Augment":
        """This augmentation at ``strength`` in [0, 1] (a curriculum): 0 keeps gain and shift only (clean
        speech), 1 is all of it; noise, reverb and speed perturbation grow in between (the SNR's low end
        from the high one down)."""
        k = min(1.0, max(0.0, strength))
        lo, hi = self.snr_db
        return Augment((hi - (hi - lo) * k, hi), self.noise_p * k, self.gain_db, self.shift_s,
                       (1 - (1 - self.speed[0]) * k, 1 + (self.speed[1] - 1) * k), self.reverb_p * k)


def fft_size(n: int) -> int:
    """The power of two >= n: an FFT of an arbitrary length (a large prime factor) costs 10-30x more
    (pocketfft: 16.5 ms for 33,331 samples, 0.55 ms for 32,768 here)."""
    return 1 << max(0, n - 1).bit_length()


def _noise(n: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """White, pink or brown noise (n,) of unit power: white noise whose spectrum is shaped by f^0,
    f^-1/2 or f^-1 in amplitude (by FFT, on ``device``, at a power-of-two length cut to n)."""
    slope = (0.0, 0.5, 1.0)[int(torch.randint(0, 3, (1,), generator=g))]
    if slope:
        size = fft_size(n)
        spectrum = torch.fft.rfft(torch.randn(size, generator=g).to(device))
        f = torch.arange(spectrum.shape[0], device=device).clamp_min(1).float()
        white = torch.fft.irfft(spectrum * f ** -slope, size)[:n]
    else:
        white = torch.randn(n, generator=g).to(device)
    return white / white.pow(2).mean().clamp_min(1e-12).sqrt()


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def repace(wave: torch.Tensor, g: torch.Generator, a: Augment) -> torch.Tensor:
    """Speed perturbation: (L,) -> (L / factor,), factor drawn from ``a.speed`` (pitch and tempo together)."""
    if a.speed == (1.0, 1.0):
        return wave
    length = max(1, int(round(len(wave) / _uniform(g, *a.speed))))
    return F.interpolate(wave[None, None], size=length, mode="linear", align_corners=False)[0, 0]


def augment(wave: torch.Tensor, g: torch.Generator, a: Augment, speech: bool = True,
            length: int | None = None) -> torch.Tensor:
    """One utterance (L,) float32 -> its noisy, shifted, re-paced, reverberant, re-levelled copy, on the
    utterance's device (random draws from ``g``, on the CPU, so a run repeats on any device).

    ``length``: the utterance, already re-paced (:func:`repace`), is placed at a random offset in a
    recording of that many samples (the training step gives a batch of similar utterances one length, so
    no row is padded with zeros past its noise), instead of between random silences of up to
    ``a.shift_s`` before and after it."""

    def uniform(lo: float, hi: float) -> float:
        return _uniform(g, lo, hi)

    if length is None:
        if speech:
            wave = repace(wave, g, a)
        before, after = (int(uniform(0, a.shift_s) * RATE) for _ in range(2))
    else:
        room = max(0, length - len(wave))
        before = int(torch.randint(0, room + 1, (1,), generator=g))
        after = room - before
    wave = F.pad(wave, (before, after))
    if speech and float(torch.rand((), generator=g)) < a.reverb_p:  # a decaying noise burst as the room
        t60 = uniform(0.15, 0.6)
        n = int(t60 * RATE)
        decay = torch.exp(-6.9 * torch.arange(n) / n)
        ir = torch.randn(n, generator=g) * decay
        ir[0] = 1.0 / uniform(0.3, 1.0)
        ir = ir.to(wave.device)
        size = fft_size(len(wave) + n)
        wet = torch.fft.irfft(torch.fft.rfft(wave, size) * torch.fft.rfft(ir, size), size)[:len(wave)]
        wave = wet * (wave.abs().max() / wet.abs().max().clamp_min(1e-9))
    peak = wave.abs().max()
    if peak > 0:
        wave = wave / peak * 10 ** (uniform(*a.gain_db) / 20) * 0.5
    if not speech or float(torch.rand((), generator=g)) < a.noise_p:
        power = wave.pow(2).mean() if speech and peak > 0 else torch.tensor(10 ** (uniform(-50, -15) / 10))
        snr = uniform(*a.snr_db)
        wave = wave + _noise(len(wave), g, wave.device) * (power / 10 ** (snr / 10)).sqrt().to(wave.device)
    return wave.clamp(-1.0, 1.0)
