"""Detection and segmentation: the scenes, the NMS operator, the graphs' layouts, the metrics, user
data and its bad forms, the app's tabs through gradio_client and Chromium."""
from __future__ import annotations

import functools
import json
import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data import scenes as S
from pipeline.data.images import load_digits
from pipeline.errors import PipelineError


@pytest.fixture(scope="module")
def digits():
    return load_digits((0.1, 0.2), 0)


def _generated(digits, counts=(20, 5, 8), stress=4, held_out=6):
    splits = (digits.train, digits.val, digits.test)
    return S.generated(tuple(s.images for s in splits), tuple(s.labels for s in splits), counts, 0, stress, held_out)


def _all(data):
    return list(data.train) + data.test + data.stress + [s for v in data.held_out.values() for s in v]


# ---------------------------------------------------------------------------------------------
# Scenes


def test_scenes_are_deterministic_and_consistent(digits):
    a, b = _generated(digits), _generated(digits)
    assert set(a.held_out) == {"drawn", "photo", "large"} and all(len(v) == 6 for v in a.held_out.values())
    for x, y in zip(_all(a), _all(b)):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
    for scene in _all(a):
        h, w = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.mask.shape == (h, w)
        assert ((scene.boxes[:, :2] >= 0) & (scene.boxes[:, 2:] <= [w, h])).all()
        assert (scene.boxes[:, 2:] > scene.boxes[:, :2]).all()
        # every labelled pixel lies in a box of its class
        for c in np.unique(scene.mask[scene.mask > 0]):
            ys, xs = np.nonzero(scene.mask == c)
            inside = np.zeros(len(ys), bool)
            for box in scene.boxes[scene.labels == c - 1]:
                inside |= (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
            assert inside.all()
    assert {s.image.shape[:2] for s in a.train} == {(96, 96)} and {s.image.shape[:2] for s in a.test} == {(128, 128)}
    assert {s.image.shape[:2] for s in a.stress} == {(160, 224)}
    assert {s.image.shape[:2] for s in a.held_out["large"]} == {(240, 320)}
    assert all(1 <= len(s.labels) <= 6 for s in a.test) and max(len(s.labels) for s in a.stress) > 6
    tall = [b[3] - b[1] for s in a.held_out["large"] for b in s.boxes]
    assert min(tall) >= 45 and max(tall) > 80, "large digits: 50 px to a third of the width"


def test_held_out_styles_draw_what_they_say_and_test_scenes_do_not(digits, monkeypatch):
    """The drawn set holds only the second hand's drawings, the photo set is photographed, and a style
    without drawings or photos never reaches them (so the test and stress scenes are the ones every
    earlier model was measured on: they draw no extra random numbers)."""
    calls = []
    real_ink, real_photo = S.drawn_ink, S.photograph
    monkeypatch.setattr(S, "drawn_ink", lambda *a: calls.append(("ink", a[3])) or real_ink(*a))
    monkeypatch.setattr(S, "photograph", lambda *a: calls.append(("photo", None)) or real_photo(*a))
    scans, labels = S.scans_of(digits.test.images), digits.test.labels
    for style in (S.TEST_STYLE, S.STRESS_STYLE):
        list(S.SceneSet(scans, labels, style, 2, 5))
    assert calls == []
    drawn = list(S.SceneSet(scans, labels, S.HELD_OUT_STYLES["drawn"], 4, 5))
    assert calls and {c for c in calls} == {("ink", "other")}, "the drawn set: every digit by the second hand"
    assert sum(len(s.labels) for s in drawn) == len(calls)
    calls.clear()
    list(S.SceneSet(scans, labels, S.HELD_OUT_STYLES["photo"], 5, 4))
    assert calls.count(("photo", None)) == 4
    calls.clear()
    list(S.SceneSet(S.scans_of(digits.train.images), digits.train.labels, S.TRAIN_STYLE, 0, 30))
    assert ("ink", "training") in calls and ("ink", "other") not in calls and ("photo", None) in calls


def test_a_drawn_digit_is_as_tall_as_asked():
    rng = np.random.default_rng(0)
    for hand in ("training", "other"):
        for height in (12, 30, 100):
            ink = S.drawn_ink(int(rng.integers(10)), height, rng, hand)
            rows = np.flatnonzero((ink > S.ALPHA_EDGE).any(1))
            assert abs(len(rows) - height) <= max(2, 0.05 * height), (hand, height, len(rows))
    with pytest.raises(ValueError, match="unknown hand"):
        S.drawn_ink(3, 20, rng, "mine")


def test_train_scenes_use_only_training_scans(digits):
    data = _generated(digits)
    assert np.array_equal(data.train.scans, S.scans_of(digits.train.images))
    test_scans = {x.tobytes() for x in S.scans_of(digits.test.images)}
    assert not test_scans & {x.tobytes() for x in data.train.scans}


# ---------------------------------------------------------------------------------------------
# NMS: torch's eager operator against ONNX Runtime's NonMaxSuppression


@functools.cache
def _nms_graph():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "score"], ["selected"])]
    graph = helper.make_graph(nodes, "nms", [
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", "b", 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", "c", "b"]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["m", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), boxes=st.integers(1, 60), classes=st.integers(1, 4),
       iou=st.floats(0.0, 1.0), score=st.floats(0.0, 0.9), k=st.integers(1, 20))
def test_eager_nms_selects_what_onnxruntime_selects(seed, boxes, classes, iou, score, k):
    from export.ops import nms

    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (2, boxes, 2)).astype(np.float32)
    b = np.concatenate([xy, xy + rng.uniform(1, 30, (2, boxes, 2)).astype(np.float32)], -1)
    s = rng.random((2, classes, boxes)).astype(np.float32)
    ours = nms(torch.from_numpy(b), torch.from_numpy(s), k, torch.tensor(iou), torch.tensor(score)).numpy()
    theirs = _nms_graph().run(None, {"boxes": b, "scores": s, "k": np.array([k]), "iou": np.array([iou], np.float32),
                            "score": np.array([score], np.float32)})[0]
    assert np.array_equal(ours, theirs)


def test_detection_output_is_efficientnms_layout():
    from pipeline.tasks.detect import DetectionOutput

    torch.manual_seed(0)
    n, b, k = 3, 40, 10
    logits = torch.randn(n, b, 4) * 3
    logits[2] = -10  # image 2: all background
    logits[2, :, 0] = 10
    centres = torch.rand(b, 2) * 90 + 5
    defaults = torch.cat([centres, torch.full((b, 2), 8.0)], 1)
    image = torch.zeros(n, 100, 100, 3, dtype=torch.uint8)
    num, boxes, scores, labels = DetectionOutput(k)(logits, torch.zeros(n, b, 4), defaults, image,
                                                   torch.tensor(0.2), torch.tensor(0.5))
    assert num.tolist()[2] == 0 and (labels[2] == -1).all() and (scores[2] == 0).all()
    for i in range(n):
        m = int(num[i])
        assert m <= k and (scores[i, :m] > 0.2).all() and (labels[i, :m] >= 0).all()
        assert (scores[i, :m].diff() <= 0).all(), "best first"
        assert (labels[i, m:] == -1).all() and (boxes[i, m:] == 0).all()
        assert (boxes[i, :m, :2] >= 0).all() and (boxes[i, :m, 2:] <= 100).all()


# ---------------------------------------------------------------------------------------------
# Metrics


def test_coco_map_of_perfect_and_of_shifted_boxes(digits):
    from pipeline.tasks.detect import Detections, coco_scores

    scenes = _generated(digits).test
    perfect = [Detections(s.boxes, np.ones(len(s.labels), np.float32), s.labels) for s in scenes]
    assert coco_scores(scenes, perfect) == {"map50": 100.0, "map": 100.0}
    wrong = [Detections(s.boxes, np.ones(len(s.labels), np.float32), (s.labels + 1) % 10) for s in scenes]
    assert coco_scores(scenes, wrong)["map50"] == 0.0
    shifted = [Detections(s.boxes + [0, 0, 4, 4], np.ones(len(s.labels), np.float32), s.labels) for s in scenes]
    shifted_scores = coco_scores(scenes, shifted)
    assert shifted_scores["map"] < 100.0 and shifted_scores["map50"] > 0


def test_mean_iou():
    from pipeline.tasks.segment import mask_scores

    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    assert mask_scores([truth], [truth], 3)["miou"] == 100.0
    pred = truth.copy()
    pred[0, 0] = 0  # class 1: 3/4; background: 12/13
    assert mask_scores([pred], [truth], 3)["miou"] == pytest.approx(100 * (0.75 + 12 / 13) / 2)


# ---------------------------------------------------------------------------------------------
# The user's data


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _coco_folder(tmp_path, digits, count=12):
    scenes = _generated(digits, counts=(count, 1, 1)).train
    images, annotations = [], []
    for i in range(count):
        _png(tmp_path / "images" / f"s{i}.png", scenes[i].image)
        images.append({"id": i, "file_name": f"s{i}.png", "width": 96, "height": 96})
        for box, label in zip(scenes[i].boxes, scenes[i].labels):
            x1, y1, x2, y2 = box.tolist()
            annotations.append({"id": len(annotations), "image_id": i, "category_id": int(label) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1]})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": d + 1, "name": f"digit{d}"} for d in range(10)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path / "coco.json", coco


def test_coco_data_loads_and_bad_coco_is_one_clear_error(tmp_path, digits):
    path, coco = _coco_folder(tmp_path, digits)
    data = S.load_coco(path, (0.2, 0.2), 0)
    assert data.class_names[0] == "digit0" and len(data.train) + len(data.val) + len(data.test) == 12
    bad = [
        ({**coco, "images": coco["images"] + [{"id": 99, "file_name": "gone.png"}]}, "missing"),
        ({**coco, "annotations": coco["annotations"] + [{"image_id": 0, "category_id": 1, "bbox": [1, 2, -3, 4]}]},
         "malformed box"),
        ({**coco, "annotations": coco["annotations"] + [{"image_id": 0, "category_id": 1, "bbox": [1, 2]}]},
         "needs image_id"),
        ({**coco, "annotations": coco["annotations"] + [{"image_id": 0, "category_id": 1, "bbox": [90, 90, 50, 50]}]},
         "outside"),
        ({"images": []}, "needs lists"),
    ]
    for content, message in bad:
        path.write_text(json.dumps(content))
        with pytest.raises(PipelineError, match=message):
            S.load_coco(path, (0.2, 0.2), 0)
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not a readable COCO json"):
        S.load_coco(path, (0.2, 0.2), 0)


def test_mask_folder_loads_and_a_bad_one_is_one_clear_error(tmp_path, digits):
    scenes = _generated(digits, counts=(10, 1, 1)).train
    for i in range(10):
        _png(tmp_path / "images" / f"s{i}.png", scenes[i].image)
        _png(tmp_path / "masks" / f"s{i}.png", scenes[i].mask)
    data = S.load_mask_folder(tmp_path, (0.2, 0.2), 0)
    assert len(data.class_names) >= max(int(s.mask.max()) for s in scenes)
    _png(tmp_path / "masks" / "s0.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(PipelineError, match="mask is 5x5"):
        S.load_mask_folder(tmp_path, (0.2, 0.2), 0)
    (tmp_path / "masks" / "s0.png").unlink()
    with pytest.raises(PipelineError, match="no mask"):
        S.load_mask_folder(tmp_path, (0.2, 0.2), 0)


def test_cli_with_a_bad_coco_file_is_one_line_and_writes_nothing(tmp_path):
    from tests.conftest import run_cli

    (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "nope.png"}],
                                                    "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    out = tmp_path / "out"
    proc = run_cli("train", "detect", "--preset", "smoke", "--data", str(tmp_path / "coco.json"), "--out", str(out))
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "nope.png" in proc.stderr and "missing" in proc.stderr
    assert not any(out.rglob("*.onnx"))


# ---------------------------------------------------------------------------------------------
# The bundles (smoke presets; slow)


def _session(bundle_dir):
    return ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def _thresholds(score, iou):
    return {"score_threshold": np.array(score, np.float32), "iou_threshold": np.array(iou, np.float32)}


def test_detect_graph_alone_any_size_and_run_time_thresholds(detect_bundle):
    session = _session(detect_bundle)
    names = [o.name for o in session.get_outputs()]
    assert names == ["num_detections", "boxes", "scores", "labels"]
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["task"] == "detect" and len(meta["labels"].split(",")) == 10
    ops = {n.op_type for n in __import__("onnx").load(str(detect_bundle / "model.onnx")).graph.node}
    assert "NonMaxSuppression" in ops
    rng = np.random.default_rng(0)
    for h, w in [(40, 40), (128, 128), (97, 301)]:
        image = rng.integers(0, 255, (2, h, w, 3), dtype=np.uint8)
        loose = session.run(None, {"image": image, **_thresholds(0.0, 1.0)})
        strict = session.run(None, {"image": image, **_thresholds(0.9, 0.1)})
        assert loose[1].shape == (2, 100, 4) and (loose[0] >= strict[0]).all()
        n = loose[0][0]
        assert (loose[1][0, :n, 2] <= w).all() and (loose[1][0, :n, 3] <= h).all()
    blank = np.full((1, 64, 64, 3), 255, np.uint8)
    assert session.run(None, {"image": blank, **_thresholds(1.0, 0.5)})[0].tolist() == [0]


def test_detect_manifest_has_coco_metrics_parity_and_variants(detect_bundle):
    m = json.loads((detect_bundle / "manifest.json").read_text())
    assert {"map50", "map"} <= set(m["metrics"]["onnx_fp32"])
    assert m["parity"]["test"]["map50_diff"] <= 0.5 and m["parity"]["test"]["matched_boxes"] >= 0.99
    assert {"opt", "int8", "fp16"} <= set(m["variants"])
    assert any(f.startswith("examples/") for f in m["files"])
    bench = json.loads((detect_bundle / "benchmark.json").read_text())
    assert {r["backend"] for r in bench["rows"]} >= {"torch eager", "ORT fp32"}


def test_segment_graph_gives_mask_and_probs_at_input_size(segment_bundle):
    session = _session(segment_bundle)
    image = np.random.default_rng(1).integers(0, 255, (2, 77, 131, 3), dtype=np.uint8)
    mask, probs = session.run(None, {"image": image})
    assert mask.dtype == np.uint8 and mask.shape == (2, 77, 131)
    assert probs.shape == (2, 11, 77, 131) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert np.array_equal(mask, probs.argmax(1))
    m = json.loads((segment_bundle / "manifest.json").read_text())
    assert m["parity"]["test"]["mask_agreement"] >= 0.999 and "miou" in m["metrics"]["onnx_fp32"]


# ---------------------------------------------------------------------------------------------
# The app


@pytest.fixture(scope="module")
def scene_app(detect_bundle, segment_bundle, tmp_path_factory):
    from tests.serve.conftest import served

    with served([detect_bundle, segment_bundle], tmp_path_factory) as app:
        yield app


@pytest.fixture(scope="module")
def scene_client(scene_app):
    from gradio_client import Client

    return Client(scene_app[0], verbose=False)


def _path(value):
    return value if isinstance(value, str) else value["path"]


def _runtime(root, task):
    from serve.runtime import Bundle

    (run_dir,) = (root / task).iterdir()
    return Bundle.open(run_dir)


NONE = "no digits found above the score threshold; "  # the latency line's start when nothing is found
NEVER_UPLOADED = ("a file in the request was never uploaded to this server (or may not be read): upload it first "
                  "(POST /gradio_api/upload, as gradio_client does) and send the path it returns")


def test_detect_and_segment_through_the_api(scene_client, scene_app):
    from gradio_client import handle_file

    from serve.inputs import decode_image
    from serve.tasks.detect import detect

    scene = _path(scene_client.predict(api_name="/detect_new_scene"))
    annotated, table, line = scene_client.predict(handle_file(scene), 0.05, 0.45, "fp32", api_name="/detect")
    found, _ = detect(_runtime(scene_app[1], "detect"), decode_image(scene), 0.05, 0.45)
    assert [row[0] for row in table["data"]] == [d.label for d in found]
    assert re.fullmatch(rf"{NONE if not found else ''}{len(found)} detections? in \d+\.\d\d ms "
                        r"\(fp32 \(portable ONNX\), CPUExecutionProvider\)", line), line
    assert len(annotated["annotations"]) == len({d.label for d in found})  # one mask (legend entry) per class
    scene = _path(scene_client.predict(api_name="/segment_new_scene"))
    annotated, table, line = scene_client.predict(handle_file(scene), "fp32", api_name="/segment")
    assert "ms in the model" in line and len(annotated["annotations"]) == len(table["data"])


def _image_file(tmp_path, name, array=None, mode=None, raw=None):
    from PIL import Image

    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        Image.fromarray(array).convert(mode or ("RGB" if array.ndim == 3 else "L")).save(path)
    return str(path)


def test_bad_inputs_are_readable_and_serving_goes_on(scene_client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    scene = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    cases = [
        (("detect", _image_file(tmp_path, "x.png", raw=b"not an image at all"), 0.4, 0.45), "not an image"),
        (("detect", _image_file(tmp_path, "one.png", np.zeros((1, 1, 3), np.uint8)), 0.4, 0.45), "between 40 and"),
        (("detect", _image_file(tmp_path, "s.png", scene), 1.5, 0.45), "score threshold must be between 0 and 1"),
        (("detect", _image_file(tmp_path, "s.png", scene), 0.4, -0.1), "IoU threshold must be between 0 and 1"),
        (("segment", _image_file(tmp_path, "one.png", np.zeros((1, 1, 3), np.uint8))), "between 40 and"),
        (("segment", _image_file(tmp_path, "x.png", raw=b"GIF89a broken")), "not an image"),
        (("detect", _image_file(tmp_path, "huge.png", np.zeros((2100, 60, 3), np.uint8)), 0.4, 0.45), "between 40 and"),
    ]
    for (api, *args), message in cases:
        with pytest.raises(AppError, match=message):
            scene_client.predict(handle_file(args[0]), *args[1:], "fp32", api_name=f"/{api}")
    # grey and RGBA images are read as RGB; a scene with nothing found is zero detections, not an error
    for name, mode in (("grey.png", "L"), ("rgba.png", "RGBA")):
        path = _image_file(tmp_path, name, scene, mode)
        _, table, line = scene_client.predict(handle_file(path), 0.4, 0.45, "fp32", api_name="/detect")
        n = len(table["data"])
        assert re.fullmatch(rf"{NONE if not n else ''}{n} detections? in \d+\.\d\d ms \(.*\)", line), line
    _, table, line = scene_client.predict(handle_file(_image_file(tmp_path, "s.png", scene)), 1.0, 0.45, "fp32",
                                          api_name="/detect")
    assert table["data"] == [] and line.startswith("no digits found")
    # a blank image (one colour) is said to be blank, by both tabs, quickly
    for colour in (255, 0, 128):
        blank = _image_file(tmp_path, f"blank{colour}.png", np.full((2048, 2048, 3), colour, np.uint8))
        for api, args in (("detect", (0.4, 0.45)), ("segment", ())):
            with pytest.raises(AppError, match="the image is blank"):
                scene_client.predict(handle_file(blank), *args, "fp32", api_name=f"/{api}")


def test_named_parameters_and_malformed_requests_are_messages(scene_client, scene_app, tmp_path):
    """gradio_client keyword calls; over plain HTTP, a request Gradio cannot process is a message, and a
    threshold follows the one rule for numbers (a boolean is not one)."""
    from gradio_client import handle_file

    from tests.conftest import http_call

    scene = _image_file(tmp_path, "s.png", np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    _, table, line = scene_client.predict(image=handle_file(scene), score_threshold=1.0, iou_threshold=0.45,
                                          variant="fp32", api_name="/detect")
    assert table["data"] == [] and line.startswith(NONE)
    _, rows, line = scene_client.predict(image=handle_file(scene), variant="fp32", api_name="/segment")
    assert rows["data"] == scene_client.predict(handle_file(scene), "fp32", api_name="/segment")[1]["data"]
    url = scene_app[0]
    never = {"path": "/tmp/never-uploaded.png", "meta": {"_type": "gradio.FileData"}}
    assert http_call(url, "detect", [never, 0.4, 0.45, "fp32"]) == ("error", NEVER_UPLOADED)
    assert http_call(url, "segment", [never, "fp32"]) == ("error", NEVER_UPLOADED)
    assert http_call(url, "detect", [never, 0.4]) == (
        "error", "/detect takes 4 values (image, score_threshold, iou_threshold, variant); got 2")
    assert http_call(url, "segment", []) == ("error", "/segment takes 2 values (image, variant); got 0")
    with pytest.raises(Exception, match="score threshold must be a number, got True"):
        scene_client.predict(handle_file(scene), True, 0.45, "fp32", api_name="/detect")


def _run_tab(page, tab: str, scene: str, screenshot) -> list[str]:
    """Open ``tab``, upload ``scene``, press its button; the labels of the annotated image's legend
    (one entry per class), in order."""
    page.get_by_role("tab", name=tab.capitalize()).click()
    page.set_input_files(f"#{tab}-upload input[type=file]", scene)
    page.wait_for_timeout(500)
    page.click(f"#{tab}-go")
    page.wait_for_function(f"() => document.querySelector('#{tab}-latency textarea').value.includes('ms')",
                           timeout=30_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(screenshot))
    return [t.strip() for t in page.locator(f"#{tab}-image .legend-item").all_inner_texts()]


def test_chromium_reads_back_the_labels_of_a_known_scene(scene_app):
    """A held-out scene uploaded in each tab: the labels the page shows are the ones the runtime gives for
    it, in order (a smoke model's scores are all near 0.01, so the threshold is 0: its best 100 boxes)."""
    from serve.inputs import decode_image
    from serve.tasks.detect import detect
    from serve.tasks.segment import segment
    from tests.serve.test_browser import SCREENSHOTS, chromium_page

    url, root = scene_app
    det, seg = _runtime(root, "detect"), _runtime(root, "segment")
    scenes = sorted(p for p in (det.path / "examples").iterdir() if p.suffix == ".png")
    scene, score = str(scenes[0]), 0.0
    # the page runs each tab's default variant (the serving choice for one image); so does the reference
    found, _ = detect(det, decode_image(scene), score, 0.45, det.default_variant)
    seg_scene = max((str(p) for p in scenes),
                    key=lambda p: len(segment(seg, decode_image(p), seg.default_variant)[1]))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Detect").click()
        page.fill("#detect-score input[type=number]", str(score))
        page.press("#detect-score input[type=number]", "Enter")  # no image yet: no message either
        page.wait_for_timeout(300)
        assert not page.locator(".toast-body").count(), "moving a slider before any image is silent"
        shown = _run_tab(page, "detect", scene, SCREENSHOTS / "detect.png")
        # a threshold typed into the slider's box and Enter: the same image again (a smoke model's scores are ~0.01)
        page.fill("#detect-score input[type=number]", "0.9")
        page.press("#detect-score input[type=number]", "Enter")
        page.wait_for_function("() => document.querySelector('#detect-latency textarea').value.includes('no digits found')",
                               timeout=30_000)
        classes = set(_run_tab(page, "segment", seg_scene, SCREENSHOTS / "segment.png"))
        page.get_by_role("tab", name="Models").click()
        page.wait_for_timeout(300)
        folded = page.inner_text("body")
        for fold in ("Variants, metrics and parity", "Benchmark table"):  # the details, folded until opened
            for label in page.get_by_text(fold, exact=True).all():
                label.click()
        page.wait_for_timeout(500)
        models_text = page.inner_text("body")
    assert "ORT fp32 spin" not in folded and "vs torch eager" in folded  # the summary shows, the tables fold
    for words in (("detect:", "map50", "matched boxes", "ORT fp32 spin"), ("segment:", "miou", "mask agreement")):
        assert all(w in models_text for w in words), words
    assert shown == list(dict.fromkeys(d.label for d in found)) and shown  # a legend entry per class, best first
    assert classes == set(segment(seg, decode_image(seg_scene), seg.default_variant)[1]) and classes


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_model_card_snippet_runs_on_an_image_file(task, detect_bundle, segment_bundle, tmp_path, monkeypatch):
    """The MODEL_CARD's snippet, as written, runs model.onnx on a scene PNG with onnxruntime, numpy and
    PIL alone, and draws what it found (boxes; the mask's overlay)."""
    from PIL import Image

    bundle = {"detect": detect_bundle, "segment": segment_bundle}[task]
    snippet = (bundle / "MODEL_CARD.md").read_text().split("```python\n")[1].split("```")[0]
    shutil.copy(bundle / "model.onnx", tmp_path / "model.onnx")
    scene = next(p for p in (bundle / "examples").iterdir() if p.suffix == ".png")
    shutil.copy(scene, tmp_path / "scene.png")
    monkeypatch.chdir(tmp_path)
    exec(snippet, {"print": lambda *a: None})  # noqa: S102 - the documented snippet itself
    drawn = tmp_path / ("detections.png" if task == "detect" else "overlay.png")
    with Image.open(drawn) as out, Image.open(scene) as src:
        assert out.size == src.size


def test_chromium_draws_three_digits_and_the_boxes_follow_each_stroke(scene_app):
    """Issue 28: on the Detect tab's sketchpad, three digits drawn with the mouse (no tool picked by the
    test). After each digit the boxes are those of the drawing so far, and at the end the labels the
    page shows are the ones the runtime gives for the drawing the app received (the annotated image's
    own picture). A smoke model's scores are near 0.01, so the threshold is 0: its best boxes."""
    import httpx

    from serve.inputs import decode_image
    from serve.tasks.detect import detect
    from serve.tasks.scenes import PAPER
    from tests.serve.test_browser import DRAWINGS, SCREENSHOTS, _stroke, chromium_page

    url, root = scene_app
    det = _runtime(root, "detect")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Detect").click()
        page.fill("#detect-score input[type=number]", "0")
        page.press("#detect-score input[type=number]", "Enter")
        page.locator("button[role=tab]:visible", has_text="Draw").first.click()
        page.wait_for_selector("#detect-sketch canvas", timeout=30_000)
        page.wait_for_function("() => document.querySelector(\"#detect-sketch button[aria-label='Brush']\")"
                               ".classList.contains('highlight')", timeout=30_000)
        canvas = page.query_selector("#detect-sketch .pixi-target canvas").bounding_box()
        zoom = float(page.inner_text("#detect-sketch .zoom-number span").rstrip("%")) / 100
        w, h = PAPER[0] * zoom, PAPER[1] * zoom  # the paper, centred in the editor's canvas
        x0, y0 = canvas["x"] + (canvas["width"] - w) / 2, canvas["y"] + (canvas["height"] - h) / 2
        tables = []
        for k, strokes in enumerate(DRAWINGS.values()):  # three digits side by side, 0.28 of the width each
            box = {"x": x0 + (0.04 + 0.32 * k) * w, "y": y0 + 0.2 * h, "width": 0.28 * w, "height": 0.6 * h}
            before = page.input_value("#detect-latency textarea")
            for stroke in strokes:
                _stroke(page, box, stroke)
                page.wait_for_timeout(150)  # a person lifts the pen between strokes
            page.wait_for_function("(b) => { const v = document.querySelector('#detect-latency textarea').value;"
                                   " return v.includes('ms') && v !== b; }", arg=before, timeout=30_000)
            page.wait_for_timeout(600)  # the digit's last stroke's answer has landed (only the newest runs)
            tables.append(page.inner_text("#detect-table"))
        for _ in range(20):  # settled: the same boxes twice, half a second apart
            page.wait_for_timeout(500)
            if page.inner_text("#detect-table") == tables[-1]:
                break
            tables[-1] = page.inner_text("#detect-table")
        page.screenshot(path=str(SCREENSHOTS / "detect-drawn.png"))
        src = page.get_attribute("#detect-image img", "src")
        table = page.inner_text("#detect-table").split()
    table = table[table.index("label"):]  # after the component's own label
    assert len(set(tables)) == 3, "the boxes change as each digit is drawn"
    picture = httpx.get(src if src.startswith("http") else url.rstrip("/") + src, timeout=30).content
    drawing = decode_image(picture)
    assert drawing.shape[:2] == (PAPER[1], PAPER[0]) and (drawing < 128).any(), "the drawing itself, as drawn"
    found, _ = detect(det, drawing[..., :3], 0.0, 0.45, det.default_variant)
    assert table[:6] == ["label", "score", "x1", "y1", "x2", "y2"], table[:12]
    cells = table[6:]  # row by row: label, score, x1, y1, x2, y2 (the rows rendered so far)
    shown = [cells[i : i + 6] for i in range(0, len(cells) - 5, 6)]
    assert shown, "no detections shown"
    for row, d in zip(shown, found):
        assert row[0] == d.label and abs(float(row[1]) - d.score) < 2e-3, (row, d)
        assert np.allclose([float(v) for v in row[2:]], d.box, atol=0.11), (row, d)
