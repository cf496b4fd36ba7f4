"""Issue #2's bars, measured: runs ``python -m pipeline run classify --preset quick`` (timed, as a
user would) and the same pipeline for each other architecture, then prints one table.

    .venv/bin/python benchmarks/classify_report.py [--archs resnet,lenet,vit,mlp] [--out DIR]

Bars: quick preset >= 98.5% test accuracy in <= 180 s; ONNX vs torch 100% top-1 agreement and
max |dp| <= 1e-4; INT8 within 0.5 points of fp32; ORT fp32 batch-1 latency >= 2x lower than torch
eager for the ConvNet (lenet) and the ResNet.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH_SETS = {  # resnet is the quick preset itself; the others switch model.name (their own defaults)
    "resnet": [],
    "lenet": ["--set", "model.name=lenet"],
    "vit": ["--set", "model.name=vit"],
    "mlp": ["--set", "model.name=mlp", "--set", "model.image_size=8"],
}


def run(arch: str, out: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "classify", "--preset", "quick", "--out",
                           str(out / arch), *ARCH_SETS[arch]], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{arch}: pipeline failed:\n{proc.stderr[-2000:]}")
    (run_dir,) = (out / arch / "classify").iterdir()
    m = json.loads((run_dir / "manifest.json").read_text())
    rows = json.loads((run_dir / "benchmark.json").read_text())["rows"]
    b1 = {r["backend"]: r["median_ms"] for r in rows if r["batch"] == 1}
    v = m["variants"]
    return {
        "arch": arch, "seconds": seconds, "torch": m["metrics"]["torch"]["accuracy"], "onnx": v["fp32"]["accuracy"],
        "max_abs_diff": m["parity"]["test"]["max_abs_diff"], "top1_agreement": m["parity"]["test"]["top1_agreement"],
        "stress_max_abs_diff": m["parity"]["stress"]["max_abs_diff"],
        "drawn": v["fp32"].get("drawn"), "drawn_max_abs_diff": m["parity"].get("drawn", {}).get("max_abs_diff"),
        "int8_drawn": v["int8"].get("drawn"),
        "int8_mode": v["int8"].get("mode"),
        "int8": v["int8"].get("accuracy"), "int8_status": v["int8"]["status"], "fp16": v["fp16"].get("accuracy"),
        "torch_b1_ms": b1["torch eager"], "ort_b1_ms": b1["ORT fp32"], "int8_b1_ms": b1.get("ORT int8"),
        "speedup": b1["torch eager"] / b1["ORT fp32"], "bundle": str(run_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="resnet,lenet,vit,mlp")
    ap.add_argument("--out", help="keep the bundles here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        results = [run(a, out) for a in args.archs.split(",")]
    print("| arch | wall s | torch acc | onnx acc | drawn acc | max abs dp | top-1 agree | stress / drawn max abs dp "
          "| int8 acc (drawn) | fp16 acc | torch b1 ms | ORT b1 ms | ORT int8 b1 ms | ORT speed-up b1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f = lambda x, p=2: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
        drawn_dp = "-" if r["drawn_max_abs_diff"] is None else f"{r['drawn_max_abs_diff']:.1e}"
        print(f"| {r['arch']} | {r['seconds']:.0f} | {f(r['torch'])} | {f(r['onnx'])} | {f(r['drawn'], 1)} "
              f"| {r['max_abs_diff']:.1e} | {100 * r['top1_agreement']:.1f}% "
              f"| {r['stress_max_abs_diff']:.1e} / {drawn_dp} "
              f"| {f(r['int8'])} ({f(r['int8_drawn'], 1)}; {r['int8_mode']}, {r['int8_status']}) | {f(r['fp16'])} "
              f"| {f(r['torch_b1_ms'], 3)} | {f(r['ort_b1_ms'], 3)} | {f(r['int8_b1_ms'], 3)} | {r['speedup']:.1f}x |")
    by = {r["arch"]: r for r in results}
    checks = []
    if "resnet" in by:
        q = by["resnet"]
        checks.append(("quick preset: test accuracy >= 98.5%", q["torch"] >= 98.5, f"{q['torch']:.2f}%"))
        checks.append(("quick preset: train->benchmark <= 180 s", q["seconds"] <= 180, f"{q['seconds']:.0f} s"))
    for r in results:
        checks.append((f"{r['arch']}: parity (100% top-1, max dp <= 1e-4)",
                       r["top1_agreement"] == 1.0 and r["max_abs_diff"] <= 1e-4,
                       f"{100 * r['top1_agreement']:.1f}%, {r['max_abs_diff']:.1e}"))
        if r["int8"] is not None:
            checks.append((f"{r['arch']}: INT8 within 0.5 points", r["onnx"] - r["int8"] <= 0.5,
                           f"{r['int8'] - r['onnx']:+.2f}"))
        if r["arch"] in ("resnet", "lenet"):
            checks.append((f"{r['arch']}: ORT fp32 b1 >= 2x faster than torch", r["speedup"] >= 2,
                           f"{r['speedup']:.1f}x"))
    print()
    for name, ok, shown in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {shown}")


if __name__ == "__main__":
    main()
