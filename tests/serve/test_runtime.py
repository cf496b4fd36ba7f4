import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from serve.discover import find_bundles
from serve.runtime import Bundle, BundleError, OrtSession
from tests.conftest import ROOT


def _digits(bundle, n=20):
    from PIL import Image

    out = []
    for name in bundle.manifest["examples"][:n]:
        out.append((np.asarray(Image.open(bundle.path / name).convert("L"))[..., None], name.split("/")[1].split("_")[0]))
    return out


def test_bundle_opens_and_predicts(bundle_copy):
    import time

    b = Bundle.open(bundle_copy)
    assert b.task == "classify" and b.bad_files == {} and b.variants()[0] == "fp32" and b.graphs == ["model"]
    right = 0
    for image, label in _digits(b):
        t0 = time.perf_counter()
        pred = b.run({"image": image[None]}, "fp32")
        wall = time.perf_counter() - t0
        assert pred.provider == "CPUExecutionProvider" and 0 < pred.seconds <= wall, (pred.seconds, wall)
        right += b.info["labels"][int(pred.outputs["probs"][0].argmax())] == label
    assert right >= 17
    assert b.session("model", "fp32") is b.session("model", "fp32"), "sessions are reused"


@pytest.mark.parametrize("feeds,message", [
    ({"image": np.zeros((1, 8, 8, 1), np.float32)}, "image: expected uint8, got float32"),
    ({"image": np.zeros((8, 8, 1), np.uint8)}, "expected 4 dimensions"),
    ({"image": np.zeros((1, 5000, 8, 1), np.uint8)}, "height must be between 8 and 4096, got 5000"),
    ({"image": np.zeros((1, 8, 8, 7), np.uint8)}, "channels must be between 1 and 4, got 7"),
    ({"pixels": np.zeros((1, 8, 8, 1), np.uint8)}, "missing ['image']"),
])
def test_inputs_are_checked(bundle_copy, feeds, message):
    with pytest.raises(BundleError) as e:
        Bundle.open(bundle_copy).run(feeds)
    assert message in str(e.value)


@pytest.mark.parametrize("how", ["altered", "truncated"])
def test_altered_file_is_never_loaded(bundle_copy, how):
    path = bundle_copy / "model.int8.onnx"
    data = path.read_bytes()
    path.write_bytes(data[:100] if how == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    b = Bundle.open(bundle_copy)  # sizes are checked here; contents when a session is opened
    failed = b.warm_up(b.variants())
    assert ("int8" in failed) == (how == "altered") and "sha256" in failed.get("int8", "sha256")
    assert "model.int8.onnx" in b.bad_files and "int8" not in b.variants()
    with pytest.raises(BundleError, match="'int8' is not available"):
        b.session("model", "int8")
    assert b.run({"image": np.full((1, 8, 8, 1), 255, np.uint8)}, "fp32").outputs["probs"].shape == (1, 10)


def test_file_altered_after_opening_is_refused(bundle_copy):
    b = Bundle.open(bundle_copy)
    (bundle_copy / "model.fp16.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="altered or truncated"):
        b.run({"image": np.zeros((1, 8, 8, 1), np.uint8)}, "fp16")


def test_a_loaded_session_keeps_serving_the_verified_graph(bundle_copy):
    """Sessions are built from the bytes that were hashed: changing the file later changes nothing served."""
    b = Bundle.open(bundle_copy)
    image = {"image": np.zeros((1, 8, 8, 1), np.uint8)}
    before = b.run(image, "opt").outputs["probs"]
    (bundle_copy / "model.opt.onnx").write_bytes((bundle_copy / "model.int8.onnx").read_bytes())
    np.testing.assert_array_equal(b.run(image, "opt").outputs["probs"], before)
    with pytest.raises(BundleError, match="altered or truncated"):
        Bundle.open(bundle_copy).run(image, "opt")


def test_outputs_are_checked_against_the_manifest(bundle_copy):
    import json

    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["graphs"]["model"]["io"]["outputs"][0]["shape"] = ["batch", 3]  # the file gives [N, 10]
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="output probs: dimension 1 must be 3, got 10"):
        Bundle.open(bundle_copy).run({"image": np.zeros((1, 8, 8, 1), np.uint8)})
    m["graphs"]["model"]["io"]["outputs"][0].update(shape=["batch", 10], dtype="float16")
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="output probs is float32; the manifest says float16"):
        Bundle.open(bundle_copy).run({"image": np.zeros((1, 8, 8, 1), np.uint8)})


def test_discovery_skips_broken_bundles(bundle_copy):
    root = bundle_copy.parent.parent
    newer = bundle_copy.with_name("zzz-newer")
    newer.mkdir()
    (newer / "manifest.json").write_text('{"schema_version": 99, "created": "9999"}')
    bundles, problems = find_bundles(root)
    assert bundles["classify"].path == bundle_copy, "the newest usable bundle is served"
    assert any("manifest schema 99 is not 2" in p for p in problems)
    (newer / "manifest.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(newer)
    (newer / "manifest.json").write_text("[1, 2]")  # valid JSON of the wrong shape
    assert find_bundles(root)[0]["classify"].path == bundle_copy
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    for labels in (["a", "b"], "0123456789", None):  # what the classify tab cannot show
        shutil.copytree(bundle_copy, newer, dirs_exist_ok=True)
        (newer / "manifest.json").write_text(json.dumps({**manifest, "created": "9999", "info": {"labels": labels}}))
        bundles, problems = find_bundles(root)
        assert bundles["classify"].path == bundle_copy
        assert any("info.labels must be 10 class names" in p for p in problems), problems
    stray = root / "textgen" / "run"  # a bundle in another task's folder
    shutil.copytree(bundle_copy, stray)
    assert any("a 'classify' bundle in the 'textgen' folder" in p for p in find_bundles(root)[1])
    shutil.rmtree(stray)
    shutil.rmtree(newer)
    (bundle_copy / "model.onnx").write_bytes(b"")
    bundles, problems = find_bundles(root)
    assert bundles == {} and any("portable graphs are missing or damaged (model.onnx" in p for p in problems)


def test_gpu_asked_but_not_used_warns(bundle_copy):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sess = OrtSession(bundle_copy / "model.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"], name="model.onnx")
    assert sess.provider == "CPUExecutionProvider"
    assert any("GPU provider was asked for" in str(w.message) for w in caught)


def test_serve_runs_with_torch_unimportable(bundle_copy, tmp_path):
    """The runtime and the app's construction, in a process where torch, models and pipeline cannot import."""
    script = f"""
import sys
for name in ("torch", "models", "pipeline", "export"):
    sys.modules[name] = None  # makes `import name` raise ImportError
import numpy as np
from serve.runtime import Bundle
from serve.app import build_app
from serve.discover import find_bundles
b = Bundle.open({str(bundle_copy)!r})
p = b.run({{"image": np.full((2, 30, 30, 3), 255, np.uint8)}})
bundles, _ = find_bundles({str(bundle_copy.parent.parent)!r})
build_app(bundles)
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print("ok", p.outputs["probs"].shape)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok (2, 10)" in proc.stdout


def test_manifest_is_what_serving_expects(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    assert m["examples"] and all(name in m["files"] for name in m["examples"])


def test_warm_up_builds_the_served_sessions_and_others_load_on_first_use(bundle_copy):
    b = Bundle.open(bundle_copy)
    assert b.warm_up() == {}
    assert set(b._sessions) == {("model", v) for v in b.served_variants()}
    assert b.serving_variant(1) in b.served_variants() and b.serving_variant(32) in b.served_variants()
    others = [v for v in b.variants() if v not in b.served_variants()]
    assert others, "the smoke bundle has variants serving does not pick"
    b.session("model", others[0])
    assert ("model", others[0]) in b._sessions


def test_unserved_variants_beyond_keep_are_dropped_least_recently_used_first(bundle_copy):
    b = Bundle.open(bundle_copy, keep=1)
    others = [v for v in b.variants() if v not in b.served_variants()]
    assert len(others) >= 2
    assert b.warm_up(b.variants()) == {}  # each loads (and is checked) once
    loaded = {v for _, v in b._sessions}
    assert loaded == set(b.served_variants()) | {others[-1]}, loaded
    runner = b.session("model", others[0])  # used now: the other unserved one goes
    b.session("model", b.served_variants()[0])
    assert {v for _, v in b._sessions} == set(b.served_variants()) | {others[0]}
    assert b.session("model", others[0]) is runner  # still the same session
    assert Bundle.open(bundle_copy, keep=0).warm_up(b.variants()) == {}
    every = Bundle.open(bundle_copy)  # the pipeline's default: nothing is dropped (its benchmark runs them all)
    assert every.warm_up(every.variants()) == {} and {v for _, v in every._sessions} == set(every.variants())
    (bundle_copy / "model.fp16.onnx").write_bytes(b"changed after opening")
    b2 = Bundle.open(bundle_copy)
    assert "fp16" not in b2.variants() and b2.warm_up() == {}


def test_a_variant_that_cannot_be_loaded_is_no_longer_offered(bundle_copy, monkeypatch):
    import serve.runtime

    b = Bundle.open(bundle_copy)
    real = serve.runtime.OrtSession

    def refuse_fp16(data, threads=0, name="", spin=False):
        if name == "model.fp16.onnx":
            raise BundleError(f"{name} cannot be loaded by onnxruntime: not on this machine")
        return real(data, threads=threads, name=name, spin=spin)

    monkeypatch.setattr(serve.runtime, "OrtSession", refuse_fp16)
    assert "cannot be loaded" in b.warm_up(b.variants())["fp16"]
    assert "fp16" not in b.variants() and "fp32" in b.variants()
    with pytest.raises(BundleError, match="'fp16' is not available .*not on this machine"):
        b.session("model", "fp16")


@pytest.mark.parametrize("case", ["white", "black", "dot", "border ink", "transparent RGBA"])
def test_degenerate_drawings_never_give_nan_through_the_graph_alone(bundle_copy, case):
    """What an embedding app may send as a canvas: every variant answers with probabilities, never NaN;
    a canvas without ink gets a low-confidence answer."""
    canvas = np.full((1, 280, 280, 3), 255, np.uint8)
    if case == "transparent RGBA":  # a PNG with nothing drawn, its four channels sent as they are
        canvas = np.zeros((1, 280, 280, 4), np.uint8)
    elif case == "black":
        canvas[:] = 0
    elif case == "dot":
        canvas[0, 140, 140] = 0
    elif case == "border ink":
        canvas[0, :, :6] = 0
    bundle = Bundle.open(bundle_copy)
    for variant in bundle.variants():
        probs = bundle.run({"image": canvas}, variant).outputs["probs"]
        assert np.isfinite(probs).all() and (probs >= 0).all(), variant
        # INT8 variants quantize the probabilities themselves (steps of 1/255): each may be off by half a step
        tolerance = probs.shape[1] * 0.5 / 255 + 1e-3 if "int8" in variant else 1e-2
        assert abs(float(probs.sum()) - 1.0) <= tolerance, variant
        if case in ("white", "black", "transparent RGBA"):
            assert probs.max() < 0.9, f"{variant}: no ink, yet {probs.max():.2f} sure"


ARENA_PROBE = """
import sys, numpy as np
import serve.runtime as runtime
bundle = runtime.Bundle.open(sys.argv[1])
if sys.argv[2] == "keep":
    runtime.ARENA_KEEP_BYTES = 1 << 40
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
small = np.full((1, 64, 64, 1), 255, np.uint8); small[0, 20:40, 30:34] = 0
big = np.full((1, 4096, 4096, 1), 255, np.uint8); big[0, 1000:3000, 2000:2300] = 0
bundle.run({"image": small}); idle = rss_mb()
for _ in range(3):
    bundle.run({"image": big})
bundle.run({"image": small})
print(rss_mb() - idle)
"""


def test_a_large_call_hands_its_working_memory_back_and_small_ones_keep_the_arena(smoke_bundle):
    """ORT's arena stays on (batches reuse it), and a call above ARENA_KEEP_BYTES of image input
    shrinks it when it ends: the held memory after three 4096x4096 calls, with the policy and without."""
    from serve.runtime import ARENA_KEEP_BYTES, releases

    kept = {}
    for mode in ("keep", "release"):
        out = subprocess.run([sys.executable, "-c", ARENA_PROBE, str(smoke_bundle), mode], capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        kept[mode] = float(out.stdout.split()[-1])
    assert kept["keep"] > 100 and kept["release"] < 60, kept  # measured: 216 and 16 MB
    assert releases({"image": np.zeros((1, 4096, 4096, 1), np.uint8)})
    assert not releases({"image": np.zeros((32, 128, 128, 3), np.uint8)})  # a batch of scenes keeps its arena
    assert not releases({"past": np.zeros(ARENA_KEEP_BYTES, np.float32)})  # caches are bounded by the contract
