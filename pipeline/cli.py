"""``python -m pipeline``: the stage commands. Bad input ends with one ``error:`` line and exit 2."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from pipeline.tasks import TASKS
from pipeline.tasks.base import PRESETS
from serve.inputs import ArgumentParser


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pipeline", description="The stages: train -> export -> optimize -> "
                                "benchmark. Bad input ends with one 'error:' line and exit code 2.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def train_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--preset", default="quick", metavar="|".join(PRESETS),
                        help="smoke: seconds (tests); quick: minutes on 2 CPU cores; full: the GPU recipe")
        sp.add_argument("--config", metavar="FILE", help="a .json or .toml file of overrides (sections model, data, train, ...)")
        sp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set train.lr=1e-3 --set model.name=vit (repeatable)")
        sp.add_argument("--data", metavar="PATH", help="your own data instead of the built-in set, in the task's "
                        "usual format (classify: an image folder per class)")
        sp.add_argument("--out", default="artifacts", metavar="DIR", help="artifacts root (default: artifacts)")

    sp = sub.add_parser("train", help="train a model into a new run folder")
    sp.add_argument("task", help=", ".join(TASKS))
    train_args(sp)
    sp.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder from its last checkpoint")
    sp = sub.add_parser("export", help="export the task's ONNX graphs and verify them against PyTorch on held-out data")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp = sub.add_parser("optimize", help="ORT-optimized, INT8, FP16 and TensorRT variants (no flag: INT8 and FP16)")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("--int8", action="store_true",
                    help="INT8: static (calibrated) first, dynamic if static loses too much (optimize.int8 picks one)")
    sp.add_argument("--fp16", action="store_true", help="FP16 weights and activations")
    sp.add_argument("--tensorrt", action="store_true", help="a TensorRT FP16 engine (needs tensorrt and an NVIDIA GPU)")
    sp = sub.add_parser("benchmark", help="time every backend side by side")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp = sub.add_parser("triton", help="a Triton Inference Server model repository of bundles (the models of "
                        "python -m serve's inference protocol)")
    sp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="bundles, one per task")
    sp.add_argument("--out", required=True, metavar="REPO", help="the repository folder to write")
    sp.add_argument("--variant", help="the variant every graph model holds (default: each bundle's serving choice)")
    sp.add_argument("--force", action="store_true", help="replace REPO if it exists")
    sp = sub.add_parser("web", help="a static web site that runs the demos in the browser (onnxruntime-web, no server "
                        "inference)")
    sp.add_argument("root", nargs="?", default="artifacts", metavar="ARTIFACTS_DIR",
                    help="where the bundles are (default: artifacts); the newest per task is used")
    sp.add_argument("--out", required=True, metavar="SITE", help="the site folder to write")
    sp.add_argument("--run", dest="runs", action="append", metavar="RUN", help="use this run (repeatable)")
    sp.add_argument("--webgpu", action="store_true", help="also ship onnxruntime-web's WebGPU build (28 MB more)")
    sp.add_argument("--force", action="store_true", help="replace SITE if it exists")
    sp = sub.add_parser("run", help="train -> export -> optimize -> benchmark")
    sp.add_argument("task", help=", ".join(TASKS) + ", or all")
    train_args(sp)
    sp.add_argument("--resume", metavar="RUN_DIR", help="continue this run where it stopped (training from its last "
                    "checkpoint, then the stages not done yet)")
    sp.add_argument("--serve", action="store_true", help="start the app first: its front tab shows each task's "
                    "progress and each demo goes live as its bundle lands (fastest first); a finished bundle is "
                    "kept, an interrupted one continued. The serving options below apply")
    from serve.__main__ import serving_options

    serving_options(sp.add_argument_group("serving (with --serve)"))
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    # Ctrl-C (SIGINT) stops a stage cleanly even where the process was started with it ignored (a
    # background job of a script): ``run --serve`` stops its child with it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = _parser().parse_args(argv)
    from export.torch_to_onnx import ExportError
    from pipeline import stages
    from pipeline.config import parse_sets
    from pipeline.errors import PipelineError
    from pipeline.tasks import get_task
    from serve.bundle import BundleError

    try:
        if args.command in ("train", "run"):
            sets = parse_sets(args.sets)
            kwargs = dict(config_file=args.config, sets=sets, data=args.data, out=args.out)
            if args.command == "train":
                stages.train(args.task, args.preset, resume=args.resume, **kwargs)
            elif args.resume:
                if args.task == "all" or args.serve:
                    raise PipelineError("--resume continues one run: python -m pipeline run TASK --resume RUN_DIR")
                print(f"bundle: {stages.continue_run(args.resume).resolve()}")
            else:
                names = list(TASKS) if args.task == "all" else [get_task(args.task).name]
                if args.serve:
                    from pipeline.live import serve_while_making

                    if args.config or args.data:
                        raise PipelineError("--serve makes the built-in data's models: leave out --config and --data, "
                                            "or run without --serve")
                    args.artifacts = args.out
                    return serve_while_making(names, args.preset, Path(args.out),
                                              [a for s in args.sets for a in ("--set", s)], args)
                from pipeline.web import write_run_site

                for name in names:
                    run_dir = stages.run_all(name, args.preset, **kwargs)
                    print(f"bundle: {Path(run_dir).resolve()}")
                if args.task == "all":
                    write_run_site(Path(args.out))
        elif args.command == "export":
            stages.export(args.run_dir)
        elif args.command == "optimize":
            everything = not (args.int8 or args.fp16 or args.tensorrt)
            stages.optimize(args.run_dir, int8=args.int8 or everything, fp16=args.fp16 or everything,
                            tensorrt=args.tensorrt)
        elif args.command == "benchmark":
            stages.benchmark(args.run_dir)
        elif args.command == "triton":
            from pipeline.triton import write_repository

            names = write_repository(args.run_dirs, args.out, args.variant, args.force)
            print(f"Triton model repository {Path(args.out).resolve()}: {', '.join(names)}")
        elif args.command == "web":
            from pipeline.web import write_site

            tasks = write_site(args.root, args.out, args.runs, args.webgpu, args.force)
            for t in tasks:
                print(f"{t.task:9s} {t.variant:5s} {t.bytes / 1e6:6.2f} MB  ({t.run})")
            print(f"site {Path(args.out).resolve()}: python {Path(args.out) / 'serve.py'} and open http://127.0.0.1:8080/")
    except (PipelineError, ExportError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a partial run folder can be continued with `train TASK --resume RUN_DIR`", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
