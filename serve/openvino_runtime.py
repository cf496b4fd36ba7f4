"""A graph run by OpenVINO (the ``openvino`` extra) from the same ``.onnx`` bytes ONNX Runtime runs:
a peer backend that reads ONNX directly, torch-free like the rest of serve."""
from __future__ import annotations

import io
import threading
from functools import cache

import numpy as np

from serve.bundle import BundleError, first_line


@cache
def openvino_missing() -> str:
    """Why OpenVINO cannot run here ("" when it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed (pip install '.[openvino]')"
    return ""


@cache
def _core():
    import openvino as ov

    return ov.Core()


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU, called with named inputs like an ORT session.
    One infer request per thread: a server calls it from several threads at once."""

    provider = "OpenVINO CPU"

    def __init__(self, model: bytes, threads: int = 0, name: str = "the graph"):
        if why := openvino_missing():
            raise BundleError(f"{name}: {why}")
        # f32: OpenVINO's CPU default on this machine is bf16 ("INFERENCE_PRECISION_HINT"), which moved the
        # U-Net's probabilities by 1e-3 and 0.08% of its mask pixels; this variant is the fp32 graph
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._model, self._config, self._name = model, config, name
        self.compiled = self._compile()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]
        self._local = threading.local()

    def _compile(self):
        try:
            core = _core()
            return core.compile_model(core.read_model(io.BytesIO(self._model)), "CPU", self._config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses of many kinds
            raise BundleError(f"{self._name} cannot be compiled by OpenVINO: {first_line(e, 300)}") from None

    def __call__(self, feeds: dict[str, np.ndarray], release: bool = False) -> dict[str, np.ndarray]:
        """``release`` (a large call): it runs on a model compiled for it alone and dropped after, since
        OpenVINO's CPU plugin keeps the memory of the largest shape it has run in the compiled model (the
        smoke U-Net: 1.1 GB kept after one 2048x2048 call, even with its infer request dropped; 1 MB
        once the compiled model goes). Small calls keep their compiled model and infer request."""
        if release:
            compiled = self._compile()
            request = compiled.create_infer_request()
        else:
            compiled, request = self.compiled, getattr(self._local, "request", None)
            if request is None:
                request = self._local.request = compiled.create_infer_request()
        results = request.infer(feeds)
        return {name: np.array(results[out]) for name, out in zip(self.output_names, compiled.outputs)}
