"""The classifier's pre-processing inside the graph: a drawing and a scan meet in one view."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.augment import LEVELS, augment
from pipeline.data.drawn import drawn_digits, scanned
from pipeline.data.images import load_digits
from pipeline.tasks.classify import Preprocess

VIEW = Preprocess(1, 24, crop=True).eval()
GLYPH = np.full((60, 40), 255, np.uint8)
GLYPH[5:55, 17:24] = 0  # a "1" with a foot and a flag
GLYPH[48:55, 5:35] = 0
GLYPH[5:12, 8:20] = 0


def view(images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return VIEW(torch.from_numpy(images)).numpy()


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1.0, 4.0), top=st.floats(0, 1), left=st.floats(0, 1), side=st.sampled_from([280, 400]))
def test_the_view_does_not_depend_on_where_or_how_large_it_is_drawn(scale, top, left, side):
    from PIL import Image

    glyph = np.asarray(Image.fromarray(GLYPH).resize((int(40 * scale), int(60 * scale)), Image.Resampling.NEAREST))
    canvas = np.full((side, side), 255, np.uint8)
    y, x = int(top * (side - glyph.shape[0])), int(left * (side - glyph.shape[1]))
    canvas[y : y + glyph.shape[0], x : x + glyph.shape[1]] = glyph
    centred = np.full((280, 280), 255, np.uint8)
    big = np.asarray(Image.fromarray(GLYPH).resize((120, 180), Image.Resampling.NEAREST))
    centred[50:230, 80:200] = big
    a, b = view(canvas[None, :, :, None]), view(centred[None, :, :, None])
    assert np.abs(a - b).mean() < 0.03, "the same drawing, moved and resized, gives the same view"


def test_a_scan_and_its_enlargement_give_the_same_view():
    scans = load_digits().test.images[:64]
    big = np.kron(scans, np.ones((1, 6, 6, 1), np.uint8))
    # the same box (to a fraction of a pixel); what differs is bilinear sampling of 8x8 pixels vs 6x6 blocks
    assert np.abs(view(scans) - view(big)).mean() < 0.06


def test_a_batch_gives_each_image_its_own_crop():
    drawings = drawn_digits(2).images[::3]
    together = view(drawings)
    alone = np.concatenate([view(d[None]) for d in drawings])
    np.testing.assert_allclose(together, alone, atol=1e-6)


@pytest.mark.parametrize("case", ["white", "black", "pixel", "dot", "border", "grey paper", "1x1"])
def test_degenerate_images_give_a_finite_view(case):
    canvas = np.full((2, 280, 280, 3), 255, np.uint8)
    if case == "black":
        canvas[:] = 0
    elif case == "pixel":
        canvas[:, 140, 140] = 0
    elif case == "dot":  # one click of the app's brush (20 pixels)
        yy, xx = np.mgrid[:280, :280]
        canvas[:, (yy - 140) ** 2 + (xx - 140) ** 2 <= 100] = 0
    elif case == "border":
        canvas[:, :, :6] = 0
    elif case == "grey paper":
        canvas[:] = 200
        canvas[:, 100:180, 130:150] = 40
    elif case == "1x1":
        canvas = np.zeros((2, 1, 1, 3), np.uint8)
    v = view(canvas)
    assert v.shape == (2, 1, 24, 24) and np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
    if case == "white":
        assert v.min() == 1.0, "no ink: white paper"
    if case == "dot":
        assert 0.3 < (v < 0.5).mean() < 0.9, "a dot is not blown up to fill the paper edge to edge"
    if case == "grey paper":
        assert v.max() == pytest.approx(1.0) and v.min() < 0.1, "the image's own paper is white"


def test_scanned_drawings_look_like_scans():
    drawings = drawn_digits(3)
    scans = scanned(drawings)
    assert scans.images.shape == (30, 8, 8, 1) and scans.images.dtype == np.uint8
    np.testing.assert_array_equal(scans.labels, drawings.labels)
    levels = np.unique(255 - scans.images.astype(int))
    assert set(levels.tolist()) <= {round(i / 16 * 255) for i in range(17)}, "the scans' 17 grey levels"
    ink_rows = (scans.images[..., 0] < 128).any(2)
    assert ink_rows[:, 0].mean() > 0.8 and ink_rows[:, -1].mean() > 0.8, "the ink fills the height, as scanned"


@pytest.mark.parametrize("level", LEVELS)
def test_augmentation_is_reproducible_and_stays_an_image(level):
    v = torch.from_numpy(view(load_digits().train.images[:32]))
    a = augment(v, torch.Generator().manual_seed(0), level)
    b = augment(v, torch.Generator().manual_seed(0), level)
    assert a.shape == v.shape and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    if level == "none":
        assert a is v
    else:
        assert not torch.equal(a, augment(v, torch.Generator().manual_seed(1), level))
        assert (a < 0.5).float().mean() > 0.03, "the digit is still there"


def _drawing(paper: int = 255) -> np.ndarray:
    """A digit drawn on ``paper`` at 3x and shrunk with Lanczos (bright halos around the strokes)."""
    from PIL import Image, ImageDraw

    big = Image.new("L", (840, 840), paper)
    ImageDraw.Draw(big).line([(300, 150), (560, 150), (380, 690)], fill=0, width=60, joint="curve")  # a 7
    return np.array(big.resize((280, 280), Image.Resampling.LANCZOS))[None, :, :, None]


@pytest.mark.parametrize("paper", [250, 220, 180])
def test_grey_paper_reads_as_paper(paper):
    white, grey = view(_drawing()), view(_drawing(paper))
    assert np.abs(white - grey).mean() < 0.01 and grey.max() == pytest.approx(1.0, abs=1e-3)


def test_a_stray_dot_does_not_move_the_box():
    clean = _drawing()
    dotted = clean.copy()
    dotted[0, 266:274, 6:14] = 0  # an 8-pixel speck in a far corner
    assert np.abs(view(clean) - view(dotted)).mean() < 0.02
