"""``python -m pipeline web [ARTIFACTS_DIR] --out SITE``: a static web site that runs every demo in the
browser with onnxruntime-web (WASM; WebGPU with ``--webgpu``), no server-side inference.

    SITE/index.html, app.mjs, style.css     the page (web/), its loops js/littlebook.mjs (the Node app's module)
    SITE/ort/                               onnxruntime-web's files, copied from web/node_modules (no CDN at run time)
    SITE/models/<task>/                     one bundle per task: manifest.json (the chosen variant only), its ONNX
                                            files, a few held-out examples
    SITE/site.json                          what the page loads: tasks, variants, file sizes, metrics
    SITE/serve.py                           a one-file static server (stdlib) that sends the cross-origin
                                            isolation headers WASM threads need: python SITE/serve.py

Per task the variant is the smallest accepted portable one (fp32, int8, fp16: the files any ONNX Runtime
build runs; an accepted INT8 kept the metric within the task's tolerance). The site is written into a
temporary folder and moved into place whole.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "web"
MODULE = ROOT / "js" / "littlebook.mjs"
ORT_DIST = PAGE / "node_modules" / "onnxruntime-web" / "dist"
SITE_FILES = ("index.html", "app.mjs", "style.css", "serve.py")  # the page and its static server, from web/
RUNTIME = {"wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
           "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")}
# graphs the page runs, where not all of them (imagegen: the sampler holds the denoiser inside its Loop)
PAGE_GRAPHS = {"imagegen": ("sampler",)}
EXAMPLES = {"classify": 10, "detect": 4, "segment": 4, "asr": 6, "imagegen": 0, "textgen": 0}



@dataclass
class SiteTask:
    task: str
    title: str
    run: str
    variant: str
    bytes: int  # the chosen variant's graph files
    metric: str
    value: float | None  # the metric of the chosen variant on the held-out split
    fp32: float | None


def page_graphs(bundle) -> list[str]:
    return [g for g in bundle.graphs if g in PAGE_GRAPHS.get(bundle.task, bundle.graphs)]


def portable() -> tuple[str, ...]:
    """The variants any ONNX Runtime build runs (serve.bundle.VARIANTS; js/littlebook.mjs's PORTABLE)."""
    from serve.bundle import VARIANTS

    return tuple(name for name, v in VARIANTS.items() if v.portable)


def choose_variant(bundle) -> tuple[str, int]:
    """The smallest accepted portable variant whose files are intact, and the bytes of the graph files
    the page runs."""
    order, sizes = portable(), []
    for name in bundle.variants():
        if name not in order:
            continue
        files = {bundle.manifest["graphs"][g]["files"][name] for g in page_graphs(bundle)}
        sizes.append((sum(int(bundle.manifest["files"][f]["bytes"]) for f in files), order.index(name), name))
    if not sizes:
        raise PipelineError(f"{bundle.path}: no accepted portable variant ({', '.join(order)}) with intact files")
    size, _, name = min(sizes)
    return name, size


def _site_manifest(manifest: dict, variant: str, copied: dict[str, dict], graphs: list[str]) -> dict:
    keep = ("schema_version", "task", "run", "created", "preset", "architecture", "data", "metric", "inference", "info")
    out = {k: manifest[k] for k in keep if k in manifest}
    out["graphs"] = {g: {**spec, "files": {variant: spec["files"][variant]}} for g, spec in manifest["graphs"].items()
                     if g in graphs}
    out["variants"] = {variant: manifest["variants"][variant]}
    out["files"] = copied
    return out


def write_site(root: str | Path, out: str | Path, runs: list[str] | None = None, webgpu: bool = False,
               force: bool = False) -> list[SiteTask]:
    """Write the site of the newest bundle per task under ``root`` (or the named ``runs``) to ``out``."""
    from serve.discover import find_bundles
    from serve.tasks import TABS

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise PipelineError(f"{out} exists and is not empty: name a new folder (or pass --force to replace it)")
    missing = [f for names in RUNTIME.values() for f in names if not (ORT_DIST / f).is_file()]
    if missing:
        raise PipelineError(f"onnxruntime-web is not installed in {PAGE} (missing {missing[0]}): run "
                            f"`npm ci --ignore-scripts` there once (scripts/setup.sh does it when npm is present)")
    bundles, problems = find_bundles(root, runs)
    if not bundles:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise PipelineError(f"no usable bundle under {root}{why}: train one with `python -m pipeline run TASK`")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".web-", dir=out.parent))
    tasks: list[SiteTask] = []
    try:
        for name in SITE_FILES:
            shutil.copy2(PAGE / name, staging / name)
        shutil.copy2(MODULE, staging / MODULE.name)
        (staging / "ort").mkdir()
        runtime_files = RUNTIME["wasm"] + (RUNTIME["webgpu"] if webgpu else ())
        for f in runtime_files:
            shutil.copy2(ORT_DIST / f, staging / "ort" / f)
        for task, bundle in sorted(bundles.items(), key=lambda kv: list(TABS).index(kv[0])):  # the app's tab order
            variant, size = choose_variant(bundle)
            folder = staging / "models" / task
            folder.mkdir(parents=True)
            copied: dict[str, dict] = {}
            graphs = page_graphs(bundle)
            for f in sorted(set(bundle.manifest["graphs"][g]["files"][variant] for g in graphs)):
                src = bundle.file(f)
                if src is None:
                    raise PipelineError(f"{bundle.path}: {f} is {bundle.bad_files.get(f, 'missing')}")
                shutil.copy2(src, folder / f)
                copied[f] = bundle.manifest["files"][f]
            examples = [e for e in bundle.manifest.get("examples", []) if (bundle.path / e).is_file()][:EXAMPLES[task]]
            for e in examples:
                (folder / e).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bundle.path / e, folder / e)
            site_manifest = _site_manifest(bundle.manifest, variant, copied, graphs)
            site_manifest["examples"] = examples
            (folder / "manifest.json").write_text(json.dumps(site_manifest, indent=1))
            metric = bundle.manifest["metric"]["name"]
            value = bundle.manifest["variants"][variant].get(metric)
            fp32 = bundle.manifest["variants"].get("fp32", {}).get(metric)
            tasks.append(SiteTask(task, TABS[task].title, bundle.name, variant, size, metric, value, fp32))
        site = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tasks": [asdict(t) for t in tasks],
                "runtime": {"webgpu": webgpu, "files": {f: (ORT_DIST / f).stat().st_size for f in runtime_files}},
                "problems": problems}
        (staging / "site.json").write_text(json.dumps(site, indent=1))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return tasks


def write_run_site(root: Path) -> None:
    """``run all`` ends with the static site of its bundles (ROOT/site), where onnxruntime-web is installed."""
    if not ORT_DIST.is_dir():
        print("web site skipped: onnxruntime-web is not installed (npm ci --ignore-scripts in web/)")
        return
    try:
        write_site(root, root / "site", force=True)
    except PipelineError as e:
        print(f"web site not written: {e}")
        return
    print(f"web site: {(root / 'site').resolve()} (python3 {root / 'site' / 'serve.py'}, then http://127.0.0.1:8080/)")
