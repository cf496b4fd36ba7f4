"""ONNX Runtime's own settings on a bundle's model.onnx, side by side: graph optimization level, intra-op
threads, idle-thread spinning, the CPU memory arena, the layout transformers (NCHWc for fp32 Conv, NHWC
for the INT8 graph's quantized Conv, each left out in turn), and OpenVINO (f32) beside them; with ``--profile``,
where ORT's time goes, from its own profiler (``enable_profiling``), by operator type.

    .venv/bin/python benchmarks/ort_settings.py artifacts/segment/RUN [--batches 1 32] [--profile]

Each setting runs the bundle's first held-out example (repeated to the batch size) in interleaved
rounds; prints the median ms per setting and batch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve.inputs import decode_image  # noqa: E402
from serve.openvino_runtime import OpenVinoSession, openvino_missing  # noqa: E402

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session(data: bytes, level: str, threads: int, spin: bool, arena: bool = True, profile: str = "",
            disabled: tuple[str, ...] = ()):
    o = ort.SessionOptions()
    o.graph_optimization_level = LEVELS[level]
    o.intra_op_num_threads = threads
    o.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    o.enable_cpu_mem_arena = arena
    if profile:
        o.enable_profiling, o.profile_file_prefix = True, profile
    # ``disabled``: ORT's own graph transformers left out by name (the layout ones: NchwcTransformer
    # rewrites fp32 Conv into blocked NCHWc kernels, NhwcTransformer quantized Conv into NHWC ones)
    s = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
    run = lambda feeds: s.run(None, feeds)  # noqa: E731
    run.session = s
    return run


def profile(data: bytes, feeds: dict, calls: int = 20) -> str:
    """Shares of ORT's kernel time by operator type over ``calls`` runs (after one warm-up run)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = session(data, "all", 2, False, profile=str(Path(tmp) / "ort"))
        for _ in range(calls + 1):
            run(feeds)
        events = json.loads(Path(run.session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
    total = sum(by_op.values()) or 1.0
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in top) + f" (kernels {total / 1000 / calls:.2f} ms/call)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="also print ORT's time by operator type (its profiler)")
    args = p.parse_args()
    m = json.loads((args.run / "manifest.json").read_text())
    if m["task"] not in ("classify", "detect", "segment"):
        sys.exit(f"error: {args.run} is a {m['task']} bundle; this script times the image tasks' single graph "
                 "(the text graph's cases are in its benchmark.json)")
    data = (args.run / "model.onnx").read_bytes()
    image = decode_image(args.run / m["examples"][0])
    if m["task"] == "classify":
        image = image[..., :1]
    settings = {f"ORT {lv}, 2 threads, sleep": session(data, lv, 2, False) for lv in LEVELS}
    settings["ORT all, 1 thread"] = session(data, "all", 1, False)
    settings["ORT all, 2 threads, spin"] = session(data, "all", 2, True)
    settings["ORT all, 2 threads, sleep, no arena"] = session(data, "all", 2, False, arena=False)
    settings["ORT all without NchwcTransformer"] = session(data, "all", 2, False, disabled=("NchwcTransformer",))
    int8 = args.run / "model.int8.onnx"
    if int8.is_file():  # the layouts on the static QDQ graph: ORT fuses it to QLinearConv, NHWC by default
        q = int8.read_bytes()
        settings["ORT int8, all"] = session(q, "all", 2, False)
        settings["ORT int8, all without NhwcTransformer"] = session(q, "all", 2, False, disabled=("NhwcTransformer",))
        settings["ORT int8, extended"] = session(q, "extended", 2, False)
    if not openvino_missing():
        settings["OpenVINO f32"] = OpenVinoSession(data, name="model.onnx")
    for n in args.batches:
        feeds = {"image": np.repeat(image[None], n, axis=0)}
        if m["task"] == "detect":
            feeds.update(score_threshold=np.array(0.4, np.float32), iou_threshold=np.array(0.45, np.float32))
        times: dict[str, list[float]] = {k: [] for k in settings}
        for _ in range(args.rounds):
            for name, run in settings.items():
                run(feeds)
                for _ in range(10 if n < 8 else 3):
                    t = time.perf_counter()
                    run(feeds)
                    times[name].append(time.perf_counter() - t)
        print(f"{m['task']} batch {n}: " + "; ".join(f"{k} {1000 * statistics.median(v):.2f}" for k, v in times.items()))
        if args.profile:
            print(f"{m['task']} batch {n}, ORT's profile: {profile(data, feeds, 20 if n < 8 else 5)}")


if __name__ == "__main__":
    main()
