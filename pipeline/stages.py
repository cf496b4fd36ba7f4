"""The stages: train -> export -> optimize -> benchmark, each on a run folder (the bundle).

Each stage writes new files under temporary names and renames them only on success, so a
failed or interrupted stage leaves the bundle as it was.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from export import onnx_to_engine, onnx_to_ort
from export.benchmark import batch_of, time_runner
from export.ort import run as ort_run
from export.ort import session as ort_session
from export.torch_to_onnx import export_onnx
from export.verify import collect, gate, torch_runner
from pipeline import bundle, plots
from pipeline.config import load_file
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, write_json, write_text
from pipeline.tasks import get_task
from pipeline.tasks.base import RunConfig, resolve
from pipeline.train import CHECKPOINT, fit, load_weights, read_metrics, setup_runtime

PARTIAL = ".partial"


@dataclass
class Run:
    """A run folder loaded back: its task, config, data and trained model."""

    dir: Path
    task: ModuleType
    cfg: RunConfig
    data: Any
    model: torch.nn.Module


# ---------------------------------------------------------------------------------------------
# train


def _run_name(preset: str) -> str:
    name = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"
    if torch.distributed.is_initialized():  # every process must agree on the folder
        holder = [name]
        torch.distributed.broadcast_object_list(holder, src=0)
        name = holder[0]
    return name


def train(task_name: str, preset: str = "quick", config_file: str | None = None, sets: dict | None = None,
          data: str | None = None, out: str | Path = "artifacts", resume: str | Path | None = None) -> Path:
    """Train a model; returns the finished run folder ``out/<task>/<run>``."""
    task = get_task(task_name)
    layers = [load_file(config_file)] if config_file else []
    if data is not None:
        layers.append({"data": {"source": str(data)}})
    layers.append(sets or {})
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.name.endswith(PARTIAL) and (run_dir / bundle.MANIFEST).is_file():
            raise PipelineError(f"cannot resume: {run_dir} is a finished run (its exports would no longer match "
                                "its weights); start a new run instead")
        saved = run_dir / bundle.CONFIG
        if not saved.is_file():
            raise PipelineError(f"cannot resume: {saved} not found")
        base = load_file(saved)
        if base.get("task") != task.NAME:
            raise PipelineError(f"cannot resume: {run_dir} is a {base.get('task')!r} run, not {task.NAME!r}")
        cfg = resolve(task, base["preset"], base, *layers)
    else:
        cfg = resolve(task, preset, *layers)
    rt = setup_runtime(cfg.train)
    dataset = task.load_data(cfg)
    cfg = task.complete_config(cfg, dataset)
    if resume is None:
        run_dir = Path(out) / task.NAME / (_run_name(cfg.preset) + PARTIAL)
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=False)
    if rt.is_main:
        write_json(run_dir / bundle.CONFIG, cfg.to_dict())
        print(f"training {task.NAME}/{cfg.model_name} ({cfg.preset}) on {dataset.source} "
              f"[{len(dataset.train)} train / {len(dataset.val)} val / {len(dataset.test)} test] "
              f"on {rt.device}{f' x {rt.world_size} processes' if rt.distributed else ''} -> {run_dir}", flush=True)
    torch.manual_seed(cfg.train.seed)
    model = task.build_model(cfg, dataset)
    meta = {"task": task.NAME, "model": cfg.model_name, "model_config": json.dumps(cfg.to_dict()["model"])}
    fit(task.make_training_step(cfg), task.evaluate, model, task.torch_split(dataset.train),
        task.torch_split(dataset.val), cfg.train, run_dir, meta, resume=resume is not None)
    if not rt.is_main:
        return run_dir
    test = task.evaluate(model, task.torch_split(dataset.test), rt.device)
    plots.plot_curves(read_metrics(run_dir), task.METRIC[0], run_dir / "curves.png")
    final = run_dir.with_name(run_dir.name.removesuffix(PARTIAL))
    manifest = bundle.new_manifest(task.NAME, final.name, cfg.to_dict(), dataset.class_names, task.METRIC)
    manifest["data"] = dataset.source
    manifest["metrics"]["torch"] = {"test": test, task.METRIC[0]: test[task.METRIC[0]]}
    bundle.write_manifest(run_dir, manifest)
    if final != run_dir:
        run_dir.rename(final)
    print(f"test {task.METRIC[0]} {test[task.METRIC[0]]:.2f}  ->  {final}", flush=True)
    return final


# ---------------------------------------------------------------------------------------------
# load a finished run


def load_run(run_dir: str | Path) -> tuple[Run, dict]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"run folder not found: {run_dir}")
    manifest = bundle.read_manifest(run_dir)
    task = get_task(manifest.get("task", "?"))
    raw = load_file(bundle.check_file(run_dir, manifest, bundle.CONFIG, "the run folder is damaged"))
    cfg = resolve(task, raw.get("preset", "quick"), raw)
    data = task.load_data(cfg)
    model = task.build_model(cfg)
    load_weights(model, bundle.check_file(run_dir, manifest, CHECKPOINT, "retrain with `python -m pipeline train`"))
    return Run(run_dir, task, cfg, data, model.eval()), manifest


def _onnx_runner(path: Path, threads: int = 0):
    """A numpy-in numpy-out call of an ONNX file on ORT's CPU provider."""
    sess = ort_session(path, ["CPUExecutionProvider"], threads=threads)
    return lambda inputs: ort_run(sess, inputs)


def _score_onnx(run: Run, runner) -> tuple[dict, list]:
    """The task's metrics of an ONNX runner on the test split, and its outputs."""
    outputs, targets = collect(runner, run.task.graph_batches(run.data.test))
    return run.task.score(outputs, targets), outputs


# ---------------------------------------------------------------------------------------------
# export


def export(run_dir: str | Path) -> Path:
    """torch -> ``model.onnx``, verified against PyTorch on the whole test split."""
    run, manifest = load_run(run_dir)
    task, contract = run.task, run.task.contract(run.cfg)
    module = task.deployable(run.model)
    dst = run.dir / bundle.ONNX
    print(f"exporting {run.dir.name} -> {dst.name}", flush=True)
    with atomic_path(dst) as tmp:
        export_onnx(module, task.example_inputs(run.data), contract, tmp, task.metadata(run.cfg, run.data))
        run_torch, run_onnx = torch_runner(module), _onnx_runner(tmp)
        reference, targets = collect(run_torch, task.graph_batches(run.data.test))
        scores, outputs = _score_onnx(run, run_onnx)
        parity = task.parity(reference, outputs)
        gate(parity, contract.parity, "the exported model.onnx")
        # inputs unlike the training data (other sizes, channel counts) take other paths inside
        stress = list(task.stress_batches(run.data))
        stress_parity = task.parity(collect(run_torch, stress)[0], collect(run_onnx, stress)[0])
        gate(stress_parity, contract.parity, f"the exported model.onnx on {task.STRESS}")
    metric = task.METRIC[0]
    manifest["io"] = contract.io_spec()
    manifest["parity"] = {**parity, "split": "test", "samples": int(sum(len(t) for t in targets)),
                          "bounds": [str(b) for b in contract.parity], task.STRESS: stress_parity}
    manifest["variants"] = {"fp32": {"file": bundle.ONNX, "status": "accepted", **scores}}
    manifest["metrics"]["onnx_fp32"] = scores
    samples = task.examples(run.data)
    _write_examples(run.dir / "examples", samples)
    manifest["examples"] = [f"examples/{name}" for name, _ in samples]
    write_text(run.dir / "MODEL_CARD.md", bundle.model_card(manifest, task.USAGE))
    bundle.write_manifest(run.dir, manifest)
    print(f"parity {json.dumps(parity)}; on {task.STRESS} {json.dumps(stress_parity)}; "
          f"onnx {metric} {scores[metric]:.2f}", flush=True)
    return dst


def _write_examples(folder: Path, examples: list[tuple[str, np.ndarray]]) -> None:
    """Held-out samples as PNG files for the app and the model card (each written atomically)."""
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for name, image in examples:
        with atomic_path(folder / name) as tmp:
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------
# optimize


def _judge(manifest: dict, scores: dict, metric: str, direction: str, max_drop: float) -> tuple[str, str | None]:
    ref = manifest["variants"]["fp32"][metric]
    drop = (ref - scores[metric]) if direction == "max" else (scores[metric] - ref)
    if drop > max_drop:
        return "rejected", f"{metric} {scores[metric]:.2f} vs fp32 {ref:.2f}: loses {drop:.2f} > {max_drop:g} points"
    return "accepted", None


def optimize(run_dir: str | Path, int8: bool = True, fp16: bool = True, tensorrt: bool = False) -> dict:
    """ORT graph optimization always; INT8, FP16 and a TensorRT engine as asked. Returns the variants."""
    if tensorrt and (reason := onnx_to_engine.unavailable_reason()):
        raise PipelineError(f"--tensorrt: {reason}")
    run, manifest = load_run(run_dir)
    src = bundle.check_file(run.dir, manifest, bundle.ONNX, "run `python -m pipeline export` first")
    if "fp32" not in manifest.get("variants", {}):
        raise PipelineError(f"{run.dir} has no verified model.onnx; run `python -m pipeline export {run.dir}`")
    metric, direction = run.task.METRIC
    ocfg = run.cfg.optimize

    def calibration():
        n = ocfg.calibration_samples
        split = type(run.data.train)(run.data.train.images[:n], run.data.train.labels[:n])
        return (inputs for inputs, _ in run.task.graph_batches(split, batch_size=32))

    def make(variant: str, build, **info) -> dict[str, Any]:
        """Build one variant file, score it on the test split, judge it against fp32."""
        dst = run.dir / bundle.VARIANT_FILES[variant]
        entry: dict[str, Any] = {"file": dst.name, **info}
        try:
            with atomic_path(dst) as tmp:
                build(tmp)
                scores, _ = _score_onnx(run, _onnx_runner(tmp))
                status, reason = _judge(manifest, scores, metric, direction, ocfg.max_drop)
                entry.update(status=status, **scores, **({"reason": reason} if reason else {}))
        except Exception as e:  # noqa: BLE001 - a variant ORT cannot build or run here is recorded, not fatal
            if dst.exists():
                dst.unlink()
            entry.update(status="failed", reason=f"{e.__class__.__name__}: {str(e).splitlines()[0][:300]}")
            entry.pop("file")
        shown = f"{entry[metric]:.2f}" if metric in entry else "-"
        label = variant + (f" ({info['mode']})" if "mode" in info else "")
        print(f"{label:14s} {entry['status']:9s} {metric} {shown}  {entry.get('reason', '')}", flush=True)
        return entry

    manifest["variants"]["opt"] = make("opt", lambda tmp: onnx_to_ort.optimize_graph(src, tmp))
    if int8:
        # auto: static first; where it fails or loses too much (attention/MatMul-heavy nets), dynamic
        attempts = []
        for mode in (["static", "dynamic"] if ocfg.int8 == "auto" else [ocfg.int8]):
            attempts.append(make("int8", lambda tmp, m=mode: onnx_to_ort.quantize_int8(src, tmp, m, calibration()),
                                 mode=mode))
            if attempts[-1]["status"] == "accepted":
                break
        manifest["variants"]["int8"] = {**attempts[-1], "attempts": [
            {k: a.get(k) for k in ("mode", "status", metric, "reason") if k in a} for a in attempts]}
    if fp16:
        manifest["variants"]["fp16"] = make("fp16", lambda tmp: onnx_to_ort.convert_fp16(src, tmp))
    if tensorrt:
        contract = run.task.contract(run.cfg)
        dst = run.dir / onnx_to_engine.engine_name()
        with atomic_path(dst) as tmp:
            built = onnx_to_engine.build_engine(src, tmp, contract)
            runner = onnx_to_engine.EngineRunner(tmp)
            outputs, targets = collect(runner, run.task.graph_batches(run.data.test))
            scores = run.task.score(outputs, targets)
        status, reason = _judge(manifest, scores, metric, direction, ocfg.max_drop)
        manifest["variants"]["tensorrt"] = {"file": dst.name, "status": status, **built, **scores,
                                            **({"reason": reason} if reason else {})}
        print(f"trt   {status:9s} {metric} {scores[metric]:.2f}", flush=True)
    write_text(run.dir / "MODEL_CARD.md", bundle.model_card(manifest, run.task.USAGE))
    bundle.write_manifest(run.dir, manifest)
    return manifest["variants"]


# ---------------------------------------------------------------------------------------------
# benchmark


def _runners(run: Run, manifest: dict, threads: int) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    runners: dict[str, Any] = {"torch eager": torch_runner(run.task.deployable(run.model))}
    for variant, entry in manifest["variants"].items():
        if entry.get("status") != "accepted":
            continue
        path = bundle.check_file(run.dir, manifest, entry["file"], "rerun `python -m pipeline optimize`")
        if variant == "tensorrt":
            if onnx_to_engine.unavailable_reason() is None:
                runners["TensorRT fp16"] = onnx_to_engine.EngineRunner(path)
            continue
        runners[f"ORT {variant}"] = _onnx_runner(path, threads)
    return runners


def benchmark(run_dir: str | Path) -> list[dict]:
    """Latency and throughput of every backend side by side, with each one's accuracy."""
    run, manifest = load_run(run_dir)
    if "fp32" not in manifest.get("variants", {}):
        raise PipelineError(f"{run.dir} has no verified model.onnx; run `python -m pipeline export {run.dir}`")
    bcfg = run.cfg.benchmark
    metric = run.task.METRIC[0]
    runners = _runners(run, manifest, bcfg.threads)
    sample, _ = next(run.task.graph_batches(run.data.test, batch_size=max(bcfg.batch_sizes)))
    accuracy = {"torch eager": manifest["metrics"]["torch"][metric]}
    for variant, entry in manifest["variants"].items():
        accuracy["TensorRT fp16" if variant == "tensorrt" else f"ORT {variant}"] = entry.get(metric)
    rows = []
    for (name, runner), size in itertools.product(runners.items(), bcfg.batch_sizes):
        row = {"backend": name, **time_runner(runner, batch_of(sample, size), bcfg.seconds, bcfg.min_runs),
               metric: accuracy.get(name)}
        rows.append(row)
        print(f"{name:14s} batch {size:4d}  median {row['median_ms']:8.3f} ms  p90 {row['p90_ms']:8.3f} ms  "
              f"{row['throughput_per_s']:9.0f} /s", flush=True)
    info = {"cpu": platform.processor() or platform.machine(), "threads": bcfg.threads or torch.get_num_threads(),
            "seconds_per_cell": bcfg.seconds, "metric": metric, "rows": rows}
    write_json(run.dir / "benchmark.json", info)
    write_text(run.dir / "benchmark.md", benchmark_table(rows, metric))
    plots.plot_benchmark(rows, run.dir / "benchmark.png")
    manifest["benchmark"] = {"file": "benchmark.json", "summary": _ratios(rows)}
    bundle.write_manifest(run.dir, manifest)
    return rows


def _ratios(rows: list[dict]) -> dict[str, float]:
    """Each backend's batch-1 speed-up over torch eager (median latency ratio)."""
    b1 = {r["backend"]: r["median_ms"] for r in rows if r["batch"] == min(x["batch"] for x in rows)}
    ref = b1.get("torch eager")
    return {f"{k} speedup_b1": ref / v for k, v in b1.items() if ref and k != "torch eager"}


def benchmark_table(rows: list[dict], metric: str) -> str:
    lines = [f"| backend | batch | median ms | p90 ms | samples/s | {metric} |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        acc = f"{r[metric]:.2f}" if isinstance(r.get(metric), (int, float)) else "-"
        lines.append(f"| {r['backend']} | {r['batch']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
                     f"{r['throughput_per_s']:.0f} | {acc} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# all stages


def run_all(task_name: str, preset: str = "quick", **train_kwargs) -> Path:
    """train -> export -> optimize (INT8, FP16, TensorRT where available) -> benchmark."""
    run_dir = train(task_name, preset, **train_kwargs)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return run_dir
    export(run_dir)
    optimize(run_dir, int8=True, fp16=True, tensorrt=onnx_to_engine.unavailable_reason() is None)
    benchmark(run_dir)
    return run_dir

