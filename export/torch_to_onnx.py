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
from export.ops import TRANSLATIONS


class ExportError(Exception):
    """The model could not be exported, or the export does not match PyTorch."""


def _dynamic_shapes(contract: ExportContract, auto: bool = False) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic shapes from the contract: one Dim per named dimension; a sum ("past+seq",
    which torch.export cannot write as a Dim of two Dims) is left for the exporter to relate (AUTO).
    ``auto``: every dimension AUTO (for graphs whose shape arithmetic, such as padding to a stride,
    torch.export cannot prove valid over a named Dim's whole range)."""
    dims = {name: torch.export.Dim(name, min=r.min, max=r.max) for name, r in contract.dims.items()}

    def dim(d: str):
        parts = dim_parts(d)
        return dims[parts[0]] if len(parts) == 1 and not auto else torch.export.Dim.AUTO

    return {spec.name: {i: dim(d) for i, d in enumerate(spec.shape) if isinstance(d, str)} for spec in contract.inputs}


def _specialized(model: onnx.ModelProto, contract: ExportContract) -> list[str]:
    """The contract's dynamic input dimensions that the graph fixed to one size."""
    out = []
    for spec, value in zip(contract.inputs, model.graph.input):
        for d, got in zip(spec.shape, value.type.tensor_type.shape.dim):
            if isinstance(d, str) and not got.dim_param:
                out.append(f"{spec.name}.{d} = {got.dim_value}")
    return out


def _name_dims(model: onnx.ModelProto, contract: ExportContract) -> None:
    """The exporter's symbols (s0, s1, ...) of the inputs' single-name dimensions -> the contract's names,
    wherever they appear in the graph's I/O and value infos."""
    rename = {}
    for spec, value in zip(contract.inputs, model.graph.input):
        for d, got in zip(spec.shape, value.type.tensor_type.shape.dim):
            if isinstance(d, str) and len(dim_parts(d)) == 1 and got.dim_param:
                rename.setdefault(got.dim_param, d)
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for got in value.type.tensor_type.shape.dim:
            if got.dim_param in rename:
                got.dim_param = rename[got.dim_param]


def _torch_export(module: torch.nn.Module, args: tuple, contract: ExportContract, auto: bool) -> onnx.ModelProto:
    shapes = tuple(_dynamic_shapes(contract, auto)[s.name] for s in contract.inputs)
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
                dynamic_shapes=shapes, custom_translation_table=TRANSLATIONS,
                external_data=False, verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed: {e.__class__.__name__}: {str(e).splitlines()[0]}") from e
    return program.model_proto


def export_onnx(module: torch.nn.Module, example: dict[str, torch.Tensor], contract: ExportContract, path: Path,
                metadata: dict[str, str]) -> onnx.ModelProto:
    """Export ``module`` (eval mode, on CPU) with ``torch.onnx.export(dynamo=True)``.

    The graph keeps its weights inside (no side ``.onnx.data`` file), passes ``onnx.checker``
    (full check, with shape inference), names its I/O as the contract says, keeps every dimension the
    contract calls dynamic dynamic (named as the contract names it) and carries ``metadata`` in
    ``metadata_props``.
    """
    module = module.eval().cpu()
    args = tuple(example[spec.name] for spec in contract.inputs)
    model = _torch_export(module, args, contract, auto=False)
    if _specialized(model, contract):  # named Dims over-constrained (the exporter fell back to fixed sizes)
        model = _torch_export(module, args, contract, auto=True)
        _name_dims(model, contract)
    if fixed := _specialized(model, contract):
        raise ExportError(f"the exported graph fixed dimensions the contract calls dynamic: {', '.join(fixed)}")
    return finish(model, contract, path, metadata)


def assemble_onnx(build, source: Path, contract: ExportContract, path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """A graph built by ``build`` (onnx.ModelProto -> onnx.ModelProto) from the graph file ``source``
    (a sampler's Loop around a denoiser step), checked and labelled like an export."""
    try:
        model = build(onnx.load(str(source)))
    except (ValueError, KeyError, onnx.checker.ValidationError) as e:
        raise ExportError(f"cannot assemble {path.name} from {source.name}: {e}") from e
    del model.metadata_props[:]
    # built from an ORT-optimized or quantized step, it may hold com.microsoft operators, which onnx's
    # checker knows no schema for: checked then without strict shape inference
    standard = all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    return finish(model, contract, path, metadata, strict=standard)


def finish(model: onnx.ModelProto, contract: ExportContract, path: Path, metadata: dict[str, str],
           strict: bool = True) -> onnx.ModelProto:
    """``metadata`` into ``metadata_props``, onnx.checker (full, with shape inference), the contract's
    I/O names checked; saved to ``path``."""
    if contract.exact:  # read back by export.onnx_to_ort when it builds the fp16 and int8 variants
        metadata = {**metadata, EXACT_KEY: ",".join(contract.exact)}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(model, full_check=strict)
        if strict:
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
