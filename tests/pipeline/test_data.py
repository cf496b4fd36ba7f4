import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import load_digits, load_image_folder, stratified_split
from pipeline.errors import PipelineError


def test_digits_split_is_fixed_disjoint_and_stratified():
    a, b = load_digits(), load_digits()
    assert (len(a.train), len(a.val), len(a.test)) == (1259, 179, 359)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert a.train.images.dtype == np.uint8 and a.train.images.shape[1:] == (8, 8, 1)
    idx = stratified_split(np.repeat(np.arange(10), 100), (0.1, 0.2), 0)
    assert sum(len(i) for i in idx) == 1000 and len(np.intersect1d(idx[0], idx[2])) == 0
    assert np.bincount(np.repeat(np.arange(10), 100)[idx[2]]).tolist() == [20] * 10
    # ink is dark on white paper: corners are background
    assert a.train.images[:, 0, 0, 0].mean() > 200


def _folder(root, classes=("cat", "dog"), n=10, size=12, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode).save(root / c / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    data = load_image_folder(_folder(tmp_path / "imgs"), channels=3, size=16)
    assert data.class_names == ["cat", "dog"]
    assert data.train.images.shape[1:] == (16, 16, 3)
    assert len(data.train) + len(data.val) + len(data.test) == 20


def test_image_folder_with_given_splits(tmp_path):
    _folder(tmp_path / "d" / "train")
    _folder(tmp_path / "d" / "test", n=3)
    data = load_image_folder(tmp_path / "d", channels=1, size=8)
    assert len(data.test) == 6 and data.train.images.shape[-1] == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(PipelineError, match="image folder not found"):
        load_image_folder(tmp_path / "nope", 1, 8)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(PipelineError, match="has no images"):
        load_image_folder(tmp_path / "empty", 1, 8)
    root = _folder(tmp_path / "txt")
    (root / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(PipelineError, match=r"not an image file.*notes.txt"):
        load_image_folder(root, 1, 8)
    root = _folder(tmp_path / "bad")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(PipelineError, match=r"broken.png: that file is not an image"):
        load_image_folder(root, 1, 8)
    Image.new("L", (5000, 8)).save(root / "dog" / "broken.png")
    with pytest.raises(PipelineError, match=r"broken.png: the image is 5000x8 pixels; the largest side may be 4096"):
        load_image_folder(root, 1, 8)


def test_an_empty_class_folder_is_refused(tmp_path):
    root = _folder(tmp_path / "f")
    (root / "bird").mkdir()
    with pytest.raises(PipelineError, match=r"class folder .*bird has no images"):
        load_image_folder(root, 1, 8)


def test_one_class_is_not_a_classification(tmp_path):
    with pytest.raises(PipelineError, match="one class folder.*'cat'.*at least two"):
        load_image_folder(_folder(tmp_path / "one", classes=("cat",)), 1, 8)


def test_folders_read_every_mode_as_the_app_does(tmp_path):
    """16-bit scans and drawings on a transparent background train as the app sees them (one decoder)."""
    from serve.inputs import decode_image

    ink = np.full((12, 12), 255, np.uint8)
    ink[2:10, 5:7] = 0
    stored = {"grey8": Image.fromarray(ink), "grey16": Image.fromarray(ink.astype(np.uint16) * 257),
              "transparent": Image.fromarray(np.dstack([np.zeros((12, 12, 3), np.uint8), 255 - ink]))}
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for name, im in stored.items():
            for i in range(4):
                im.save(tmp_path / "f" / c / f"{name}{i}.png")
    data = load_image_folder(tmp_path / "f", channels=1, size=12)
    everything = np.concatenate([data.train.images, data.val.images, data.test.images])
    assert (everything == ink[..., None]).all()
    assert (decode_image(tmp_path / "f" / "a" / "transparent0.png")[..., 0] == ink).all()
