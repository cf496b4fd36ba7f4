"""The Gradio app: a tab per task with a bundle, and a Models tab describing every bundle."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue rebuilds a pandas summary of its last N events after every event (N = 10,000 and
# every 1 by default): measured here as ~8% of the server's CPU under load, growing with N.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

import gradio as gr  # noqa: E402

from serve.bundle import first_line  # noqa: E402
from serve.live import Board, board_html, waiting_html  # noqa: E402
from serve.models_tab import models_tab  # noqa: E402
from serve.runtime import Bundle  # noqa: E402
from serve.tasks import TABS  # noqa: E402

MAKE_ONE = "python -m pipeline run all --serve"


def _endpoint(block_fn) -> tuple[str, list[str]]:
    """An event's API name and its parameters' names, for messages."""
    import inspect

    name = getattr(block_fn, "api_name", None) or getattr(block_fn, "name", None) or "this endpoint"
    try:
        hints = getattr(block_fn.fn, "__annotations__", {})
        params = [p for p in inspect.signature(block_fn.fn).parameters if hints.get(p) is not gr.Request]
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


def build_app(bundles: dict[str, Bundle], problems: list[str] | None = None, root: str | Path = "artifacts",
              protocol: str | None = None, board: Board | None = None) -> gr.Blocks:
    """``protocol``: the inference protocol's base URL, when it is served beside the app (the Models tab
    says so). ``board``: the models still being made (:mod:`serve.live`): a front tab shows their progress
    and each of their tabs renders when its bundle lands."""
    problems = problems or []
    live = [t for t in (board.tasks if board else []) if t in TABS and t not in bundles]
    on_load = "\n".join(dict.fromkeys(tab.on_load_js for task, tab in TABS.items()  # a script shared by tabs once
                                       if (task in bundles or task in live) and tab.on_load_js))
    with App(title="Little Book of Deep Learning: ONNX demos", analytics_enabled=False) as app:
        if on_load:  # the tabs' page-open scripts, in the browser only
            app.load(None, js=f"() => {{\n{on_load}\n}}")
        gr.Markdown("# Little Book of Deep Learning: ONNX demos\nEvery model here runs from its ONNX file "
                    "with ONNX Runtime alone: pre- and post-processing are inside the graph.")
        if not bundles and not live:
            gr.Markdown(f"**No model bundle found in `{root}`.** Make one with\n\n```\n{MAKE_ONE}\n```\n\n"
                        "then start this app again.", elem_id="no-bundle")
        with gr.Tabs(selected="progress" if live else None):
            if board is not None:
                with gr.Tab("Progress", id="progress"):
                    front = gr.HTML(board_html(board, _titles()), elem_id="live-progress")
            waiting, landed = {}, {}
            for task, tab in TABS.items():
                if task in bundles:
                    with gr.Tab(tab.title, id=task):
                        tab.build(bundles[task])
                elif task in live:
                    with gr.Tab(tab.title, id=task):
                        waiting[task], landed[task] = _live_tab(board, task)
            with gr.Tab("Models", id="models"):
                if board is None:
                    models_tab(_ordered(bundles), problems, protocol)
                else:
                    models = _live_models(board, bundles, problems, protocol)
        if board is not None:
            _refresh(board, front, waiting, landed, models)
    return app


def _ordered(bundles: dict[str, Bundle]) -> dict[str, Bundle]:
    """In the tabs' order."""
    return {t: bundles[t] for t in TABS if t in bundles} | bundles


def _titles() -> dict[str, str]:
    return {task: tab.title for task, tab in TABS.items()}


def _live_tab(board: Board, task: str) -> tuple[gr.HTML, gr.State]:
    """A task's tab before its bundle lands: what it waits for; then the task's own tab, rendered."""
    tab = TABS[task]
    waiting = gr.HTML(waiting_html(board.state(task), tab.title), elem_id=f"{task}-waiting")
    landed = gr.State("")  # the run folder rendered ("": none yet)

    @gr.render(inputs=landed)
    def body(run: str) -> None:
        bundle = board.bundle(task)
        if run and bundle is not None:
            tab.build(bundle)

    return waiting, landed


def _live_models(board: Board, bundles: dict[str, Bundle], problems: list[str], protocol: str | None) -> gr.State:
    landed = gr.State("")

    @gr.render(inputs=landed)
    def body(runs: str) -> None:
        models_tab(_ordered({**bundles, **board.bundles()}), problems, protocol)

    return landed


def _refresh(board: Board, front: gr.HTML, waiting: dict[str, gr.HTML], landed: dict[str, gr.State],
             models: gr.State) -> None:
    """Every second while anything is still being made: the board, each waiting tab's line, and the run
    folder each landed tab renders (a tab re-renders only when its run changes)."""
    tasks = list(waiting)
    timer = gr.Timer(1.0)

    def tick(*rendered: str):
        bundles = board.bundles()
        runs = [str(bundles[t].path) if t in bundles else "" for t in tasks]
        out: list[Any] = [board_html(board, _titles())]
        for t, run in zip(tasks, runs):
            out.append(gr.update(value=waiting_html(board.state(t), TABS[t].title), visible=not run))
        out += [run if run != old else gr.skip() for run, old in zip(runs, rendered)]
        everything = "|".join(str(b.path) for b in bundles.values())
        out.append(everything if everything != rendered[-1] else gr.skip())
        out.append(gr.Timer(active=not board.finished))
        return out

    timer.tick(tick, [*landed.values(), models], [front, *waiting.values(), *landed.values(), models, timer],
               show_progress="hidden", api_name=False, concurrency_limit=None)  # the queue: a State it sets
    # must fire its change (the render) -- not so for an unqueued event; unlimited: never waits on the demos
