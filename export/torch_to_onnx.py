"""torch -> ONNX: a deployable module to a self-contained, checked ``.onnx`` file."""
from __future__ import annotations

import inspect
import logging
import warnings
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import onnx
import torch

from export.contract import EXACT_KEY, ExportContract, dim_parts


class ExportError(Exception):
    """The model could not be exported, or the export does not match PyTorch."""


def _dynamic_shapes(contract: ExportContract) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic shapes from the contract: one Dim per named dimension; a sum ("past+seq",
    which torch.export cannot write as a Dim of two Dims) is left for the exporter to relate (AUTO)."""
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in contract.dims.items()}

    def dim(d: str):
        parts = dim_parts(d)
        return dims[parts[0]] if len(parts) == 1 else torch.export.Dim.AUTO

    return {spec.name: {i: dim(d) for i, d in enumerate(spec.shape) if isinstance(d, str)} for spec in contract.inputs}


def export_onnx(module: torch.nn.Module, example: dict[str, torch.Tensor], contract: ExportContract, path: Path,
                metadata: dict[str, str]) -> onnx.ModelProto:
    """Export ``module`` (eval mode, on CPU) with ``torch.onnx.export(dynamo=True)``.

    The graph keeps its weights inside (no side ``.onnx.data`` file), passes ``onnx.checker``
    (full check, with shape inference), names its I/O as the contract says and carries
    ``metadata`` in ``metadata_props``.
    """
    module = module.eval().cpu()
    args = tuple(example[spec.name] for spec in contract.inputs)
    shapes = tuple(_dynamic_shapes(contract)[s.name] for s in contract.inputs)
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        # forward(*inputs): graphs whose inputs depend on the config (a KV cache per layer)
        shapes = (shapes,)
    quiet = StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
            program = torch.onnx.export(
                module, args, input_names=[s.name for s in contract.inputs],
                output_names=[s.name for s in contract.outputs], opset_version=contract.opset, dynamo=True,
                dynamic_shapes=shapes,
                external_data=False, verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed: {e.__class__.__name__}: {str(e).splitlines()[0]}") from e
    model = program.model_proto
    if contract.exact:  # read back by export.onnx_to_ort when it builds the fp16 and int8 variants
        metadata = {**metadata, EXACT_KEY: ",".join(contract.exact)}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"exported graph fails onnx.checker: {e}") from e
    got = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    want = [s.name for s in contract.inputs], [s.name for s in contract.outputs]
    if got != want:
        raise ExportError(f"exported graph I/O {got} does not match the contract {want}")
    onnx.save_model(model, str(path))
    return model


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
