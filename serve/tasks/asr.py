"""Speech recognition, serve side: the vocabulary, the voice-activity detector, the decode loops
(greedy and beam search) over the two graphs, long audio in segments, and the Speech tab.

numpy (and, through ``serve``, onnxruntime) only. The same :func:`transcribe` runs over ORT sessions,
OpenVINO, TensorRT and the torch modules (the pipeline's reference): every runner is a callable
named inputs -> named outputs.

Graphs (N batch, L samples at 16 kHz, S encoder frames of 40 ms, T new tokens, P cached tokens):

- ``encoder``: ``waveform`` float32 (N, L) (right-padded with anything), ``lengths`` int64 (N,)
  -> ``states_mask`` int64 (N, S), ``log_mel`` float32 (N, M, F), ``ctc_log_probs`` float32 (N, S * U, V)
  (the encoder's own CTC reading, U labels a frame; optional: bundles without it decode by the
  decoder alone), and per decoder layer
  ``cross_key_values.{i}.key`` / ``.value`` (N, H, S, Dh): the cross-attention keys and values of the
  encoder's states, computed once per recording;
- ``decoder``: ``input_ids`` int64 (N, T), ``states_mask``, ``past_key_values.{i}.key`` / ``.value``
  (N, H, P, Dh), ``cross_key_values.*`` -> ``logits`` (N, T, V), ``present.*``.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from serve.bundle import BundleError, variant_info
from serve.inputs import InputError, decode_audio, number
from serve.kv_cache import CacheSpec, KVCache, cross_names, past_names  # noqa: F401 (the task's names)
from serve.runtime import Bundle
from serve.tasks.base import TaskTab, Whole, audio_input, choice_input, guarded, number_input, setting, setting_specs
from serve.tensors import TensorSpec

PAD, BOS, EOS = 0, 1, 2
ALPHABET = " 'abcdefghijklmnopqrstuvwxyz0123456789"
VOCAB: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", *ALPHABET)
_ID = {c: i for i, c in enumerate(VOCAB) if len(c) == 1}
RATE = 16000
Runners = Mapping[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]


def encode_text(text: str) -> list[int]:
    """'go up' -> character ids (no BOS / EOS); characters outside the alphabet are a BundleError."""
    bad = sorted({c for c in text if c not in _ID})
    if bad:
        raise BundleError(f"characters outside the alphabet: {''.join(bad)!r}")
    return [_ID[c] for c in text]


def decode_ids(ids: Any) -> str:
    """Token ids -> text, up to the first EOS (PAD and BOS dropped), spaces tidied."""
    out = []
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if i > EOS:
            out.append(VOCAB[i])
    return " ".join("".join(out).split())


# ---------------------------------------------------------------------------------------------
# Voice activity (energy, numpy)


@dataclass(frozen=True)
class Vad:
    """An energy detector: 30 ms frames, speech where a frame is ``margin_db`` over the noise floor (the
    quietest tenth of the frames) and over ``floor_db`` absolute; gaps shorter than ``min_gap`` are
    bridged, blips shorter than ``min_speech`` dropped, each segment padded by ``pad``."""

    frame: float = 0.03
    margin_db: float = 12.0
    floor_db: float = -50.0  # dBFS: quieter than this is silence, whatever the floor
    min_gap: float = 0.35
    min_speech: float = 0.12
    pad: float = 0.2

    def frames_db(self, wave: np.ndarray) -> np.ndarray:
        n = max(1, int(self.frame * RATE))
        count = len(wave) // n
        if count == 0:
            return np.full(1, -120.0)
        power = np.mean(wave[:count * n].reshape(count, n).astype(np.float64) ** 2, axis=1)
        return 10 * np.log10(power + 1e-12)

    def segments(self, wave: np.ndarray) -> list[tuple[float, float]]:
        """Speech regions (start, end) in seconds, in order; [] for silence."""
        db = self.frames_db(wave)
        floor = np.percentile(db, 10)
        if len(db) < 10 or db.max() - floor < self.margin_db:
            # too short to know a floor, or a steady sound with no quieter background to compare with
            # (speech without a pause, a fan): loud enough is a candidate, and the model says if it is speech
            active = db > self.floor_db + self.margin_db
        else:
            active = db > max(floor + self.margin_db, self.floor_db)
        regions, start = [], None
        for i, a in enumerate(np.append(active, False)):
            if a and start is None:
                start = i
            elif not a and start is not None:
                regions.append([start, i])
                start = None
        merged: list[list[int]] = []
        gap = self.min_gap / self.frame
        for r in regions:
            if merged and r[0] - merged[-1][1] < gap:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        total = len(wave) / RATE
        return [(max(0.0, s * self.frame - self.pad), min(total, e * self.frame + self.pad))
                for s, e in merged if (e - s) * self.frame >= self.min_speech]


def chunks(wave: np.ndarray, window: float, vad: Vad) -> list[tuple[float, float]]:
    """Where to cut ``wave`` so each piece fits the encoder's ``window`` (seconds): the VAD's regions,
    neighbours joined while they fit, a region longer than the window cut at its quietest frame."""
    pieces: list[tuple[float, float]] = []
    for s, e in vad.segments(wave):
        stack = [(s, e)]
        while stack:
            a, b = stack.pop(0)
            if b - a <= window:
                pieces.append((a, b))
                continue
            db = vad.frames_db(wave[int((a + window / 3) * RATE):int((a + window) * RATE)])  # cut in the window's last 2/3
            cut = a + window / 3 + float(np.argmin(db)) * vad.frame
            stack[:0] = [(a, cut), (cut, b)]
    joined: list[tuple[float, float]] = []
    for a, b in pieces:
        if joined and b - joined[-1][0] <= window and a - joined[-1][1] < 1.0:
            joined[-1] = (joined[-1][0], b)
        else:
            joined.append((a, b))
    return joined


# ---------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Decoding:
    """How to decode: ``beam`` 1 is greedy; ``max_tokens`` characters at most (EOS included)."""

    beam: int = 1
    max_tokens: int = 96
    length_penalty: float = 1.0  # beams are ranked by log-prob / length ** length_penalty
    # the CTC head's weight where the decoder's and the CTC head's readings differ: each is scored by both
    # (log-likelihoods, (1 - w) x decoder + w x CTC) and the better kept; 0: the decoder alone
    ctc_weight: float = 0.5

    def __post_init__(self):
        if not 1 <= self.beam <= 16 or self.max_tokens < 1:
            raise BundleError("beam must be 1-16 and max_tokens >= 1")
        if not 0 <= self.ctc_weight <= 1:
            raise BundleError("ctc_weight must be in [0, 1]")


@dataclass
class Result:
    """The loop's output for a batch: texts, and the steps' logits (N, steps, V) for parity (greedy)."""

    texts: list[str]
    logits: np.ndarray | None = None
    log_mel: np.ndarray | None = None  # the encoder's (N, M, F), for the front end's parity
    # per row the decoder's finished hypotheses (character ids, EOS excluded) and their log-probs
    hypotheses: list[list[tuple[list[int], float]]] | None = None


def pad_waves(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """float32 (L_i,) each -> waveform (N, max L) zero-padded, lengths int64 (N,)."""
    n, longest = len(waves), max(max((len(w) for w in waves), default=1), 1)
    batch = np.zeros((n, longest), np.float32)
    for i, w in enumerate(waves):
        batch[i, :len(w)] = w
    return batch, np.array([len(w) for w in waves], np.int64)


def encode(runners: Runners, waves: list[np.ndarray]) -> dict[str, np.ndarray]:
    waveform, lengths = pad_waves(waves)
    return runners["encoder"]({"waveform": waveform, "lengths": lengths})


def greedy(runners: Runners, enc: Mapping[str, np.ndarray], spec: CacheSpec, max_tokens: int) -> Result:
    """Greedy decoding of a batch: one decoder call per character, on the KV cache, until every row
    has written EOS or ``max_tokens``."""
    n = enc["states_mask"].shape[0]
    kv, token = KVCache(spec, n), np.full((n, 1), BOS, np.int64)
    fixed = {"states_mask": enc["states_mask"], **{k: enc[k] for k in cross_names(spec.layers)}}
    out, done, steps = np.full((n, max_tokens), PAD, np.int64), np.zeros(n, bool), []
    for step in range(max_tokens):
        result = runners["decoder"]({"input_ids": token, **fixed, **kv.feeds()})
        logits = result["logits"][:, -1]  # (N, V)
        steps.append(logits)
        nxt = np.where(done, PAD, logits.argmax(-1)).astype(np.int64)
        out[:, step] = nxt
        done |= nxt == EOS
        if done.all():
            break
        kv.update(result)
        token = nxt[:, None]
    logits = np.stack(steps, axis=1)  # (N, steps, V)
    chosen = np.take_along_axis(_log_softmax(logits), out[:, :logits.shape[1], None], 2)[..., 0]  # (N, steps)
    hyps = []
    for row, lp in zip(out, chosen):
        ids = row[:len(lp)].tolist()
        end = ids.index(EOS) + 1 if EOS in ids else len(ids)
        hyps.append([([i for i in ids[:end] if i > EOS], float(lp[:end].sum()))])
    return Result([decode_ids(r) for r in out], logits, hypotheses=hyps)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def beam_search(runners: Runners, enc: Mapping[str, np.ndarray], spec: CacheSpec, decoding: Decoding) -> Result:
    """Beam search of width ``decoding.beam`` for every row at once (N x W decoder rows): each step
    keeps the W best continuations per row; a beam that wrote EOS is finished and set aside, and a row
    with W finished beams stops; the best finished beam by log-prob / length ** penalty wins (the best
    open one if none finished)."""
    n, w = enc["states_mask"].shape[0], decoding.beam
    fixed = {k: np.repeat(enc[k], w, axis=0) for k in ("states_mask", *cross_names(spec.layers))}  # (N * W, ...)
    kv = KVCache(spec, n * w)
    token = np.full((n * w, 1), BOS, np.int64)
    scores = np.full((n, w), -np.inf)
    scores[:, 0] = 0.0  # the W beams start as one
    seqs = np.zeros((n, w, 0), np.int64)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    for step in range(decoding.max_tokens):
        result = runners["decoder"]({"input_ids": token, **fixed, **kv.feeds()})
        logp = _log_softmax(result["logits"][:, -1]).reshape(n, w, -1)  # (N, W, V)
        v = logp.shape[-1]
        total = (scores[:, :, None] + logp).reshape(n, w * v)
        order = np.argsort(-total, axis=1)[:, : 2 * w]  # enough to refill W open beams after EOS ones
        new_scores = np.full((n, w), -np.inf)
        parents, tokens = np.zeros((n, w), np.int64), np.full((n, w), PAD, np.int64)
        for i in range(n):
            kept = 0
            for flat in order[i]:
                s = total[i, flat]
                if not np.isfinite(s):
                    break
                parent, tok = divmod(int(flat), v)
                if tok == EOS:
                    length = step + 1
                    finished[i].append((s / length ** decoding.length_penalty, [*seqs[i, parent].tolist()], s))
                    continue
                if tok in (PAD, BOS):
                    continue
                new_scores[i, kept], parents[i, kept], tokens[i, kept] = s, parent, tok
                kept += 1
                if kept == w:
                    break
        for i in range(n):  # a row with W finished beams is done (Hugging Face's early_stopping=True)
            if len(finished[i]) >= w:
                new_scores[i] = -np.inf
        scores = new_scores
        seqs = np.concatenate([np.take_along_axis(seqs, parents[:, :, None], 1), tokens[:, :, None]], axis=2)
        if not np.isfinite(scores).any():
            break
        kv.update(result)
        kv.select((parents + np.arange(n)[:, None] * w).reshape(-1))
        token = tokens.reshape(-1, 1)
    texts, hyps = [], []
    for i in range(n):
        if finished[i]:
            ranked = sorted(finished[i], key=lambda f: -f[0])[:w]
            texts.append(decode_ids(ranked[0][1]))
            hyps.append([(f[1], float(f[2])) for f in ranked])
        else:
            best = int(np.argmax(scores[i]))
            texts.append(decode_ids(seqs[i, best]))
            hyps.append([(seqs[i, best].tolist(), float(scores[i, best]))])
    return Result(texts, hypotheses=hyps)


# ---------------------------------------------------------------------------------------------
# The CTC head's reading, and the choice between the two heads


def ctc_greedy(log_probs: np.ndarray) -> list[int]:
    """(T, V) CTC log-probs of one row's frames -> character ids: the best label a frame, repeats merged,
    blanks (PAD) dropped."""
    best = log_probs.argmax(-1)
    keep = np.ones(len(best), bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(t) for t in best[keep] if t > EOS]


def ctc_log_likelihood(log_probs: np.ndarray, hyps: list[list[int]]) -> np.ndarray:
    """log P(hypothesis | frames) under CTC (Graves 2006), the forward algorithm in log space over every
    hypothesis at once: (T, V) log-probs, H label sequences -> (H,) (-inf where T frames cannot hold one)."""
    h = len(hyps)
    longest = max((len(y) for y in hyps), default=0)
    ext = np.full((h, 2 * longest + 1), PAD, np.int64)  # blank, y1, blank, y2, ..., blank
    for i, y in enumerate(hyps):
        ext[i, 1:2 * len(y):2] = y
    skip = np.zeros(ext.shape, bool)  # s may come from s - 2: a label unlike the one two back
    skip[:, 2:] = (ext[:, 2:] != PAD) & (ext[:, 2:] != ext[:, :-2])
    lp = log_probs.astype(np.float64)
    alpha = np.full(ext.shape, -np.inf)
    alpha[:, 0] = lp[0, PAD]
    if longest:
        alpha[:, 1] = lp[0, ext[:, 1]]
    rows = np.arange(h)[:, None]
    for t in range(1, len(lp)):
        one = np.concatenate([np.full((h, 1), -np.inf), alpha[:, :-1]], 1)
        two = np.where(skip, np.concatenate([np.full((h, 2), -np.inf), alpha[:, :-2]], 1), -np.inf)
        alpha = np.logaddexp(np.logaddexp(alpha, one), two) + lp[t][ext]
    ends = np.array([2 * len(y) for y in hyps])
    last = alpha[rows[:, 0], ends]
    before = np.where(ends > 0, alpha[rows[:, 0], np.maximum(ends - 1, 0)], -np.inf)
    return np.logaddexp(last, before)


def decoder_log_likelihood(runners: Runners, enc: Mapping[str, np.ndarray], spec: CacheSpec, rows: list[int],
                           hyps: list[list[int]]) -> np.ndarray:
    """The decoder's log P(hypothesis + EOS) for hypothesis i of encoder row ``rows[i]``: one
    teacher-forced call (BOS + characters, PAD after the shorter ones) on an empty cache -> (H,)."""
    longest = max(len(y) for y in hyps)
    ids = np.full((len(hyps), longest + 1), PAD, np.int64)
    ids[:, 0] = BOS
    for i, y in enumerate(hyps):
        ids[i, 1:len(y) + 1] = y
    pick = np.array(rows)
    fixed = {k: enc[k][pick] for k in ("states_mask", *cross_names(spec.layers))}
    logp = _log_softmax(runners["decoder"]({"input_ids": ids, **fixed, **KVCache(spec, len(hyps)).feeds()})["logits"])
    out = np.zeros(len(hyps))
    for i, y in enumerate(hyps):
        target = [*y, EOS]
        out[i] = logp[i, np.arange(len(target)), target].sum()
    return out


def rescore(runners: Runners, enc: Mapping[str, np.ndarray], spec: CacheSpec, result: Result, weight: float,
            max_tokens: int) -> Result:
    """Where the CTC head reads a row otherwise than the decoder did, both readings (and the beam's other
    finished ones) are scored by both heads and the best of (1 - weight) x decoder + weight x CTC
    log-likelihood kept: the decoder's skipped or repeated words, which CTC's monotonic alignment does not
    allow, lose to the CTC reading, and CTC's misspellings to the decoder's. A CTC reading longer than the
    decoder may write (``max_tokens``, EOS included) is not a candidate."""
    if weight <= 0 or "ctc_log_probs" not in enc or result.hypotheses is None:
        return result
    ctc, mask = enc["ctc_log_probs"], enc["states_mask"]
    per_frame = ctc.shape[1] // max(1, mask.shape[1])
    frames = mask.sum(1) * per_frame
    texts, extra_rows, extra = list(result.texts), [], []
    pools = []
    for r, hyps in enumerate(result.hypotheses):
        ctc_ids = ctc_greedy(ctc[r, :frames[r]])
        pool = {tuple(ids): score for ids, score in hyps}
        if tuple(ctc_ids) not in pool and len(ctc_ids) < max_tokens:
            extra_rows.append(r)
            extra.append(ctc_ids)
            pool[tuple(ctc_ids)] = None  # the decoder's score comes below
        pools.append(pool)
    if extra:
        for r, ids, score in zip(extra_rows, extra, decoder_log_likelihood(runners, enc, spec, extra_rows, extra)):
            pools[r][tuple(ids)] = float(score)
    for r, pool in enumerate(pools):
        if len(pool) < 2:
            continue
        cands = list(pool)
        ctc_ll = ctc_log_likelihood(ctc[r, :frames[r]], [list(c) for c in cands])
        total = [(1 - weight) * pool[c] + weight * ll for c, ll in zip(cands, ctc_ll)]
        texts[r] = decode_ids(cands[int(np.argmax(total))])
    return Result(texts, result.logits, result.log_mel, result.hypotheses)


def decode_batch(runners: Runners, waves: list[np.ndarray], spec: CacheSpec, decoding: Decoding) -> Result:
    """The encoder once over the batch, then greedy or beam search, then the choice between the decoder's
    and the CTC head's readings where they differ (:func:`rescore`)."""
    if not waves:
        return Result([], np.zeros((0, 0, len(VOCAB)), np.float32))
    enc = encode(runners, waves)
    result = (greedy(runners, enc, spec, decoding.max_tokens) if decoding.beam == 1
              else beam_search(runners, enc, spec, decoding))
    result = rescore(runners, enc, spec, result, decoding.ctc_weight, decoding.max_tokens)
    result.log_mel = enc.get("log_mel")
    return result


# ---------------------------------------------------------------------------------------------
# Whole recordings


@dataclass
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    segments: list[Segment]
    seconds: float  # audio length
    compute: float  # seconds spent
    note: str = ""  # e.g. "no speech heard"

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per second of audio."""
        return self.compute / max(self.seconds, 1e-9)


@dataclass
class Limits:
    window: float  # seconds the encoder takes at once (the contract's longest input)
    batch: int = 8  # segments per encoder call
    vad: Vad = field(default_factory=Vad)


def transcribe_many(runners: Runners, waves: list[np.ndarray], spec: CacheSpec, decoding: Decoding,
                    limits: Limits) -> list[Transcript]:
    """Recordings of any length (float32 (L,) each, 16 kHz): silence gives an empty transcript and a
    note; otherwise each one's speech regions (cut to the encoder's window at pauses) are transcribed,
    every recording's segments in batches of ``limits.batch`` sorted by length (little padding), each
    with its start and end time. ``compute`` is the whole call's time, shared by its recordings."""
    t0 = time.perf_counter()
    pieces = [chunks(w, limits.window, limits.vad) for w in waves]
    flat = [(r, a, b) for r, p in enumerate(pieces) for a, b in p]
    flat.sort(key=lambda x: x[2] - x[1])
    texts: list[str] = []
    for i in range(0, len(flat), limits.batch):
        part = flat[i:i + limits.batch]
        texts += decode_batch(runners, [waves[r][int(a * RATE):int(b * RATE)] for r, a, b in part], spec,
                              decoding).texts
    by_recording: list[list[Segment]] = [[] for _ in waves]
    for (r, a, b), text in zip(flat, texts):
        if text:
            by_recording[r].append(Segment(round(a, 2), round(b, 2), text))
    spent = time.perf_counter() - t0
    out = []
    for w, p, segments in zip(waves, pieces, by_recording):
        segments.sort(key=lambda s: s.start)
        note = "no speech heard" if not p else ("no words recognized" if not segments else "")
        out.append(Transcript(" ".join(s.text for s in segments), segments, len(w) / RATE, spent, note))
    return out


def transcribe(runners: Runners, wave: np.ndarray, spec: CacheSpec, decoding: Decoding, limits: Limits) -> Transcript:
    """One recording: :func:`transcribe_many` of it alone."""
    return transcribe_many(runners, [wave], spec, decoding, limits)[0]


def call_axes(graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, int | float]:
    """A call named as the benchmark's cases are (rows, seconds of audio): the encoder's by its
    waveform, a decoder step's by its states' mask (40 ms a frame), so one case's variant runs the whole loop."""
    if graph == "encoder":
        n, samples = feeds["waveform"].shape
        return {"batch": int(n), "seconds": samples / RATE}
    n, frames = feeds["states_mask"].shape
    return {"batch": int(n), "seconds": frames * 0.04}


# ---------------------------------------------------------------------------------------------
# The tab

SERVED = "served"  # the tab's choice that runs each call on the benchmark's fastest variant for it
LIVE_EVERY = 1.0  # seconds between live transcripts while recording


def runners_of(bundle: Bundle, variant: str | None) -> tuple[dict[str, Any], Callable[[], str]]:
    """The loop's runners of one variant (None or SERVED: each call on the serving choice), and a line
    saying what ran."""
    if variant not in (None, SERVED):
        return bundle.runners(variant), lambda: bundle.describe(variant)
    served = {g: bundle.served(g, functools.partial(call_axes, g)) for g in ("encoder", "decoder")}

    def ran() -> str:
        used: dict[str, int] = {}
        for r in served.values():
            for v, n in r.used.items():
                used[v] = used.get(v, 0) + n
        calls = ", ".join(f"{n} call{'s' * (n > 1)} on {v}" for v, n in used.items())
        return f"served: {calls or 'no model call'}"

    return served, ran


MAX_RECORDINGS = 16  # audio files in one protocol request


class AsrTab(TaskTab):
    task = "asr"
    title = "Speech"
    endpoints = ("transcribe", "transcribe_live")

    def check(self, bundle: Bundle) -> None:
        if set(bundle.graphs) != {"encoder", "decoder"}:
            raise BundleError(f"{bundle.path}: not a speech bundle (graphs encoder and decoder)")
        info = bundle.info
        try:
            spec = CacheSpec(**info["cache"])
            ok = list(info["vocabulary"]) == list(VOCAB) and float(info["window"]) >= 1 and min(spec[:3]) >= 1
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise BundleError(f"{bundle.path}: info must give this vocabulary, a window in seconds and the cache "
                              "(layers, heads, head_dim)")

    def whole(self, bundle: Bundle) -> Whole:
        """``asr``: audio files (BYTES: WAV, FLAC, OGG, ... one per row; any rate, mono or not) -> transcripts."""
        info = bundle.info
        spec, window = CacheSpec(**info["cache"]), float(info["window"])
        max_tokens = int(bundle.inference.get("max_tokens", info.get("max_tokens", 96)))
        ctc_weight = float(bundle.inference.get("ctc_weight", 0.0))

        def run(tensors: dict[str, np.ndarray], params: dict[str, Any], variant: str | None) -> dict[str, np.ndarray]:
            files = list(tensors["audio"].reshape(-1))
            if not 1 <= len(files) <= MAX_RECORDINGS:
                raise InputError(f"audio must hold 1 to {MAX_RECORDINGS} files, got {len(files)}")
            beam = number(setting(tensors, params, "beam", 1), "beam", integer=True, lo=1, hi=8)
            waves = [decode_audio(f, RATE) for f in files]
            runners, _ = runners_of(bundle, variant)
            done = transcribe_many(runners, waves, spec, Decoding(beam, max_tokens, ctc_weight=ctc_weight),
                                   Limits(window))
            out = np.empty(len(done), dtype=object)
            out[:] = [t.text.encode() for t in done]
            return {"text": out}

        return Whole((TensorSpec("audio", "BYTES", (-1,), "audio files, one per row"),
                      *setting_specs(beam=("INT64", "beam width, 1 (greedy) to 8"))),
                     (TensorSpec("text", "BYTES", (-1,), "each recording's transcript (empty: no speech)"),), run)

    def build(self, bundle: Bundle) -> None:
        import gradio as gr

        info = bundle.info
        spec, window = CacheSpec(**info["cache"]), float(info["window"])
        max_tokens = int(bundle.inference.get("max_tokens", info.get("max_tokens", 96)))
        ctc_weight = float(bundle.inference.get("ctc_weight", 0.0))  # bundles from before the CTC output: 0

        runners_for = functools.partial(runners_of, bundle)

        def run(audio, beam, variant):
            if audio is None:
                raise InputError("record or upload some audio first")
            beam = number(beam, "beam", integer=True, lo=1, hi=8)
            runners, ran = runners_for(variant)
            t = transcribe(runners, audio, spec, Decoding(beam, max_tokens, ctc_weight=ctc_weight), Limits(window))
            rows = [[s.start, s.end, s.text] for s in t.segments]
            line = (f"{t.seconds:.1f} s of audio in {t.compute * 1000:.0f} ms: real-time factor {t.rtf:.3f} "
                    f"({ran()}{', beam ' + str(beam) if beam > 1 else ', greedy'})")
            return (t.text or f"({t.note})"), rows, line

        def live(chunk, heard, variant):
            """A streamed microphone: the recording so far, transcribed again at most every LIVE_EVERY s."""
            heard = heard or {"audio": np.zeros(0, np.float32), "at": 0.0, "text": ""}
            if chunk is not None:
                heard["audio"] = np.concatenate([heard["audio"], chunk])[-int(300 * RATE):]
            now = len(heard["audio"]) / RATE
            if now - heard["at"] >= LIVE_EVERY and len(heard["audio"]):
                runners, _ = runners_for(variant)
                t = transcribe(runners, heard["audio"], spec, Decoding(1, max_tokens, ctc_weight=ctc_weight), Limits(window))
                heard["at"], heard["text"] = now, t.text or f"({t.note})"
            return heard["text"], heard

        variants = [("served (the fastest per call)", SERVED), *bundle.variants()]
        served = ("each graph call on the variant the benchmark measured fastest for its length of audio; the "
                  "status says which ran")
        gr.Markdown(f"**{bundle.name}**: a Whisper-style encoder-decoder that writes what it hears, character by "
                    f"character. `encoder.onnx` computes the log-mel spectrogram itself from 16 kHz audio; "
                    f"`decoder.onnx` writes one character per call on a KV cache. Recordings longer than {window:g} s "
                    "are cut at pauses; silence gives no words. Trained on "
                    f"{bundle.manifest.get('data', 'synthesized speech')}: digits and command words.")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Record or upload",
                                 elem_id="asr-audio")
                with gr.Row():
                    beam = gr.Slider(1, 8, value=1, step=1, label="Beam width (1: greedy)", elem_id="asr-beam")
                    variant = gr.Radio(variants, value=SERVED, label="Variant", elem_id="asr-variant",
                                       info=variant_info(bundle.variants(), served))
                go = gr.Button("Transcribe", variant="primary", elem_id="asr-go")
                mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Live: speak and watch",
                               elem_id="asr-live")
            with gr.Column():
                text = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="asr-text")
                table = gr.Dataframe(headers=["start (s)", "end (s)", "text"], label="Segments", interactive=False,
                                     elem_id="asr-segments")
                status = gr.Textbox(label="Status", interactive=False, elem_id="asr-status")
                live_text = gr.Textbox(label="Live transcript", lines=2, interactive=False, elem_id="asr-live-text")
        names = [n for n in bundle.manifest["files"] if n.startswith("examples/") and n.endswith(".wav")]
        paths = [str(p) for p in (bundle.file(n) for n in names[:8]) if p]
        if paths:
            gr.Examples(examples=[[p] for p in paths], inputs=[audio], label="Held-out recordings (voices never "
                        "heard in training)")
        state = gr.State()
        audio_input(audio, RATE, "that audio could not be read")
        audio_input(mic, RATE, "the microphone's audio could not be read")
        choice_input(variant, "variant")
        number_input(beam)
        go.click(guarded(run), [audio, beam, variant], [text, table, status], api_name="transcribe")
        audio.stop_recording(guarded(run), [audio, beam, variant], [text, table, status], api_name=False)
        audio.upload(guarded(run), [audio, beam, variant], [text, table, status], api_name=False)  # at once, too
        mic.stream(guarded(live), [mic, state, variant], [live_text, state], stream_every=0.5,
                   api_name="transcribe_live")
        mic.start_recording(lambda: ("", None), None, [live_text, state], api_name=False)
