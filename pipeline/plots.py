"""Figures people would rather look at than read: training curves and the benchmark chart."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.fileio import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(records: list[dict], metric: str, path: Path) -> None:
    """Training loss per logged step, validation loss and ``metric`` per epoch."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train (step)")
    if val:
        ax1.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", ms=3, label="val (epoch)")
        ax2.plot([r["epoch"] for r in val], [r[metric] for r in val], "o-", ms=3, color="C2")
    ax1.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    ax1.legend()
    ax2.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    ax2.grid(alpha=0.3)
    _save(fig, path)


def plot_benchmark(rows: list[dict], path: Path) -> None:
    """Batch-1 latency and the largest batch's throughput per backend, side by side."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    sizes = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    lat = [next((r["median_ms"] for r in rows if r["backend"] == b and r["batch"] == sizes[0]), 0) for b in backends]
    axes[0].barh(backends, lat, color="C0")
    axes[0].set(xlabel="ms (median)", title=f"latency, batch {sizes[0]} (lower is better)")
    width = 0.8 / max(1, len(sizes) - 1)
    for i, size in enumerate(sizes[1:]):
        thr = [next((r["throughput_per_s"] for r in rows if r["backend"] == b and r["batch"] == size), 0)
               for b in backends]
        axes[1].barh([j + i * width for j in range(len(backends))], thr, height=width, label=f"batch {size}")
    axes[1].set_yticks([j + width * (len(sizes) - 2) / 2 for j in range(len(backends))], backends)
    axes[1].set(xlabel="samples/s", title="throughput (higher is better)")
    axes[1].legend()
    for ax in axes:
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
