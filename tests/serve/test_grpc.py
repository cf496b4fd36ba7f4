"""The Open Inference Protocol over gRPC (serve/grpc_protocol.py), driven by Triton's own
``tritonclient.grpc`` against every task's smoke bundle: the same answers as the bundle's runtime and
as the HTTP side, the same refusals as gRPC statuses, batching shared with HTTP, and the stream."""
from __future__ import annotations

import queue

import numpy as np
import pytest

from serve.bundle import variant_runtime
from serve.tasks import TABS
from serve.tensors import datatype_of
from tests.serve.conftest import example_feeds, free_port

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="session")
def grpc_server(protocol_server):
    from serve.grpc_protocol import GrpcServer

    _, bundles, app = protocol_server
    server = GrpcServer(app, "127.0.0.1", free_port(), max_message=1 << 20)
    server.start()
    yield f"127.0.0.1:{server.port}", bundles, app
    server.stop()


@pytest.fixture(scope="session")
def client(grpc_server):
    return grpcclient.InferenceServerClient(grpc_server[0])


def _inputs(feeds: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, value in feeds.items():
        t = grpcclient.InferInput(name, list(value.shape), datatype_of(value.dtype))
        t.set_data_from_numpy(value)
        inputs.append(t)
    return inputs


def test_every_graph_of_every_task_answers_as_the_bundle_runtime_does(grpc_server, client):
    _, bundles, _ = grpc_server
    rng = np.random.default_rng(0)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    index = {(m.name, m.version) for m in client.get_model_repository_index().models}
    for task, bundle in bundles.items():
        for graph in bundle.graphs:
            name = f"{task}_{graph}"
            meta = client.get_model_metadata(name)
            io = bundle.manifest["graphs"][graph]["io"]
            assert [i.name for i in meta.inputs] == [s["name"] for s in io["inputs"]]
            assert all(d == -1 or d == a for i, s in zip(meta.inputs, io["inputs"]) for d, a in zip(i.shape, s["shape"]))
            assert set(meta.versions) == set(bundle.variants()) and client.is_model_ready(name)
            assert {(name, v) for v in bundle.variants()} <= index
            config = client.get_model_config(name).config  # Triton's ModelConfig, parsed from our JSON
            assert config.name == name and [t.name for t in config.input] == [s["name"] for s in io["inputs"]]
            feeds = example_feeds(io, rng)
            on_ort = [v for v in bundle.variants() if variant_runtime(v) == "onnxruntime"]
            for variant in ("fp32", on_ort[-1]):
                got = client.infer(name, _inputs(feeds), model_version=variant)
                assert got.get_response().model_version == variant
                for out, value in bundle.session(graph, variant)(feeds).items():
                    np.testing.assert_array_equal(got.as_numpy(out), value, err_msg=f"{name} {variant} {out}")
            assert client.infer(name, _inputs(feeds)).get_response().model_version in bundle.variants()


def test_the_loop_tasks_answer_as_serve_runs_them(grpc_server, client):
    _, bundles, _ = grpc_server
    prompts = np.array([b"The return value", b"import"], dtype=object)
    got = client.infer("textgen", _inputs({"prompt": prompts, "max_new_tokens": np.array([12]),
                                           "temperature": np.array([0.0], np.float32)}))
    want = TABS["textgen"].whole(bundles["textgen"]).run({"prompt": prompts}, {"max_new_tokens": 12, "temperature": 0},
                                                         "fp32")
    assert list(got.as_numpy("text")) == list(want["text"])
    short = client.infer("textgen", _inputs({"prompt": prompts[:1]}), parameters={"max_new_tokens": 5, "temperature": 0})
    assert want["text"][0].startswith(short.as_numpy("text")[0])  # request parameters, as over HTTP
    asr = bundles["asr"]
    wav = next(asr.file(n) for n in asr.manifest["files"] if n.endswith(".wav")).read_bytes()
    got = client.infer("asr", _inputs({"audio": np.array([wav], dtype=object)}))
    assert list(got.as_numpy("text")) == list(TABS["asr"].whole(asr).run({"audio": np.array([wav], dtype=object)},
                                                                         {}, None)["text"])
    images = client.infer("imagegen", _inputs({"label": np.array([3]), "count": np.array([2]),
                                               "steps": np.array([4])})).as_numpy("images")
    assert images.shape[0] == 2 and images.dtype == np.uint8


def test_concurrent_grpc_calls_are_batched(grpc_server):
    _, bundles, app = grpc_server
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (1 + i % 3, 28, 28, 1), dtype=np.uint8) for i in range(16)]
    client = grpcclient.InferenceServerClient(grpc_server[0])
    batcher = app.batchers["classify_model"]
    before, batcher.window = batcher.calls, 0.1  # the smoke model is too quick to keep calls waiting on their own
    answers: queue.Queue = queue.Queue()
    try:
        for i, im in enumerate(images):
            client.async_infer("classify_model", _inputs({"image": im}), model_version="fp32", request_id=str(i),
                               callback=lambda result, error: answers.put((result, error)))
        got = [answers.get(timeout=60) for _ in images]
    finally:
        batcher.window = 0.0
    assert all(error is None for _, error in got), [e for _, e in got if e]
    model = bundles["classify"].session("model", "fp32")
    for result, _ in got:
        im = images[int(result.get_response().id)]
        np.testing.assert_allclose(result.as_numpy("probs"), model({"image": im})["probs"], atol=1e-5)
    assert batcher.calls - before < len(images), "nothing was batched"


def test_the_stream_answers_each_request_and_goes_on_after_a_bad_one(grpc_server):
    client = grpcclient.InferenceServerClient(grpc_server[0])
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        good = _inputs({"image": np.full((1, 28, 28, 1), 255, np.uint8)})
        client.async_stream_infer("classify_model", good, request_id="a")
        client.async_stream_infer("classify_model", _inputs({"image": np.zeros((1, 28, 28, 1), np.float32)}),
                                  request_id="b")
        client.async_stream_infer("classify_model", good, request_id="c")
        got = [answers.get(timeout=60) for _ in range(3)]
    finally:
        client.stop_stream()
    errors = [str(e) for _, e in got if e is not None]
    assert len(errors) == 1 and "UINT8" in errors[0], errors
    assert sorted(r.get_response().id for r, e in got if e is None) == ["a", "c"]


@pytest.mark.parametrize("case", ["no model", "no version", "datatype", "shape", "size", "too large", "no output",
                                  "bytes layout"])
def test_bad_requests_get_a_status_with_the_protocols_message_and_the_next_request_works(grpc_server, client, case):
    image = np.full((1, 28, 28, 1), 255, np.uint8)
    model, version, feeds, outputs = "classify_model", "", {"image": image}, None
    if case == "no model":
        model, words = "nope", "classify_model"
    elif case == "no version":
        version, words = "int4", "fp32"
    elif case == "datatype":
        feeds, words = {"image": image.astype(np.float32)}, "UINT8"
    elif case == "shape":
        feeds, words = {"image": image[0]}, "dimensions"
    elif case == "too large":
        feeds, words = {"image": np.zeros((1, 1024, 1024, 3), np.uint8)}, "RESOURCE_EXHAUSTED"
    elif case == "no output":
        outputs, words = [grpcclient.InferRequestedOutput("logits")], "probs"
    inputs = _inputs(feeds)
    if case == "size":  # raw contents shorter than the declared shape
        inputs[0]._raw_content = inputs[0]._raw_content[:700]
        words = "784"
    if case == "bytes layout":
        model, words = "textgen", "claims"
        inputs = _inputs({"prompt": np.array([b"hello"], dtype=object)})
        inputs[0]._raw_content = inputs[0]._raw_content[:-2]
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, inputs, model_version=version, outputs=outputs)
    message = str(e.value)
    assert words in message and "Traceback" not in message, message
    assert client.infer("classify_model", _inputs({"image": image})).as_numpy("probs").shape == (1, 10)


def test_the_example_client_runs_over_grpc(grpc_server):
    """examples/triton_client.py --grpc: the README's client, the same calls over tritonclient.grpc."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "triton_client.py"), "--grpc", "--url", grpc_server[0]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.strip().splitlines())
    assert {"models", "classify", "textgen", "imagegen"} <= set(lines), proc.stdout
    assert lines["classify"].strip()[0].isdigit() and "4 images of" in lines["imagegen"]


def test_readiness_config_versions_and_absurd_shapes_answer_as_triton_would(client):
    assert client.is_model_ready("classify_model") and not client.is_model_ready("nope")
    assert not client.is_model_ready("classify_model", "int4")  # not ready: no such version, no error
    config = client.get_model_config("classify_model", "fp32").config
    assert config.parameters["variant"].string_value == "fp32"  # the version asked for, not the default
    t = grpcclient.InferInput("image", [1, 1, 1, 1], "UINT8")
    t.set_data_from_numpy(np.zeros((1, 1, 1, 1), np.uint8))
    t.set_shape([1 << 32, 1 << 32, 1, 1])  # a product that wraps to 0 in int64: refused, not a server fault
    with pytest.raises(InferenceServerException) as e:
        client.infer("classify_model", [t])
    assert "INVALID_ARGUMENT" in str(e.value) or "RESOURCE_EXHAUSTED" in str(e.value), str(e.value)
