"""Speech recognition: audio input checks, the voice-activity detector and segmenting, the decode loops
(beam search against greedy), the model card's snippet, the API and the Speech tab in Chromium."""
from __future__ import annotations

import io
import json
import shutil
import wave as wavfile

import numpy as np
import pytest
import soundfile as sf

from serve.inputs import InputError, Limits, decode_audio
from serve.tasks import asr as loop

RATE = 16000


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _tone(seconds: float, freq: float = 440.0, level: float = 0.3, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * level).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Audio input: every format converted, every bad file one message


@pytest.mark.parametrize("rate,subtype,channels", [(8000, "PCM_16", 1), (48000, "PCM_16", 2), (22050, "PCM_32", 1),
                                                   (44100, "DOUBLE", 2), (16000, "FLOAT", 1), (16000, "PCM_U8", 1)])
def test_any_rate_format_and_channel_count_becomes_mono_16k(rate, subtype, channels):
    x = _tone(1.0, rate=rate)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    out = decode_audio(_wav(data, rate, subtype))
    assert out.dtype == np.float32 and out.ndim == 1 and abs(len(out) - RATE) <= 2
    assert 0.25 < np.abs(out).max() < 0.35  # the level kept, whatever the sample format


@pytest.mark.parametrize("samples", [np.array([0, 16384, -16384], np.int16), np.array([0, 1 << 30], np.int32),
                                     np.array([0.0, 0.5, 2.0]), np.array([[0.1, 0.3], [0.1, 0.3]], np.float32)])
def test_sample_pairs_from_gradio_are_scaled_and_clipped(samples):
    out = decode_audio((RATE, samples))
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.0 and out.max() >= 0.2


@pytest.mark.parametrize("source,message", [
    (b"", "not audio"), (b"RIFF\x00\x00\x00\x00WAVEjunk", "not audio"), (b"%PDF-1.4 hello", "not audio"),
    ((RATE, np.zeros(0, np.int16)), r"empty \(0 samples\)"),
    ((RATE, np.array([0.1, np.nan], np.float32)), "NaN"),
    ((RATE, np.zeros((4, 4, 4))), "array of numbers"),
    ((True, np.zeros(10)), "sample rate must be a number"),
])
def test_bad_audio_is_one_message(source, message):
    with pytest.raises(InputError, match=message):
        decode_audio(source)


def test_audio_longer_than_the_limit_is_refused_from_its_header():
    data = _wav(np.zeros(RATE * 4, np.int16), RATE)
    with pytest.raises(InputError, match=r"4.0 s long; this server takes at most 3 s"):
        decode_audio(data, limits=Limits(max_audio_seconds=3))


def test_a_header_that_lies_reads_what_is_there():
    data = _wav(_tone(1.0), RATE)
    out = decode_audio(data[: len(data) // 2])  # the header still claims 1 s
    assert 0 < len(out) < RATE


# ---------------------------------------------------------------------------------------------
# Voice activity and segments


def test_silence_and_quiet_noise_have_no_speech():
    rng = np.random.default_rng(0)
    vad = loop.Vad()
    assert vad.segments(np.zeros(3 * RATE, np.float32)) == []
    assert vad.segments((rng.standard_normal(3 * RATE) * 1e-3).astype(np.float32)) == []


def test_bursts_are_found_where_they_are():
    gap = np.zeros(RATE, np.float32)
    x = np.concatenate([gap, _tone(0.5), gap, _tone(0.8), gap])
    segments = loop.Vad().segments(x)
    assert len(segments) == 2
    (a0, b0), (a1, b1) = segments
    assert abs(a0 - 0.8) < 0.1 and abs(b0 - 1.7) < 0.1 and abs(a1 - 2.3) < 0.1 and abs(b1 - 3.5) < 0.1


def test_long_audio_is_cut_into_pieces_that_fit_the_window():
    parts = []
    for i in range(12):  # 12 bursts of 1.5 s, 0.5 s apart: 23.5 s
        parts += [_tone(1.5, 300 + 40 * i), np.zeros(RATE // 2, np.float32)]
    x = np.concatenate(parts)
    pieces = loop.chunks(x, 6.0, loop.Vad())
    assert pieces and all(b - a <= 6.0 + 1e-6 for a, b in pieces)
    assert pieces[0][0] < 0.1 and pieces[-1][1] > 23.0
    assert all(b0 <= a1 for (_, b0), (a1, _) in zip(pieces, pieces[1:]))  # in order, not overlapping
    syllables = _tone(14.0) * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * np.arange(14 * RATE) / RATE)).astype(np.float32)
    for steady in (_tone(14.0), syllables):  # no pause at all: still cut to fit
        one = loop.chunks(steady, 6.0, loop.Vad())
        assert len(one) >= 3 and all(b - a <= 6.0 + 1e-6 for a, b in one) and one[-1][1] > 13.5


def test_text_round_trip_and_alphabet():
    assert loop.decode_ids(loop.encode_text("go up 7's") + [loop.EOS, 5, 6]) == "go up 7's"
    with pytest.raises(Exception, match="outside the alphabet"):
        loop.encode_text("café")


def test_sentences_of_prose_read_as_written_and_plans_without_them_are_unchanged():
    from pipeline.data import speech as sp

    prose = ("The parser reads a file. Call foo() with x=3 first! It returns 42 items.\n\n"
             "Don't worry, it's fine. One. A very long sentence that keeps going on and on with word after word "
             "until it is much too long to read. The parser reads a file.")
    assert sp.sentences_of(prose, max_chars=60) == ["the parser reads a file", "don't worry it's fine"]
    assert all(set(t) <= set(loop.ALPHABET) for t in sp.sentences_of(prose, 200))
    voices = ["en", "en-us"]
    assert sp.plan(40, voices, 3, 4) == sp.plan(40, voices, 3, 4, sentences=["a b"], sentence_share=0.0)
    mixed = [t for t, _, _ in sp.plan(400, voices, 3, 4, sentences=["read this aloud"], sentence_share=0.3)]
    assert 0.2 < mixed.count("read this aloud") / len(mixed) < 0.4


def test_the_full_presets_prose_is_held_out_by_document():
    from pipeline.tasks.asr import SENTENCE_CHARS, corpus_sentences

    prose = corpus_sentences(SENTENCE_CHARS)
    assert len(prose["train"]) > 1000 and len(prose["test"]) > 50
    assert not set(prose["train"]) & set(prose["test"])
    assert all(set(t) <= set(loop.ALPHABET) and len(t) <= SENTENCE_CHARS for k in prose for t in prose[k])


def test_ctc_log_likelihood_is_torchs_ctc_loss():
    """The numpy forward algorithm gives torch's CTC loss (negated) for hypotheses with repeats, one
    character and none, and -inf where the frames cannot hold a hypothesis."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    frames = 17
    logp = torch.log_softmax(torch.from_numpy(rng.standard_normal((frames, len(loop.VOCAB))) * 3), -1)
    hyps = [loop.encode_text(t) for t in ("go", "off", "zero oh", "a", "")]
    got = loop.ctc_log_likelihood(logp.numpy(), hyps)
    for h, value in zip(hyps, got):
        want = -F.ctc_loss(logp[:, None], torch.tensor([h or [0]])[:, :len(h)], torch.tensor([frames]),
                           torch.tensor([len(h)]), blank=loop.PAD, reduction="sum")
        assert value == pytest.approx(float(want), rel=1e-9, abs=1e-9)
    too_long = loop.encode_text("aaaaaaaaa")  # 9 repeats need 17 frames: fits; 10 do not
    assert np.isfinite(loop.ctc_log_likelihood(logp.numpy(), [too_long])[0])
    assert loop.ctc_log_likelihood(logp.numpy(), [too_long + too_long[:1]])[0] == -np.inf


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    a, b = loop.encode_text("ab")
    frames = [loop.PAD, a, a, loop.PAD, a, b, b, loop.PAD]
    logp = np.full((len(frames), len(loop.VOCAB)), -9.0)
    logp[np.arange(len(frames)), frames] = 0.0
    assert loop.ctc_greedy(logp) == [a, a, b]


# ---------------------------------------------------------------------------------------------
# The loops over the smoke bundle


@pytest.fixture(scope="module")
def asr_bundle(smoke_bundles):
    return smoke_bundles("asr")


def _examples(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    return [bundle / n for n in manifest["examples"] if n.endswith(".wav")]


def test_beam_search_of_width_one_is_greedy_and_wider_beams_run(asr_bundle):
    from serve.runtime import Bundle

    b = Bundle.open(asr_bundle)
    spec = loop.CacheSpec(**b.info["cache"])
    waves = [decode_audio(p.read_bytes()) for p in _examples(asr_bundle)[:4]]
    runners = b.runners("fp32")
    enc = loop.encode(runners, waves)
    greedy = loop.greedy(runners, enc, spec, 20).texts
    assert loop.beam_search(runners, enc, spec, loop.Decoding(1, 20)).texts == greedy
    wide = loop.beam_search(runners, enc, spec, loop.Decoding(4, 20)).texts
    assert len(wide) == len(waves) and all(isinstance(t, str) for t in wide)
    # a batch reads each recording as it reads it alone, and the decoder alone (ctc_weight 0) is greedy
    assert [loop.decode_batch(runners, [w], spec, loop.Decoding(1, 20, ctc_weight=0)).texts[0] for w in waves] == greedy
    joint = loop.decode_batch(runners, waves, spec, loop.Decoding(1, 20)).texts
    assert [loop.decode_batch(runners, [w], spec, loop.Decoding(1, 20)).texts[0] for w in waves] == joint


def test_teacher_forced_scores_are_the_loops_own(asr_bundle):
    """A hypothesis scored in one teacher-forced decoder call gets the log-prob the KV-cache loop gave it
    step by step (greedy and beam), and the joint choice is one of the candidates it weighed."""
    from serve.runtime import Bundle

    b = Bundle.open(asr_bundle)
    spec = loop.CacheSpec(**b.info["cache"])
    waves = [decode_audio(p.read_bytes()) for p in _examples(asr_bundle)[:3]]
    runners = b.runners("fp32")
    enc = loop.encode(runners, waves)
    assert enc["ctc_log_probs"].shape[0] == len(waves) and enc["ctc_log_probs"].shape[2] == len(loop.VOCAB)
    for result in (loop.greedy(runners, enc, spec, 20), loop.beam_search(runners, enc, spec, loop.Decoding(3, 20))):
        rows = [r for r, hs in enumerate(result.hypotheses) for _ in hs]
        hyps = [h for hs in result.hypotheses for h, _ in hs]
        loop_scores = [s for hs in result.hypotheses for _, s in hs]
        ended = [len(h) < 19 for h in hyps]  # those that wrote EOS (the rest stopped at max_tokens)
        forced = loop.decoder_log_likelihood(runners, enc, spec, rows, hyps)
        np.testing.assert_allclose(forced[ended], np.array(loop_scores)[ended], rtol=1e-3, atol=1e-3)
        chosen = loop.rescore(runners, enc, spec, result, 0.5, 20).texts
        for r, text in enumerate(chosen):
            frames = enc["states_mask"][r].sum() * (enc["ctc_log_probs"].shape[1] // enc["states_mask"].shape[1])
            pool = {loop.decode_ids(h) for h, _ in result.hypotheses[r]}
            pool.add(loop.decode_ids(loop.ctc_greedy(enc["ctc_log_probs"][r, :frames])))
            assert text in pool
    # a CTC reading longer than the decoder may write is no candidate (its positions would overflow): with room
    # for EOS alone, greedy's reading stands unless the CTC head reads nothing at all
    result = loop.greedy(runners, enc, spec, 20)
    for r, text in enumerate(loop.rescore(runners, enc, spec, result, 0.5, 1).texts):
        assert text in (result.texts[r], "")


def test_silence_gives_an_empty_transcript_and_a_note(asr_bundle):
    from serve.runtime import Bundle

    b = Bundle.open(asr_bundle)
    t = loop.transcribe(b.runners("fp32"), np.zeros(2 * RATE, np.float32), loop.CacheSpec(**b.info["cache"]),
                        loop.Decoding(), loop.Limits(b.info["window"]))
    assert t.text == "" and t.segments == [] and t.note == "no speech heard"


def test_model_card_snippet_transcribes_a_wav_file(asr_bundle, tmp_path, monkeypatch):
    """The MODEL_CARD's snippet, as written, transcribes a 16 kHz WAV with onnxruntime and numpy alone, and
    writes what the served loop writes for the same audio."""
    from serve.runtime import Bundle

    snippet = (asr_bundle / "MODEL_CARD.md").read_text().split("```python\n")[1].split("```")[0]
    example = _examples(asr_bundle)[0]
    for name in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(asr_bundle / name, tmp_path / name)
    shutil.copy(example, tmp_path / "speech.wav")
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(snippet, {"print": lambda *a: printed.append(a)})  # noqa: S102 - the documented snippet itself
    b = Bundle.open(asr_bundle)
    with wavfile.open(str(example)) as f:
        audio = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
    expected = loop.decode_batch(b.runners("fp32"), [audio], loop.CacheSpec(**b.info["cache"]),  # the decoder alone
                                 loop.Decoding(1, b.inference["max_tokens"], ctc_weight=0)).texts[0]
    assert len(printed) == 1 and " ".join(printed[0][0].split()) == expected


# ---------------------------------------------------------------------------------------------
# The app


@pytest.fixture(scope="module")
def asr_app(asr_bundle, tmp_path_factory):
    from tests.serve.conftest import served

    with served([asr_bundle], tmp_path_factory, max_file_size="5mb") as (url, root):
        yield url, root / "asr" / asr_bundle.name


def test_transcribe_through_the_api(asr_app, tmp_path):
    from gradio_client import Client, handle_file

    url, bundle = asr_app
    client = Client(url, verbose=False)
    example = _examples(bundle)[0]
    text, segments, status = client.predict(audio=handle_file(str(example)), beam=1, variant="fp32",
                                            api_name="/transcribe")
    assert "real-time factor" in status and "fp32" in status
    assert isinstance(text, str) and text
    stereo = tmp_path / "stereo48k.wav"
    x = decode_audio(example.read_bytes())
    from serve.inputs import resample

    y = resample(x, RATE, 48000)
    stereo.write_bytes(_wav(np.stack([y, y], axis=1), 48000))
    again = client.predict(audio=handle_file(str(stereo)), beam=1, variant="fp32", api_name="/transcribe")
    assert "real-time factor" in again[2]
    (tmp_path / "silence.wav").write_bytes(_wav(np.zeros(RATE * 2, np.int16), RATE))
    quiet = client.predict(audio=handle_file(str(tmp_path / "silence.wav")), beam=1, variant="served",
                           api_name="/transcribe")
    assert quiet[0] == "(no speech heard)" and quiet[1]["data"] == []


@pytest.mark.parametrize("content,message", [(b"not audio at all", "not audio this app can read"),
                                             (b"", "not audio this app can read")])
def test_bad_uploads_are_one_message(asr_app, tmp_path, content, message):
    from gradio_client import Client, handle_file

    (tmp_path / "bad.wav").write_bytes(content)
    client = Client(asr_app[0], verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(audio=handle_file(str(tmp_path / "bad.wav")), beam=1, variant="served", api_name="/transcribe")
    with pytest.raises(Exception, match="beam must be between 1 and 8"):
        client.predict(audio=handle_file(str(_examples(asr_app[1])[0])), beam=99, variant="served",
                       api_name="/transcribe")


# ---------------------------------------------------------------------------------------------
# Chromium: an upload and the microphone


def _speech_page(extra_args=()):
    from tests.serve.test_browser import ARGS, chromium_page

    return chromium_page(args=[*ARGS, *extra_args])


def _transcribed(page) -> tuple[str, str]:
    page.wait_for_function("() => { const t = document.querySelector('#asr-status textarea'); "
                           "return t && t.value.includes('real-time factor'); }", timeout=60_000)
    return page.input_value("#asr-text textarea"), page.input_value("#asr-status textarea")


def test_upload_a_wav_in_chromium_and_read_the_transcript(asr_app, tmp_path):
    from gradio_client import Client, handle_file

    url, bundle = asr_app
    example = _examples(bundle)[0]
    expected = Client(url, verbose=False).predict(audio=handle_file(str(example)), beam=1, variant="served",
                                                  api_name="/transcribe")[0]
    with _speech_page() as page:
        page.goto(url)
        page.set_input_files("#asr-audio input[type=file]", str(example))
        page.wait_for_timeout(1500)
        page.click("#asr-go")
        text, status = _transcribed(page)
        page.screenshot(path=str(tmp_path / "speech-upload.png"))
    assert text == expected and "s of audio" in status


def test_speak_through_the_microphone_in_chromium(asr_app, tmp_path):
    """Chromium's fake microphone plays a held-out recording; the tab records it, and when the recording
    stops the transcript and its speed appear."""
    url, bundle = asr_app
    example = _examples(bundle)[0]
    with _speech_page(["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-audio-capture={example}"]) as page:
        page.goto(url)
        page.click("#asr-audio button[aria-label='Record audio']")
        page.click("#asr-audio .record-button", timeout=15_000)
        page.wait_for_timeout(3000)
        page.click("#asr-audio .stop-button", timeout=15_000)
        text, status = _transcribed(page)
        page.screenshot(path=str(tmp_path / "speech-microphone.png"))
    seconds = float(status.split(" s of audio")[0])
    assert 1.5 < seconds < 10 and text
