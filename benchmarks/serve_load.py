"""Load on the served models: N concurrent clients on loopback for a bounded time; prints requests/s,
p50/p99 latency, errors, and the server's CPU per request.

    .venv/bin/python benchmarks/serve_load.py [ARTIFACTS_DIR] [--task classify] [--clients 1,16,64]
        [--protocol v2|grpc|gradio] [--tool python|wrk] [--url http://HOST:8000] [--seconds 20]

- ``--protocol v2`` (default): the Open Inference Protocol's infer endpoint with binary tensors (what
  ``tritonclient`` sends), one held-out example of the bundle per request; ``gradio``: the app's HTTP API
  (upload, call, result), classify only; ``grpc``: the same protocol over gRPC (port 8001; tritonclient.grpc's
  asyncio client, one channel per client; always the python tool: wrk speaks HTTP/1.1 only).
- ``--tool wrk``: Debian's ``wrk`` with benchmarks/v2_infer.lua drives the v2 endpoint (a load tool made
  for it, in C: the client costs the 2 cores far less than Python's); ``python``: asyncio + httpx.
- ``--task textgen``: concurrent generations on the ``textgen`` model; reports generated tokens (bytes)/s.
- ``--url``: a server already running (``python -m serve``, or Triton); without it the script starts
  ``python -m serve`` on free loopback ports and stops it at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "benchmarks" / "v2_infer.lua"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
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


# -- what one request is ----------------------------------------------------------------------


def v2_body(inputs: dict[str, np.ndarray], **parameters) -> tuple[bytes, int]:
    """An infer request with binary tensors: (body, JSON header length), in serve's own wire layout."""
    sys.path.insert(0, str(ROOT))
    from serve.tensors import datatype_of, pack_bytes

    header, blobs = {"inputs": [], "parameters": {"binary_data_output": True, **parameters}}, []
    for name, value in inputs.items():
        datatype = datatype_of(value.dtype)
        raw = pack_bytes(value) if datatype == "BYTES" else np.ascontiguousarray(value).tobytes()
        header["inputs"].append({"name": name, "shape": list(value.shape), "datatype": datatype,
                                 "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def requests_for(task: str, bundle: Path, new_tokens: int) -> tuple[str, list[tuple[dict, dict]]]:
    """The model to call and a few requests for it (inputs, parameters), from the bundle's held-out examples."""
    from PIL import Image

    manifest = json.loads((bundle / "manifest.json").read_text())
    if task == "textgen":
        prompts = [b"The return value of this function is", b"If the argument is omitted,", b"A new list"]
        return "textgen", [({"prompt": np.array([p], dtype=object)}, {"max_new_tokens": new_tokens, "temperature": 0})
                           for p in prompts]
    examples = [bundle / n for n in manifest.get("examples", []) if n.endswith(".png")][:8]
    if not examples:
        sys.exit(f"{bundle} has no example images")
    bodies = []
    for path in examples:
        image = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("L" if task == "classify" else "RGB"))
        image = image[..., None] if image.ndim == 2 else image
        inputs = {"image": image[None]}
        if task == "detect":  # the graph's thresholds: scalars, the app's defaults
            inputs |= {"score_threshold": np.array(0.3, np.float32), "iou_threshold": np.array(0.5, np.float32)}
        bodies.append((inputs, {}))
    return f"{task}_model", bodies


# -- clients ----------------------------------------------------------------------------------


def v2_call(model: str):
    """One v2 infer call of ``model`` on an httpx client; returns the bytes of text it generated (0 for tensors)."""
    path = f"/v2/models/{model}/infer"

    async def call(client, item: tuple[bytes, int]) -> int:
        body, n = item
        r = await client.post(path, content=body, headers={"Inference-Header-Content-Length": str(n)})
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:160]}")
        head = json.loads(r.content[:int(r.headers.get("inference-header-content-length", len(r.content)))])
        out = head["outputs"][0]
        return out["parameters"]["binary_data_size"] - 4 * int(np.prod(out["shape"])) if out["datatype"] == "BYTES" else 0

    return call


def grpc_call(model: str):
    """One infer call of ``model`` over gRPC (tritonclient.grpc.aio); returns the bytes of text it generated."""
    import tritonclient.grpc as grpcclient

    from serve.tensors import datatype_of

    async def call(client, item: tuple[dict, dict]) -> int:
        inputs, params = item
        tensors = []
        for name, value in inputs.items():
            t = grpcclient.InferInput(name, list(value.shape), datatype_of(value.dtype))
            t.set_data_from_numpy(value)
            tensors.append(t)
        r = await client.infer(model, tensors, parameters=params or None)
        out = r.get_response().outputs[0]
        return sum(len(v) for v in r.as_numpy(out.name).reshape(-1)) if out.datatype == "BYTES" else 0

    return call


def grpc_connect(url: str):
    import tritonclient.grpc.aio as grpc_aio

    return grpc_aio.InferenceServerClient(url.split("://")[-1])


def http_connect(url: str):
    import httpx

    return httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1))


async def gradio_call(client, item: tuple[bytes, str]) -> int:
    """Gradio's HTTP API, as any language would call it: upload, start the call, read its result."""
    image, name = item
    r = await client.post("/gradio_api/upload", files={"files": (name, image, "image/png")})
    r.raise_for_status()
    data = [{"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}, "fp32"]
    r = await client.post("/gradio_api/call/classify", json={"data": data})
    r.raise_for_status()
    r = await client.get(f"/gradio_api/call/classify/{r.json()['event_id']}")
    event = next((line for line in r.text.splitlines() if line.startswith("event:")), "")
    if "complete" not in event:
        raise RuntimeError(r.text.strip().replace("\n", " ")[:200])
    return 0


async def python_load(url: str, call, items: list, clients: int, seconds: float, warmup: int = 3,
                      connect=http_connect) -> tuple[list[float], list[str], float, int]:
    """asyncio clients (httpx, or ``connect``'s), each calling ``call`` over ``items`` in a loop (untimed
    warm-up first). Also returns the bytes generated (textgen)."""

    latencies: list[float] = []
    errors: list[str] = []
    produced = [0]
    warmed, all_warm, start = [0], asyncio.Event(), asyncio.Event()
    deadline = [0.0]

    async def client_loop(i: int) -> None:
        async with connect(url) as client:
            for k in range(warmup):
                await call(client, items[(i + k) % len(items)])
            warmed[0] += 1
            if warmed[0] == clients:
                all_warm.set()
            await start.wait()
            k = i
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                try:
                    made = await call(client, items[k % len(items)])
                    produced[0] += made  # after the await: `x += await ...` would read x before it
                    latencies.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                k += 1

    tasks = [asyncio.create_task(client_loop(i)) for i in range(clients)]
    await all_warm.wait()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.set()
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - t0, produced[0]


def wrk_load(url: str, model: str, body: tuple[bytes, int], clients: int, seconds: float) -> dict[str, float]:
    """``wrk`` on one request body: requests/s, p50/p99 ms, errors (non-2xx, socket errors)."""
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk); or use --tool python")
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(body[0])
    try:
        out = subprocess.run(["wrk", f"-t{min(2, clients)}", f"-c{clients}", f"-d{seconds:g}s", "--latency",
                              "-s", str(LUA), f"{url}/v2/models/{model}/infer", "--", f.name, str(body[1])],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"rate": rate, "p50": ms("50%"), "p99": ms("99%"), "errors": non2xx + sock, "requests": total}


# -- the report --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="?", default="artifacts")
    ap.add_argument("--task", default="classify", choices=["classify", "detect", "segment", "textgen"])
    ap.add_argument("--clients", default="1,16,64", help="comma-separated client counts (default: 1,16,64)")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--protocol", default="v2", choices=["v2", "grpc", "gradio"])
    ap.add_argument("--tool", default="wrk", choices=["wrk", "python"])
    ap.add_argument("--url", help="a running server's v2 address (http://HOST:PORT, or HOST:PORT for grpc); "
                                  "default: start python -m serve")
    ap.add_argument("--new-tokens", type=int, default=64, help="textgen: bytes generated per request")
    ap.add_argument("--server-args", default="", help="extra arguments for the python -m serve it starts")
    args = ap.parse_args()
    if args.protocol == "gradio" and args.task != "classify":
        sys.exit("the Gradio path is measured on classify")
    manifests = sorted(Path(args.artifacts).glob(f"{args.task}/*/manifest.json"))
    if not manifests:
        sys.exit(f"no {args.task} bundle in {args.artifacts}; make one with `python -m pipeline run {args.task} --preset quick`")
    bundle = manifests[-1].parent
    model, requests = requests_for(args.task, bundle, args.new_tokens)
    bodies = [v2_body(inputs, **params) for inputs, params in requests]
    server = None
    url = args.url.rstrip("/") if args.url else None
    if url is None:
        port, v2, grpc_port = free_port(), free_port(), free_port()
        server = subprocess.Popen([sys.executable, "-m", "serve", args.artifacts, "--port", str(port), "--v2-port", str(v2),
                                   "--grpc-port", str(grpc_port), *args.server_args.split()], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        url = f"http://127.0.0.1:{port if args.protocol == 'gradio' else v2}"
        wait_ready(url if args.protocol == "gradio" else f"{url}/v2/health/ready", server)
        if args.protocol == "grpc":
            url = f"127.0.0.1:{grpc_port}"
    tool = "python" if args.task == "textgen" or args.protocol != "v2" else args.tool
    call, items, connect = v2_call(model), bodies, http_connect
    if args.protocol == "grpc":
        call, items, connect = grpc_call(model), requests, grpc_connect
    if args.protocol == "gradio":
        manifest = json.loads((bundle / "manifest.json").read_text())
        call, items = gradio_call, [((bundle / n).read_bytes(), Path(n).name) for n in manifest["examples"][:8]]
    what = {"v2": "v2 binary tensors", "grpc": "v2 over gRPC"}.get(args.protocol, "Gradio's HTTP API")
    print(f"bundle {bundle.name}, model {model}, {what}, load by {tool}, {args.seconds:g} s per row")
    print("| clients | requests/s | p50 ms | p99 ms | errors | server CPU ms/request |" +
          (" tokens/s |" if args.task == "textgen" else ""))
    print("| ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if args.task == "textgen" else ""))
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            cpu0 = cpu_seconds(server.pid) if server else 0.0
            if tool == "wrk":
                r = wrk_load(url, model, bodies[0], clients, args.seconds)
                count, extra = r["requests"], ""
            else:
                lat, errors, elapsed, produced = asyncio.run(python_load(url, call, items, clients, args.seconds,
                                                                              connect=connect))
                lat_ms = np.asarray(lat) * 1000 if lat else np.array([np.nan])
                r = {"rate": len(lat) / elapsed, "p50": np.percentile(lat_ms, 50), "p99": np.percentile(lat_ms, 99),
                     "errors": len(errors)}
                count = len(lat)
                extra = f" {produced / elapsed:.0f} |" if args.task == "textgen" else ""
                for e in sorted(set(errors))[:3]:
                    print("error:", e, file=sys.stderr)
            cpu = (cpu_seconds(server.pid) - cpu0) if server else 0.0
            per = f"{1000 * cpu / count:.2f}" if server and count else "-"
            print(f"| {clients} | {r['rate']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {per} |{extra}",
                  flush=True)
    finally:
        if server:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
