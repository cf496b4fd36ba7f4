"""ONNX Runtime sessions: providers in order of preference, and a numpy-in numpy-out call."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def session(path: str | Path, providers: list[str] | None = None, threads: int = 0) -> ort.InferenceSession:
    """An InferenceSession on the best available providers (or those given)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    available = ort.get_available_providers()
    chosen = providers or [p for p in PREFERRED if p in available]
    return ort.InferenceSession(str(path), sess_options=opts, providers=chosen)


def run(sess: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return sess.run(None, inputs)
