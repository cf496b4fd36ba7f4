"""The Models tab: per bundle a summary (its metric, the served variant and its speed against torch eager
and the fastest peer runtime), the benchmark chart and training curves, and the details folded away."""
from __future__ import annotations

import gradio as gr

from serve.bundle import graph_files, metric_columns, shown, variant_title
from serve.runtime import Bundle


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


def _nearest(bundle: Bundle) -> str:
    return f"Each call runs the choice of the nearest case usable here (a single input: {bundle.default_variant})"


def _serving(bundle: Bundle) -> str:
    """The serving choice in a sentence: the cases' variants, or why every call runs one variant."""
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
    return "; ".join(recorded) + ". " + _nearest(bundle)


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


def _serving_table(bundle: Bundle) -> str:
    """The served choice per benchmarked case, as a table (a case: its batch, phase, length...)."""
    usable, cases = bundle.variants(), bundle.serving.cases
    if not cases:
        return f"Every call on {bundle.default_variant} (no benchmark yet)."
    axes = list(cases[0].axes)
    rows = [[*(str(c.axes.get(a, "-")) for a in axes), c.variant + ("" if c.variant in usable else " (not usable here)")]
            for c in cases]
    note = _nearest(bundle)
    if bundle.serving.status == "rejected":  # what every call runs instead, and why
        sentence = _serving(bundle)
        note = sentence[0].upper() + sentence[1:]
    return _table([*axes, "variant"], rows) + f"\n\n{note}."


def _summary(bundle: Bundle) -> str:
    """One row: the metric (fp32 and served), what serves the first benchmarked case, and its speed against
    torch eager and the fastest peer runtime."""
    m = bundle.manifest
    metric = m.get("metric", {})
    name, unit = metric.get("name", "metric"), metric.get("unit", "") or ""
    fp32 = m.get("variants", {}).get("fp32", {}).get(name)
    served_metrics = (m.get("serving") or {}).get("metrics") or {}
    head = (m.get("benchmark") or {}).get("headline") or {}
    case = ", ".join(f"{k} {v}" for k, v in (head.get("case") or {}).items()) or "-"
    ms, eager, peer_ms = head.get("ms"), head.get("torch_eager_ms"), head.get("peer_ms")

    def times(ref):
        return f"{ref / ms:.1f}x" if isinstance(ms, (int, float)) and isinstance(ref, (int, float)) and ms else "-"

    served = head.get("variant") or bundle.default_variant
    title = name.replace("_", " ")
    rows = [[f"{shown(fp32)}{unit} / {shown(served_metrics.get(name, fp32))}{unit}", f"{served}: {variant_title(served)}",
             f"{ms:.3g} ms ({case})" if isinstance(ms, (int, float)) else "-", times(eager),
             f"{times(peer_ms)} ({head['peer']})" if head.get("peer") else "-"]]
    return _table([f"{title}: fp32 / served", "served variant", "its latency", "vs torch eager", "vs fastest peer"], rows)


def models_tab(bundles: dict[str, Bundle], problems: list[str], protocol: str | None = None) -> None:
    """Per bundle: a summary line, the two charts, and the details in folds (the tables, downloadable)."""
    if not bundles:
        gr.Markdown("No bundles yet.")
    for task, bundle in bundles.items():
        m = bundle.manifest
        settings = ", ".join(f"{k} = {v}" for k, v in bundle.inference.items()) or "none (the graph needs no settings)"
        gr.Markdown(f"### {task}: `{bundle.name}`\n{m.get('architecture', '')}, preset {m.get('preset')}, "
                    f"data: {m.get('data', '-')}; graphs {', '.join(bundle.graphs)}\n\n{_summary(bundle)}",
                    elem_classes=["models-summary"])
        charts = [(p, title) for name, title in (("benchmark.png", "Benchmark (this machine, when it was made)"),
                                                  ("curves.png", "Training curves")) if (p := bundle.file(name))]
        if charts:
            with gr.Row():
                for p, title in charts:
                    gr.Image(str(p), label=title, interactive=False, height=260, buttons=["fullscreen", "download"])
        with gr.Accordion("Served variant per call, defaults", open=False):
            gr.Markdown(f"{_serving_table(bundle)}\n\n**Served defaults**: {settings}"
                        + _protocol(task, bundle, protocol))
        with gr.Accordion("Variants, metrics and parity", open=False):
            gr.Markdown(f"**Variants**\n\n{_variants_table(bundle)}\n\n**Metrics**\n\n{_metrics_table(m)}\n\n"
                        f"**Parity with PyTorch** (the served computation, per held-out set)\n\n{_parity_table(m)}"
                        + _samples(m) + f"\n\nFolder: `{bundle.path}`")
        if bench := bundle.file("benchmark.md"):
            with gr.Accordion("Benchmark table", open=False):
                gr.Markdown(bench.read_text())
                gr.File([str(p) for name in ("benchmark.md", "benchmark.json") if (p := bundle.file(name))],
                        label="Download", interactive=False)
    for line in problems:
        gr.Markdown(f"⚠️ {line}")
