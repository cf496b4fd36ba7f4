"""Timing of a call: latency (median, p90) over repeated runs within a time budget."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def sample_call(fn: Callable[[], object], seconds: float, min_runs: int, warmup: int = 3) -> list[float]:
    """Latencies in ms of ``fn()`` called repeatedly for about ``seconds`` (at least ``min_runs``
    times), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def summarize(times_ms: list[float]) -> dict[str, float]:
    t = np.asarray(times_ms)
    return {"runs": len(t), "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))}

