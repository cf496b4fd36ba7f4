"""The Gradio app: a tab per task with a bundle, and a Models tab describing every bundle."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue rebuilds a pandas summary of its last N events after every event (N = 10,000 and
# every 1 by default): measured here as ~8% of the server's CPU under load, growing with N.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

import gradio as gr  # noqa: E402

from serve.bundle import first_line, graph_files, metric_columns, shown, variant_title  # noqa: E402
from serve.runtime import Bundle  # noqa: E402
from serve.tasks import TABS  # noqa: E402

MAKE_ONE = "python -m pipeline run all --preset quick"


def _endpoint(block_fn) -> tuple[str, list[str]]:
    """An event's API name and its parameters' names, for messages."""
    import inspect

    name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this endpoint"
    try:
        params = list(inspect.signature(block_fn.fn).parameters)
    except (TypeError, ValueError):
        params = []
    return f"/{name}".replace("//", "/"), params


class App(gr.Blocks):
    """The app's Blocks: a request that fails in Gradio's own processing, before a handler runs (too few
    values, a file path that was never uploaded or cannot be read, a payload of the wrong shape), reaches
    the caller as one readable line, through the browser, ``gradio_client`` and plain HTTP alike, where
    Gradio would answer ``{"error": null}``. Handlers raise their own readable errors (``gr.Error``)."""

    async def process_api(self, block_fn, inputs, *args, **kwargs):
        from gradio.exceptions import Error, InvalidPathError

        try:
            return await super().process_api(block_fn, inputs, *args, **kwargs)
        except Error:
            raise
        except InvalidPathError:
            raise gr.Error("a file in the request was never uploaded to this server (or may not be read): upload "
                           "it first (POST /gradio_api/upload, as gradio_client does) and send the path it returns",
                           print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - the caller gets one line, the log the traceback
            fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
            name, params = _endpoint(fn)
            if "didn't receive enough input values" in str(e):
                raise gr.Error(f"{name} takes {len(params)} values ({', '.join(params)}); got {len(inputs)}",
                               print_exception=False) from None
            raise gr.Error(f"{name} could not read this request ({type(e).__name__}: {first_line(e, 160)})",
                           print_exception=False) from None


def _variants_table(bundle: Bundle) -> str:
    columns = metric_columns(bundle.manifest)
    rows = ["| variant | files | " + " | ".join(t for t, _ in columns) + " | status |",
            "| --- | --- |" + " ---: |" * len(columns) + " --- |"]
    for variant, v in bundle.manifest["variants"].items():
        note = v.get("status", "?") + (f": {v['reason']}" if v.get("reason") else "")
        files = graph_files(bundle.manifest, variant)
        for f in files.values():
            if f in bundle.bad_files:
                note = f"not used: {f} {bundle.bad_files[f]}"
        shown_files = ", ".join(f"`{f}`" for f in files.values()) or "-"
        values = " | ".join(shown(v.get(key)) for _, key in columns)
        rows.append(f"| {variant_title(variant)} | {shown_files} | {values} | {note} |")
    return "\n".join(rows)


def _table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def _metrics_table(manifest: dict) -> str:
    """The metric on each scored set, for PyTorch (as trained, and the served computation) and the
    portable ONNX graphs."""
    columns = metric_columns(manifest)
    names = {"torch": "PyTorch (training's evaluation)", "torch_served": "PyTorch, served computation",
             "onnx_fp32": "ONNX fp32"}
    rows = [[names.get(k, k), *(shown(v.get(key)) for _, key in columns)]
            for k, v in manifest.get("metrics", {}).items() if isinstance(v, dict)]
    rows += [[f"{k} (baseline)", *(shown(v.get(key)) for _, key in columns)]
             for k, v in manifest.get("baselines", {}).items() if isinstance(v, dict)]
    return _table(["model", *(t for t, _ in columns)], rows)


def _samples(manifest: dict) -> str:
    """What the exported model produced on held-out inputs (prompt, then its output in bold)."""
    out = []
    for s in manifest.get("samples", [])[:4]:
        if isinstance(s, dict):
            parts = [str(s.get(k, "")).replace("\n", " ") for k in ("prompt", "continuation")]
            out.append(f"- {parts[0]} **{parts[1]}**")
    return "\n\n**Samples** (seeded, served defaults; the model's output in bold)\n\n" + "\n".join(out) if out else ""


def _parity_table(manifest: dict) -> str:
    sets = {k: v for k, v in manifest.get("parity", {}).items() if isinstance(v, dict)}
    keys = list(dict.fromkeys(k for p in sets.values() for k in p if k not in ("description", "samples")))
    rows = [[str(p.get("description", name)), str(p.get("samples", "-")),
             *(_measured(k, p.get(k)) for k in keys)]
            for name, p in sets.items()]
    return _table(["held-out set", "samples", *(k.replace("_", " ") for k in keys)], rows)


def _measured(key: str, value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    return f"{100 * value:.1f}%" if "agreement" in key else f"{value:.2g}"


def _serving(bundle: Bundle) -> str:
    usable, serving = bundle.variants(), bundle.serving
    recorded = [", ".join(f"{k} {v}" for k, v in case.axes.items()) + f": {case.variant}"
                + ("" if case.variant in usable else " (not usable here)") for case in serving.cases]
    if not recorded:
        return f"{bundle.default_variant} (no benchmark yet)"
    if serving.status == "rejected":
        what = ("the fastest accepted single variant" if bundle.default_variant == serving.fallback
                else f"the fastest accepted single variant, {serving.fallback}, cannot run here")
        return (f"every call on {bundle.default_variant} ({what}): the fastest per call "
                f"({'; '.join(recorded)}) was rejected on the held-out sets ({serving.reason})")
    return "; ".join(recorded) + (f". Each call runs the choice of the nearest case usable here (a single "
                                  f"input: {bundle.default_variant})")


def _protocol(task: str, bundle: Bundle, url: str | None) -> str:
    """How a program reaches this bundle through the inference protocol (Triton's client, either server)."""
    if not url:
        return ""
    from serve.protocol import models_of

    names = list(models_of({task: bundle}))
    first = next(iter(bundle.manifest["graphs"][bundle.graphs[0]]["io"]["inputs"]))
    return (f"\n\n**Inference protocol** (KServe v2 / Triton, `{url}/v2`): models "
            + ", ".join(f"`{n}`" for n in names) + f"; versions are the variants ({', '.join(bundle.variants())}), "
            f"none: the served choice. `GET {url}/v2/models/{task}` gives its inputs (first graph's first input: "
            f"`{first['name']}`, {first['dtype']}).")


def _models_tab(bundles: dict[str, Bundle], problems: list[str], protocol: str | None = None) -> None:
    if not bundles:
        gr.Markdown("No bundles yet.")
    for task, bundle in bundles.items():
        m = bundle.manifest
        served = ", ".join(f"{k} = {v}" for k, v in bundle.inference.items()) or "none (the graph needs no settings)"
        gr.Markdown(f"### {task}: `{bundle.name}`\n{m.get('architecture', '')}, preset {m.get('preset')}, "
                    f"data: {m.get('data', '-')}; graphs {', '.join(bundle.graphs)}; folder `{bundle.path}`\n\n"
                    f"**Metrics**\n\n{_metrics_table(m)}\n\n"
                    f"**Parity with PyTorch** (the served computation, per held-out set)\n\n{_parity_table(m)}\n\n"
                    f"**Served defaults**: {served}\n\n**Served variant** (the benchmark's fastest accepted one, "
                    f"per benchmarked case, unless a caller picks another): {_serving(bundle)}\n\n"
                    f"**Variants**\n\n" + _variants_table(bundle) + _samples(m) + _protocol(task, bundle, protocol))
        bench = bundle.file("benchmark.md")
        if bench:
            gr.Markdown("**Benchmark** (this machine, when the bundle was made)\n\n" + bench.read_text())
        with gr.Row():
            for name, title in (("curves.png", "Training curves"), ("benchmark.png", "Benchmark")):
                if p := bundle.file(name):
                    gr.Image(str(p), label=title, interactive=False, buttons=[])
    for line in problems:
        gr.Markdown(f"⚠️ {line}")


def build_app(bundles: dict[str, Bundle], problems: list[str] | None = None, root: str | Path = "artifacts",
              protocol: str | None = None) -> gr.Blocks:
    """``protocol``: the inference protocol's base URL, when it is served beside the app (the Models tab says so)."""
    problems = problems or []
    on_load = "\n".join(tab.on_load_js for task, tab in TABS.items() if task in bundles and tab.on_load_js)
    with App(title="Little Book of Deep Learning: ONNX demos", analytics_enabled=False) as app:
        if on_load:  # the tabs' page-open scripts, in the browser only
            app.load(None, js=f"() => {{\n{on_load}\n}}")
        gr.Markdown("# Little Book of Deep Learning: ONNX demos\nEvery model here runs from its ONNX file "
                    "with ONNX Runtime alone: pre- and post-processing are inside the graph.")
        if not bundles:
            gr.Markdown(f"**No model bundle found in `{root}`.** Make one with\n\n```\n{MAKE_ONE}\n```\n\n"
                        "then start this app again.", elem_id="no-bundle")
        with gr.Tabs():
            for task, tab in TABS.items():
                if task in bundles:
                    with gr.Tab(tab.title, id=task):
                        tab.build(bundles[task])
            with gr.Tab("Models", id="models"):
                _models_tab(bundles, problems, protocol)
    return app
