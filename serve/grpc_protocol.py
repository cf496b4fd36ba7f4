"""The Open Inference Protocol over gRPC: KServe v2's ``inference.GRPCInferenceService``, as Triton
serves it (its port 8001), so ``tritonclient.grpc`` and KServe's gRPC clients reach ``python -m serve``.

The same models, versions, checks, batching and loops as the HTTP side (:class:`serve.protocol.Protocol`):
each call is decoded here and handed to the protocol's one :meth:`~serve.protocol.Protocol.call` on the
HTTP server's event loop, so concurrent calls over HTTP and gRPC batch together. The service's messages
are the ones ``tritonclient[grpc]`` ships (``service_pb2``, ``model_config_pb2``): nothing generated here.

Tensors travel as ``raw_input_contents`` / ``raw_output_contents`` (tritonclient's way; BYTES elements
length-prefixed as over HTTP) or as typed ``contents``. A refusal is the call's gRPC status with the
protocol's one-line message: ``NOT_FOUND`` for an unknown model or version, ``INVALID_ARGUMENT`` for a
bad tensor, ``RESOURCE_EXHAUSTED`` above the size limit, ``INTERNAL`` for a fault of the server.
``ModelStreamInfer`` answers each request of the stream in turn (a failed one is an ``error_message``,
the stream goes on).
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's core logs its own lines on stderr; ours say what failed
import grpc  # noqa: E402
import numpy as np
from google.protobuf import json_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2 as pb, service_pb2_grpc as rpc  # noqa: E402

from serve.protocol import EXTENSIONS, SERVER, Model, Protocol, _version, internal_error, refusal
from serve.tensors import ProtocolError, _elements, _from_json, declared, from_raw, to_raw

CODES = {404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL}
# typed contents: the InferTensorContents field that holds each datatype (FP16 travels raw only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class Refused(Exception):
    """A call answered with a gRPC status and the protocol's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _refusal(e: Exception) -> Refused:
    """The protocol's answer to a failure (:func:`serve.protocol.refusal`) as a gRPC status."""
    status, message = refusal(e)
    return Refused(CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT), message)


def parameter(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def decode_request(request: pb.ModelInferRequest, max_elements: int = 1 << 28) -> dict[str, np.ndarray]:
    """A ModelInferRequest's inputs -> {name: array}: raw contents (one per input, in order) or typed ones."""
    if not request.inputs:
        raise ProtocolError("the request has no inputs")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents "
                            "(one per input, or none)")
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(request.inputs):
        if t.name in out:
            raise ProtocolError(f"input {t.name} is given twice")
        shape, datatype = declared(t.name, [int(d) for d in t.shape], t.datatype, max_elements)
        if raw:
            out[t.name] = from_raw(memoryview(raw[i]), datatype, shape, t.name)
            continue
        field = CONTENTS.get(datatype)
        if field is None:
            raise ProtocolError(f"input {t.name}: {datatype} travels in raw_input_contents only")
        values = list(getattr(t.contents, field))
        if datatype == "BYTES":
            value = np.empty(len(values), dtype=object)
            value[:] = values
            if value.size != _elements(shape):
                raise ProtocolError(f"input {t.name}: shape {shape} holds {_elements(shape)} elements; "
                                    f"its contents have {value.size}")
            out[t.name] = value.reshape(shape)
        else:
            out[t.name] = _from_json(values, datatype, shape, t.name)
    return out


def encode_response(model: Model, ran: str, outputs: dict[str, np.ndarray], request_id: str) -> pb.ModelInferResponse:
    answer = pb.ModelInferResponse(model_name=model.name, model_version=ran, id=request_id)
    for name, value in outputs.items():
        value = np.asarray(value)
        datatype, raw = to_raw(value)
        answer.outputs.add(name=name, datatype=datatype, shape=list(value.shape))
        answer.raw_output_contents.append(raw)
    return answer


class Servicer(rpc.GRPCInferenceServiceServicer):
    """The service's methods over a :class:`Protocol` (its models, its :meth:`~Protocol.call`)."""

    def __init__(self, protocol: Protocol, loop: asyncio.AbstractEventLoop):
        self.protocol, self.loop = protocol, loop

    def _answer(self, context, make):
        try:
            return make()
        except Refused as e:
            context.abort(e.code, str(e))
        except Exception as e:  # noqa: BLE001 - every refusal is a status with its message
            r = _refusal(e)
            context.abort(r.code, str(r))

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        try:  # an unknown model or version is not ready (Triton's answer), not an error
            self.protocol.model(request.name, request.version)
        except ProtocolError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name=SERVER, version=_version(), extensions=EXTENSIONS)

    def ModelMetadata(self, request, context):
        def make():
            model, _ = self.protocol.model(request.name, request.version)
            meta = model.metadata()
            return pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]])
        return self._answer(context, make)

    def ModelConfig(self, request, context):
        def make():
            model, version = self.protocol.model(request.name, request.version)
            if self.protocol.config is None:
                raise ProtocolError("this server has no model configurations", 404)
            config = json_format.ParseDict(self.protocol.config(model, version), model_config_pb2.ModelConfig())
            return pb.ModelConfigResponse(config=config)
        return self._answer(context, make)

    def RepositoryIndex(self, request, context):
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m)
                                                  for m in self.protocol.index()])

    def infer(self, request: pb.ModelInferRequest, timeout: float | None = None) -> pb.ModelInferResponse:
        """One call, run on the protocol's event loop (batched with its HTTP and gRPC company)."""
        running = None
        try:
            model, version = self.protocol.model(request.model_name, request.model_version)
            tensors = decode_request(request)
            params = {k: parameter(v) for k, v in request.parameters.items()}
            wanted = [o.name for o in request.outputs] or [s.name for s in model.outputs]
            running = asyncio.run_coroutine_threadsafe(self.protocol.call(model, version, tensors, params, wanted),
                                                       self.loop)
            outputs, ran = running.result(timeout if timeout is not None and timeout < 86400 else None)
        except TimeoutError:
            if running is not None and not running.done():  # the client's deadline, not a timeout inside the call
                running.cancel()
                raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "the call ran past the client's deadline") from None
            raise _refusal((running and running.exception()) or RuntimeError("timed out")) from None
        except Refused:
            raise
        except Exception as e:  # noqa: BLE001
            raise _refusal(e) from None
        try:
            return encode_response(model, ran, outputs, request.id)
        except Exception as e:  # noqa: BLE001 - an output the protocol cannot carry is the server's fault
            raise Refused(grpc.StatusCode.INTERNAL, internal_error(e)) from None

    def ModelInfer(self, request, context):
        return self._answer(context, lambda: self.infer(request, context.time_remaining()))

    def ModelStreamInfer(self, request_iterator, context) -> Iterator[pb.ModelStreamInferResponse]:
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self.infer(request))
            except Refused as e:
                yield pb.ModelStreamInferResponse(error_message=str(e),
                                                  infer_response=pb.ModelInferResponse(id=request.id))


class GrpcServer:
    """The service on its own port (Triton's 8001 by default), in threads of the ``python -m serve``
    process; calls run on ``protocol``'s event loop (the HTTP server must be started first)."""

    def __init__(self, protocol: Protocol, host: str, port: int, max_message: int, workers: int = 64):
        if protocol.loop is None:
            raise RuntimeError("start the protocol's HTTP server first: gRPC calls run on its event loop")
        self.server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="grpc"),
                                  options=[("grpc.max_receive_message_length", max_message),
                                           ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
        rpc.add_GRPCInferenceServiceServicer_to_server(Servicer(protocol, protocol.loop), self.server)
        self.host, self.port = host, port

    def start(self) -> None:
        """Bind (a port in use is an OSError), then serve."""
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            port = self.server.add_insecure_port(address)
        except RuntimeError:
            raise OSError(f"cannot bind {address}; is the port in use?") from None
        if not port:
            raise OSError(f"cannot bind {address}; is the port in use?")
        self.port = port
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=1).wait(5)


__all__ = ["GrpcServer", "Servicer", "decode_request", "encode_response"]
