import numpy as np
import pytest
from PIL import Image

from serve.inputs import InputError, decoded


def test_a_sketch_goes_to_the_graph_as_drawn():
    """The graph crops to the ink (as for any app that embeds model.onnx): serve sends the canvas."""
    from serve.tasks.classify import from_sketch

    canvas = np.full((280, 280, 3), 255, np.uint8)
    canvas[100:200, 130:150] = 0  # a tall stroke: "1"
    assert from_sketch({"composite": canvas}) is canvas
    canvas[100:200, 130:150] = 255
    canvas[140, 140] = 0  # a single dot is a drawing too
    assert from_sketch(canvas) is canvas


@pytest.mark.parametrize("value", [None, {"composite": None}, {"composite": np.full((50, 50, 3), 255, np.uint8)}])
def test_empty_sketch(value):
    from serve.tasks.classify import from_sketch

    with pytest.raises(InputError, match="draw a digit first"):
        from_sketch(value)


# -- the Gradio glue: what the components hand the events, and what bad payloads become ---------


@pytest.fixture
def components():
    import gradio as gr

    from serve.tasks.base import choice_input, image_input, sketch_input

    with gr.Blocks():
        sketch = gr.Sketchpad(type="numpy", image_mode="RGBA")
        upload = gr.Image(type="filepath", image_mode=None)
        variant = gr.Radio(["fp32", "int8"], value="fp32")
    sketch_input(sketch, "the sketch could not be read")
    image_input(upload, "not an image")
    choice_input(variant, "variant")
    return sketch, upload, variant


def _file(tmp_path, name: str, im: Image.Image):
    from gradio.data_classes import FileData

    im.save(tmp_path / name)
    return FileData(path=str(tmp_path / name), orig_name=name)


def _gradio_error(fn, *args) -> str:
    import gradio as gr

    with pytest.raises(gr.Error) as e:
        fn(*args)
    return e.value.message


def test_sketch_layers_are_size_checked_and_the_composite_decoded(components, tmp_path, monkeypatch):
    from gradio.components.image_editor import EditorData

    sketch, _, _ = components
    ink = np.zeros((60, 60, 4), np.uint8)
    ink[10:50, 28:32] = [0, 0, 0, 255]
    drawing = _file(tmp_path, "c.png", Image.fromarray(ink))
    value = sketch.preprocess(EditorData(background=None, layers=[drawing], composite=drawing))
    assert set(value) == {"composite"} and (value["composite"].width, value["composite"].height) == (60, 60)
    with decoded([value]) as (value,):
        assert value["composite"].shape == (60, 60, 3)
        assert (value["composite"][0, 0] == 255).all() and (value["composite"][20, 30] == 0).all()
    huge = _file(tmp_path, "huge.png", Image.new("L", (10000, 10000), 255))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    for payload in (EditorData(composite=huge), EditorData(layers=[huge], composite=drawing)):
        assert "largest side may be 4096" in _gradio_error(sketch.preprocess, payload)


@pytest.mark.parametrize("payload", ["abc", [1, 2], 5, {"composite": "x"}, {"composite": {"path": 3}}])
def test_a_sketch_of_the_wrong_shape_is_one_readable_line(components, payload):
    sketch, _, _ = components
    assert _gradio_error(sketch.data_model.model_validate, payload) == "the sketch could not be read"


def test_uploads_are_decoded_by_the_one_function(components, tmp_path):
    from gradio.data_classes import FileData

    _, upload, _ = components
    wide = Image.fromarray((np.full((20, 20), 40000, np.uint16)))  # 16-bit grey
    with decoded([upload.preprocess(_file(tmp_path, "w.png", wide))]) as (out,):
        assert out.dtype == np.uint8 and (out == round(40000 / 257)).all()
    (tmp_path / "t.png").write_text("text")
    assert "not an image" in _gradio_error(upload.preprocess, FileData(path=str(tmp_path / "t.png")))
    assert "base64" in _gradio_error(upload.preprocess, upload.data_model(path=None, url="data:image/png;base64,@@"))


@pytest.mark.parametrize("value", ["bogus", 5, None, ["fp32"]])
def test_an_unknown_variant_is_one_readable_line(components, value):
    _, _, variant = components
    assert variant.preprocess("int8") == "int8"
    message = _gradio_error(variant.preprocess, value)
    assert message.startswith("unknown variant") and "fp32, int8" in message and "type" not in message
