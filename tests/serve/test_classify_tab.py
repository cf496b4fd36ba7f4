import numpy as np
import pytest
from PIL import Image

from serve.runtime import BundleError
from serve.tasks.classify import MAX_SIDE, flatten, from_sketch, read_image


def test_flatten_lays_transparency_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    rgba[1, 1] = [0, 0, 0, 255]  # one opaque black pixel
    out = flatten(rgba)
    assert out.shape == (4, 4, 3) and out[0, 0].tolist() == [255] * 3 and out[1, 1].tolist() == [0] * 3
    assert flatten(np.zeros((3, 5), np.uint8)).shape == (3, 5, 3)


def test_sketch_is_cropped_to_its_ink_and_squared():
    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[100:200, 130:150] = [0, 0, 0, 255]  # a tall stroke: "1"
    out = from_sketch({"composite": canvas, "layers": [], "background": None})
    assert out.shape[0] == out.shape[1] and out.shape[0] < 140
    ink = out.min(-1) < 128
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    assert abs((rows[0] + rows[-1]) / 2 - out.shape[0] / 2) <= 2 and abs((cols[0] + cols[-1]) / 2 - out.shape[1] / 2) <= 2


@pytest.mark.parametrize("value", [None, {"composite": None}, {"composite": np.zeros((50, 50, 4), np.uint8)},
                                   {"composite": np.full((50, 50, 3), 255, np.uint8)}])
def test_empty_sketch(value):
    with pytest.raises(BundleError, match="draw a digit first"):
        from_sketch(value)


def test_read_image_errors(tmp_path):
    (tmp_path / "a.png").write_text("not an image")
    with pytest.raises(BundleError, match="not an image"):
        read_image(tmp_path / "a.png")
    Image.new("L", (MAX_SIDE + 1, 2)).save(tmp_path / "huge.png")
    with pytest.raises(BundleError, match=f"largest side may be {MAX_SIDE}"):
        read_image(tmp_path / "huge.png")
    Image.new("LA", (9, 7)).save(tmp_path / "ok.png")
    assert read_image(tmp_path / "ok.png").shape == (7, 9, 3)
