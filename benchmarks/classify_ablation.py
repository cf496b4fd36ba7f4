"""Issue #9's ablation: what makes the classifier read drawings, measured on the test split and the
held-out drawn sets (torch, the trained weights; the exported graph computes the same, see parity).

    .venv/bin/python benchmarks/classify_ablation.py [--rows baseline,crop,strokes] [--seeds 0] [--out DIR]

Each row is ``python -m pipeline train classify --preset quick`` with the row's ``--set`` overrides,
in this process, timed; then the test split and each drawn set are scored.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import stages  # noqa: E402
from pipeline.config import merge, parse_sets  # noqa: E402
from pipeline.tasks.classify import drawn_sets  # noqa: E402

ROWS = {  # name -> (what it is, --set overrides)
    "baseline": ("whole image resized, affine augmentation, scans only (before issue 9)",
                 {"data": {"crop": "none", "augment": "affine", "drawings": 0}}),
    "crop": ("crop to ink in the graph, affine augmentation, scans only",
             {"data": {"crop": "ink", "augment": "affine", "drawings": 0}}),
    "strokes": ("crop, stroke augmentation, scans only", {"data": {"crop": "ink", "augment": "strokes", "drawings": 0}}),
    "drawings": ("crop, affine augmentation, + 500 scanned training drawings",
                 {"data": {"crop": "ink", "augment": "affine", "drawings": 50, "drawing_shapes": "narrow"}}),
    "narrow": ("crop, stroke augmentation, + 500 scanned training drawings (the quick preset before issue 28)",
               {"data": {"drawings": 50, "drawing_shapes": "narrow"}}),
    "wide": ("+ training drawings from narrow to wide (0.45-1.4 times a style's width)",
             {"data": {"drawings": 50, "drawing_shapes": "wide"}}),
    "shapes": ("+ shapes only training draws (one-stroke 8, round 0, open 4, hooked 7)",
               {"data": {"drawings": 50, "drawing_shapes": "all"}}),
    "quick": ("+ 1,000 scanned training drawings instead of 500 (the quick preset)", {}),
}


@torch.inference_mode()
def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    probs = torch.cat([model(torch.from_numpy(images[i : i + 256])) for i in range(0, len(images), 256)])
    return 100.0 * float((probs.argmax(-1).numpy() == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated train.seed values; medians (min-max) are printed")
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every row (e.g. train.epochs=20)")
    ap.add_argument("--out", type=Path, default=None, help="where runs go (default: a temporary folder)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ablation-"))
    sets = drawn_sets()
    extra = parse_sets(args.set)  # the CLI's own --set parser
    names = args.rows.split(",")
    print(f"| row | what | seconds | test % | " + " | ".join(f"{s.name} %" for s in sets) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(sets))
    for name in names:
        what, overrides = ROWS[name]
        results = []
        for seed in args.seeds.split(","):
            layer = merge(merge(overrides, extra), {"train": {"seed": int(seed)}})
            t0 = time.perf_counter()
            run = stages.train("classify", "quick", sets=layer, out=out / name)
            seconds = time.perf_counter() - t0
            model = run.model.eval()
            row = [seconds, accuracy(model, run.data.test.images, run.data.test.labels)]
            row += [accuracy(model, s.items.images, s.items.labels) for s in sets]
            results.append(row)
        cols = list(zip(*results))
        cells = [f"{statistics.median(c):.1f}" + (f" ({min(c):.1f}-{max(c):.1f})" if len(c) > 1 else "") for c in cols[1:]]
        print(f"| {name} | {what} | {statistics.median(cols[0]):.0f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
