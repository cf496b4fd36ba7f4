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
PORTABLE = ("fp32", "int8", "fp16")  # js/littlebook.mjs's PORTABLE
RUNTIME = {"wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
           "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")}
TITLES = {"classify": "Classify", "detect": "Detect", "segment": "Segment", "textgen": "Text", "asr": "Speech",
          "imagegen": "Digits"}
# graphs the page runs, where not all of them (imagegen: the sampler holds the denoiser inside its Loop)
PAGE_GRAPHS = {"imagegen": ("sampler",)}
EXAMPLES = {"classify": 10, "detect": 4, "segment": 4, "asr": 6, "imagegen": 0, "textgen": 0}

SERVER = '''"""A static server for this site that sends the cross-origin isolation headers onnxruntime-web's
WASM threads need (SharedArrayBuffer). Standard library only: python serve.py [--port 8080] [--host 127.0.0.1]"""
import argparse
import functools
import http.server
from pathlib import Path


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()
    handler = functools.partial(Handler, directory=str(Path(__file__).resolve().parent))
    with http.server.ThreadingHTTPServer((a.host, a.port), handler) as httpd:
        print(f"serving {Path(__file__).resolve().parent} at http://{a.host}:{httpd.server_address[1]}/", flush=True)
        httpd.serve_forever()
'''


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


def choose_variant(bundle) -> tuple[str, int]:
    """The smallest accepted portable variant whose files are intact, and the bytes of the graph files
    the page runs."""
    sizes = []
    for name in bundle.variants():
        if name not in PORTABLE:
            continue
        files = {bundle.manifest["graphs"][g]["files"][name] for g in page_graphs(bundle)}
        sizes.append((sum(int(bundle.manifest["files"][f]["bytes"]) for f in files), PORTABLE.index(name), name))
    if not sizes:
        raise PipelineError(f"{bundle.path}: no accepted portable variant (fp32, int8, fp16) with intact files")
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
        for name in ("index.html", "app.mjs", "style.css"):
            shutil.copy2(PAGE / name, staging / name)
        shutil.copy2(MODULE, staging / MODULE.name)
        (staging / "serve.py").write_text(SERVER)
        (staging / "ort").mkdir()
        runtime_files = RUNTIME["wasm"] + (RUNTIME["webgpu"] if webgpu else ())
        for f in runtime_files:
            shutil.copy2(ORT_DIST / f, staging / "ort" / f)
        for task in TITLES:
            if task not in bundles:
                continue
            bundle = bundles[task]
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
            tasks.append(SiteTask(task, TITLES[task], bundle.name, variant, size, metric, value, fp32))
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
