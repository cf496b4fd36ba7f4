"""The benchmark stage: every backend side by side on the task's cases (torch eager and
torch.compile, ONNX Runtime in each accepted variant, OpenVINO, TensorRT), each running the served
computation and scored on the held-out sets; it records the fastest accepted variant per case as the
manifest's ``serving``. Writes benchmark.json, .md and .png into the bundle."""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from export.benchmark import sample_call, summarize
from export.verify import TorchRunner
from pipeline import plots, progress
from pipeline.card import benchmark_table
from pipeline.errors import PipelineError
from pipeline.fileio import write_json, write_text
from pipeline.run import Run, as_run, require_exported
from pipeline.tasks.base import RunConfig, Task
from serve.bundle import BundleError, cpu_info, cpu_line, first_line, graph_files, metric_columns
from serve.bundle import shown as shown_value
from serve.openvino_runtime import openvino_missing
from serve.runtime import Bundle, ServingChoice

BENCHMARK_FILES = ("benchmark.json", "benchmark.md", "benchmark.png")

def compiled_modules(graphs: dict) -> dict[str, torch.nn.Module]:
    """Each graph's module under ``torch.compile`` (dynamic shapes). A graph assembled around another
    one (a sampler's loop around its denoiser step) keeps its loop in Python and calls the compiled step,
    as a PyTorch user would write it: compiling the loop itself would unroll every step count into a
    graph of its own."""
    out = {g: torch.compile(graph.module, dynamic=True) for g, graph in graphs.items() if graph.assemble is None}
    for g, graph in graphs.items():
        if graph.assemble is not None:
            step = graphs[graph.assemble[0]].module
            loop = copy.copy(graph.module)  # the same loop, its step child swapped for the compiled one
            loop._modules = {k: out[graph.assemble[0]] if m is step else m for k, m in graph.module._modules.items()}
            if all(m is not out[graph.assemble[0]] for m in loop._modules.values()):
                raise TypeError(f"graph {g!r} does not hold the {graph.assemble[0]!r} module it loops over")
            out[g] = loop
    return out


def benchmark(run: Run | str | Path) -> list[dict]:
    """Latency and throughput of every backend side by side on the task's cases, each backend
    running the served computation (the task's loop over its graphs), with its metric."""
    run = as_run(run)
    require_exported(run)
    progress.report("benchmark", run.dir, detail="timing every backend")
    bcfg, task, m = run.cfg.benchmark, run.task, run.manifest
    metric = task.metric.name
    torch_threads = torch.get_num_threads()
    try:
        bundle = Bundle.open(run.dir, threads=bcfg.threads)
    except BundleError as e:
        raise PipelineError(str(e)) from None
    def rebuild(variant: str) -> str:
        return f"rerun `python -m pipeline {'export' if variant == 'fp32' else 'optimize'} {run.dir}`"

    for variant, entry in m["variants"].items():  # an accepted variant must be benchmarked, not skipped
        for f in graph_files(m, variant).values() if entry.get("status") == "accepted" else ():
            if f in bundle.bad_files:
                raise PipelineError(f"{run.dir / f} is corrupt or was changed after it was written "
                                    f"({bundle.bad_files[f]}); {rebuild(variant)}")
    columns = metric_columns(m)
    torch_served = m["metrics"].get("torch_served", m["metrics"].get("torch", {}))
    torch_metric = {key: torch_served.get(key) for _, key in columns}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # beside ORT's CUDA provider where there is one
    torch_runners = {g: TorchRunner(graph.module, graph.contract, device) for g, graph in run.graphs.items()}
    backends: dict[str, tuple[dict[str, Any], dict]] = {"torch eager": (torch_runners, torch_metric)}
    skipped: dict[str, str] = {}
    if bcfg.torch_compile:  # the peer a PyTorch user would try first: inductor, scored like the rest
        try:
            modules = compiled_modules(run.graphs)
            compiled = {g: TorchRunner(modules[g], graph.contract, device) for g, graph in run.graphs.items()}
            scores, _ = run.score(compiled)
            backends["torch.compile"] = (compiled, {key: scores.get(key) for _, key in columns})
        except Exception as e:  # noqa: BLE001 - no compiler here, an unsupported op: the row is skipped, saying why
            skipped["torch.compile"] = f"{e.__class__.__name__}: {first_line(e, 200)}"
    for variant in ("openvino", "openvino-int8"):  # peers that did not run here, and why
        entry = m["variants"].get(variant, {})
        if why := openvino_missing() or (entry.get("reason") if entry.get("status") == "failed" else ""):
            skipped[BACKEND_NAMES[variant]] = why
    served: dict[str, str] = {}  # backend name -> the variant serving would run
    for variant in bundle.variants():
        try:
            runners = bundle.runners(variant)
        except BundleError as e:
            raise PipelineError(f"{run.dir}: {e}; {rebuild(variant)}") from None
        name = BACKEND_NAMES.get(variant, f"ORT {variant}")
        served[name] = variant
        backends[name] = (runners, {key: m["variants"][variant].get(key) for _, key in columns})
        if variant == "fp32":  # the same graph with ORT's threads spinning when idle (python -m serve --spin)
            spinning = Bundle.open(run.dir, threads=bcfg.threads, spin=True).runners("fp32")
            backends["ORT fp32 spin"] = (spinning, dict(backends[name][1]))
    cases = task.benchmark_cases(run.data, run.cfg)
    if not cases:
        raise PipelineError(f"task {task.name} names no benchmark case")
    if bcfg.threads:
        torch.set_num_threads(bcfg.threads)
    try:
        rows = _time_cases(task, run.cfg, cases, backends)
    finally:
        torch.set_num_threads(torch_threads)
        for graph in run.graphs.values():
            graph.module.cpu()
    axes = list(cases[0].axes)
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})", flush=True)
    cpu = cpu_info()
    print(f"cpu: {cpu_line(cpu)}", flush=True)
    info = {"cpu": cpu, "torch_device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "threads": bcfg.threads or torch_threads,
            "seconds_per_cell": bcfg.seconds, "metric": metric, "unit": task.bench_unit, "axes": axes, "rows": rows,
            "skipped": skipped}
    m["serving"] = judge_serving(run, bundle, _fastest(rows, axes, served), _fastest_single(rows, axes, served), cpu)
    write_json(run.dir / "benchmark.json", info)
    write_text(run.dir / "benchmark.md", f"CPU: {cpu_line(cpu)}; {info['threads']} threads\n\n"
               + benchmark_table(rows, axes, columns, task.bench_unit, m.get("baselines")))
    plots.plot_benchmark(rows, axes, task.bench_unit, run.dir / "benchmark.png")
    for f in BENCHMARK_FILES:
        run.record(f)
    m["benchmark"] = {"file": "benchmark.json", "cpu": cpu, "summary": _ratios(rows, axes),
                      "headline": _headline(rows, axes, served, m["serving"])}
    run.save()
    return rows


def _time_cases(task: Task, cfg: RunConfig, cases: list,
                backends: dict[str, tuple[dict, dict]]) -> list[dict]:
    """Every backend on every case, side by side: the median and p90 latency of the task's served
    computation, the throughput in the task's unit, and the backend's metric. The grid is timed in
    ``rounds`` passes and each cell's timings pooled over them (drift moves every cell alike)."""
    bcfg = cfg.benchmark
    cells = [(case, name, values, task.bench_call(runners, case, cfg))
             for case in cases for name, (runners, values) in backends.items()
             if not case.backends or name in case.backends]
    times: list[list[float]] = [[] for _ in cells]
    with tqdm(total=len(cells) * bcfg.rounds, desc="benchmark", leave=False, disable=None) as bar:
        for r in range(bcfg.rounds):
            for i, (_, _, _, call) in enumerate(cells):
                times[i] += sample_call(call, bcfg.seconds / bcfg.rounds, -(-bcfg.min_runs // bcfg.rounds),
                                        warmup=3 if r == 0 else 1)
                bar.update(1)
                progress.report("benchmark", step=bar.n, total=bar.total, detail="timing every backend")
    rows = []
    for (case, name, values, _), t in zip(cells, times):
        timing = summarize(t)
        row = {"backend": name, **case.axes, **timing, "throughput": case.units * 1000.0 / timing["median_ms"],
               "unit": task.bench_unit, **values}
        rows.append(row)
        axes = "  ".join(f"{k} {v:>4}" for k, v in case.axes.items())
        print(f"{name:12s} {axes}  median {row['median_ms']:9.3f} ms  p90 {row['p90_ms']:9.3f} ms  "
              f"{row['throughput']:10.1f} {task.bench_unit}/s", flush=True)
    return rows


BACKEND_NAMES = {"tensorrt": "TensorRT", "openvino": "OpenVINO fp32", "openvino-int8": "OpenVINO INT8"}  # benchmark rows of served variants


def _fastest(rows: list[dict], axes: list[str], served: dict[str, str]) -> list[dict[str, Any]]:
    """Per benchmarked case, the accepted variant serving can run (ONNX Runtime, OpenVINO, TensorRT: not
    torch) with the lowest median latency: [{"axes": {"batch": 1, "phase": "prefill", "context": 512},
    "variant": "int8"}, ...]. Serving runs each call on the case nearest it (``serve.runtime.ServingChoice``):
    a text prompt and the decode steps after it may run on different backends."""
    cases: dict[tuple, dict[str, float]] = {}  # case axes -> variant -> median ms
    for r in rows:
        if r["backend"] in served:
            key = tuple((a, r[a]) for a in axes if a in r)
            cases.setdefault(key, {})[served[r["backend"]]] = r["median_ms"]
    return [{"axes": dict(key), "variant": min(times, key=lambda v: (times[v], v))} for key, times in cases.items()]


def _fastest_single(rows: list[dict], axes: list[str], served: dict[str, str]) -> str:
    """The accepted variant serving can run that is fastest over every case at once (the geometric mean
    of its median latencies, over the variants timed in every case): what serving falls back to."""
    times: dict[str, list[float]] = {}
    for r in rows:
        if r["backend"] in served:
            times.setdefault(served[r["backend"]], []).append(r["median_ms"])
    most = max((len(t) for t in times.values()), default=0)
    scored = {v: math.exp(sum(map(math.log, t)) / len(t)) for v, t in times.items() if len(t) == most}
    return min(scored, key=lambda v: (scored[v], v)) if scored else "fp32"


def judge_serving(run: Run, bundle: Bundle, cases: list[dict[str, Any]], fallback: str,
                  cpu: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest's ``serving`` (``serve.bundle.Serving``): the per-call choice ``cases``, judged as a
    whole like a variant. When every case names one variant, the choice is that variant, whose metrics
    are already judged; a mix is scored on the held-out sets through the runtime's own choice
    (``ServingChoice``; ``mix_metrics``) and, when it loses more than the tolerance, rejected: serving
    then runs ``fallback`` (the fastest accepted single variant) on every call. ``metrics`` are always
    those of what is served."""
    columns = metric_columns(run.manifest)

    def metrics_of(variant: str) -> dict[str, Any]:  # a judged variant's own figures
        entry = run.manifest["variants"].get(variant, {})
        return {key: entry.get(key) for _, key in columns}

    chosen = sorted({c["variant"] for c in cases})
    serving: dict[str, Any] = {"cases": cases, "fallback": fallback, "status": "accepted", "reason": None}
    if cpu is not None:
        serving["cpu"] = cpu
    if len(chosen) <= 1:
        serving["metrics"] = metrics_of(chosen[0] if chosen else fallback)
        return serving
    choice = ServingChoice([(c["axes"], c["variant"]) for c in cases], fallback, bundle.variants())
    runners = {g: bundle.served(g, functools.partial(run.task.call_axes, g), choice) for g in run.graphs}
    scores, _ = run.score(runners)
    status, reason = run.judge(scores)
    mix = {key: scores.get(key) for _, key in columns}
    serving.update(status=status, reason=reason, mix_metrics=mix)
    serving["metrics"] = mix if status == "accepted" else metrics_of(fallback)  # what is served
    used = {v: sum(r.used.get(v, 0) for r in runners.values()) for v in chosen}
    shown = ", ".join(f"{k} {shown_value(v)}" for k, v in mix.items())
    print(f"served per call ({', '.join(f'{v} {n} calls' for v, n in used.items())}): {shown}: {status}"
          + (f" ({reason}); serving falls back to {fallback}" if reason else ""), flush=True)
    return serving


PEERS = ("torch.compile", "OpenVINO fp32", "OpenVINO INT8")  # other runtimes of the same model


def _headline(rows: list[dict], axes: list[str], served: dict[str, str], serving: dict[str, Any]) -> dict[str, Any]:
    """The first case in one line for the Models tab: what serving runs, its median latency, torch eager's and
    the fastest peer runtime's."""
    first = {a: rows[0][a] for a in axes}
    times = {r["backend"]: r["median_ms"] for r in rows if all(r[a] == v for a, v in first.items())}
    cases = serving.get("cases") or []
    variant = cases[0]["variant"] if cases and serving.get("status") == "accepted" else serving.get("fallback", "fp32")
    backend = next((name for name, v in served.items() if v == variant), None)
    peers = {name: times[name] for name in PEERS if name in times}
    peer = min(peers, key=peers.get) if peers else None
    return {"case": first, "variant": variant, "ms": times.get(backend), "torch_eager_ms": times.get("torch eager"),
            "peer": peer, "peer_ms": peers.get(peer)}


def _ratios(rows: list[dict], axes: list[str]) -> dict[str, float]:
    """Each backend's speed-up over torch eager in the first case (median latency ratio)."""
    first = {a: rows[0][a] for a in axes}
    times = {r["backend"]: r["median_ms"] for r in rows if all(r[a] == v for a, v in first.items())}
    ref = times.get("torch eager")
    label = "_".join(f"{a}{v}" for a, v in first.items())
    return {f"{k} speedup_{label}": ref / v for k, v in times.items() if ref and k != "torch eager"}
