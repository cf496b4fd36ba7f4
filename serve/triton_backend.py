"""A loop task inside Triton Inference Server: the Python backend's model runs serve's own loop (the
task's :class:`serve.tasks.base.Whole`) with each graph call sent to the repository's graph model
through Triton's business logic scripting (BLS): ``pb_utils.InferenceRequest(...).exec()``.

``python -m pipeline triton`` writes, for each loop task, ``<repo>/<task>/1/model.py`` (which imports
this), a copy of the ``serve`` package beside it and the bundle's ``manifest.json`` (the loop reads its
``info`` and ``inference``; the graph files live in the graph models). Nothing here imports
onnxruntime: the graphs run in Triton's ONNX Runtime backend.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from serve.bundle import BundleError, first_line
from serve.runtime import Bundle, IOCheck


class BlsRunner:
    """A graph call as a BLS request to the graph's own Triton model; checked as serve checks it."""

    def __init__(self, pb_utils: Any, model: str, check: IOCheck):
        self.pb, self.model, self.check = pb_utils, model, check
        self.outputs = [name for name, _, _ in check.outputs]
        self.provider = f"Triton model {model}"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check.check_inputs(feeds)
        request = self.pb.InferenceRequest(model_name=self.model, requested_output_names=self.outputs,
                                           inputs=[self.pb.Tensor(n, np.ascontiguousarray(v)) for n, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise BundleError(f"{self.model} failed: {response.error().message()}")
        return {n: self.pb.get_output_tensor_by_name(response, n).as_numpy() for n in self.outputs}


class BlsBundle(Bundle):
    """A bundle whose graphs run as Triton models (``{task}_{graph}``), each serving one variant."""

    variant: str = "fp32"
    pb_utils: Any = None

    @classmethod
    def of(cls, folder: str | Path, pb_utils: Any) -> "BlsBundle":
        folder = Path(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        bundle = cls(folder, manifest, checks={g: IOCheck(s["io"]) for g, s in manifest["graphs"].items()})
        bundle.pb_utils = pb_utils
        bundle.variant = json.loads((folder / "triton.json").read_text())["variant"]
        return bundle

    def variants(self) -> list[str]:
        return [self.variant]

    def serving_variant(self, batch: int = 1, **call: int | float | str) -> str:
        return self.variant

    def session(self, graph: str, variant: str = "fp32") -> BlsRunner:  # type: ignore[override]
        return BlsRunner(self.pb_utils, f"{self.task}_{graph}", self.checks[graph])

    def describe(self, variant: str) -> str:
        return f"{variant} on Triton"


class LoopModel:
    """What ``model.py``'s ``TritonPythonModel`` delegates to: one request -> one response."""

    def __init__(self, folder: str | Path, pb_utils: Any):
        from serve.tasks import TABS

        self.pb = pb_utils
        self.bundle = BlsBundle.of(folder, pb_utils)
        whole = TABS[self.bundle.task].whole(self.bundle)
        if whole is None:
            raise BundleError(f"task {self.bundle.task} has no loop model")
        self.whole = whole

    def execute(self, request: Any) -> Any:
        pb = self.pb
        try:
            tensors = {}
            for spec in self.whole.inputs:
                t = pb.get_input_tensor_by_name(request, spec.name)
                if t is not None:
                    tensors[spec.name] = t.as_numpy()
            params = json.loads(request.parameters() or "{}") if hasattr(request, "parameters") else {}
            outputs = self.whole.run(tensors, params, None)
            return pb.InferenceResponse(output_tensors=[pb.Tensor(n, v) for n, v in outputs.items()])
        except BundleError as e:
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(e)))
        except Exception as e:  # noqa: BLE001 - the client gets one line, Triton's log the rest
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                f"internal error ({type(e).__name__}: {first_line(e, 160)})"))


MODEL_PY = '''"""Triton Python backend: the {task} loop of serve (written by python -m pipeline triton)."""
import os
import sys

import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the copy of the serve package beside this file


class TritonPythonModel:
    def initialize(self, args):
        from serve.triton_backend import LoopModel

        self.model = LoopModel(os.path.join(HERE, "bundle"), pb_utils)

    def execute(self, requests):
        return [self.model.execute(r) for r in requests]
'''
