"""Figures people would rather look at than read: training curves and the benchmark chart."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

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


def length_axis(rows: list[dict], axes: list[str]) -> str | None:
    """The benchmark's axis of sizes other than the batch (text's context, speech's seconds, the sampler's
    steps) when it takes 3 values or more: the charts' x axis."""
    best, count = None, 2
    for a in axes:
        values = {r[a] for r in rows}
        if a != "batch" and all(isinstance(v, (int, float)) for v in values) and len(values) > count:
            best, count = a, len(values)
    return best


def plot_benchmark(rows: list[dict], axes: list[str], unit: str, path: Path) -> None:
    """Latency of the first case and the throughput of every other case, per backend, side by side; where the
    cases vary a length (:func:`length_axis`), latency against that length instead, a panel per batch size
    and per value of the other axes."""
    if (x := length_axis(rows, axes)) is not None:
        return _plot_by_length(rows, axes, x, path)
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


def _plot_by_length(rows: list[dict], axes: list[str], x: str, path: Path) -> None:
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    others = [a for a in axes if a not in (x, "batch")]
    columns = list(dict.fromkeys(tuple(r[a] for a in others) for r in rows))
    batches = sorted({r["batch"] for r in rows}) if "batch" in axes else [None]
    fig, grid = plt.subplots(len(batches), len(columns), figsize=(3.9 * len(columns), 2.9 * len(batches)),
                             layout="constrained", squeeze=False, sharex=True)
    for i, batch in enumerate(batches):
        for j, column in enumerate(columns):
            ax = grid[i][j]
            for k, backend in enumerate(backends):
                points = sorted((r[x], r["median_ms"]) for r in rows if r["backend"] == backend
                                and (batch is None or r["batch"] == batch)
                                and tuple(r[a] for a in others) == column)
                if points:
                    ax.plot(*zip(*points), "o-", ms=3, lw=1.2, color=f"C{k % 10}", label=backend)
            what = ", ".join(f"{a} {v}" for a, v in zip(others, column))
            ax.set(xscale="log", yscale="log", title=", ".join(p for p in (f"batch {batch}" if batch else "", what) if p))
            ax.set_xticks(sorted({r[x] for r in rows}))
            for axis in (ax.xaxis, ax.yaxis):  # plain numbers at the measured sizes, not powers of ten
                axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(ticker.NullFormatter())
            ax.grid(alpha=0.3, which="both")
            if i == len(batches) - 1:
                ax.set_xlabel(x)
            if j == 0:
                ax.set_ylabel("ms (median, lower is better)")
    handles, labels = grid[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    _save(fig, path)
