"""Triton Inference Server's model configuration of a protocol model, as the JSON form of Triton's
``ModelConfig`` protobuf (field names as in ``model_config.proto``): what ``GET /v2/models/{name}/config``
answers, and what ``python -m pipeline triton`` writes as each model's ``config.pbtxt`` (rendered by
:func:`to_pbtxt`). One source for both, read from the manifest's contract.

- a graph: platform ``onnxruntime_onnx`` (``tensorrt_plan`` for an engine); when every tensor leads with
  the ``batch`` axis, ``max_batch_size`` is the contract's largest batch, the dims leave it out, and
  Triton's dynamic batcher gathers requests; a scalar is dims ``[1]`` reshaped to ``[]``;
- the variant that serving picks (or the one asked for) decides the file and the accelerator: OpenVINO
  variants run on ONNX Runtime's OpenVINO accelerator, the others on its CPU provider (Triton's ORT
  optimizes the portable graph at load, as our ``opt`` variant was made);
- a loop task: the Python backend, whose ``model.py`` runs serve's loop over the graph models (BLS).
"""
from __future__ import annotations

from typing import Any

from serve.bundle import variant_file, variant_runtime

TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
         "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
         "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING"}
QUEUE_DELAY_US = 500  # Triton's dynamic batcher: how long a request waits for others


def triton_file(model: Any, variant: str) -> str:
    """The file a graph model's version folder holds for ``variant`` (OpenVINO: the ONNX file it reads)."""
    graph = model.graph
    if variant == "opt":  # Triton's ONNX Runtime optimizes at load: the portable file, not ours
        variant = "fp32"
    return model.bundle.manifest["graphs"][graph]["files"].get(variant) or variant_file(graph, variant)


def model_config(model: Any, variant: str | None = None) -> dict[str, Any]:
    """The configuration of ``model`` (a :class:`serve.protocol.Model`) serving ``variant`` (default: the
    bundle's default serving choice)."""
    variant = variant or model.bundle.default_variant
    batched = model.max_batch > 0

    def tensor(spec: Any) -> dict[str, Any]:
        dims = list(spec.shape[1:] if batched else spec.shape)
        entry: dict[str, Any] = {"name": spec.name, "data_type": TYPES[spec.datatype], "dims": dims or [1]}
        if not dims:
            entry["reshape"] = {"shape": []}
        if spec.optional:
            entry["optional"] = True
        return entry

    config: dict[str, Any] = {"name": model.name, "max_batch_size": model.max_batch,
                              "input": [tensor(s) for s in model.inputs], "output": [tensor(s) for s in model.outputs],
                              "instance_group": [{"count": 1, "kind": "KIND_GPU" if variant == "tensorrt" else "KIND_CPU"}],
                              "version_policy": {"latest": {"num_versions": 1}},
                              "parameters": {"bundle": {"string_value": model.bundle.name},
                                             "variant": {"string_value": variant}}}
    if model.graph is None:
        config["backend"] = "python"
        return config
    if variant == "tensorrt":
        config["platform"] = "tensorrt_plan"
    else:
        config["platform"] = "onnxruntime_onnx"
        config["backend"] = "onnxruntime"
    config["default_model_filename"] = triton_file(model, variant)
    if batched:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": QUEUE_DELAY_US}
    if variant_runtime(variant) == "openvino":
        config["optimization"] = {"execution_accelerators": {"cpu_execution_accelerator": [{"name": "openvino"}]}}
    return config


def to_pbtxt(config: dict[str, Any]) -> str:
    """The JSON form of a ModelConfig -> protobuf text format (``config.pbtxt``). Enum values (``TYPE_*``,
    ``KIND_*``) are written bare, strings quoted, maps (``parameters``) as key/value entries."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str) and (value.startswith(("TYPE_", "KIND_"))):
            return value
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def emit(key: str, value: Any, indent: str, is_map: bool = False) -> None:
        if is_map:
            for k, v in value.items():
                lines.append(f"{indent}{key} {{")
                lines.append(f'{indent}  key: "{k}"')
                emit("value", v, indent + "  ")
                lines.append(f"{indent}}}")
        elif isinstance(value, dict):
            lines.append(f"{indent}{key} {{")
            for k, v in value.items():
                emit(k, v, indent + "  ")
            lines.append(f"{indent}}}")
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                lines.append(f"{indent}{key}: [ {', '.join(scalar(v) for v in value)} ]")
            else:
                for v in value:
                    emit(key, v, indent)
        else:
            lines.append(f"{indent}{key}: {scalar(value)}")

    for key, value in config.items():
        emit(key, value, "", is_map=key == "parameters")
    return "\n".join(lines) + "\n"
