"""The static site in Debian's headless Chromium: per task the model files' size, the time to load them
and the time to the first answer after the page opened; tokens/s of greedy text generation in the page.

    python benchmarks/web_report.py [ARTIFACTS_DIR] [--out SITE] [--bytes 200] [--rounds 3]

Builds the site (``python -m pipeline web``), serves it with its own ``serve.py`` (cross-origin isolated:
WASM threads), and for each task opens a fresh page on that task's tab and answers one held-out example
(classify, detect, segment: an example image; asr: an example recording; textgen: a greedy
continuation; imagegen: 4 images). Medians over ``--rounds`` fresh pages. Every request that leaves
loopback is blocked.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ACTIONS = {  # how one answer is asked for on each tab
    "classify": "section[data-task=classify] .examples img >> nth=0",
    "detect": "section[data-task=detect] .examples img >> nth=0",
    "segment": "section[data-task=segment] .examples img >> nth=0",
    "asr": "section[data-task=asr] .examples button >> nth=2",
    "imagegen": "section[data-task=imagegen] button.act",
    "textgen": "section[data-task=textgen] button.act >> nth=0",
}


def main() -> None:
    from playwright.sync_api import sync_playwright

    from pipeline.web import write_site

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="artifacts")
    p.add_argument("--out", help="the site folder (default: a temporary one)")
    p.add_argument("--bytes", type=int, default=200, help="greedy bytes generated on the Text tab")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="WASM threads (the page's ?threads=N; 0: its default)")
    a = p.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="site-")) / "site"
    tasks = write_site(a.root, out, force=True)
    site = json.loads((out / "site.json").read_text())
    server = subprocess.Popen([sys.executable, str(out / "serve.py"), "--port", "0"], stdout=subprocess.PIPE, text=True)
    url = re.search(r"http://\S+/", server.stdout.readline()).group(0)
    rows, left = [], []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            for t in tasks:
                runs = []
                for _ in range(a.rounds):
                    page = browser.new_page()

                    def gate(route):
                        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                            route.continue_()
                        else:
                            left.append(route.request.url)
                            route.abort()

                    page.route("**/*", gate)
                    page.goto(f"{url}{f'?threads={a.threads}' if a.threads else ''}#{t.task}")
                    page.wait_for_function(f"() => window.littlebook && window.littlebook.stats.{t.task}", timeout=120_000)
                    if t.task == "textgen":
                        page.fill("input[aria-label=temperature]", "0")
                        page.fill("input[aria-label='max new bytes']", str(a.bytes))
                    if t.task == "imagegen":
                        page.fill("input[aria-label=images]", "4")
                    page.click(ACTIONS[t.task])
                    page.wait_for_function(f"() => window.littlebook.stats.{t.task}.answers >= 1 || window.littlebook.errors.length",
                                           timeout=300_000)
                    stats = page.evaluate(f"window.littlebook.stats.{t.task}")
                    if t.task == "textgen":
                        stats["tokensPerSecond"] = page.evaluate("window.littlebook.last.textgen.tokensPerSecond")
                    stats["backend"] = page.evaluate("window.littlebook.backend")
                    errors = page.evaluate("window.littlebook.errors")
                    if errors:
                        raise SystemExit(f"{t.task}: the page reported {errors}")
                    runs.append(stats)
                    page.close()
                med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
                rows.append((t, med("loadMs"), med("firstAnswerMs"), med("lastMs"),
                             med("tokensPerSecond") if t.task == "textgen" else None, runs[0]["backend"]))
            browser.close()
    finally:
        server.terminate()
    runtime = sum(site["runtime"]["files"].values())
    print(f"onnxruntime-web runtime files: {runtime / 1e6:.2f} MB ({', '.join(site['runtime']['files'])}); "
          f"medians of {a.rounds} fresh pages; requests leaving loopback: {len(left)}\n")
    print("| task | variant | model files | load | first answer after the page opened | that answer | tokens/s | backend |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for t, load, first, answer, tps, backend in rows:
        print(f"| {t.task} ({t.run}) | {t.variant} | {t.bytes / 1e6:.2f} MB | {load:.0f} ms | {first:.0f} ms | {answer:.0f} ms | "
              f"{'' if tps is None else f'{tps:.0f}'} | {backend} |")


if __name__ == "__main__":
    main()
