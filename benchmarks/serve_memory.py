"""Server memory under hostile and large images: starts ``python -m serve`` on a free loopback port,
sends each case from N clients at once, and prints the server's resident memory (VmRSS) at idle,
its peak during the case and what stays afterwards, with what each client got back.

    .venv/bin/python benchmarks/serve_memory.py [ARTIFACTS_DIR] [--clients 8]

Cases: a 120 KB PNG declaring 10,000 x 10,000 pixels sent as a sketch (refused from its header),
a 4,000 x 4,000 grey PNG and a 4,096 x 4,096 RGBA PNG uploaded (accepted: the largest allowed).
Then, with ``--variants`` (default on), a 2,048 x 2,048 image sent to every image task present
(classify, detect, segment) on every variant the server offers, first alone, then from 4 clients at
once; and the resident memory after an idle pause at the end, beside the idle size at the start.
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import ROOT, free_port, wait_ready  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("artifacts", nargs="?", default=str(ROOT / "artifacts"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--no-variants", dest="variants", action="store_false",
                   help="skip the 2,048 x 2,048 request to every variant of every image task")
    args = p.parse_args()
    from gradio_client import Client, handle_file

    tmp = Path(tempfile.mkdtemp())
    ramp = (np.arange(4096) // 16).astype(np.uint8)
    rgba = np.dstack([np.add.outer(ramp, ramp)] * 3 + [np.full((4096, 4096), 200, np.uint8)])  # compresses to ~1 MB
    files = {"huge.png": png(Image.new("L", (10000, 10000), 255)),
             "grey4000.png": png(Image.new("L", (4000, 4000), 200)), "rgba4096.png": png(Image.fromarray(rgba))}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([sys.executable, "-m", "serve", args.artifacts, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)})
    try:
        wait_ready(url, proc)
        idle = rss_mb(proc.pid)
        print(f"idle: {idle} MB")
        print("| case | clients | peak MB | after MB | answers |\n| --- | ---: | ---: | ---: | --- |")
        cases = (("huge.png", "/classify_sketch"), ("grey4000.png", "/classify"), ("rgba4096.png", "/classify"))
        for name, api in cases:
            peak, stop, answers = [0], [False], []

            def watch():
                while not stop[0]:
                    peak[0] = max(peak[0], rss_mb(proc.pid))
                    time.sleep(0.02)

            def one():
                client = Client(url, verbose=False)
                image = handle_file(str(tmp / name))
                value = {"background": None, "layers": [], "composite": image} if api.endswith("sketch") else image
                try:
                    answers.append(client.predict(value, "fp32", api_name=api)[0]["label"])
                except Exception as e:  # noqa: BLE001 - what the client was told is the result
                    answers.append(str(e)[:100])

            watcher = threading.Thread(target=watch)
            watcher.start()
            clients = [threading.Thread(target=one) for _ in range(args.clients)]
            [t.start() for t in clients]
            [t.join() for t in clients]
            time.sleep(1.0)
            stop[0] = True
            watcher.join()
            shown = ", ".join(sorted(set(answers)))
            print(f"| {name} via {api} | {args.clients} | {peak[0]} | {rss_mb(proc.pid)} | {shown} |", flush=True)
        if args.variants:
            every_variant(url, proc, Path(args.artifacts), tmp)
            time.sleep(5.0)
            print(f"\nafter an idle pause: {rss_mb(proc.pid)} MB ({rss_mb(proc.pid) - idle:+d} MB over idle)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def every_variant(url: str, proc: subprocess.Popen, artifacts: Path, tmp: Path) -> None:
    """A 2,048 x 2,048 image to every variant of every image task the server runs, alone then 4 at once."""
    from gradio_client import Client, handle_file

    sys.path.insert(0, str(ROOT))
    from serve.discover import find_bundles

    rng = np.random.default_rng(0)
    scene = np.kron(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.ones((32, 32, 1), np.uint8))  # 2048^2
    path = tmp / "scene2048.png"
    path.write_bytes(png(Image.fromarray(scene)))
    apis = {"classify": ("/classify", ()), "detect": ("/detect", (0.4, 0.45)), "segment": ("/segment", ())}
    bundles, _ = find_bundles(artifacts)
    print("\n| task | variant | clients | peak MB | after MB | seconds | answer |\n| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for task, (api, settings) in apis.items():
        if task not in bundles:
            continue
        for variant in bundles[task].variants():
            for clients in (1, 4):
                peak, stop, answers = [rss_mb(proc.pid)], [False], []

                def watch():
                    while not stop[0]:
                        peak[0] = max(peak[0], rss_mb(proc.pid))
                        time.sleep(0.02)

                def one():
                    try:
                        out = Client(url, verbose=False).predict(handle_file(str(path)), *settings, variant, api_name=api)
                        answers.append("ok" if out else "empty")
                    except Exception as e:  # noqa: BLE001 - what the client was told is the result
                        answers.append(str(e)[:80])

                watcher = threading.Thread(target=watch)
                watcher.start()
                t0 = time.perf_counter()
                threads = [threading.Thread(target=one) for _ in range(clients)]
                [t.start() for t in threads]
                [t.join() for t in threads]
                seconds = time.perf_counter() - t0
                time.sleep(1.0)
                stop[0] = True
                watcher.join()
                print(f"| {task} | {variant} | {clients} | {peak[0]} | {rss_mb(proc.pid)} | {seconds:.1f} | "
                      f"{', '.join(sorted(set(answers)))} |", flush=True)


if __name__ == "__main__":
    main()
