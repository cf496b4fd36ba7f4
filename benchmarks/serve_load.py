"""Load on the running app: N concurrent clients call the classify endpoint on loopback for a
bounded time, through Gradio's HTTP API (upload, call, result: what any language's client does);
prints requests/s, p50/p99 latency and errors.

    .venv/bin/python benchmarks/serve_load.py [ARTIFACTS_DIR] [--clients 16] [--seconds 20]

Starts ``python -m serve`` on a free loopback port itself and stops it at the end. Each request
uploads one held-out digit PNG (from the bundle's examples) and waits for the label.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit("the server did not start in time")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def one_request(client, image: bytes, name: str, variant: str) -> None:
    """Gradio's HTTP API, as any language would call it: upload, start the call, read its result."""
    r = await client.post("/gradio_api/upload", files={"files": (name, image, "image/png")})
    r.raise_for_status()
    data = [{"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}, variant]
    r = await client.post("/gradio_api/call/classify", json={"data": data})
    r.raise_for_status()
    r = await client.get(f"/gradio_api/call/classify/{r.json()['event_id']}")
    event = next((line for line in r.text.splitlines() if line.startswith("event:")), "")
    if "complete" not in event:
        raise RuntimeError(r.text.strip().replace("\n", " ")[:200])


async def load(url: str, examples: list[str], args) -> tuple[list[float], list[str], float]:
    """``args.clients`` clients, each first making ``args.warmup`` untimed calls, then calling in a
    loop for ``args.seconds`` (the same window for all)."""
    import httpx

    images = [(Path(p).read_bytes(), Path(p).name) for p in examples]
    latencies: list[float] = []
    errors: list[str] = []
    warmed, all_warm, start = [0], asyncio.Event(), asyncio.Event()
    deadline = [0.0]

    async def client_loop(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for k in range(args.warmup):  # connections and first-call paths, not timed
                await one_request(client, *images[(i + k) % len(images)], args.variant)
            warmed[0] += 1
            if warmed[0] == args.clients:
                all_warm.set()
            await start.wait()
            k = i
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                try:
                    await one_request(client, *images[k % len(images)], args.variant)
                    latencies.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                k += 1

    tasks = [asyncio.create_task(client_loop(i)) for i in range(args.clients)]
    await all_warm.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + args.seconds
    start.set()
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="?", default="artifacts")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per client before the timed window")
    ap.add_argument("--concurrency", type=int, default=8, help="the server's --concurrency")
    args = ap.parse_args()

    manifests = sorted(Path(args.artifacts).glob("classify/*/manifest.json"))
    if not manifests:
        sys.exit(f"no classify bundle in {args.artifacts}; make one with `python -m pipeline run classify --preset quick`")
    bundle = manifests[-1].parent
    examples = [str(bundle / n) for n in json.loads(manifests[-1].read_text()).get("examples", [])]
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "serve", args.artifacts, "--port", str(port),
                               "--concurrency", str(args.concurrency)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_ready(url, server)
        cpu0 = cpu_seconds(server.pid)
        latencies, errors, elapsed = asyncio.run(load(url, examples, args))
        server_cpu = cpu_seconds(server.pid) - cpu0
        lat = np.asarray(latencies) * 1000
        print(f"bundle {bundle.name}, variant {args.variant}, {args.clients} clients, {elapsed:.1f} s, "
              f"server concurrency {args.concurrency}")
        print(f"requests {len(lat)}  errors {len(errors)}  throughput {len(lat) / elapsed:.1f} req/s")
        if len(lat):
            print(f"latency ms: p50 {np.percentile(lat, 50):.1f}  p90 {np.percentile(lat, 90):.1f}  "
                  f"p99 {np.percentile(lat, 99):.1f}  max {lat.max():.1f}")
        if len(lat) and server_cpu > 0:
            print(f"server CPU: {1000 * server_cpu / len(lat):.1f} ms per request "
                  f"({100 * server_cpu / elapsed:.0f}% of one core)")
        for e in sorted(set(errors))[:5]:
            print("error:", e)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
