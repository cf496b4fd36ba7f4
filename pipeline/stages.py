"""The stages: train -> export -> optimize -> benchmark, each on a run folder (the bundle).

A :class:`~pipeline.run.Run` is a run folder loaded once: task, config, data, model and manifest in
memory. ``run`` chains the stages on one Run; each stage on its own loads one. Stages write new files under
temporary names and rename them only on success, so a failed or interrupted stage leaves the bundle
as it was. Each file is hashed once, when the stage that writes it has written it (or when a stage
first checks it before use).

What is verified and timed is what is served: graphs run through serve's one session factory, and
the task's :meth:`~pipeline.tasks.base.Task.infer` (a loop of ``serve/tasks/<task>.py`` where the
task has one) runs over ORT sessions, TensorRT engines and the torch modules alike.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import torch

from export import onnx_to_engine, onnx_to_openvino, onnx_to_ort
from export.torch_to_onnx import assemble_onnx, export_onnx
from export.verify import gate
from pipeline import plots, progress
from pipeline.card import model_card
from pipeline.config import load_file, to_dict
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, write_json, write_text
from pipeline.benchmark import benchmark
from pipeline.run import (TRAINED_FILES, Run, as_run, git_commit, metric_entry, now, require_exported, tidy,
                          versions)
from pipeline.tasks import get_task
from pipeline.tasks.base import RunConfig, build_model, resolve
from pipeline.train import CHECKPOINT, TRAINING_STATE, fit, read_metrics, setup_runtime
from serve.bundle import (CONFIG, MANIFEST, SCHEMA_VERSION, BundleError, engine_tag, first_line, graph_files,
                          metric_columns, safe_file_name, sha256, shown, variant_file)
from serve.engine import EngineSession
from serve.openvino_runtime import OpenVinoSession, openvino_missing
from serve.runtime import OrtSession

PARTIAL = ".partial"
MODEL_CARD = "MODEL_CARD.md"

# variant -> builder(src .onnx, dst, graph name, run); one per entry of serve.bundle.VARIANTS but
# fp32 (the export itself) and tensorrt (built per graph with the contract's shape profiles)
Builder = Callable[[Path, Path, str, Run], Any]


def _calibration(run: Run, graph: str):
    batches = run.task.calibration(run.data, run.cfg.optimize.calibration_samples, run.cfg)
    if batches is None or graph not in batches:
        raise ValueError(f"{run.task.name} gives no calibration data for static INT8")
    return batches[graph]


def _int8_builder(mode: str) -> Builder:
    def build(src: Path, dst: Path, graph: str, run: Run) -> None:
        calibration = _calibration(run, graph) if mode == "static" else None
        onnx_to_ort.quantize_int8(src, dst, mode, calibration, run.cfg.optimize.int8_ops)

    return build


def _nncf_builder(mode: str) -> Builder:
    def build(src: Path, dst: Path, graph: str, run: Run) -> None:
        calibration = _calibration(run, graph) if mode == "static" else None
        onnx_to_openvino.quantize_nncf(src, dst, mode, calibration)

    return build


BUILDERS: dict[str, Builder | Callable[[str], Builder]] = {
    "opt": lambda src, dst, graph, run: onnx_to_ort.optimize_graph(src, dst),
    "int8": _int8_builder,  # by mode: static (calibrated) or dynamic; optimize.int8 picks
    "openvino-int8": _nncf_builder,  # by mode: static or weights; optimize.openvino_int8 picks
    "fp16": lambda src, dst, graph, run: onnx_to_ort.convert_fp16(src, dst),
}


# ---------------------------------------------------------------------------------------------
# train


def _run_name(preset: str) -> str:
    name = f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}"
    if torch.distributed.is_initialized():  # every process must agree on the folder
        holder = [name]
        torch.distributed.broadcast_object_list(holder, src=0)
        name = holder[0]
    return name


# what a resumed run may change: how long it trains, how it logs, where it runs, and the later stages
RESUMABLE_CHANGES = {"train.epochs", "train.steps", "train.eval_every", "train.log_every", "train.device",
                     "optimize", "benchmark", "inference"}


def _check_resumable(saved: RunConfig, asked: RunConfig, run_dir: Path) -> None:
    """A resumed run continues the same model, data and optimizer: only RESUMABLE_CHANGES may differ."""
    before, after = saved.to_dict(), asked.to_dict()
    for section in after:
        if section in RESUMABLE_CHANGES or not isinstance(after[section], dict):
            continue
        for key in sorted(set(before.get(section, {})) | set(after[section]), key=lambda k: (k != "name", k)):
            old, new = before.get(section, {}).get(key), after[section].get(key)
            if old != new and f"{section}.{key}" not in RESUMABLE_CHANGES:
                raise PipelineError(f"cannot resume {run_dir} with {section}.{key}={json.dumps(new)} (it was "
                                    f"{json.dumps(old)}): a resumed run keeps its model, data and optimizer; "
                                    "only train.epochs/steps/eval_every/log_every/device and the optimize, "
                                    "benchmark and inference settings may change. Start a new run instead")


def required_bundle(task_name: str, preset: str, out: Path) -> Path:
    """The newest finished ``task_name`` bundle under ``out`` (a folder with its manifest and every graph
    file), or one trained now with ``preset`` (train -> export -> optimize -> benchmark)."""
    found = sorted((d for d in (out / task_name).glob("*") if not d.name.endswith(PARTIAL)
                    and (d / MANIFEST).is_file() and any(d.glob("*.onnx"))), key=lambda d: d.stat().st_mtime)
    if found:
        return found[-1]
    print(f"no finished {task_name} bundle under {out}: training one ({preset}) first", flush=True)
    return run_all(task_name, preset, out=out)


def train(task_name: str, preset: str = "quick", config_file: str | None = None, sets: dict | None = None,
          data: str | None = None, out: str | Path = "artifacts", resume: str | Path | None = None) -> Run:
    """Train a model into ``out/<task>/<run>``; returns the finished run, in memory."""
    task = get_task(task_name)
    layers = [load_file(config_file)] if config_file else []
    if data is not None:
        layers.append({"data": {"source": str(data)}})
    layers.append(sets or {})
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.name.endswith(PARTIAL) and (run_dir / MANIFEST).is_file():
            raise PipelineError(f"cannot resume: {run_dir} is a finished run (its exports would no longer match "
                                "its weights); start a new run instead")
        saved = run_dir / CONFIG
        tidy(run_dir)
        if not saved.is_file():
            raise PipelineError(f"cannot resume: {saved} not found")
        base = load_file(saved)
        if base.get("task") != task.name:
            raise PipelineError(f"cannot resume: {run_dir} is a {base.get('task')!r} run, not {task.name!r}")
        cfg = resolve(task, base["preset"], base, *layers)
        _check_resumable(resolve(task, base["preset"], base), cfg, run_dir)
    else:
        cfg = resolve(task, preset, *layers)
    for other, field_name in task.requires.items():
        if not getattr(cfg.data, field_name):
            path = required_bundle(other, cfg.preset, Path(out))
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **{field_name: str(path.resolve())}))
    rt = setup_runtime(cfg.train)
    progress.report("train", resume, force=True, detail="preparing the data")
    dataset = task.load_data(cfg)
    cfg = task.complete_config(dataset, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(task, dataset, cfg)  # before anything is written: a config torch refuses leaves no folder
    if resume is None:
        run_dir = Path(out) / task.name / (_run_name(cfg.preset) + PARTIAL)
        if rt.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=False)
            except OSError as e:
                raise PipelineError(f"cannot create the run folder {run_dir}: {e.strerror}") from None
    if rt.is_main:
        progress.report("train", run_dir, force=True, detail="starting")
        write_json(run_dir / CONFIG, cfg.to_dict())
        print(f"training {task.name}/{cfg.model_name} ({cfg.preset}) on {task.describe_data(dataset)} "
              f"on {rt.device}{f' x {rt.world_size} processes' if rt.distributed else ''} -> {run_dir}", flush=True)
    meta = {"task": task.name, "model": cfg.model_name, "model_config": json.dumps(cfg.to_dict()["model"])}
    evaluate = lambda m, split, device: task.evaluate(m, split, device, cfg)  # noqa: E731  (the loop's EvalFn)
    trained = fit(task.make_training_step(cfg), evaluate, model, task.dataset(dataset, "train", cfg),
                  task.dataset(dataset, "val", cfg), cfg.train, run_dir, meta, resume=resume is not None,
                  collate=task.collate, unit=task.train_unit)
    final = run_dir.with_name(run_dir.name.removesuffix(PARTIAL))
    manifest = {
        "schema_version": SCHEMA_VERSION, "task": task.name, "run": final.name, "created": now(),
        "preset": cfg.preset, "architecture": cfg.model_name, "data": task.describe_data(dataset),
        "metric": {}, "inference": to_dict(cfg.inference), "info": {}, "graphs": {}, "variants": {}, "metrics": {},
        "versions": versions(), "git_commit": git_commit(), "files": {},
    }
    if not rt.is_main:
        return Run(run_dir, task, cfg, dataset, trained, manifest)
    progress.report("train", run_dir, force=True, detail="testing")
    test = task.evaluate(trained, task.dataset(dataset, "test", cfg), rt.device, cfg)
    run = Run(run_dir, task, cfg, dataset, trained.cpu().eval(), manifest)
    plots.plot_curves(read_metrics(run_dir), task.metric.name, run_dir / "curves.png")
    manifest["metrics"]["torch"] = test
    manifest["metric"] = metric_entry(run)
    for name in TRAINED_FILES:
        run.record(name)
    run.save()
    if final != run_dir:
        run_dir.rename(final)
        run.dir = final
    print(f"test {task.metric.name} {test[task.metric.name]:.4g}{task.metric.unit}  ->  {final}", flush=True)
    return run


def _verify(run: Run, runners: dict[str, Any], what: str) -> tuple[dict[str, dict], Any]:
    """Loop-level parity of ``runners`` against the torch modules on every eval set, gated by the
    graphs' parity bounds; returns the measured values and torch's outputs, per set."""
    bounds = tuple(dict.fromkeys(b for g in run.graphs.values() for b in g.contract.parity))
    results, references = {}, {}
    for es in run.eval_sets:
        reference = run.task.infer(run.torch_runners, es.items, run.cfg)
        candidate = run.task.infer(runners, es.items, run.cfg)
        measured = run.task.parity(reference, candidate, es.items)
        gate(measured, bounds, f"{what} on {es.description}")
        results[es.name] = {**measured, "description": es.description, "samples": es.samples}
        references[es.name] = reference
    return results, references


# ---------------------------------------------------------------------------------------------
# export


def export(run: Run | str | Path) -> dict[str, Path]:
    """torch -> one ``<graph>.onnx`` per graph, verified (loop-level) against PyTorch on every eval set."""
    run = as_run(run, allow_older=True)
    task, graphs = run.task, run.graphs
    files = {g: variant_file(g, "fp32") for g in graphs}
    progress.report("export", run.dir, detail="exporting and verifying against PyTorch")
    print(f"exporting {run.dir.name} -> {', '.join(files.values())}", flush=True)
    with ExitStack() as stack:
        tmp = {g: stack.enter_context(atomic_path(run.dir / f)) for g, f in files.items()}
        for g, graph in graphs.items():  # a graph assembled from another comes after it (Task.graphs' order)
            if graph.assemble:
                assemble_onnx(graph.assemble[1], tmp[graph.assemble[0]], graph.contract, tmp[g], graph.metadata)
            else:
                export_onnx(graph.module, graph.example, graph.contract, tmp[g], graph.metadata)
        runners = {g: OrtSession(tmp[g], name=files[g]) for g in graphs}
        parity, reference = _verify(run, runners, "the exported " + ", ".join(files.values()))
        scores, _ = run.score(runners)
        m = run.manifest
        # a re-export starts the exported part afresh: what train wrote stays, the rest is rebuilt
        m["files"] = {k: v for k, v in m["files"].items() if k in TRAINED_FILES}
        for stale in ("benchmark", "io", "labels"):  # "io", "labels": schema 1
            m.pop(stale, None)
        m.update(schema_version=SCHEMA_VERSION, metric=metric_entry(run), inference=to_dict(run.cfg.inference),
                 info=task.info(run.data, run.cfg), parity=parity, variants={"fp32": {"status": "accepted", **scores}},
                 graphs={g: {"io": graph.contract.io_spec(), "files": {"fp32": files[g]}}
                         for g, graph in graphs.items()})
        m["metrics"]["onnx_fp32"] = scores
        m["metrics"]["torch_served"] = run.scores(reference)
        m["baselines"] = task.baselines(run.data, run.cfg)
        m["samples"] = task.samples(runners, run.data, run.cfg)
        for name, data in task.bundle_files(run.data, run.cfg).items():
            name = safe_file_name(name)
            with atomic_path(run.dir / name) as t:
                t.write_bytes(data)
            run.record(name)
        m["examples"] = []
        for index, (name, data) in enumerate(task.examples(run.data, run.cfg)):
            name = safe_file_name(name)
            if f"examples/{name}" in m["examples"]:
                name = f"{index}_{name}"
            path = run.dir / "examples" / name
            path.parent.mkdir(exist_ok=True)
            with atomic_path(path) as t:
                t.write_bytes(data)
            m["examples"].append(f"examples/{name}")
            run.record(f"examples/{name}")
        _write_card(run)
    for f in files.values():  # renamed into place just now: list them and save the manifest at once
        run.record(f)
    run.save()
    metric = task.metric.name
    shown = "; ".join(f"{name}: " + json.dumps({k: v for k, v in p.items() if k not in ("description", "samples")})
                      for name, p in parity.items())
    print(f"parity {shown}; onnx {metric} {scores[metric]:.4g}{task.metric.unit}", flush=True)
    return {g: run.dir / f for g, f in files.items()}


def _write_card(run: Run) -> None:
    write_text(run.dir / MODEL_CARD, model_card(run.manifest, run.task.usage))
    run.record(MODEL_CARD)


# ---------------------------------------------------------------------------------------------
# optimize


def optimize(run: Run | str | Path, int8: bool = True, fp16: bool = True, tensorrt: bool = False) -> dict:
    """ORT graph optimization always; INT8, FP16 and a TensorRT engine as asked, each one file per
    graph, accepted or rejected as a set on the task's metric. Returns the variants."""
    if tensorrt and (reason := onnx_to_engine.unavailable_reason()):
        raise PipelineError(f"--tensorrt: {reason}")
    run = as_run(run)
    require_exported(run)
    m = run.manifest
    export_hint = f"rerun `python -m pipeline export {run.dir}`"
    sources = {g: run.check_file(f, export_hint) for g, f in graph_files(m, "fp32").items()}
    for path in sources.values():  # intact but unusable (written by something else): nothing to build from
        try:
            OrtSession(path, name=str(path))
        except BundleError as e:  # "<path> cannot be loaded by onnxruntime: ..."
            raise PipelineError(f"{e}; {export_hint}") from None
    asked = {"opt", *(["int8", "openvino-int8"] if int8 else []), *(["fp16"] if fp16 else []), *(["tensorrt"] if tensorrt else [])}
    for variant in set(m["variants"]) - asked - {"fp32"}:  # kept as they are: they must still be what was judged
        for f in graph_files(m, variant).values():
            run.check_file(f, f"rebuild it with `python -m pipeline optimize {run.dir} --{variant}`, or restore it")
    # accepted variants about to be rebuilt: a rebuild that fails keeps them (their files stay on disk)
    earlier = {}
    for v in asked:
        if m["variants"].get(v, {}).get("status") == "accepted" and (files := graph_files(m, v)):
            earlier[v] = (dict(m["variants"][v]), files, {f: dict(m["files"][f]) for f in files.values()})

    def make(variant: str, build: Builder, open_session, tag: str = "", **info) -> dict[str, Any]:
        """Build one file per graph, score the set with the task's loop, judge it against fp32."""
        files = {g: variant_file(g, variant, tag) for g in sources}
        progress.report("optimize", run.dir, detail=variant + (f" ({info['mode']})" if "mode" in info else ""))
        entry: dict[str, Any] = dict(info)
        try:
            with ExitStack() as stack:
                tmp = {g: stack.enter_context(atomic_path(run.dir / f)) for g, f in files.items()}
                for g, src in sources.items():
                    if assembled := run.graphs[g].assemble:  # rebuilt from this variant's own source graph
                        graph = run.graphs[g]
                        assemble_onnx(assembled[1], tmp[assembled[0]], graph.contract, tmp[g], graph.metadata)
                    else:
                        entry.update(build(src, tmp[g], g, run) or {})
                scores, _ = run.score({g: open_session(tmp[g], files[g]) for g in files})
                status, reason = run.judge(scores)
                entry.update(status=status, **scores, **({"reason": reason} if reason else {}))
        except Exception as e:  # noqa: BLE001 - a variant that cannot be built or run here is recorded, not fatal
            entry.update(status="failed", reason=f"{e.__class__.__name__}: {first_line(e, 300)}")
        for g, f in files.items():
            if entry["status"] == "failed":
                m["graphs"][g]["files"].pop(variant, None)
                run.forget(f)
            else:
                m["graphs"][g]["files"][variant] = f
                run.record(f)
        m["variants"][variant] = entry
        run.save()  # the files renamed into place are listed before anything else can fail
        _print_variant(variant + (f" ({info['mode']})" if "mode" in info else ""), entry, m)
        return entry

    def ort_session(path: Path, name: str) -> OrtSession:
        return OrtSession(path, name=name)  # the providers serving would use

    def openvino_session(path: Path, name: str) -> OpenVinoSession:
        return OpenVinoSession(path.read_bytes(), name=name)

    def attempts(variant: str, modes: list[str], open_session) -> dict[str, Any]:
        """``variant`` built in each mode in turn until one is accepted; the last try, with every try listed."""
        tries = []
        for mode in modes:
            tries.append(make(variant, BUILDERS[variant](mode), open_session, mode=mode))
            if tries[-1]["status"] == "accepted":
                break
        return {**tries[-1], "attempts": [
            {k: a.get(k) for k in ("mode", "status", *(key for _, key in metric_columns(m)), "reason") if k in a}
            for a in tries]}

    m["variants"]["opt"] = make("opt", BUILDERS["opt"], ort_session)
    ocfg = run.cfg.optimize
    if int8:
        # auto: static first; where it fails or loses too much (attention/MatMul-heavy nets), dynamic
        m["variants"]["int8"] = attempts("int8", ["static", "dynamic"] if ocfg.int8 == "auto" else [ocfg.int8],
                                         ort_session)
    if fp16:
        m["variants"]["fp16"] = make("fp16", BUILDERS["fp16"], ort_session)
    _judge_openvino(run, sources)
    if int8 and (why := onnx_to_openvino.nncf_missing()):
        m["variants"]["openvino-int8"] = {"status": "failed", "reason": why}
        _print_variant("openvino-int8", m["variants"]["openvino-int8"], m)
    elif int8:  # OpenVINO's own INT8 (NNCF): auto tries static, then weights only
        modes = ["static", "weights"] if ocfg.openvino_int8 == "auto" else [ocfg.openvino_int8]
        m["variants"]["openvino-int8"] = attempts("openvino-int8", modes, openvino_session)
    if tensorrt:
        gpu, version = onnx_to_engine.target()

        def build_engine(src: Path, dst: Path, graph: str, run_: Run) -> dict:
            return onnx_to_engine.build_engine(src, dst, run_.graphs[graph].contract)

        m["variants"]["tensorrt"] = make("tensorrt", build_engine, lambda p, n: EngineSession(p.read_bytes(), n),
                                         tag=engine_tag(gpu, version))
    for variant, (entry, files, hashes) in earlier.items():
        failed = m["variants"][variant]
        if failed["status"] == "failed" and all((run.dir / f).is_file() and sha256(run.dir / f) == h["sha256"]
                                                for f, h in hashes.items()):
            m["variants"][variant] = {**entry, "rebuild_failed": failed.get("reason")}
            for g, f in files.items():
                m["graphs"][g]["files"][variant] = f
            m["files"].update(hashes)
            print(f"{variant}: the rebuild failed; the earlier accepted {variant} is kept", flush=True)
    _write_card(run)
    run.save()
    return m["variants"]


def _judge_openvino(run: Run, sources: dict[str, Path]) -> None:
    """The portable graphs run by OpenVINO (no file of their own): scored with the task's loop and
    judged like a variant; where OpenVINO is not installed, recorded as failed with the reason."""
    m = run.manifest
    entry: dict[str, Any]
    if why := openvino_missing():
        entry = {"status": "failed", "reason": why}
    else:
        try:
            scores, _ = run.score({g: OpenVinoSession(p.read_bytes(), name=p.name) for g, p in sources.items()})
            status, reason = run.judge(scores)
            entry = {"status": status, **scores, **({"reason": reason} if reason else {})}
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run the graph here is recorded, not fatal
            entry = {"status": "failed", "reason": f"{e.__class__.__name__}: {first_line(e, 300)}"}
    for g, src in sources.items():
        if entry["status"] == "failed":
            m["graphs"][g]["files"].pop("openvino", None)
        else:
            m["graphs"][g]["files"]["openvino"] = src.name
    m["variants"]["openvino"] = entry
    run.save()
    _print_variant("openvino", entry, m)


def _print_variant(label: str, entry: dict[str, Any], m: dict[str, Any]) -> None:
    """One line per judged variant: its status, metric on each scored set, and why when not accepted."""
    values = "  ".join(f"{key} {shown(entry.get(key))}" for _, key in metric_columns(m))
    print(f"{label:16s} {entry['status']:9s} {values}  {entry.get('reason', '')}", flush=True)


# ---------------------------------------------------------------------------------------------
# all stages


def stages_left(run_dir: Path) -> list[str]:
    """What ``run`` still has to do in ``run_dir`` (in order): train, export, optimize, benchmark; [] when it
    is a finished bundle. A training folder with no checkpoint yet cannot be continued: ["new"]."""
    run_dir = Path(run_dir)
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or run_dir.name.endswith(PARTIAL):
        resumable = all((run_dir / f).is_file() for f in (CONFIG, CHECKPOINT, TRAINING_STATE))
        return ["train", "export", "optimize", "benchmark"] if resumable else ["new"]
    variants = manifest.get("variants") if isinstance(manifest.get("variants"), dict) else {}
    return [stage for stage, done in (("export", "fp32" in variants), ("optimize", "opt" in variants),
                                      ("benchmark", "benchmark" in manifest)) if not done]


def continue_run(run_dir: str | Path) -> Path:
    """``run`` continued where it stopped: training resumed from its last checkpoint, then the stages not
    done yet. Returns the bundle's folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"run folder not found: {run_dir}")
    left = stages_left(run_dir)
    if left == ["new"]:
        raise PipelineError(f"cannot continue {run_dir}: it holds no checkpoint yet (stopped before its first "
                            "evaluation); start a new run")
    if not left:
        print(f"{run_dir} is finished: nothing to do", flush=True)
        return run_dir
    if "train" in left:
        saved = load_file(run_dir / CONFIG)
        run = train(str(saved.get("task")), str(saved.get("preset", "quick")), resume=run_dir)
    else:
        run = as_run(run_dir, allow_older=True)
    return _finish(run, left)


def _finish(run: Run, left: list[str]) -> Path:
    """The stages after training that ``left`` names (export, optimize: INT8, FP16 and TensorRT where
    available), then the benchmark."""
    if "export" in left:
        export(run)
    if "optimize" in left:
        optimize(run, int8=True, fp16=True, tensorrt=onnx_to_engine.unavailable_reason() is None)
    benchmark(run)
    return run.dir


def run_all(task_name: str, preset: str = "quick", **train_kwargs) -> Path:
    """train -> export -> optimize (INT8, FP16, TensorRT where available) -> benchmark, on one Run."""
    run = train(task_name, preset, **train_kwargs)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return run.dir
    return _finish(run, ["export", "optimize"])

