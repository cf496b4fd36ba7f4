"""Issues #2 and #9's bars, measured: runs ``python -m pipeline run classify --preset quick`` (timed, as a
user would) and the same pipeline for each other architecture, then prints one table.

    .venv/bin/python benchmarks/classify_report.py [--archs resnet,lenet,vit,mlp] [--out DIR]

Bars (issues 2 and 9): quick preset >= 99.2% on the test split and >= 97% on the drawn set in <= 180 s;
every accepted variant within 0.5 points of fp32 on both; ONNX vs torch 100% top-1 agreement and
max |dp| <= 1e-4 on every held-out set; ORT fp32 batch-1 latency >= 2x lower than torch eager for the
ConvNet (lenet) and the ResNet.
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
    metric = m["metric"]
    sets = [("test", metric["name"])] + [(s, s) for s in metric.get("also_on", [])]  # (set, key in a variant)
    return {
        "arch": arch, "seconds": seconds, "torch": m["metrics"]["torch"]["accuracy"], "sets": sets,
        "variants": {name: {"status": v["status"], "mode": v.get("mode"), **{s: v.get(k) for s, k in sets}}
                     for name, v in m["variants"].items()},
        "max_abs_diff": max(p["max_abs_diff"] for p in m["parity"].values()),
        "top1_agreement": min(p["top1_agreement"] for p in m["parity"].values()),
        "torch_b1_ms": b1["torch eager"], "ort_b1_ms": b1["ORT fp32"], "int8_b1_ms": b1.get("ORT int8"),
        "speedup": b1["torch eager"] / b1["ORT fp32"], "bundle": str(run_dir),
    }


def f(x, p=2) -> str:
    return "-" if x is None else f"{x:.{p}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="resnet,lenet,vit,mlp")
    ap.add_argument("--out", help="keep the bundles here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        results = [run(a, out) for a in args.archs.split(",")]
    sets = [s for s, _ in results[0]["sets"]]
    print("| arch | wall s | torch test % | " + " | ".join(f"ONNX {s} %" for s in sets)
          + " | max abs dp (all sets) | top-1 agreement | INT8 mode | torch b1 ms | ORT b1 ms | ORT INT8 b1 ms "
          "| ORT speed-up b1 |")
    print("|---|---:|---:|" + "---:|" * len(sets) + "---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        fp32 = r["variants"]["fp32"]
        print(f"| {r['arch']} | {r['seconds']:.0f} | {f(r['torch'])} | " + " | ".join(f(fp32[s], 1) for s in sets)
              + f" | {r['max_abs_diff']:.1e} | {100 * r['top1_agreement']:.1f}% | {r['variants']['int8'].get('mode')} "
              f"| {f(r['torch_b1_ms'], 3)} | {f(r['ort_b1_ms'], 3)} | {f(r['int8_b1_ms'], 3)} | {r['speedup']:.1f}x |")
    for r in results:
        print(f"\n{r['arch']}: every variant on every held-out set (accuracy %)\n")
        print("| variant | status | " + " | ".join(sets) + " |")
        print("|---|---|" + "---:|" * len(sets))
        for name, v in r["variants"].items():
            label = f"{name} ({v['mode']})" if v.get("mode") else name
            print(f"| {label} | {v['status']} | " + " | ".join(f(v[s], 1) for s in sets) + " |")
    by = {r["arch"]: r for r in results}
    checks = []
    if "resnet" in by:
        q = by["resnet"]
        fp32 = q["variants"]["fp32"]
        checks.append(("quick preset: test split >= 99.2%", fp32["test"] >= 99.2, f"{fp32['test']:.2f}%"))
        checks.append(("quick preset: drawn set >= 97%", fp32["drawn"] >= 97, f"{fp32['drawn']:.1f}%"))
        checks.append(("quick preset: train->benchmark <= 180 s", q["seconds"] <= 180, f"{q['seconds']:.0f} s"))
        for name, v in q["variants"].items():
            if v["status"] == "accepted" and name != "fp32":
                worst = max(fp32[s] - v[s] for s in ("test", "drawn"))
                checks.append((f"quick preset: {name} within 0.5 points on test and drawn", worst <= 0.5,
                               f"worst {-worst:+.1f}"))
    for r in results:
        checks.append((f"{r['arch']}: parity on every set (100% top-1, max dp <= 1e-4)",
                       r["top1_agreement"] == 1.0 and r["max_abs_diff"] <= 1e-4,
                       f"{100 * r['top1_agreement']:.1f}%, {r['max_abs_diff']:.1e}"))
        if r["arch"] in ("resnet", "lenet"):
            checks.append((f"{r['arch']}: ORT fp32 b1 >= 2x faster than torch", r["speedup"] >= 2,
                           f"{r['speedup']:.1f}x"))
    print()
    for name, ok, shown in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {shown}")


if __name__ == "__main__":
    main()
