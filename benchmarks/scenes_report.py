"""The detection and segmentation figures of the README, from a detect and a segment bundle (or fresh
quick runs), and a picture of what the exported graphs find on held-out and stress scenes.

    .venv/bin/python benchmarks/scenes_report.py                                  # runs both quick presets
    .venv/bin/python benchmarks/scenes_report.py artifacts/detect/RUN artifacts/segment/RUN

Prints per bundle: the training and whole-run time, the metric per variant on the test scenes and on
the stress scenes (a composition never trained on), parity, and the benchmark's medians with ORT
fp32's speed-up over torch eager per batch size. Writes ``scenes.png`` beside each bundle's files:
held-out and stress scenes with the detections (or masks) that ``model.onnx`` alone gives.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve.runtime import OrtSession  # noqa: E402


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "benchmark.json").read_text())["rows"]


def report(run: Path, wall: float | None) -> None:
    m = json.loads((run / "manifest.json").read_text())
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r.get("seconds", 0) for r in train if r.get("split") == "val")
    print(f"\n== {m['task']} {run}" + (f"  (run --preset quick: {wall:.0f} s wall)" if wall else ""))
    print(f"training {seconds:.0f} s")
    print(f"torch (served computation): {json.dumps(m['metrics'].get('torch_served', {}))}")
    for name, v in m["variants"].items():
        values = {k: round(x, 2) for k, x in v.items() if isinstance(x, float)}
        print(f"  {name:6s} {v['status']:9s} {values} {v.get('mode', '')} {v.get('reason', '')}")
    for name, p in m["parity"].items():
        print(f"parity {name}: " + json.dumps({k: v for k, v in p.items() if k != "description"}))
    rows = _rows(run)
    for batch in sorted({r["batch"] for r in rows}):
        cells = {r["backend"]: r["median_ms"] for r in rows if r["batch"] == batch}
        torch_ms, ort_ms = cells.get("torch eager"), cells.get("ORT fp32")
        shown = "  ".join(f"{k} {v:.2f}" for k, v in cells.items())
        print(f"batch {batch:3d}  {shown}  ms;  ORT fp32 speed-up {torch_ms / ort_ms:.2f}x" if torch_ms and ort_ms
              else f"batch {batch}: {shown}")
    picture(run, m)


def picture(run: Path, m: dict, count: int = 6) -> None:
    """Scenes from the bundle's examples with what model.onnx finds, side by side, in scenes.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from serve.inputs import decode_image

    session = OrtSession(run / "model.onnx", name="model.onnx")
    labels = m["info"]["labels"]
    files = [run / f for f in m["examples"]][: count - 2] + [run / f for f in m["examples"] if "stress" in f][:2]
    fig, axes = plt.subplots(1, len(files), figsize=(3.2 * len(files), 3.4), layout="constrained")
    for ax, file in zip(np.atleast_1d(axes), files):
        image = decode_image(file)
        ax.imshow(image)
        if m["task"] == "detect":
            out = session({"image": image[None], "score_threshold": np.array(0.4, np.float32),
                           "iou_threshold": np.array(0.45, np.float32)})
            for box, score, c in zip(out["boxes"][0, : out["num_detections"][0]], out["scores"][0], out["labels"][0]):
                x1, y1, x2, y2 = box
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red", lw=1.2))
                ax.text(x1, y1 - 1, f"{labels[c]} {score:.2f}", color="white", fontsize=7,
                        bbox={"facecolor": "red", "pad": 0.5, "lw": 0})
        else:
            mask = session({"image": image[None]})["mask"][0]
            ax.imshow(np.ma.masked_equal(mask, 0), cmap="tab10", alpha=0.6, vmin=1, vmax=10, interpolation="nearest")
        ax.set_title(file.stem, fontsize=8)
        ax.axis("off")
    fig.savefig(run / "scenes.png", dpi=110)
    print(f"picture: {run / 'scenes.png'}")


def quick(task: str) -> tuple[Path, float]:
    out = ROOT / "artifacts"
    before = set((out / task).glob("*")) if (out / task).exists() else set()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", task, "--preset", "quick"], cwd=ROOT, check=True)
    (run,) = set((out / task).glob("*")) - before
    return run, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="detect and/or segment bundles (default: fresh quick runs)")
    args = parser.parse_args()
    runs = [(r, None) for r in args.runs] or [quick("detect"), quick("segment")]
    for run, wall in runs:
        report(run, wall)


if __name__ == "__main__":
    main()
