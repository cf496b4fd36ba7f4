"""serve.inputs: the one door for images. Every mode gives one answer, size is refused from the
header, and no byte string gets anything out but an array or one InputError."""
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serve.inputs import LIMITS, InputError, decode_data_url, decode_image, image_size

DIGIT = np.full((40, 30), 255, np.uint8)
DIGIT[10:30, 12:18] = 0  # a stroke of ink
DIGIT[5, 5] = 128
RGB = np.repeat(DIGIT[..., None], 3, -1)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


L = Image.fromarray(DIGIT)
SAME_PICTURE = {  # the one drawing stored every way people store it
    "L": (L, "PNG"), "P": (L.convert("P"), "PNG"), "RGB": (L.convert("RGB"), "JPEG"),
    "RGBA": (L.convert("RGBA"), "PNG"), "LA": (L.convert("LA"), "PNG"), "CMYK": (L.convert("CMYK"), "TIFF"),
    "I;16 (full range)": (Image.fromarray(DIGIT.astype(np.uint16) * 257), "PNG"),
    "I;16 (Pillow's convert)": (L.convert("I;16"), "PNG"), "I": (L.convert("I"), "TIFF"),
    "F": (L.convert("F"), "TIFF"), "F (0..1)": (Image.fromarray(DIGIT.astype(np.float32) / 255), "TIFF"),
    "YCbCr": (L.convert("RGB").convert("YCbCr"), "JPEG"),
}


@pytest.mark.parametrize("name", list(SAME_PICTURE))
def test_every_mode_gives_one_answer(name):
    im, fmt = SAME_PICTURE[name]
    out = decode_image(encode(im, fmt, **({"quality": 100, "subsampling": 0} if fmt == "JPEG" else {})))
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    tolerance = 8 if fmt == "JPEG" else 0
    assert np.abs(out.astype(int) - RGB).max() <= tolerance


def test_one_bit_images_are_black_and_white():
    out = decode_image(encode(L.convert("1", dither=Image.Dither.NONE)))
    assert set(np.unique(out)) == {0, 255} and (out[15, 15] == 0).all() and (out[0, 0] == 255).all()


@pytest.mark.parametrize("make", [
    lambda: Image.fromarray(np.dstack([np.zeros((40, 30, 3), np.uint8), 255 - DIGIT])),  # RGBA: ink opaque
    lambda: Image.fromarray(np.dstack([np.zeros((40, 30), np.uint8), 255 - DIGIT])),  # LA
    lambda: _with_transparent_white(L.convert("P")),  # palette with a transparent index
], ids=["RGBA", "LA", "P+transparency"])
def test_transparency_is_laid_on_white(make):
    out = decode_image(encode(make()))
    assert (out[0, 0] == 255).all() and (out[15, 15] == 0).all()


def _with_transparent_white(im: Image.Image) -> Image.Image:
    im.info["transparency"] = im.getpixel((0, 0))
    return im


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: "rotate 90 CW to view"
    out = decode_image(encode(L.convert("RGB"), "JPEG", exif=exif.tobytes()))
    assert out.shape == (30, 40, 3)


def test_size_is_refused_from_the_header_before_decoding(monkeypatch, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (10000, 10000), 255).save(path)  # 120 KB on disk, 300 MB decoded as RGB
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    for call in (decode_image, image_size):
        with pytest.raises(InputError, match="10000x10000 pixels; the largest side may be 4096"):
            call(path)


def test_the_limit_is_one_setting(monkeypatch):
    monkeypatch.setattr(LIMITS, "max_side", 32)
    with pytest.raises(InputError, match="largest side may be 32"):
        decode_image(encode(L))


@pytest.mark.parametrize("data, match", [
    (b"", "not an image"), (b"plain text, not a picture", "not an image"),
    (encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)))[:20000], "damaged"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 10 10 moveto 90 90 lineto stroke\n%%EOF\n",
     r"^EPS \(PostScript\) files are not supported; save the image as PNG or JPEG$"),
])
def test_unusable_bytes(data, match):
    with pytest.raises(InputError, match=match):
        decode_image(data)
    if match != "damaged":  # the upload check says the same from the header (a cut file's header reads fine)
        with pytest.raises(InputError, match=match):
            image_size(data)


def test_paths_and_odd_sources(tmp_path):
    (tmp_path / "d.png").write_bytes(encode(L))
    assert decode_image(tmp_path / "d.png").shape == RGB.shape
    assert decode_image(str(tmp_path / "d.png")).shape == RGB.shape
    with pytest.raises(InputError, match="no such file"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="no such file"):
        decode_image(tmp_path)  # a folder
    with pytest.raises(InputError, match="expected an image file"):
        decode_image(12)  # type: ignore[arg-type]


def test_data_urls():
    import base64

    assert decode_data_url("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    for bad in ("data:image/png,abc", "http://x/y.png", "data:image/png;base64,@@@"):
        with pytest.raises(InputError):
            decode_data_url(bad)
    # just over the limit: the two sizes differ where a rounded "16 MB; at most 16 MB" did not
    over = "data:image/png;base64," + "A" * (LIMITS.max_data_url + (1 << 19))
    with pytest.raises(InputError, match=r"^the inline file is 16\.5 MB of text; at most 16\.0 MB"):
        decode_data_url(over)


# -- properties: whatever the bytes, an array of the right shape or one InputError ---------------

MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"]
WRITES = {"PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16"}, "TIFF": set(MODES) - {"YCbCr"},
          "BMP": {"1", "L", "P", "RGB"}, "GIF": {"L", "P"}, "JPEG": {"L", "RGB", "CMYK", "YCbCr"},
          "WEBP": {"RGB", "RGBA"}}


@st.composite
def stored_images(draw):
    fmt = draw(st.sampled_from(sorted(WRITES)))
    mode = draw(st.sampled_from(sorted(WRITES[fmt])))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    if mode in ("I;16", "I", "F"):
        im = Image.fromarray((pixels[..., 0].astype(np.uint16) * draw(st.sampled_from([1, 257]))))
        im = im if mode == "I;16" else im.convert(mode)
    else:
        im = im.convert(mode)
    return encode(im, fmt), (h, w)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored_images(), st.one_of(st.none(), st.floats(0, 1)))
def test_any_image_any_truncation(image, cut):
    data, (h, w) = image
    if cut is not None:
        data = data[: int(len(data) * cut)]
    try:
        out = decode_image(data)
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    if cut is None:
        assert out.shape[:2] == (h, w)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00",
                                                 b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBPVP8 "]))
def test_any_bytes(noise, magic):
    try:
        out = decode_image(magic + noise)
    except InputError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3


def test_the_pixel_budget_lets_small_images_share_and_large_ones_wait(monkeypatch):
    import threading
    import time

    from serve.inputs import BUDGET, Picture, decoded

    monkeypatch.setattr(LIMITS, "pixels_at_once", 1000)
    small, large = Picture(encode(L), 30, 40), Picture(encode(L), 30, 40)  # 1,200 pixels: over the budget
    order = []

    def run(name, picture, hold):
        with decoded([picture]) as (image,):
            order.append((name, "in", BUDGET.used))
            time.sleep(hold)
            assert image.shape == (40, 30, 3)
        order.append((name, "out"))

    first = threading.Thread(target=run, args=("first", large, 0.3))
    first.start()
    time.sleep(0.05)
    second = threading.Thread(target=run, args=("second", small, 0))
    second.start()
    first.join()
    second.join()
    assert order == [("first", "in", 1200), ("first", "out"), ("second", "in", 1200), ("second", "out")]
    assert BUDGET.used == 0
    monkeypatch.setattr(LIMITS, "wait_seconds", 0.05)
    with decoded([large]):
        errors = []
        t = threading.Thread(target=lambda: errors.append(pytest.raises(InputError, decoded([small]).__enter__)))
        t.start()
        t.join()
        assert "busy" in str(errors[0].value)
    assert BUDGET.used == 0
