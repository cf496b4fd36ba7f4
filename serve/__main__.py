"""``python -m serve [ARTIFACTS_DIR]``: serve the newest bundle per task (or the named runs)."""
from __future__ import annotations

import ctypes
import gc
from argparse import ArgumentTypeError
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # serve.app turns Gradio's analytics off

from serve.inputs import LIMITS, ArgumentParser  # noqa: E402


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _return_freed_memory() -> None:
    """glibc keeps freed buffers in its heaps for reuse, and raises its mmap threshold as large ones
    are freed; with the threshold fixed at 1 MB, decoded images and model tensors are mapped and
    unmapped, so the memory of a large request goes back to the system when it ends (Linux/glibc;
    elsewhere nothing changes)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _bytes(size: str) -> int:
    """``10mb`` -> bytes, read by Gradio's own parser of ``max_file_size``: the protocol's body limit is
    the app's upload limit to the byte."""
    from gradio.utils import _parse_file_size

    try:
        return _parse_file_size(size)
    except ValueError:
        raise ArgumentTypeError(f"expected a size such as 10mb, got {size!r}") from None


def serving_options(p: ArgumentParser) -> None:
    """The options of serving (here, and ``python -m pipeline run all --serve``)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--concurrency", type=_positive, default=8, help="requests run at once (default: 8)")
    p.add_argument("--spin", action="store_true",
                   help="ONNX Runtime's idle threads spin instead of sleeping: lower latency for one user at a "
                        "time (measured: 20-25%% at batch 1), a busy core while idle")
    p.add_argument("--keep-variants", type=int, default=2, metavar="N",
                   help="variants of a model kept loaded beyond the ones served by default, least recently "
                        "used dropped first (default: 2; the served ones load at start, others on first use)")
    p.add_argument("--max-upload", default="10mb", help="largest upload file (default: 10mb)")
    p.add_argument("--max-side", type=_positive, default=LIMITS.max_side,
                   help=f"largest image side in pixels, checked before decoding (default: {LIMITS.max_side})")
    p.add_argument("--v2-port", type=int, default=8000, metavar="PORT",
                   help="port of the Open Inference Protocol (KServe v2 / Triton HTTP: /v2/...; default 8000, "
                        "Triton's own; 0: off)")
    p.add_argument("--grpc-port", type=int, default=8001, metavar="PORT",
                   help="port of the same protocol over gRPC (KServe v2 / Triton's GRPCInferenceService; default "
                        "8001, Triton's own; 0: off; off too when --v2-port is 0)")
    p.add_argument("--v2-workers", type=_positive, default=2, metavar="N",
                   help="threads running the protocol's graph calls (default: 2)")
    p.add_argument("--batch-window", type=float, default=0.0, metavar="MS",
                   help="milliseconds a graph call waits for others to batch with, beyond those that queued "
                        "while the previous batch ran (default: 0)")


def usable(bundles: dict, problems: list[str]) -> dict:
    """``bundles`` with their served variants loaded (warmed up); one that cannot load any is dropped
    with a line in ``problems``. Each is printed, and each problem goes to stderr."""
    for task, b in list(bundles.items()):
        for variant, why in b.warm_up().items():
            print(f"warning: {task} {variant}: {why}", file=sys.stderr)
        if not b.variants():
            problems.append(f"{b.path}: no variant could be loaded; not served")
            print(f"warning: {problems[-1]}", file=sys.stderr)
            del bundles[task]
            continue
        print(f"{task}: {b.path} (variants: {', '.join(b.variants())})")
    return bundles


class Served:
    """The app and the inference protocol, listening (:func:`start`); :meth:`stop` closes both."""

    def __init__(self, app, protocol, v2, grpc=None):
        self.app, self.protocol, self.v2, self.grpc = app, protocol, v2, grpc

    def stop(self) -> None:
        _stop(self.grpc, self.protocol)
        self.app.close()


def _stop(*servers) -> None:
    """Stop the protocol's servers that were started (None: not started)."""
    for server in servers:
        if server is not None:
            server.stop()


def start(args, bundles: dict, problems: list[str], board=None) -> Served:
    """Listen with ``args`` (:func:`serving_options`); a port that cannot be had is an ``OSError`` whose
    message says which and what to do. ``board``: the models still being made (:mod:`serve.live`)."""
    from serve.app import build_app

    max_body = _bytes(args.max_upload)
    LIMITS.max_side = args.max_side
    _return_freed_memory()
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    app = build_app(bundles, problems, args.artifacts,
                    protocol=f"http://{shown_host}:{args.v2_port}" if args.v2_port else None, board=board)
    # Collector pauses were the latency tail under load (16 clients: p99 450 ms with the defaults,
    # 150 ms with these; benchmarks/serve_load.py). Start-up objects live as long as the process:
    # freeze them out of every scan, and collect young objects in larger, rarer batches.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    app.queue(default_concurrency_limit=args.concurrency, max_size=256)
    protocol = v2 = grpc = None
    if args.v2_port:  # first: a port in use stops everything before the app listens
        from serve.protocol import Protocol, Server, models_of
        from serve.triton_config import model_config

        v2 = Protocol(models_of(bundles), max_body=max_body, workers=args.v2_workers,
                      window=args.batch_window / 1000, concurrency=args.concurrency, config=model_config)
        protocol = Server(v2, args.host, args.v2_port)
        try:
            protocol.start()
        except OSError as e:
            raise OSError(f"cannot serve the inference protocol on {args.host}:{args.v2_port}: {e} "
                          "(--v2-port picks another, 0 turns it off)") from None
        try:
            from serve.grpc_protocol import GrpcServer
        except ImportError:
            GrpcServer = None
            if args.grpc_port:
                print("note: no gRPC endpoint: it needs grpcio and tritonclient's messages "
                      "(pip install 'tritonclient[grpc]'); HTTP only", file=sys.stderr)
        if args.grpc_port and GrpcServer is not None:
            grpc = GrpcServer(v2, args.host, args.grpc_port, max_message=max_body)
            try:
                grpc.start()
            except OSError as e:
                protocol.stop()
                raise OSError(f"cannot serve the inference protocol over gRPC on {args.host}:{args.grpc_port}: {e} "
                              "(--grpc-port picks another, 0 turns it off)") from None
        if board is not None:  # the models landing later join the protocol as they land
            board.listeners.append(lambda task, bundle: v2.add(models_of({task: bundle})))
    try:
        app.launch(server_name=args.host, server_port=args.port, max_file_size=args.max_upload,
                   # what people did wrong is a gr.Error with its message (shown either way); anything
                   # else is an internal failure whose text (paths, Python errors) stays in the log
                   show_error=False,
                   quiet=True, footer_links=["api"], prevent_thread_lock=True)
    except OSError as e:
        _stop(grpc, protocol)
        raise OSError(f"cannot serve on {args.host}:{args.port}: {str(e).splitlines()[0]}") from None
    if protocol is not None:
        print(f"inference protocol (KServe v2, Triton's HTTP API) on http://{shown_host}:{args.v2_port}/v2: "
              f"{len(v2.models)} models", flush=True)
    if grpc is not None:
        print(f"the same over gRPC (KServe v2 / Triton's GRPCInferenceService) on {shown_host}:{grpc.port}", flush=True)
    print(f"serving on http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    return Served(app, protocol, v2, grpc)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m serve", description=__doc__.split("\n")[0].strip("`"))
    p.add_argument("artifacts", nargs="?", default="artifacts", help="artifacts folder (default: artifacts)")
    p.add_argument("--run", action="append", default=[], metavar="RUN",
                   help="serve this run (folder name or path) instead of the newest of its task (repeatable)")
    serving_options(p)
    args = p.parse_args(argv)
    try:
        _bytes(args.max_upload)
    except ArgumentTypeError as e:
        p.error(f"argument --max-upload: {e}")

    from serve.app import MAKE_ONE
    from serve.discover import find_bundles

    bundles, problems = find_bundles(args.artifacts, args.run or None, spin=args.spin, keep=max(0, args.keep_variants))
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    usable(bundles, problems)
    if not bundles:
        print(f"no bundle found in {args.artifacts}; make one with `{MAKE_ONE}`")
    try:
        served = start(args, bundles, problems)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        served.app.block_thread()
    except KeyboardInterrupt:
        pass
    if served.protocol is not None:
        served.protocol.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
