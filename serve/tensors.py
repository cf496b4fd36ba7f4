"""Tensors of the Open Inference Protocol (KServe v2): datatypes, JSON data and Triton's binary tensor
data extension, both ways. No HTTP here: :mod:`serve.protocol` reads requests with these and writes
answers with them.

A request body is a JSON header, optionally followed by the inputs' raw bytes in the header's order; the
``Inference-Header-Content-Length`` header gives the JSON's length, and each binary input says its own
size in ``parameters.binary_data_size``. BYTES elements travel as a 4-byte little-endian length and the
bytes, one after another (Triton's layout, which ``tritonclient`` writes and reads).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.bundle import BundleError

# protocol datatype <-> numpy; BYTES are numpy object arrays of ``bytes``
DATATYPES = {"BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
             "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
             "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
             "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
             "BYTES": np.dtype(object)}
OF_DTYPE = {v: k for k, v in DATATYPES.items()}


class ProtocolError(BundleError):
    """A request the protocol refuses: the message is the answer's ``error``, ``status`` its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def datatype_of(dtype: Any) -> str:
    """numpy dtype (or its name) -> protocol datatype."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    if dt not in OF_DTYPE:
        raise ProtocolError(f"no protocol datatype for {dt}")
    return OF_DTYPE[dt]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model's signature: -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    doc: str = ""
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _elements(shape: list[int]) -> int:
    return math.prod(int(d) for d in shape)  # Python ints: a product in int64 could wrap to 0


def pack_bytes(values: np.ndarray) -> bytes:
    """BYTES elements -> Triton's wire layout (length-prefixed, row-major)."""
    out = []
    for v in values.reshape(-1):
        b = v if isinstance(v, bytes) else str(v).encode()
        out.append(struct.pack("<I", len(b)))
        out.append(b)
    return b"".join(out)


def unpack_bytes(data: memoryview, count: int, name: str) -> np.ndarray:
    """Triton's wire layout -> ``count`` BYTES elements; a layout that does not add up is refused."""
    out, at = [], 0
    for _ in range(count):
        if at + 4 > len(data):
            raise ProtocolError(f"input {name}: its BYTES data end before element {len(out) + 1} of {count}")
        (n,) = struct.unpack_from("<I", data, at)
        if at + 4 + n > len(data):
            raise ProtocolError(f"input {name}: element {len(out) + 1} claims {n} bytes; only {len(data) - at - 4} follow")
        out.append(bytes(data[at + 4:at + 4 + n]))
        at += 4 + n
    if at != len(data):
        raise ProtocolError(f"input {name}: {len(data) - at} bytes left over after its {count} BYTES elements")
    value = np.empty(len(out), dtype=object)
    value[:] = out
    return value


def from_raw(raw: memoryview, datatype: str, shape: list[int], name: str, said: str = "its raw data has") -> np.ndarray:
    """One input's raw bytes (a binary tensor over HTTP, ``raw_input_contents`` over gRPC) -> its array."""
    count = _elements(shape)
    if datatype == "BYTES":
        return unpack_bytes(raw, count, name).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {name}: shape {shape} of {datatype} takes {count * dtype.itemsize} bytes; "
                            f"{said} {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(value: np.ndarray) -> tuple[str, bytes]:
    """An output -> its datatype and raw bytes (a binary tensor over HTTP, ``raw_output_contents`` over gRPC)."""
    datatype = datatype_of(value.dtype)
    return datatype, pack_bytes(value) if datatype == "BYTES" else np.ascontiguousarray(value).tobytes()


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"input {name}: shape must be a list of whole numbers >= 0, got {str(value)[:80]}")
    return value


def declared(name: str, shape: Any, datatype: Any, max_elements: int = 1 << 28) -> tuple[list[int], str]:
    """An input's declared shape and datatype, checked (a known datatype, at most ``max_elements``)."""
    shape = _shape(shape, name)
    if datatype not in DATATYPES:
        raise ProtocolError(f"input {name}: datatype {str(datatype)[:20]!r} is not one of {', '.join(DATATYPES)}")
    count = _elements(shape)
    if count > max_elements:
        raise ProtocolError(f"input {name}: shape {shape} holds {count} elements; the limit is {max_elements}", 413)
    return shape, datatype


def decode_inputs(header: dict[str, Any], blob: memoryview, max_elements: int = 1 << 28) -> dict[str, np.ndarray]:
    """A request header's ``inputs`` (and the binary data after the header) -> {name: array}."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request has no 'inputs' (a list of tensors: name, shape, datatype, data)")
    out: dict[str, np.ndarray] = {}
    at = 0
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a name, shape, datatype and data")
        name = t["name"]
        if name in out:
            raise ProtocolError(f"input {name} is given twice")
        shape, datatype = declared(name, t.get("shape"), t.get("datatype"), max_elements)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input {name}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name}: binary_data_size must be a whole number >= 0")
            if at + size > len(blob):
                raise ProtocolError(f"input {name}: binary_data_size says {size} bytes, but only {len(blob) - at} "
                                    "bytes of binary data follow the header")
            value = from_raw(blob[at:at + size], datatype, shape, name, "binary_data_size says")
            at += size
        else:
            if "data" not in t:
                raise ProtocolError(f"input {name} has neither data nor parameters.binary_data_size")
            value = _from_json(t["data"], datatype, shape, name)
        out[name] = value
    if at != len(blob):
        raise ProtocolError(f"{len(blob) - at} bytes of binary data after the header belong to no input "
                            f"(the inputs' binary_data_size add up to {at})")
    return out


def _from_json(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else np.array([data], dtype=object)
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input {name}: BYTES data in JSON must be strings")
        value = np.empty(len(flat), dtype=object)
        value[:] = [v.encode() for v in flat]
    else:
        try:
            value = np.asarray(data, dtype=DATATYPES[datatype])
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(f"input {name}: its data are not all {datatype} numbers") from None
        if value.dtype.kind in "iub" and isinstance(data, list):
            flat = np.asarray(data, dtype=object).reshape(-1) if value.size else []
            if any(isinstance(v, float) for v in flat):
                raise ProtocolError(f"input {name}: {datatype} data must be whole numbers")
    if value.size != _elements(shape):
        raise ProtocolError(f"input {name}: shape {shape} holds {_elements(shape)} elements; its data has {value.size}")
    return value.reshape(shape)


def encode_outputs(outputs: dict[str, np.ndarray], binary: dict[str, bool]) -> tuple[list[dict], list[bytes]]:
    """{name: array} -> the answer's ``outputs`` entries and the binary chunks that follow the JSON."""
    entries, chunks = [], []
    for name, value in outputs.items():
        value = np.asarray(value)
        datatype = datatype_of(value.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary.get(name):
            _, raw = to_raw(value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
        else:
            entry["data"] = value.reshape(-1).tolist()
        entries.append(entry)
    return entries, chunks
