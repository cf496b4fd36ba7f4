"""The text-generation figures of the README, from a textgen bundle (or a fresh quick run).

    .venv/bin/python benchmarks/textgen_report.py                      # runs `run textgen --preset quick`
    .venv/bin/python benchmarks/textgen_report.py artifacts/textgen/RUN [--text FILE ...]

Prints: the run's wall time (when it ran it), bits/byte per variant on the held-out documents and the
stress prose beside xz, parity, prefill tokens/s, decode per-token latency by context, and the ratios
the issue asks for (decode at context 512 over 32; torch eager over ORT per step). ``--text`` scores
any other UTF-8 text file through ``model.onnx`` alone (onnxruntime + numpy: serve's bits_per_byte).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.runtime import OrtSession  # noqa: E402
from serve.tasks.textgen import CacheSpec, bits_per_byte  # noqa: E402


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "benchmark.json").read_text())["rows"]


def _median(rows, **where) -> float | None:
    got = [r["median_ms"] for r in rows if all(r.get(k) == v for k, v in where.items())]
    return statistics.median(got) if got else None


def report(run: Path, texts: list[Path], wall: float | None) -> None:
    m = json.loads((run / "manifest.json").read_text())
    metrics, variants = m["metrics"], m["variants"]
    print(f"bundle {run}" + (f"  (run textgen --preset quick: {wall:.0f} s wall)" if wall else ""))
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r.get("seconds", 0) for r in train if r.get("split") == "val")
    print(f"training: {seconds:.0f} s of steps, {train[-1].get('step')} steps")
    print("\n| model | test bits/byte | stress bits/byte | status |\n|---|---:|---:|---|")
    print(f"| PyTorch | {metrics['torch_served']['bits_per_byte']:.3f} | {metrics['torch_served'].get('stress', 0):.3f} | |")
    for v, e in variants.items():
        mode = f" ({e['mode']})" if "mode" in e else ""
        print(f"| ORT {v}{mode} | {e.get('bits_per_byte', float('nan')):.3f} | {e.get('stress', float('nan')):.3f} "
              f"| {e['status']} {e.get('reason', '')} |")
    for name, b in m.get("baselines", {}).items():
        print(f"| {name} | {b['bits_per_byte']:.3f} | {b.get('stress', float('nan')):.3f} | baseline |")
    for name, p in m["parity"].items():
        print(f"parity {name}: greedy {100 * p['greedy_agreement']:.0f}% of prompts "
              f"({100 * p['greedy_byte_agreement']:.1f}% of bytes), max |Δ prefill logits| "
              f"{p['max_abs_prefill_logit_diff']:.2e}, |Δ bits/byte| {p['bits_per_byte_diff']:.1e}")
    rows = _rows(run)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    print("\nprefill tokens/s")
    prompts = sorted({r["context"] for r in rows if r["phase"] == "prefill"})
    print("| backend | " + " | ".join(f"b{b} p{p}" for b in batches for p in prompts) + " |")
    print("|---|" + "---:|" * (len(batches) * len(prompts)))
    for name in backends:
        cells = []
        for b in batches:
            for p in prompts:
                r = [x for x in rows if x["backend"] == name and x["phase"] == "prefill" and x["batch"] == b
                     and x["context"] == p]
                cells.append(f"{r[0]['throughput']:,.0f}" if r else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    contexts = sorted({r["context"] for r in rows if r["phase"] == "decode"})
    print("\ndecode, ms per token (median)")
    print("| backend | cache | " + " | ".join(f"b{b} c{c}" for b in batches for c in contexts) + " |")
    print("|---|---|" + "---:|" * (len(batches) * len(contexts)))
    for name in backends:
        for cache in ("yes", "no"):
            cells = [_median(rows, backend=name, phase="decode", batch=b, context=c, cache=cache)
                     for b in batches for c in contexts]
            if any(x is not None for x in cells):
                print(f"| {name} | {cache} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in cells) + " |")
    lo, hi = contexts[0], contexts[-1]
    for b in batches:
        a, z = (_median(rows, backend="ORT fp32", phase="decode", batch=b, context=c, cache="yes") for c in (lo, hi))
        t = _median(rows, backend="torch eager", phase="decode", batch=b, context=lo, cache="yes")
        t_hi = _median(rows, backend="torch eager", phase="decode", batch=b, context=hi, cache="yes")
        print(f"batch {b}: ORT fp32 decode c{hi} / c{lo} = {z / a:.2f}x; torch eager / ORT fp32 per step: "
              f"c{lo} {t / a:.2f}x, c{hi} {t_hi / z:.2f}x")
    if texts:
        spec = CacheSpec.of(m["info"])
        session = OrtSession(run / "model.onnx", name="model.onnx")
        for path in texts:
            data = path.read_bytes()
            print(f"{path}: {bits_per_byte(session, data, spec):.3f} bits/byte over {len(data):,} bytes "
                  "(model.onnx alone)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a textgen bundle; none: run the quick preset first")
    ap.add_argument("--text", nargs="*", type=Path, default=[], help="other text files to score through model.onnx")
    args = ap.parse_args()
    wall = None
    if args.run is None:
        from pipeline.stages import run_all

        t0 = time.perf_counter()
        run = run_all("textgen", "quick")
        wall = time.perf_counter() - t0
    else:
        run = Path(args.run)
    report(run, args.text, wall)


if __name__ == "__main__":
    main()
