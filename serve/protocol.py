"""The Open Inference Protocol (KServe v2, HTTP/REST) over the served bundles, with Triton's binary
tensor data extension: what ``tritonclient``, KServe and Triton's own tools speak.

Models (one name space for every bundle ``python -m serve`` found):

- ``{task}_{graph}``: every graph of every bundle (``classify_model``, ``asr_encoder``, ...), its I/O
  as the manifest's contract gives it (``-1`` for a dynamic dimension);
- ``{task}``: the task as a whole: the graph itself for one-graph tasks without a loop (``classify``,
  ``detect``, ``segment``), the task's serve loop over its graphs for the others (``textgen``: a prompt
  in, the text out), declared by the task's tab (:meth:`serve.tasks.base.TaskTab.whole`).

Versions are variants (``fp32``, ``opt``, ``int8``, ``openvino``, ...: the bundle's accepted ones); a
model named without a version runs each call on the serving choice (the benchmark's fastest accepted
variant for that call). Inputs are checked by the runtime's one check (:class:`serve.runtime.IOCheck`);
every refusal is ``{"error": "..."}`` with a 4xx status, a fault of the server a 500.

Concurrent calls of a graph whose tensors all lead with the ``batch`` axis are gathered into one call
(:class:`Batcher`): while one batch runs, the requests that arrive wait and run together next, as
Triton's dynamic batcher does, up to the contract's largest batch.
"""
from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import orjson

from serve.bundle import SCHEMA_VERSION, BundleError, first_line
from serve.runtime import Bundle
from serve.tensors import ProtocolError, TensorSpec, datatype_of, decode_inputs, encode_outputs

SERVER = "littlebook-onnx"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]
ROUTE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|config|infer|stats))?/?$")
Run = Callable[[dict[str, np.ndarray], dict[str, Any], "str | None"], dict[str, np.ndarray]]


def _specs(io: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(s["name"], datatype_of(s["dtype"]), tuple(d if isinstance(d, int) else -1 for d in s["shape"]),
                            s.get("doc", "")) for s in io)


class Model:
    """One model of the protocol: its signature, versions and how a call runs.

    ``gather`` > 0: concurrent calls may be joined into one (:class:`Batcher`), up to that many rows: the
    ``stacked`` inputs along their first axis, the others equal in every joined call (``batch_key`` says
    which calls may join: None, not this one); every output is split back along its first axis."""

    platform = "onnxruntime_onnx"

    def __init__(self, name: str, bundle: Bundle, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 run: Run, max_batch: int = 0, platform: str | None = None, graph: str | None = None,
                 gather: int | None = None, stacked: tuple[str, ...] | None = None,
                 batch_key: Callable[[dict[str, np.ndarray], dict[str, Any]], Any] | None = None):
        self.name, self.bundle, self.inputs, self.outputs, self.run = name, bundle, inputs, outputs, run
        self.max_batch = max_batch  # > 0: every tensor leads with the batch axis (Triton's max_batch_size)
        self.graph = graph  # the graph it runs as it is (None: a loop over the bundle's graphs)
        self.gather = max_batch if gather is None else gather
        self.stacked = tuple(s.name for s in inputs) if stacked is None else stacked
        self._key = batch_key
        if platform:
            self.platform = platform

    def batch_key(self, tensors: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
        """What calls joined into one must share (None: this call runs alone)."""
        stacked = [tensors[n] for n in self.stacked if n in tensors]
        if not self.gather or not stacked or any(v.ndim == 0 for v in stacked) or len({v.shape[0] for v in stacked}) != 1:
            return None
        shapes = tuple((n, v.dtype.str, v.shape[1:] if n in self.stacked else v.shape) for n, v in sorted(tensors.items()))
        if self._key is None:
            return shapes
        extra = self._key(tensors, params)
        return None if extra is None else (shapes, extra)

    @property
    def versions(self) -> list[str]:
        return self.bundle.variants()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": self.versions, "platform": self.platform,
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs],
                "parameters": {"bundle": self.bundle.name, "task": self.bundle.task,
                               "served_by_default": self.bundle.default_variant}}

    def check(self, tensors: dict[str, np.ndarray], outputs: list[str]) -> None:
        """Names and datatypes against the signature (shapes: the runtime's check, when it runs)."""
        known = {s.name: s for s in self.inputs}
        for name, value in tensors.items():
            if name not in known:
                raise ProtocolError(f"{self.name} has no input {name!r}; its inputs are {', '.join(known)}")
            want = known[name].datatype
            if datatype_of(value.dtype) != want:
                raise ProtocolError(f"input {name}: datatype {datatype_of(value.dtype)}; {self.name} takes {want}")
        missing = [s.name for s in self.inputs if not s.optional and s.name not in tensors]
        if missing:
            raise ProtocolError(f"{self.name} needs the inputs {', '.join(missing)}")
        names = {s.name for s in self.outputs}
        for name in outputs:
            if name not in names:
                raise ProtocolError(f"{self.name} has no output {name!r}; its outputs are {', '.join(sorted(names))}")

    def version(self, asked: str | None) -> str | None:
        if asked is None or asked == "":
            return None
        if asked not in self.versions:
            raise ProtocolError(f"{self.name} has no version {asked!r}; its versions are {', '.join(self.versions)} "
                                "(or none: the serving choice)", 404)
        return asked


def graph_model(name: str, bundle: Bundle, graph: str) -> Model:
    io = bundle.manifest["graphs"][graph]["io"]
    batched = all(s["shape"][:1] == ["batch"] for s in io["inputs"] + io["outputs"])
    max_batch = int(io.get("dims", {}).get("batch", {}).get("max", 1)) if batched else 0

    def run(tensors: dict[str, np.ndarray], parameters: dict[str, Any], variant: str | None) -> dict[str, np.ndarray]:
        variant = variant or bundle.serving_variant(bundle.batch_of(tensors, graph))
        return bundle.session(graph, variant)(tensors)

    return Model(name, bundle, _specs(io["inputs"]), _specs(io["outputs"]), run, max_batch, graph=graph)


def models_of(bundles: dict[str, Bundle]) -> dict[str, Model]:
    """Every graph as ``{task}_{graph}``, and every task as ``{task}`` (its tab's whole model, or its only graph)."""
    from serve.tasks import TABS

    out: dict[str, Model] = {}
    for task, bundle in bundles.items():
        for graph in bundle.graphs:
            out[f"{task}_{graph}"] = graph_model(f"{task}_{graph}", bundle, graph)
        whole = TABS[task].whole(bundle) if task in TABS else None
        if whole is not None:
            out[task] = Model(task, bundle, whole.inputs, whole.outputs, whole.run, platform="python",
                              gather=whole.gather, stacked=whole.stacked, batch_key=whole.batch_key)
        elif len(bundle.graphs) == 1:
            out[task] = graph_model(task, bundle, bundle.graphs[0])
    return out


# ---------------------------------------------------------------------------------------------
# Batching

Call = tuple[dict[str, np.ndarray], dict[str, Any], asyncio.Future]


class Batcher:
    """Gathers concurrent calls of one model (:attr:`Model.gather`): calls with the same batch key and
    version are joined, run as one call, and split back. While a call runs, those that arrive queue;
    then all of them (up to ``gather`` rows) run together, after waiting ``window`` seconds more for
    company (0: no wait; a lone request runs at once)."""

    def __init__(self, model: Model, executor: ThreadPoolExecutor, window: float = 0.0):
        self.model, self.executor, self.window = model, executor, window
        self.queues: dict[tuple, list[Call]] = {}
        self.busy: set[tuple] = set()
        self.calls = self.rows = 0  # counted, for the stats endpoint

    async def __call__(self, tensors: dict[str, np.ndarray], version: str | None, params: dict[str, Any] | None = None,
                       key: Any = None) -> dict[str, np.ndarray]:
        params = params or {}
        key = (version, key if key is not None else self.model.batch_key(tensors, params))
        future = asyncio.get_running_loop().create_future()
        self.queues.setdefault(key, []).append((tensors, params, future))
        if key not in self.busy:
            self.busy.add(key)
            asyncio.get_running_loop().create_task(self._drain(key, version))
        return await future

    def rows_of(self, tensors: dict[str, np.ndarray]) -> int:
        return int(next(tensors[n] for n in self.model.stacked if n in tensors).shape[0])

    async def _drain(self, key: tuple, version: str | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.queues.get(key):
                if self.window:
                    await asyncio.sleep(self.window)
                queue, taken, rows = self.queues[key], 0, 0
                while taken < len(queue) and (taken == 0 or rows + self.rows_of(queue[taken][0]) <= self.model.gather):
                    rows += self.rows_of(queue[taken][0])
                    taken += 1
                group, self.queues[key] = queue[:taken], queue[taken:]
                await loop.run_in_executor(self.executor, self._run, group, version)
        finally:
            self.busy.discard(key)
            if not self.queues.get(key):
                self.queues.pop(key, None)

    def _run(self, group: list[Call], version: str | None) -> None:
        """In a worker thread: one call for the group, each future answered on the event loop."""
        run = self.model.run
        counts = [self.rows_of(t) for t, _, _ in group]
        self.calls += 1
        self.rows += sum(counts)
        if len(group) == 1:
            results = [_outcome(run, group[0][0], group[0][1], version)]
        else:
            first = group[0][0]
            merged = {n: np.concatenate([t[n] for t, _, _ in group]) if n in self.model.stacked else v
                      for n, v in first.items()}
            joined = _outcome(run, merged, group[0][1], version)
            if isinstance(joined, BaseException):  # one bad call must not fail its neighbours: run each alone
                results = [_outcome(run, t, p, version) for t, p, _ in group]
            else:
                ends = np.cumsum(counts)[:-1]
                parts = {n: np.split(v, ends) for n, v in joined.items()}
                results = [{n: parts[n][i] for n in parts} for i in range(len(group))]
        for (_, _, future), result in zip(group, results):
            future.get_loop().call_soon_threadsafe(_settle, future, result)


def _outcome(run: Run, tensors: dict[str, np.ndarray], params: dict[str, Any], version: str | None
             ) -> dict[str, np.ndarray] | BaseException:
    try:
        return run(tensors, params, version)
    except Exception as e:  # noqa: BLE001 - handed to the waiting request
        return e


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------------------------
# The HTTP application


class Protocol:
    """The ASGI application: the protocol's routes over ``models``.

    ``max_body``: the largest request body in bytes (413 above it); ``workers``: threads that run
    calls; ``window``: the batcher's wait for company (seconds); ``concurrency``: calls of loop models
    run at once (the others wait)."""

    def __init__(self, models: dict[str, Model], max_body: int = 10 << 20, workers: int = 2, window: float = 0.0,
                 concurrency: int = 8, config: Callable[[Model, str | None], dict[str, Any]] | None = None):
        self.models, self.max_body = {}, max_body
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="v2")
        self.loops = ThreadPoolExecutor(concurrency, thread_name_prefix="v2-loop")
        self.batchers: dict[str, Batcher] = {}
        self.config, self.window = config, window
        self.loop: asyncio.AbstractEventLoop | None = None  # the HTTP server's, once it runs
        self.add(models)
        self.server_metadata = orjson.dumps({"name": SERVER, "version": _version(), "extensions": EXTENSIONS})

    def add(self, models: dict[str, Model]) -> None:
        """Serve ``models`` too (a bundle that landed while serving; a model of the same name is replaced)."""
        for n, m in models.items():
            if m.gather:
                self.batchers[n] = Batcher(m, self.executor if m.graph else self.loops, self.window if m.graph else 0.0)
            self.models[n] = m

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    self.loop = asyncio.get_running_loop()  # where other transports' calls run (gRPC)
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        try:
            status, body, headers = await self.handle(scope, receive)
        except Exception as e:  # noqa: BLE001 - every failure is the protocol's error answer
            status, message = refusal(e)
            body, headers = _error(message), None
        hdrs = [(k.encode(), v.encode()) for k, v in (headers or {"content-type": "application/json"}).items()]
        hdrs.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def handle(self, scope, receive) -> tuple[int, bytes, dict[str, str] | None]:
        path, method = scope["path"], scope["method"]
        if path in ("/v2", "/v2/"):
            _method(method, "GET")
            return 200, self.server_metadata, None
        if path in ("/v2/health/live", "/v2/health/ready"):
            _method(method, "GET")
            return 200, b"", None
        if path == "/v2/repository/index":
            _method(method, "GET", "POST")
            await _body(receive, scope, self.max_body)
            return 200, orjson.dumps(self.index()), None
        match = ROUTE.match(path)
        if not match:
            raise ProtocolError(f"no route {method} {path}; the protocol's routes start /v2 (see GET /v2)", 404)
        name, asked, action = match.groups()
        model, version = self.model(name, asked)
        if action == "infer":
            _method(method, "POST")
            return await self.infer(model, version, scope, receive)
        _method(method, "GET")
        if action is None:
            return 200, orjson.dumps(model.metadata()), None
        if action == "ready":
            return 200, b"", None
        if action == "stats":
            b = self.batchers.get(name)
            return 200, orjson.dumps({"name": name, "calls": b.calls if b else None, "rows": b.rows if b else None}), None
        if self.config is None:
            raise ProtocolError("this server has no model configurations", 404)
        return 200, orjson.dumps(self.config(model, version)), None

    def index(self) -> list[dict[str, str]]:
        """The repository index: every model at every version, all ready."""
        return [{"name": n, "version": v, "state": "READY"} for n, m in self.models.items() for v in m.versions]

    def model(self, name: str, asked: str | None = None) -> tuple[Model, str | None]:
        """The model called ``name`` and the version asked for (None: the serving choice), or a 404."""
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"no model {name!r}; the models are {', '.join(sorted(self.models))}", 404)
        return model, model.version(asked)

    async def call(self, model: Model, version: str | None, tensors: dict[str, np.ndarray], params: dict[str, Any],
                   wanted: list[str]) -> tuple[dict[str, np.ndarray], str]:
        """One inference, whichever transport brought it (HTTP here, gRPC in :mod:`serve.grpc_protocol`):
        checked, batched with its company where the model allows, run -> the ``wanted`` outputs and the
        version that ran."""
        model.check(tensors, wanted)
        batcher = self.batchers.get(model.name)
        key = model.batch_key(tensors, params) if batcher is not None else None
        if key is not None:
            outputs = await batcher(tensors, version, params, key)
        else:
            pool = self.executor if model.graph else self.loops
            outputs = await asyncio.get_running_loop().run_in_executor(pool, model.run, tensors, params, version)
        ran = version or (model.bundle.serving_variant(model.bundle.batch_of(tensors, model.graph)) if model.graph
                          else "served")
        return {n: outputs[n] for n in wanted}, ran

    async def infer(self, model: Model, version: str | None, scope, receive) -> tuple[int, bytes, dict[str, str]]:
        body = await _body(receive, scope, self.max_body)
        headers = dict(scope["headers"])
        length = headers.get(b"inference-header-content-length")
        if length is None:
            json_part, blob = body, memoryview(b"")
        else:
            try:
                n = int(length)
            except ValueError:
                raise ProtocolError(f"Inference-Header-Content-Length must be a whole number, got {length[:20]!r}") from None
            if not 0 < n <= len(body):
                raise ProtocolError(f"Inference-Header-Content-Length says {n} bytes; the body has {len(body)}")
            json_part, blob = body[:n], memoryview(body)[n:]
        try:
            request = orjson.loads(json_part)
        except orjson.JSONDecodeError as e:
            hint = "" if length is not None or not body or body[:1] == b"{" else \
                " (binary data without an Inference-Header-Content-Length header?)"
            raise ProtocolError(f"the request is not valid JSON: {first_line(e, 120)}{hint}") from None
        if not isinstance(request, dict):
            raise ProtocolError("the request must be a JSON object with 'inputs'")
        tensors = decode_inputs(request, blob)
        params = request.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("parameters must be an object")
        wanted = _wanted(request, model, params)
        outputs, ran = await self.call(model, version, tensors, params, list(wanted))
        entries, chunks = encode_outputs(outputs, wanted)
        answer = {"model_name": model.name, "model_version": ran, "outputs": entries}
        if "id" in request:
            answer["id"] = request["id"]
        head = orjson.dumps(answer)
        if not chunks:
            return 200, head, {"content-type": "application/json"}
        return 200, b"".join([head, *chunks]), {"content-type": "application/octet-stream",
                                                "inference-header-content-length": str(len(head))}


def _wanted(request: dict[str, Any], model: Model, params: dict[str, Any]) -> dict[str, bool]:
    """{output: sent as binary?}: the request's ``outputs`` (every output when it names none)."""
    every = bool(params.get("binary_data_output", False))
    asked = request.get("outputs")
    if asked is None:
        return {s.name: every for s in model.outputs}
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise ProtocolError("outputs must be a list of objects with a name")
    return {o["name"]: bool((o.get("parameters") or {}).get("binary_data", every)) for o in asked}


def _method(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ProtocolError(f"method {method} is not allowed here; use {' or '.join(allowed)}", 405)


async def _body(receive, scope, limit: int) -> bytes:
    for k, v in scope["headers"]:
        if k == b"content-length" and v.isdigit() and int(v) > limit:
            raise ProtocolError(f"the request body is {int(v)} bytes; this server takes at most {limit}", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError("the client went away", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"the request body is over {limit} bytes, this server's limit", 413)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def refusal(e: Exception) -> tuple[int, str]:
    """What a failed call answers, whichever transport: a refusal's status (4xx) and message, or 500 for a
    fault of the server (whose traceback goes to the log, not to the client)."""
    if isinstance(e, ProtocolError):
        return e.status, str(e)
    if isinstance(e, BundleError):
        return 400, str(e)
    return 500, internal_error(e)


def internal_error(e: Exception) -> str:
    """A fault of the server: its traceback logged, a one-line message for the client."""
    traceback.print_exc(file=sys.stderr)
    return f"internal error ({type(e).__name__}: {first_line(e, 160)})"


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("littlebook-onnx")
    except Exception:  # noqa: BLE001 - not installed as a package
        return f"schema-{SCHEMA_VERSION}"


# ---------------------------------------------------------------------------------------------
# Serving it


class Server:
    """The protocol on its own port, in a thread of the ``python -m serve`` process (uvicorn)."""

    def __init__(self, app: Protocol, host: str, port: int):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="on", backlog=4096, timeout_keep_alive=30,
                                http="httptools" if _has("httptools") else "h11",
                                loop="uvloop" if _has("uvloop") else "asyncio")
        self.server = uvicorn.Server(config)
        self.host, self.port = host, port
        self.socket: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Bind here (a port in use is an OSError naming why, nothing logged), then serve in a thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(4096)
        except OSError as e:
            sock.close()
            raise OSError(e.strerror or str(e)) from None
        self.socket, self.port = sock, sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="v2-server", daemon=True)
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise OSError("the inference protocol's server did not start (is its port in use?)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=5)
        if self.socket is not None:
            self.socket.close()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


__all__ = ["Model", "Protocol", "Server", "models_of", "Batcher"]
