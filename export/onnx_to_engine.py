"""ONNX -> TensorRT engine (FP16, one optimization profile over the contract's min/opt/max shapes).

Needs the ``gpu`` extra (tensorrt) and an NVIDIA GPU; :func:`unavailable_reason` says in one line
why not, elsewhere. The engine is tied to one GPU model and TensorRT version: both go in its file
name and the manifest.
"""
from __future__ import annotations

import re
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


def engine_name() -> str:
    """``model.<gpu>-trt<version>.plan``, e.g. ``model.nvidia-h100-80gb-hbm3-trt10.9.0.plan``."""
    import tensorrt as trt

    gpu = re.sub(r"[^a-z0-9]+", "-", (_gpu_name() or "gpu").lower()).strip("-")
    return f"model.{gpu}-trt{trt.__version__}.plan"


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


class EngineRunner:
    """Run a serialized engine on numpy inputs (via torch CUDA tensors for device memory)."""

    def __init__(self, plan_path: Path):
        import tensorrt as trt
        import torch

        self.torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{plan_path.name} was built for another GPU or TensorRT version; rebuild it")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.trt = trt

    def __call__(self, feeds: dict):
        torch, trt = self.torch, self.trt
        stream = torch.cuda.current_stream()
        keep = []
        for name in self.inputs:
            t = torch.from_numpy(feeds[name]).cuda().contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64,
                     trt.int32: torch.int32}[self.engine.get_tensor_dtype(name)]
            t = torch.empty(shape, dtype=dtype, device="cuda")
            outs.append(t)
            self.context.set_tensor_address(name, t.data_ptr())
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [o.float().cpu().numpy() if o.dtype == torch.float16 else o.cpu().numpy() for o in outs]
