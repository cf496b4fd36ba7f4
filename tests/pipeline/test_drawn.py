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


def test_the_other_held_out_sets_are_deterministic_balanced_and_apart():
    from pipeline.data.drawn import OTHER_HAND, font_digits, other_hand_digits

    hand, fonts = other_hand_digits(3), font_digits(3)
    assert hand.images.shape == (30, 360, 360, 1) and fonts.images.shape == (30, 200, 200, 1)
    np.testing.assert_array_equal(hand.images, other_hand_digits(3).images)
    np.testing.assert_array_equal(fonts.images, font_digits(3).images)
    for s in (hand, fonts):
        assert np.bincount(s.labels).tolist() == [3] * 10
        share = (s.images[..., 0] < 128).mean(axis=(1, 2))
        assert (share > 0.002).all() and (share < 0.35).all(), "dark ink on mostly white paper"
    assert sorted(OTHER_HAND) == list(range(10))
    assert all(OTHER_HAND[d] != STYLES[d] for d in range(10)), "the second hand is written apart"
