"""Timing of numpy-in numpy-out runners: latency (median, p90) and throughput per batch size."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def time_runner(run: Runner, inputs: dict[str, np.ndarray], seconds: float, min_runs: int, warmup: int = 3) -> dict:
    """Call ``run(inputs)`` repeatedly for about ``seconds`` (at least ``min_runs`` times)."""
    for _ in range(warmup):
        run(inputs)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run(inputs)
        times.append(time.perf_counter() - t0)
    t = np.asarray(times) * 1000.0
    batch = len(next(iter(inputs.values())))
    median = float(np.median(t))
    return {"batch": batch, "runs": len(t), "median_ms": median, "p90_ms": float(np.percentile(t, 90)),
            "throughput_per_s": batch * 1000.0 / median}


def batch_of(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """``inputs`` repeated along the batch axis to exactly ``size`` rows."""
    out = {}
    for k, v in inputs.items():
        reps = -(-size // len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:size])
    return out
