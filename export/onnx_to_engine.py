"""ONNX -> TensorRT engine (FP16, one optimization profile over the contract's min/opt/max shapes).

Needs the ``gpu`` extra (tensorrt) and an NVIDIA GPU; :func:`unavailable_reason` says in one line
why not, elsewhere. The engine is tied to one GPU model and TensorRT version: both go in its file
name and the manifest. Engines are run by ``serve/engine.py`` (torch-free), in the pipeline too.
"""
from __future__ import annotations

from pathlib import Path

from export.contract import ExportContract


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:  # pragma: no cover - export/ always has torch
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def unavailable_reason() -> str | None:
    """None when an engine can be built here, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install '.[gpu]' on a machine with an NVIDIA GPU)"
    if _gpu_name() is None:
        return "TensorRT needs an NVIDIA GPU, and none is visible (torch.cuda.is_available() is False)"
    return None


def target() -> tuple[str, str]:
    """(GPU model, TensorRT version) an engine built here is tied to; both go in its file name."""
    import tensorrt as trt

    return _gpu_name() or "gpu", trt.__version__


def build_engine(onnx_path: Path, plan_path: Path, contract: ExportContract, fp16: bool = True,
                 workspace_gib: float = 2.0) -> dict[str, str]:
    """Parse ``onnx_path``, build a serialized engine to ``plan_path``; returns what it was built for."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for spec in contract.inputs:
        profile.set_shape(spec.name, *(contract.shape_for(spec, w) for w in ("min", "opt", "max")))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan_path.write_bytes(bytes(serialized))
    return {"gpu": _gpu_name() or "", "tensorrt": trt.__version__, "precision": "fp16" if fp16 else "fp32"}
