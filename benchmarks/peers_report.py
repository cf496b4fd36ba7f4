"""Issue 12's bar, read from bundles' benchmarks: is what serving runs as fast as the best peer?

    .venv/bin/python benchmarks/peers_report.py                       # the newest quick bundle of each task
    .venv/bin/python benchmarks/peers_report.py artifacts/detect/RUN ...

For every case of batch 1 and of the largest batch (32 where timed), the variant serving runs for
that case (``Bundle.serving_variant``, from the manifest's ``serving``), its median latency (and throughput) against the fastest of the
peers timed in the same run (ONNX Runtime in every variant, OpenVINO, TensorRT, torch.compile), their
ratio and whether it is within 10%; then the served variant's metric beside fp32's, with its status
(accepted: within the task's tolerance). Peers run as serving runs them, idle threads sleeping; the
``ORT fp32 spin`` row (``python -m serve --spin``) is shown beside, not counted. Prints markdown.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.benchmark import BACKEND_NAMES  # noqa: E402
from serve.runtime import Bundle  # noqa: E402

PEERS = ("ORT", "OpenVINO", "TensorRT", "torch.compile")
BAR = 1.10


def newest_quick(artifacts: Path) -> list[Path]:
    out = []
    for task in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        runs = sorted(r for r in task.glob("*-quick") if (r / "benchmark.json").is_file())
        out += runs[-1:]
    return out


def report(run: Path) -> list[str]:
    m = json.loads((run / "manifest.json").read_text())
    bench = json.loads((run / "benchmark.json").read_text())
    axes, rows, unit = bench["axes"], bench["rows"], bench["unit"]
    batches = sorted({r["batch"] for r in rows})
    lines, bundle, used = [], Bundle.open(run), set()
    for batch in sorted({batches[0], 32 if 32 in batches else batches[-1]}):
        cases = {tuple(r[a] for a in axes) for r in rows if r["batch"] == batch}
        for case in sorted(cases):
            variant = bundle.serving_variant(**dict(zip(axes, case)))
            served_name = BACKEND_NAMES.get(variant, f"ORT {variant}")
            here = [r for r in rows if tuple(r[a] for a in axes) == case]
            served = next((r for r in here if r["backend"] == served_name), None)
            peers = [r for r in here if r["backend"].startswith(PEERS) and not r["backend"].endswith("spin")]
            spin = next((f"{r['median_ms']:.3g} ms" for r in here if r["backend"] == "ORT fp32 spin"), "-")
            if served is None or not peers:
                continue
            best = min(peers, key=lambda r: r["median_ms"])
            ratio = served["median_ms"] / best["median_ms"]
            used.add(variant)
            label = ", ".join(f"{a} {v}" for a, v in zip(axes, case) if a != "cache")
            lines.append(f"| {m['task']} | {label} | {variant} | {served['median_ms']:.3g} ms, "
                         f"{served['throughput']:,.0f} {unit}/s | {best['backend']} {best['median_ms']:.3g} ms | "
                         f"{ratio:.2f} | {'yes' if ratio <= BAR else '**no**'} | {spin} |")
    metric = m["metric"]["name"]
    for variant in sorted(used):
        entry, fp32 = m["variants"].get(variant, {}), m["variants"]["fp32"]
        lines.append(f"| {m['task']} | metric of {variant} | {entry.get('status')} | {metric} {entry.get(metric, 0):.4g} "
                     f"(fp32 {fp32.get(metric, 0):.4g}) | tolerance {m['metric'].get('tolerance')} | | | |")
    return lines


COLUMNS = ("torch eager", "torch.compile", "ORT fp32", "ORT fp32 spin", "ORT opt", "ORT int8", "ORT fp16", "OpenVINO fp32",
           "OpenVINO INT8")


def medians(run: Path) -> list[str]:
    """One row per case (cached text cases only): each backend's median ms, and the served variant."""
    m = json.loads((run / "manifest.json").read_text())
    bench = json.loads((run / "benchmark.json").read_text())
    axes, rows = bench["axes"], bench["rows"]
    lines, bundle = [], Bundle.open(run)
    for case in sorted({tuple(r[a] for a in axes) for r in rows}):
        if dict(zip(axes, case)).get("cache") == "no":
            continue
        here = {r["backend"]: r["median_ms"] for r in rows if tuple(r[a] for a in axes) == case}
        cells = [f"{here[c]:.3g}" if c in here else ("failed" if c in bench.get("skipped", {}) else "-") for c in COLUMNS]
        label = ", ".join(f"{a} {v}" for a, v in zip(axes, case) if a != "cache")
        lines.append(f"| {m['task']} | {label} | " + " | ".join(cells) + f" | {bundle.serving_variant(**dict(zip(axes, case)))} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="*", type=Path)
    args = p.parse_args()
    runs = args.runs or newest_quick(ROOT / "artifacts")
    if not runs:
        sys.exit("error: no bundle with a benchmark found; name one, or run `python -m pipeline run TASK --preset quick`")
    print("| task | case | served | served's median, throughput | fastest peer | ratio | within 10% | ORT fp32 spin |")
    print("|---|---|---|---|---|---:|---|---:|")
    for run in runs:
        print("\n".join(report(run)))
    print("\n| task | case | " + " | ".join(COLUMNS) + " | served |")
    print("|---|---|" + "---:|" * len(COLUMNS) + "---|")
    for run in runs:
        print("\n".join(medians(run)))


if __name__ == "__main__":
    main()
