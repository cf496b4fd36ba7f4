"""The app's endpoints through gradio_client, with held-out digits and bad input."""
import os

import numpy as np
import pytest

from serve.runtime import Bundle
from PIL import Image

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
from gradio_client import Client, handle_file  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_a_16_bit_or_transparent_copy_gets_the_same_answer(client, served_bundle, tmp_path):
    import json

    manifest = json.loads((served_bundle / "manifest.json").read_text())
    for name in manifest["examples"][:6]:
        grey = np.asarray(Image.open(served_bundle / name).convert("L"))
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
        Image.fromarray(np.dstack([np.zeros(grey.shape + (3,), np.uint8), 255 - grey])).save(tmp_path / "rgba.png")
        answers = [client.predict(handle_file(str(p)), "fp32", api_name="/classify")[0]
                   for p in (served_bundle / name, tmp_path / "16.png", tmp_path / "rgba.png")]
        assert answers[0]["label"] == answers[1]["label"] == answers[2]["label"]
        assert answers[0]["confidences"][0]["confidence"] == pytest.approx(answers[1]["confidences"][0]["confidence"],
                                                                        abs=1e-4)


def test_held_out_digits_get_their_labels(client, served_bundle):
    import json

    manifest = json.loads((served_bundle / "manifest.json").read_text())
    right = 0
    for name in manifest["examples"]:
        result, latency = client.predict(handle_file(str(served_bundle / name)), "fp32", api_name="/classify")
        right += result["label"] == name.split("/")[1].split("_")[0]
        assert "ms in the model" in latency and "CPUExecutionProvider" in latency
    assert right >= 0.85 * len(manifest["examples"]), f"{right}/{len(manifest['examples'])}"


def test_every_variant_answers(client, served_bundle):
    import json

    manifest = json.loads((served_bundle / "manifest.json").read_text())
    example = handle_file(str(served_bundle / manifest["examples"][0]))
    for variant, entry in manifest["variants"].items():
        if entry["status"] == "accepted":
            result, _ = client.predict(example, variant, api_name="/classify")
            assert result["label"] in manifest["info"]["labels"]


def _fails(client, *args, api_name, match):
    with pytest.raises(Exception) as e:
        client.predict(*args, api_name=api_name)
    assert match in str(e.value), str(e.value)[:500]


def test_bad_input_is_a_readable_message_and_serving_goes_on(client, app_url, served_bundle, tmp_path):
    (tmp_path / "notes.png").write_text("definitely not a picture")
    _fails(client, handle_file(str(tmp_path / "notes.png")), "fp32", api_name="/classify", match="not an image")
    Image.new("L", (5000, 40), 255).save(tmp_path / "wide.png")
    _fails(client, handle_file(str(tmp_path / "wide.png")), "fp32", api_name="/classify", match="largest side may be 4096")
    _fails(client, {"background": None, "layers": [], "composite": None}, "fp32", api_name="/classify_sketch",
           match="draw a digit first")
    blank = tmp_path / "blank.png"
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(blank)
    _fails(client, {"background": None, "layers": [], "composite": handle_file(str(blank))}, "fp32",
           api_name="/classify_sketch", match="draw a digit first")
    huge = tmp_path / "huge.png"  # 120 KB that would decode to 300 MB: refused from its header
    Image.new("L", (10000, 10000), 255).save(huge)
    for value in ({"background": None, "layers": [], "composite": handle_file(str(huge))},
                  {"background": handle_file(str(huge)), "layers": [], "composite": handle_file(str(blank))}):
        _fails(client, value, "fp32", api_name="/classify_sketch", match="the image is 10000x10000 pixels; the "
               "largest side may be 4096")
    for value in ("abc", [1, 2], 5, {"composite": "x"}):  # not a sketch at all
        _fails(client, value, "fp32", api_name="/classify_sketch", match="the sketch could not be read")
    _fails(client, handle_file(str(blank)), "bogus", api_name="/classify",
           match="unknown variant 'bogus'; choose one of fp32")
    big = tmp_path / "big.png"  # over the 2 MB upload limit the test server was started with
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)).save(big)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 2097152 bytes"):
        client.predict(handle_file(str(big)), "fp32", api_name="/classify")
    import httpx  # the server refuses it too, whatever the client

    r = httpx.post(app_url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    assert r.status_code == 413, r.text[:200]
    # degenerate drawings and a fully transparent upload: an answer or a readable message, never a crash
    for name, pixels in (("dot", np.zeros((280, 280, 4), np.uint8)), ("border", np.zeros((280, 280, 4), np.uint8))):
        if name == "dot":
            pixels[140, 140] = [0, 0, 0, 255]
        if name == "border":
            pixels[:, :6] = [0, 0, 0, 255]
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        value = {"background": None, "layers": [], "composite": handle_file(str(tmp_path / f"{name}.png"))}
        result, _ = client.predict(value, "fp32", api_name="/classify_sketch")
        assert_same_answer(result, served_bundle, tmp_path / f"{name}.png")
    # blank uploads are said to be blank, as an empty sketch is: transparent (white paper), white, black, grey
    Image.fromarray(np.full((280, 280, 4), [0, 0, 0, 255], np.uint8)).save(tmp_path / "black.png")
    Image.new("RGB", (4096, 4096), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("L", (300, 200), 128).save(tmp_path / "grey.png")
    for path in (blank, tmp_path / "black.png", tmp_path / "white.png", tmp_path / "grey.png"):
        _fails(client, handle_file(str(path)), "fp32", api_name="/classify", match="the image is blank")
    Image.new("L", (1, 1), 0).save(tmp_path / "tiny.png")  # the graph's size limits, in the upload check's words
    _fails(client, handle_file(str(tmp_path / "tiny.png")), "fp32", api_name="/classify",
           match="the image is 1x1 pixels; each side must be between 8 and 4096")
    # the server still answers
    ink = np.full((280, 280, 4), 0, np.uint8)
    ink[60:220, 130:150] = [0, 0, 0, 255]
    Image.fromarray(ink).save(tmp_path / "one.png")
    result, _ = client.predict({"background": None, "layers": [], "composite": handle_file(str(tmp_path / "one.png"))},
                               "fp32", api_name="/classify_sketch")
    assert_same_answer(result, served_bundle, tmp_path / "one.png")


def test_named_parameters_and_malformed_requests_are_messages(client, app_url, served_bundle):
    """gradio_client keyword calls work; over plain HTTP, a request that Gradio itself cannot process (a
    file never uploaded, too few values) is one readable message, never {"error": null}."""
    import json

    from tests.conftest import http_call

    example = served_bundle / json.loads((served_bundle / "manifest.json").read_text())["examples"][0]
    result, _ = client.predict(image=handle_file(str(example)), variant="fp32", api_name="/classify")
    assert result == client.predict(handle_file(str(example)), "fp32", api_name="/classify")[0]
    sketch = {"background": None, "layers": [], "composite": handle_file(str(example))}
    assert client.predict(sketch=sketch, variant="fp32", api_name="/classify_sketch")[0]["label"] == result["label"]
    never = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    for data in ([never, "fp32"], [{"path": "data:image/png;base64,iVBORw0KGgo=", "meta": {"_type": "gradio.FileData"}},
                                   "fp32"]):
        event, message = http_call(app_url, "classify", data)
        assert event == "error" and message.startswith("a file in the request was never uploaded"), message
    assert http_call(app_url, "classify", [None]) == ("error", "/classify takes 2 values (image, variant); got 1")
    assert http_call(app_url, "classify_sketch", []) == ("error", "/classify_sketch takes 2 values (sketch, variant); "
                                                                  "got 0")


def assert_same_answer(result: dict, bundle_dir, image_file) -> None:
    """What the API answered is what the runtime, in this process, answers for the same file decoded
    the same way (white paper under transparency): the same top label and probabilities."""
    from serve.inputs import decode_image
    from serve.tasks.classify import predict

    expected, _ = predict(Bundle.open(bundle_dir), decode_image(image_file), "fp32")
    assert result["label"] == next(iter(expected)), (result, expected)
    got = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert all(abs(got[k] - v) < 1e-5 for k, v in expected.items() if k in got), (got, expected)


def test_altered_variant_is_refused_and_others_still_serve(bundle_copy):
    """A variant file truncated on disk while serving (a private copy: the session-wide bundle stays
    intact) is refused with a readable message; the other variants keep answering."""
    import json

    from serve.app import build_app
    from serve.discover import find_bundles
    from tests.serve.conftest import free_port

    bundles, problems = find_bundles(bundle_copy.parent.parent)
    app = build_app(bundles, problems)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        manifest = json.loads((bundle_copy / "manifest.json").read_text())
        example = handle_file(str(bundle_copy / manifest["examples"][0]))
        path = bundle_copy / "model.opt.onnx"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        _fails(client, example, "opt", api_name="/classify", match="altered or truncated")
        result, _ = client.predict(example, "fp32", api_name="/classify")
        assert result["label"] == manifest["examples"][0].split("/")[1].split("_")[0]
    finally:
        app.close()
