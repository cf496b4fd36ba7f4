"""The Open Inference Protocol (serve/protocol.py) over every task's smoke bundle, driven by Triton's own
client (tritonclient.http, binary tensors and JSON), and the Triton repository written from the same
bundles (pipeline/triton.py): every config.pbtxt parses as Triton's ModelConfig and agrees with the
manifest, and the loop tasks' model.py runs serve's loop through a stand-in of Triton's BLS."""
from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import sys
import types

import httpx
import numpy as np
import pytest

from serve.protocol import Batcher, Model
from serve.bundle import variant_runtime
from serve.tasks import TABS
from serve.tensors import TensorSpec, datatype_of, pack_bytes
from tests.serve.conftest import example_feeds

tritonclient_http = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="session")
def triton(protocol_server):
    return tritonclient_http.InferenceServerClient(protocol_server[0], concurrency=4)


def _infer(client, model: str, feeds: dict[str, np.ndarray], binary: bool = True, version: str = "", **kw):
    http = tritonclient_http
    inputs = []
    for name, value in feeds.items():
        t = http.InferInput(name, list(value.shape), datatype_of(value.dtype))
        t.set_data_from_numpy(value, binary_data=binary)
        inputs.append(t)
    return client.infer(model, inputs, model_version=version, **kw)


def test_every_graph_of_every_task_answers_as_the_bundle_runtime_does(protocol_server, triton):
    url, bundles, app = protocol_server
    rng = np.random.default_rng(0)
    assert triton.is_server_live() and triton.is_server_ready()
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    for task, bundle in bundles.items():
        for graph in bundle.graphs:
            name = f"{task}_{graph}"
            meta = triton.get_model_metadata(name)
            io = bundle.manifest["graphs"][graph]["io"]
            assert [i["name"] for i in meta["inputs"]] == [s["name"] for s in io["inputs"]]
            assert all(d == -1 or isinstance(a, int) and d == a for i, s in zip(meta["inputs"], io["inputs"])
                       for d, a in zip(i["shape"], s["shape"])), meta
            assert set(meta["versions"]) == set(bundle.variants()) and triton.is_model_ready(name)
            feeds = example_feeds(io, rng)
            on_ort = [v for v in bundle.variants() if variant_runtime(v) == "onnxruntime"]  # deterministic per call
            for variant, binary in (("fp32", True), (on_ort[-1], False)):
                got = _infer(triton, name, feeds, binary=binary, version=variant)
                want = bundle.session(graph, variant)(feeds)
                for out, value in want.items():
                    np.testing.assert_array_equal(got.as_numpy(out), value, err_msg=f"{name} {variant} {out}")
            got = _infer(triton, name, feeds)  # no version: the serving choice for this call
            assert got.get_response()["model_version"] in bundle.variants()


def test_each_task_is_a_model_the_way_serve_runs_it(protocol_server, triton):
    """The one-graph tasks are their graph; the loop tasks take what a person gives (a prompt, audio, a
    label) and give what the app shows, from the same loop the app runs."""
    _, bundles, app = protocol_server
    for task, bundle in bundles.items():
        whole = TABS[task].whole(bundle)
        meta = triton.get_model_metadata(task)
        if whole is None:
            assert meta["inputs"] == triton.get_model_metadata(f"{task}_{bundle.graphs[0]}")["inputs"]
            continue
        assert meta["platform"] == "python" and [i["name"] for i in meta["inputs"]] == [s.name for s in whole.inputs]
    textgen = bundles["textgen"]
    prompts = np.array([b"The return value", b"import"], dtype=object)
    got = _infer(triton, "textgen", {"prompt": prompts, "max_new_tokens": np.array([12]),
                                     "temperature": np.array([0.0], np.float32)})
    want = TABS["textgen"].whole(textgen).run({"prompt": prompts}, {"max_new_tokens": 12, "temperature": 0}, "fp32")
    assert list(got.as_numpy("text")) == list(want["text"]) and all(len(t) for t in want["text"])
    got = _infer(triton, "textgen", {"prompt": prompts[:1]}, parameters={"max_new_tokens": 5, "temperature": 0})
    assert got.as_numpy("text")[0] == want["text"][0][:len(got.as_numpy("text")[0])]  # greedy: a prefix of the longer one
    image = _infer(triton, "imagegen", {"label": np.array([3]), "count": np.array([2]), "steps": np.array([4])})
    images = image.as_numpy("images")
    assert images.shape[0] == 2 and images.dtype == np.uint8
    asr = bundles["asr"]
    wav = next(asr.file(n) for n in asr.manifest["files"] if n.endswith(".wav"))
    got = _infer(triton, "asr", {"audio": np.array([wav.read_bytes()], dtype=object)})
    want = TABS["asr"].whole(asr).run({"audio": np.array([wav.read_bytes()], dtype=object)}, {}, None)
    assert list(got.as_numpy("text")) == list(want["text"])


def test_concurrent_calls_are_batched_and_each_gets_its_own_rows(protocol_server):
    url, bundles, app = protocol_server
    bundle = bundles["classify"]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (1 + i % 3, 28, 28, 1), dtype=np.uint8) for i in range(24)]
    client = tritonclient_http.InferenceServerClient(url, concurrency=24)
    batcher = app.batchers["classify_model"]
    before, batcher.window = batcher.calls, 0.1  # the smoke model is too quick to keep calls waiting on their own
    try:
        pending = []
        for im in images:
            t = tritonclient_http.InferInput("image", list(im.shape), "UINT8")
            t.set_data_from_numpy(im)
            pending.append(client.async_infer("classify_model", [t], model_version="fp32"))
        results = [p.get_result().as_numpy("probs") for p in pending]
    finally:
        batcher.window = 0.0
    calls = batcher.calls - before
    for im, got in zip(images, results):
        np.testing.assert_allclose(got, bundle.session("model", "fp32")({"image": im})["probs"], atol=1e-5)
    assert calls < len(images), f"{calls} graph calls for {len(images)} concurrent requests: nothing was batched"


def test_a_bad_call_in_a_batch_fails_alone():
    """The batcher's fallback: when the joined call fails, each call runs alone and only the bad one fails."""
    def run(tensors, params, version):
        x = tensors["x"]
        if (x < 0).any():
            raise ValueError("negative")
        return {"y": x * 2}

    spec = (TensorSpec("x", "FP32", (-1, 2)),)
    model = Model("m", None, spec, (TensorSpec("y", "FP32", (-1, 2)),), run, max_batch=64)
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        batcher = Batcher(model, ThreadPoolExecutor(1), window=0.01)
        values = [np.full((1, 2), v, np.float32) for v in (1, -1, 3)]
        return await asyncio.gather(*(batcher({"x": v}, None) for v in values), return_exceptions=True), batcher

    (a, b, c), batcher = asyncio.run(main())
    assert isinstance(b, ValueError) and a["y"].tolist() == [[2, 2]] and c["y"].tolist() == [[6, 6]]
    assert batcher.calls == 1  # the three were gathered into one call (then retried alone)


def _post(url: str, path: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"http://{url}{path}", content=body, headers=headers or {}, timeout=30)


def _binary(shape, dtype, data: bytes, datatype: str, size: int | None = None, **extra):
    header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(data) if size is None else size}}],
                         **extra}).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("case", ["no model", "no version", "datatype", "shape", "size", "json", "header lies",
                                  "header short", "too large", "no output", "method", "no route", "bytes layout",
                                  "json data", "not an object"])
def test_bad_requests_get_the_protocols_error_and_the_next_request_works(protocol_server, case):
    url, bundles, _ = protocol_server
    image = np.full((1, 28, 28, 1), 255, np.uint8).tobytes()
    infer = "/v2/models/classify_model/infer"
    if case == "no model":
        r = _post(url, "/v2/models/nope/infer", b"{}")
        want, words = 404, "classify_model"
    elif case == "no version":
        r = _post(url, "/v2/models/classify_model/versions/int4/infer", b"{}")
        want, words = 404, "fp32"
    elif case == "datatype":
        r = _post(url, infer, *_binary([1, 28, 28, 1], None, np.zeros(784, np.float32).tobytes(), "FP32"))
        want, words = 400, "UINT8"
    elif case == "shape":
        r = _post(url, infer, *_binary([28, 28, 1], None, image, "UINT8"))
        want, words = 400, "dimensions"
    elif case == "size":
        r = _post(url, infer, *_binary([1, 28, 28, 1], None, image[:700], "UINT8"))
        want, words = 400, "784"
    elif case == "json":
        r = _post(url, infer, b'{"inputs": [')
        want, words = 400, "JSON"
    elif case == "header lies":
        body, _ = _binary([1, 28, 28, 1], None, image, "UINT8")
        r = _post(url, infer, body, {"Inference-Header-Content-Length": str(len(body) + 10)})
        want, words = 400, "Inference-Header-Content-Length"
    elif case == "header short":
        body, headers = _binary([1, 28, 28, 1], None, image, "UINT8")
        r = _post(url, infer, body, {"Inference-Header-Content-Length": str(int(headers["Inference-Header-Content-Length"]) - 5)})
        want, words = 400, "JSON"
    elif case == "too large":
        r = _post(url, infer, *_binary([1, 1024, 1024, 3], None, bytes(3 << 20), "UINT8"))
        want, words = 413, "at most"
    elif case == "no output":
        r = _post(url, infer, *_binary([1, 28, 28, 1], None, image, "UINT8", outputs=[{"name": "logits"}]))
        want, words = 400, "probs"
    elif case == "method":
        r = httpx.get(f"http://{url}{infer}", timeout=10)
        want, words = 405, "POST"
    elif case == "no route":
        r = httpx.get(f"http://{url}/v3/models", timeout=10)
        want, words = 404, "/v2"
    elif case == "bytes layout":
        body = pack_bytes(np.array([b"hello"], dtype=object))[:-2]
        header = json.dumps({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(body)}}]}).encode()
        r = _post(url, "/v2/models/textgen/infer", header + body, {"Inference-Header-Content-Length": str(len(header))})
        want, words = 400, "claims"
    elif case == "json data":
        r = _post(url, infer, json.dumps({"inputs": [{"name": "image", "shape": [1, 2, 2, 1], "datatype": "UINT8",
                                                      "data": [1, 2, "x", 4]}]}).encode())
        want, words = 400, "UINT8"
    else:
        r = _post(url, infer, b"[1, 2]")
        want, words = 400, "object"
    assert r.status_code == want, (r.status_code, r.text)
    error = r.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in error, error
    ok = _post(url, infer, *_binary([1, 28, 28, 1], None, image, "UINT8"))
    assert ok.status_code == 200, ok.text


def test_a_thousand_connections_at_once_then_the_next_request_works(protocol_server):
    url, _, _ = protocol_server
    host, port = url.split(":")
    image = np.full((1, 8, 8, 1), 255, np.uint8)
    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "UINT8",
                                   "data": image.reshape(-1).tolist()}]}).encode()
    request = (f"POST /v2/models/classify_model/infer HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body

    async def one() -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        status = (await reader.readline()).split()[1]
        writer.close()
        return int(status)

    async def main():
        return await asyncio.gather(*(one() for _ in range(1000)), return_exceptions=True)

    statuses = asyncio.run(main())
    errors = [s for s in statuses if not isinstance(s, int)]
    assert not errors and all(s == 200 for s in statuses), (errors[:3], sorted(set(map(str, statuses))))
    assert httpx.get(f"http://{url}/v2/health/ready", timeout=10).status_code == 200


def test_the_triton_repository_agrees_with_the_manifests_and_its_loops_run(protocol_server, tmp_path):
    """Every config.pbtxt parses as Triton's ModelConfig and names the manifest's tensors; the Python-backend
    models run their model.py with each graph call sent (as BLS would) to the graph model's own file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from pipeline.triton import write_repository

    _, bundles, app = protocol_server
    repo = tmp_path / "repo"
    names = write_repository([b.path for b in bundles.values()], repo)
    assert set(names) == set(app.models)
    for name, model in app.models.items():
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.name == name and config.max_batch_size == model.max_batch
        batched = model.max_batch > 0
        for specs, tensors in ((model.inputs, config.input), (model.outputs, config.output)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for s, t in zip(specs, tensors):
                assert mc.DataType.Name(t.data_type) == ("TYPE_STRING" if s.datatype == "BYTES" else f"TYPE_{s.datatype}")
                dims = list(s.shape[1:] if batched else s.shape)
                assert list(t.dims) == (dims or [1]) and (bool(dims) or list(t.reshape.shape) == [])
        if model.graph is None:
            assert config.backend == "python" and (repo / name / "1" / "model.py").is_file()
        else:
            assert config.platform == "onnxruntime_onnx" and config.HasField("dynamic_batching") == batched
            assert (repo / name / "1" / config.default_model_filename).read_bytes() == \
                (model.bundle.path / config.default_model_filename).read_bytes()
    # the textgen loop model through a stand-in of triton_python_backend_utils
    pb = _fake_pb_utils(repo)
    sys.modules["triton_python_backend_utils"] = pb
    try:
        spec = importlib.util.spec_from_file_location("triton_textgen_model", repo / "textgen" / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        model.initialize({})
        prompts = np.array([b"The return value"], dtype=object)
        request = pb.Request({"prompt": prompts}, {"max_new_tokens": 8, "temperature": 0})
        (response,) = model.execute([request])
        assert response.error is None, response.error.message()
        variant = json.loads((repo / "textgen" / "1" / "bundle" / "triton.json").read_text())["variant"]
        on_ort = {"opt": "fp32", "openvino": "fp32"}.get(variant, variant)  # what the repository's file is on ORT
        want = TABS["textgen"].whole(bundles["textgen"]).run({"prompt": prompts}, {"max_new_tokens": 8, "temperature": 0},
                                                            on_ort if on_ort != "openvino-int8" else "fp32")
        assert len(response.tensors["text"][0]) and (on_ort == "openvino-int8" or
                                                     list(response.tensors["text"]) == list(want["text"]))
        (bad,) = model.execute([pb.Request({"prompt": prompts}, {"max_new_tokens": 10**6})])
        assert bad.error is not None and "max new tokens" in bad.error.message()
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
        sys.modules.pop("triton_textgen_model", None)


def _fake_pb_utils(repo):
    """The parts of Triton's Python backend utilities that model.py uses; a BLS request runs the graph
    model's file from the repository on ONNX Runtime."""
    from serve.runtime import OrtSession
    from tritonclient.grpc import model_config_pb2 as mc
    from google.protobuf import text_format

    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, np.asarray(value)

        def as_numpy(self):
            return self.value

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.tensors, self.error = {t.name: t.value for t in output_tensors}, error

        def has_error(self):
            return self.error is not None

    @functools.cache
    def session(model):
        config = text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())
        return OrtSession(repo / model / "1" / config.default_model_filename)

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            out = session(self.model)({t.name: t.value for t in self.inputs})
            return InferenceResponse([Tensor(n, out[n]) for n in self.outputs])

    class Request:
        def __init__(self, tensors, parameters):
            self.tensors, self._parameters = tensors, parameters

        def parameters(self):
            return json.dumps(self._parameters)

    pb.Tensor, pb.TritonError, pb.InferenceResponse, pb.InferenceRequest, pb.Request = (
        Tensor, TritonError, InferenceResponse, InferenceRequest, Request)
    pb.get_input_tensor_by_name = lambda request, name: (Tensor(name, request.tensors[name])
                                                         if name in request.tensors else None)
    pb.get_output_tensor_by_name = lambda response, name: Tensor(name, response.tensors[name])
    return pb


def test_the_example_client_runs_against_serve(protocol_server):
    """examples/triton_client.py: the README's client, the one that runs against Triton as well."""
    import subprocess

    from tests.conftest import ROOT

    url = protocol_server[0]
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "triton_client.py"), "--url", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.strip().splitlines())
    assert {"models", "classify", "textgen", "imagegen"} <= set(lines), proc.stdout
    assert lines["classify"].strip()[0].isdigit() and "4 images of" in lines["imagegen"]
    down = subprocess.run([sys.executable, str(ROOT / "examples" / "triton_client.py"), "--url", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and down.stderr.startswith("error: cannot reach")


def test_concurrent_greedy_generations_share_one_loop_and_read_as_alone(protocol_server):
    url, bundles, app = protocol_server
    whole = TABS["textgen"].whole(bundles["textgen"])
    prompts = [b"The return value", b"A list of", b"If x is None, the"]
    alone = [whole.run({"prompt": np.array([p], dtype=object)}, {"max_new_tokens": 10, "temperature": 0}, None)["text"][0]
             for p in prompts]
    batcher = app.batchers["textgen"]
    before, batcher.window = batcher.calls, 0.1  # the smoke model answers before the next request lands
    client = tritonclient_http.InferenceServerClient(url, concurrency=len(prompts))
    pending = []
    for p in prompts:
        t = tritonclient_http.InferInput("prompt", [1], "BYTES")
        t.set_data_from_numpy(np.array([p], dtype=object))
        pending.append(client.async_infer("textgen", [t], parameters={"max_new_tokens": 10, "temperature": 0}))
    try:
        got = [r.get_result().as_numpy("text")[0] for r in pending]
    finally:
        batcher.window = 0.0
    assert got == alone
    assert batcher.calls - before < len(prompts), "the generations were not joined"
    seeded = TABS["textgen"].whole(bundles["textgen"]).batch_key
    assert seeded({}, {"temperature": 0.8, "seed": 3}) is None and seeded({}, {"temperature": 0}) is not None
