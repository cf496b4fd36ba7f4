"""The one door for what people send: every input is checked and decoded here, once, the same way
for the app, the pipeline and anyone embedding the runtime.

- images: uploads, sketch layers and composites, examples, training folders -> :func:`decode_image`
- command lines (``python -m pipeline``, ``python -m serve``) -> :class:`ArgumentParser`
- audio: uploads, microphone recordings, user data folders -> :func:`decode_audio` (mono float32 at
  the model's rate, any channel count, sample format and rate converted here, torch-free)
- numbers and text of every tab -> :func:`number`, :func:`as_text`

Everything that cannot be used is an :class:`InputError` with a message meant for people; nothing
else escapes, whatever the bytes. Sizes are checked from the file's header before any pixel is
decoded, so a small file that would decode to gigabytes is refused at the cost of reading its header.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import math
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from serve.bundle import BundleError

Source = Union[str, Path, bytes, bytearray, memoryview]

NOT_AN_IMAGE = "that file is not an image this app can read (PNG, JPEG, BMP, GIF, WebP, TIFF, ...)"
DAMAGED = "the image file is damaged or truncated; it cannot be decoded"
UNSUPPORTED = {"EPS": "EPS (PostScript)", "PDF": "PDF"}  # Pillow formats whose decoding needs an outside program
# 16- and 32-bit samples (I;16, I, F) are scaled by the range their values use: the nominal range
# of a mode says nothing reliable (Pillow itself converts L to I or I;16 keeping 0..255)
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# what Pillow says of odd files (corrupt EXIF, truncated TIFF tags, ...) becomes an InputError or
# nothing; the limits below, not Pillow's bomb warning, decide what is too large
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class InputError(BundleError):
    """An input that cannot be used (not an image, too large, damaged, empty, the wrong kind)."""


BLANK_RANGE = 24  # grey levels: an image whose pixels all lie within this of each other shows nothing


def is_blank(image: np.ndarray) -> bool:
    """uint8 (H, W, C) of one colour (within BLANK_RANGE, every channel): nothing drawn or photographed on
    it. Checked on a strided view first, so a large image that is not blank costs microseconds."""
    step = max(1, max(image.shape[:2]) // 256)
    for view in (image[::step, ::step], image):
        flat = view.reshape(-1, view.shape[-1])
        if (flat.max(axis=0).astype(int) - flat.min(axis=0)).max() > BLANK_RANGE:
            return False
    return True


def echo(value: Any, limit: int = 40) -> str:
    """A value as an error message shows it: its repr, cut short (a 4,000-digit number is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: Any, name: str, integer: bool = False, lo: float | None = None, hi: float | None = None) -> Any:
    """The one rule for a numeric input of any tab or endpoint: a number (never a boolean), finite, whole
    where ``integer``, within [lo, hi] where given; anything else is an InputError naming ``name`` and
    echoing the value cut short. Whole numbers stay exact however large (the range check follows)."""
    shown = echo(value)
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {shown}")
    if integer and isinstance(value, (int, np.integer)):
        x: Any = int(value)
    else:
        try:
            x = float(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{name} must be a number, got {shown}") from None
        if not math.isfinite(x):
            raise InputError(f"{name} must be a finite number, got {shown}")
        if integer:
            if x != int(x):
                raise InputError(f"{name} must be a whole number, got {shown}")
            x = int(x)
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        bounds = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                  else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
        raise InputError(f"{name} must be {bounds}, got {shown}")
    return x


def as_text(value: Any, name: str) -> str:
    """A text input: a string (None reads as empty); a number, list or object is an InputError."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {type(value).__name__} {echo(value)}")
    return value


@dataclass
class Limits:
    """What one request may send. ``python -m serve --max-side N`` changes the image limit; the
    upload size is Gradio's ``max_file_size`` (``--max-upload``)."""

    max_side: int = 4096  # pixels, the longer side of any image (4096^2 RGB is 50 MB decoded)
    max_layers: int = 16  # images in one sketch value (background, layers, composite)
    max_data_url: int = 16 << 20  # characters of a base64 ``data:`` URL (decoded: 3/4 of it)
    # decoded and in a model across all requests (see PixelBudget): one 2048x2048 image at a time (a larger
    # one alone), hundreds of sketches. Measured on the quick U-Net (benchmarks/serve_memory.py): four
    # 2048x2048 calls sent at once peaked at 2.5-3.9 GB with two let through together, one 2048x2048 call
    # alone at 1.1-2.1 GB, whichever variant
    pixels_at_once: int = 2048 * 2048
    wait_seconds: float = 60.0  # how long a request waits for that budget before it is refused
    max_audio_seconds: float = 300.0  # the longest audio one request may send (checked from the header)


LIMITS = Limits()


class PixelBudget:
    """How many image pixels are decoded or in a model at once, across every request: a large image
    costs a few hundred MB while it is decoded and run, so eight at once would need gigabytes. A
    request waits until its pixels fit (one larger than the whole budget runs alone); small ones
    (a 280x280 sketch is 78,400 pixels) pass by the hundred."""

    def __init__(self, limits: Limits):
        self.limits, self.used = limits, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: self.used == 0 or self.used + pixels <= self.limits.pixels_at_once,
                                       timeout=self.limits.wait_seconds):
                raise InputError("the server is busy with other large images; try again in a moment")
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()


BUDGET = PixelBudget(LIMITS)


@dataclass(frozen=True)
class Picture:
    """An image whose header has been checked (readable, within the size limit) and whose pixels are
    not decoded yet: decoding waits for :data:`BUDGET` (see :func:`decoded`)."""

    source: Any  # a path or the file's bytes
    width: int
    height: int

    @classmethod
    def of(cls, source: Source) -> "Picture":
        w, h = image_size(source)
        return cls(bytes(source) if isinstance(source, (bytearray, memoryview)) else source, w, h)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def decode(self) -> np.ndarray:
        return decode_image(self.source)


@contextmanager
def decoded(values: Sequence[Any]) -> Iterator[list[Any]]:
    """``values`` with every :class:`Picture` (also inside dicts and lists) decoded to uint8 (H, W, 3),
    holding the pixel budget until the block ends (the model has run)."""
    pictures: list[Picture] = []
    _each_picture(values, lambda p: pictures.append(p) or p)  # first the pixels, then the budget, then decode
    if not pictures:
        yield list(values)
        return
    with BUDGET.hold(sum(p.pixels for p in pictures)):
        yield _each_picture(values, Picture.decode)


def _each_picture(value: Any, fn: Any) -> Any:
    """``value`` with ``fn`` applied to every Picture in it (dicts, lists and tuples walked)."""
    if isinstance(value, Picture):
        return fn(value)
    if isinstance(value, dict):
        return {k: _each_picture(x, fn) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_each_picture(x, fn) for x in value)
    return value


def image_size(source: Source, limits: Limits | None = None) -> tuple[int, int]:
    """(width, height) read from the header alone, within the limits; anything else is an InputError."""
    limits = limits or LIMITS
    with _open(source, limits) as im:
        return _check_size(im, limits)


def decode_image(source: Source, limits: Limits | None = None) -> np.ndarray:
    """An image file (a path or its bytes) as uint8 (H, W, 3): the first frame, turned upright as its
    EXIF says, every mode to RGB (1, L, P, LA, RGBA, CMYK, YCbCr, I;16, I, F, ...) and transparency
    laid on white paper. Too large (checked before decoding), unreadable, damaged: an InputError."""
    limits = limits or LIMITS
    with _open(source, limits) as im:
        _check_size(im, limits)
        try:
            im.seek(0)
            im.load()
        except MemoryError:
            raise InputError("the image is too large to decode on this server") from None
        except Exception:  # noqa: BLE001 - every way a hostile or broken file fails means the same to a person
            raise InputError(DAMAGED) from None
        try:
            if im.getexif().get(0x0112, 1) != 1:  # stored rotated or mirrored (transposing copies)
                im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken orientation tag: the pixels as stored
            pass
        try:
            return _to_rgb(im)
        except InputError:
            raise
        except MemoryError:
            raise InputError("the image is too large to decode on this server") from None
        except Exception:  # noqa: BLE001 - every way a hostile or broken file fails means the same to a person
            raise InputError(DAMAGED) from None


def decode_data_url(url: str, limits: Limits | None = None) -> bytes:
    """The bytes of a ``data:<type>;base64,<data>`` URL (how some clients send files inline)."""
    limits = limits or LIMITS
    if len(url) > limits.max_data_url:
        raise InputError(f"the inline file is {len(url) / (1 << 20):.1f} MB of text; at most "
                         f"{limits.max_data_url / (1 << 20):.1f} MB (upload larger files instead)")
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise InputError("an inline file must be a base64 data: URL")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the inline file is not valid base64") from None


# ---------------------------------------------------------------------------------------------


@contextmanager
def _open(source: Source, limits: Limits) -> Iterator[Any]:
    """``Image.open`` (header only) of a path or bytes, with every failure an InputError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise InputError(f"no such file: {Path(source).name}")
    else:
        raise InputError(f"expected an image file, got {type(source).__name__}")
    try:
        im = Image.open(source)
    except Image.DecompressionBombError:
        raise InputError(f"the image is far larger than {limits.max_side} pixels a side") from None
    except Exception:  # noqa: BLE001 - not an image, or a header parser tripping over hostile bytes
        raise InputError(NOT_AN_IMAGE) from None
    with im:
        if im.format in UNSUPPORTED:  # Pillow reads their header, but decoding needs a program (Ghostscript)
            raise InputError(f"{UNSUPPORTED[im.format]} files are not supported; save the image as PNG or JPEG")
        yield im


def _check_size(im: Any, limits: Limits) -> tuple[int, int]:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError(f"the image is {w}x{h} pixels: empty")
    if max(w, h) > limits.max_side:
        raise InputError(f"the image is {w}x{h} pixels; the largest side may be {limits.max_side}")
    return w, h


def _to_rgb(im: Any) -> np.ndarray:
    if im.mode in _WIDE_MODES:
        return _wide_to_rgb(np.asarray(im, dtype=np.float64), im.mode == "F")
    if im.mode == "1":
        im = im.convert("L")
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info or im.mode in ("P", "PA"):
        im = im if im.mode == "RGBA" else im.convert("RGBA")  # (converting to the same mode copies)
        paper = Image.new("RGB", im.size, (255, 255, 255))
        paper.paste(im, mask=im.getchannel("A"))  # colour * alpha + white * (1 - alpha), in place
        im = paper
    try:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    except ValueError:
        raise InputError(f"images in colour mode {im.mode} are not supported; save it as RGB or greyscale") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _wide_to_rgb(a: np.ndarray, is_float: bool) -> np.ndarray:
    """16/32-bit integer or float samples (H, W) -> uint8 (H, W, 3), scaled by the range in use:
    [0, 1] (float), [0, 255], [0, 65535], or the data's own maximum beyond that."""
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(a.max()) if a.size else 0.0
    if is_float and top <= 1.0:
        scale = 1.0 / 255.0
    elif top <= 255.0:
        scale = 1.0
    elif top <= 65535.0:
        scale = 257.0
    else:
        scale = top / 255.0
    grey = np.clip(np.round(a / scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error:`` line (exit 2), like every other bad input;
    ``--help`` still shows the usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# Audio

NOT_AUDIO = "that file is not audio this app can read (WAV, FLAC, OGG, MP3)"
AUDIO_DAMAGED = "the audio file is damaged or truncated; it cannot be decoded"


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """float32 (L,) from ``rate`` to ``target`` Hz: soxr (high quality) where installed, else scipy's
    polyphase filter."""
    if rate == target or not len(wave):
        return wave.astype(np.float32, copy=False)
    try:
        import soxr

        return soxr.resample(wave.astype(np.float32, copy=False), rate, target).astype(np.float32, copy=False)
    except ImportError:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(target))
        return resample_poly(wave, target // g, rate // g).astype(np.float32)


def _as_float(samples: np.ndarray) -> np.ndarray:
    """Any sample format -> float32 in [-1, 1]: integers by their type's range (uint8 centred on 128),
    floats as they are, clipped."""
    a = np.asarray(samples)
    if a.dtype.kind == "u":
        half = float(np.iinfo(a.dtype).max + 1) / 2
        return ((a.astype(np.float64) - half) / half).astype(np.float32)
    if a.dtype.kind == "i":
        return (a.astype(np.float64) / float(-np.iinfo(a.dtype).min)).astype(np.float32)
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise InputError("the audio holds NaN or infinite samples; it cannot be transcribed")
        return np.clip(a, -1.0, 1.0)
    raise InputError(f"audio samples of type {a.dtype} are not supported")


def decode_audio(source: Any, rate: int = 16000, limits: Limits | None = None) -> np.ndarray:
    """Audio as mono float32 (L,) at ``rate`` Hz: a file (a path or its bytes: WAV, FLAC, OGG, MP3 by
    libsndfile) or Gradio's ``(sample rate, samples)`` pair, samples (L,) or (L, channels) of any
    integer or float type. Channels are averaged, the rate converted (:func:`resample`). Too long
    (checked from the header), not audio, damaged, NaN samples: an InputError; 0 samples is an
    InputError too (silence is not: that is for the model to hear)."""
    limits = limits or LIMITS
    if isinstance(source, tuple) and len(source) == 2:
        sr, samples = source
        sr = number(sr, "sample rate", integer=True, lo=1000, hi=384000)
        samples = np.asarray(samples)
        if samples.ndim not in (1, 2) or samples.dtype.kind not in "uif":
            raise InputError(f"audio samples must be a (samples,) or (samples, channels) array of numbers, "
                             f"got {samples.dtype} {samples.shape}")
        _check_duration(samples.shape[0], sr, limits)
        wave = _as_float(samples)
    else:
        wave, sr = _read_file(source, limits)
    if wave.ndim == 2:
        wave = wave.mean(axis=1, dtype=np.float32)
    if not len(wave):
        raise InputError("the audio is empty (0 samples)")
    return resample(wave, int(sr), rate)


def _check_duration(frames: int, rate: int, limits: Limits) -> None:
    if frames > limits.max_audio_seconds * rate:
        raise InputError(f"the audio is {frames / rate:.1f} s long; this server takes at most "
                         f"{limits.max_audio_seconds:g} s")


def _read_file(source: Source, limits: Limits) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with sf.SoundFile(data) as f:
            _check_duration(f.frames, f.samplerate, limits)
            subtype = f.subtype or ""
            dtype = "int16" if subtype in ("PCM_16", "PCM_S8", "PCM_U8") else "float32"
            samples, sr = f.read(dtype=dtype, always_2d=True), f.samplerate
    except InputError:
        raise
    except (FileNotFoundError, IsADirectoryError):
        raise InputError("the audio file was not found") from None
    except MemoryError:
        raise InputError("the audio is too large to decode on this server") from None
    except sf.LibsndfileError as e:
        text = str(e).lower()
        raise InputError(AUDIO_DAMAGED if "unexpected end" in text or "truncat" in text else NOT_AUDIO) from None
    except Exception:  # noqa: BLE001 - every way a hostile or broken file fails means the same to a person
        raise InputError(AUDIO_DAMAGED) from None
    return _as_float(samples), int(sr)
