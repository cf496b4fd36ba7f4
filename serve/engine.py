"""A TensorRT engine (``<graph>.<gpu>-trt<version>.plan``) run from numpy, without torch.

Needs the ``gpu`` extra: tensorrt, plus cuda-python for device memory. Untested where this was
written (no TensorRT could be installed); written to TensorRT 10's documented API. The pipeline
scores and benchmarks engines through this same class.
"""
from __future__ import annotations

import threading
from functools import cache

import numpy as np

from serve.bundle import BundleError


@cache
def tensorrt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return True
    return False


class EngineSession:
    provider = "TensorRT engine"

    def __init__(self, plan: bytes, name: str = "the engine"):
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise BundleError(f"{name} needs tensorrt and cuda-python (pip install '.[gpu]'): {e}") from None
        self.trt, self.cudart = trt, cudart
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BundleError(f"{name} was built for another GPU or TensorRT {trt.__version__}; rebuild it "
                              "with `python -m pipeline optimize RUN_DIR --tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._lock = threading.Lock()  # one execution context: its shapes and addresses are per call

    def _malloc(self, nbytes: int) -> int:
        err, ptr = self.cudart.cudaMalloc(max(1, nbytes))
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise BundleError(f"cudaMalloc failed: {err}")
        return ptr

    def __call__(self, feeds: dict[str, np.ndarray], release: bool = False) -> dict[str, np.ndarray]:
        """``release`` is accepted like the other sessions'; device buffers are freed after every call."""
        with self._lock:
            return self._run(feeds)

    def _check(self, result, what: str) -> None:
        err = result[0] if isinstance(result, tuple) else result
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise BundleError(f"the TensorRT engine failed: {what} returned {err}")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, trt = self.cudart, self.trt
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        buffers = []
        try:
            for name in self.inputs:
                host = np.ascontiguousarray(feeds[name])
                ptr = self._malloc(host.nbytes)
                buffers.append(ptr)
                self._check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, h2d), "cudaMemcpy")
                self.context.set_input_shape(name, host.shape)
                self.context.set_tensor_address(name, ptr)
            hosts = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                ptr = self._malloc(host.nbytes)
                buffers.append(ptr)
                self.context.set_tensor_address(name, ptr)
                hosts[name] = (host, ptr)
            if not self.context.execute_async_v3(0):
                raise BundleError("the TensorRT engine failed to run (execute_async_v3)")
            self._check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
            for host, ptr in hosts.values():
                self._check(cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, d2h), "cudaMemcpy")
            return {n: h.astype(np.float32) if h.dtype == np.float16 else h for n, (h, _) in hosts.items()}
        finally:
            for ptr in buffers:
                cudart.cudaFree(ptr)
