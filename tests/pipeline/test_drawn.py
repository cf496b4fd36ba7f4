"""The drawn-digit set: sketchpad-like drawings, the same for a seed, different across seeds."""
import numpy as np

from pipeline.data.drawn import CANVAS, STYLES, drawn_digits


def test_drawn_digits_are_deterministic_balanced_and_look_drawn():
    a, b = drawn_digits(5), drawn_digits(5)
    assert a.images.shape == (50, CANVAS, CANVAS, 1) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert np.bincount(a.labels).tolist() == [5] * 10
    assert not np.array_equal(drawn_digits(5, seed=1).images, a.images), "another seed, other drawings"
    ink = a.images[..., 0] < 128
    share = ink.mean(axis=(1, 2))
    assert (share > 0.005).all() and (share < 0.35).all(), "thick strokes on mostly white paper"
    assert (a.images[:, 0, 0, 0] == 255).mean() > 0.9
    assert sorted(STYLES) == list(range(10)) and all(len(v) >= 2 for v in STYLES.values())
