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
    """Training loss per logged step, validation loss and ``metric`` per evaluation."""
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="train (step)")
    if val and all("loss" in r for r in val):
        ax1.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", ms=3, label="validation")
    if val:
        ax2.plot([r["step"] for r in val], [r[metric] for r in val], "o-", ms=3, color="C2")
    ax1.set(xlabel="step", ylabel="loss", yscale="log", title="loss")
    ax1.legend()
    ax2.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    ax2.grid(alpha=0.3)
    _save(fig, path)


def plot_benchmark(rows: list[dict], axes: list[str], unit: str, path: Path) -> None:
    """Latency of the first case and the throughput of every other case, per backend, side by side."""
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    cases = list(dict.fromkeys(tuple(r[a] for a in axes) for r in rows))

    def label(case) -> str:
        return ", ".join(f"{a} {v}" for a, v in zip(axes, case))

    def value(backend, case, key):
        return next((r[key] for r in rows if r["backend"] == backend and tuple(r[a] for a in axes) == case), 0)

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    ax[0].barh(backends, [value(b, cases[0], "median_ms") for b in backends], color="C0")
    ax[0].set(xlabel="ms (median)", title=f"latency, {label(cases[0])} (lower is better)")
    rest = cases[1:] or cases[:1]
    width = 0.8 / len(rest)
    for i, case in enumerate(rest):
        ax[1].barh([j + i * width for j in range(len(backends))], [value(b, case, "throughput") for b in backends],
                   height=width, label=label(case))
    ax[1].set_yticks([j + width * (len(rest) - 1) / 2 for j in range(len(backends))], backends)
    ax[1].set(xlabel=f"{unit}/s", title="throughput (higher is better)")
    ax[1].legend()
    for a in ax:
        a.invert_yaxis()
        a.grid(axis="x", alpha=0.3)
    _save(fig, path)
