"""What people read of a bundle: the model card and the benchmark table."""
from __future__ import annotations

import json

from serve.bundle import graph_files, metric_columns, shown


def benchmark_table(rows: list[dict], axes: list[str], columns: list[tuple[str, str]], unit: str,
                    baselines: dict[str, dict] | None = None) -> str:
    """Markdown: a row per backend and case; ``columns`` (title, row key) are the metric on each scored
    set; ``baselines`` (the task's reference points, not timed) follow as rows of their own."""
    head = ["backend", *axes, "median ms", "p90 ms", f"{unit}/s", *(t for t, _ in columns)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        cells = [r["backend"], *(str(r[a]) for a in axes), f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                 f"{r['throughput']:,.0f}" if r["throughput"] >= 100 else f"{r['throughput']:.1f}",
                 *(shown(r.get(key)) for _, key in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    for name, values in (baselines or {}).items():
        cells = [f"{name} (baseline)", *("" for _ in axes), "", "", "", *(shown(values.get(key)) for _, key in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def model_card(manifest: dict, usage: str) -> str:
    """MODEL_CARD.md: what it is, its data, graphs, metrics, and ``usage`` with plain onnxruntime."""
    metric = manifest["metric"]
    name, unit = metric["name"], metric.get("unit", "")
    columns = metric_columns(manifest)
    rows = []
    for variant, v in manifest["variants"].items():
        values = " | ".join(shown(v.get(key)) for _, key in columns)
        files = ", ".join(f"`{f}`" for f in graph_files(manifest, variant).values()) or "-"
        rows.append(f"| {variant} | {files} | {values} | {v['status']}{': ' + v['reason'] if v.get('reason') else ''} |")
    graphs = []
    for g, spec in manifest["graphs"].items():
        io = spec["io"]
        lines = [f"- in `{s['name']}` {s['dtype']} {list(s['shape'])}: {s['doc']}" for s in io["inputs"]]
        lines += [f"- out `{s['name']}` {s['dtype']} {list(s['shape'])}: {s['doc']}" for s in io["outputs"]]
        graphs.append(f"**{g}** (`{spec['files']['fp32']}`, opset {io['opset']})\n\n" + "\n".join(lines) + "\n")
    torch_metric = manifest["metrics"].get("torch", {}).get(name)
    info = "".join(f"\n{k.capitalize()}: {', '.join(map(str, v)) if isinstance(v, list) else v}."
                   for k, v in manifest.get("info", {}).items())
    parity = "\n".join(f"- {p.get('description', s)}: " + json.dumps({k: v for k, v in p.items()
                                                                      if k not in ("description",)})
                       for s, p in manifest.get("parity", {}).items())
    tolerance = metric.get("tolerance")
    baselines = "".join(f"\n\nBaseline, {b}: " + ", ".join(f"{k} {shown(v)}" for k, v in values.items()) + "."
                        for b, values in manifest.get("baselines", {}).items())
    samples = "\n\n".join(f"> {_quote(s.get('prompt', ''))}**{_quote(s.get('continuation', ''))}**"
                           for s in manifest.get("samples", []))
    samples = f"\n\n## Samples (the held-out input, then **what the exported model gave**)\n\n{samples}" if samples else ""
    return f"""# {manifest['task']} model `{manifest['run']}`

A {manifest['architecture']} trained by `python -m pipeline train {manifest['task']} --preset {manifest['preset']}`
on {manifest.get('data', 'the built-in data')}.{info}

## Graphs

{chr(10).join(graphs)}

Pre- and post-processing are inside the graphs; what must stay outside (a decode or sampler loop over
several graphs) is numpy in `serve/tasks/{manifest['task']}.py`. The `.onnx` files without a variant
suffix use standard ONNX ops only, so any ONNX Runtime (Python, C++, C#, Java, JavaScript) runs them.
Served defaults (`inference`): `{json.dumps(manifest.get('inference', {}))}`.

## Metrics ({name} on {manifest.get('parity', {}).get(metric.get('split'), {}).get('description', 'the held-out set')}{', ' + unit if unit else ''})

PyTorch: {torch_metric if torch_metric is None else f'{torch_metric:.4g}'}. A variant is rejected when it loses
more than {tolerance}{unit} against fp32 on any of these sets.{baselines}

| variant | files | {' | '.join(t for t, _ in columns)} | status |
| --- | --- |{' ---: |' * len(columns)} --- |
{chr(10).join(rows)}

Parity of the exported graphs against PyTorch, running the served computation:

{parity}{samples}

## Run it with onnxruntime and numpy

{usage}

## Run it from JavaScript (Node.js, or the browser)

`js/littlebook.mjs` (in the littlebook-onnx repository) holds this task's loop for onnxruntime-node and
onnxruntime-web alike; `examples/node/cli.mjs` is a command line around it, and
`python -m pipeline web` writes a static page that runs it in the browser:

```js
{js_usage(manifest['task'])}
```

Training config: `config.json`. Versions: {json.dumps(manifest['versions'])}. Git commit: {manifest.get('git_commit')}.
"""


JS_CALL = {
    "classify": 'const { label, ranked } = await lb.classify(bundle, { data: rgba, width, height, channels: 4 });',
    "detect": 'const boxes = await lb.detect(bundle, { data: rgba, width, height, channels: 4 });  // [{label, score, box}]',
    "segment": 'const { mask, shares } = await lb.segment(bundle, { data: rgba, width, height, channels: 4 });',
    "textgen": 'for await (const step of lb.generate(bundle, "The ", { temperature: 0 })) process.stdout.write(step.text);',
    "asr": 'const { text, segments } = await lb.transcribe(bundle, lb.decodeWav(new Uint8Array(readFileSync("speech.wav"))));',
    "imagegen": 'const images = await lb.generateDigits(bundle, { label: "3", count: 4, steps: 25 });  // uint8 S x S each',
}


def js_usage(task: str) -> str:
    """Five lines of Node.js that open this bundle folder with onnxruntime-node and run its task."""
    return "\n".join([
        'import * as ort from "onnxruntime-node";',
        'import { readFileSync } from "node:fs";',
        'import * as lb from "./js/littlebook.mjs";',
        'const bundle = await lb.openBundle(ort, async (name) => readFileSync(`BUNDLE_DIR/${name}`), { variant: "smallest" });',
        JS_CALL.get(task, "// see examples/node/cli.mjs"),
    ])


def _quote(text: str) -> str:
    """Text inside a markdown quote: line breaks kept, markup characters escaped."""
    for c in "\\*_`<>#[]":
        text = text.replace(c, "\\" + c)
    return text.replace("\n", "  \n> ")
