"""Server memory under hostile and large images: starts ``python -m serve`` on a free loopback port,
sends each case from N clients at once, and prints the server's resident memory (VmRSS) at idle,
its peak during the case and what stays afterwards, with what each client got back.

    .venv/bin/python benchmarks/serve_memory.py [ARTIFACTS_DIR] [--clients 8]

Cases: a 120 KB PNG declaring 10,000 x 10,000 pixels sent as a sketch (refused from its header),
a 4,000 x 4,000 grey PNG and a 4,096 x 4,096 RGBA PNG uploaded (accepted: the largest allowed).
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
        print(f"idle: {rss_mb(proc.pid)} MB")
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
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
