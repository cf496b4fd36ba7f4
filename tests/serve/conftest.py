import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(bundles: list[Path], tmp_path_factory, concurrency: int = 8, **launch):
    """The app over copies of ``bundles`` (laid out as ``<root>/<task>/<run>``), launched on a free port:
    yields (its URL, the root); every bundle must be found, with no problems."""
    from serve.app import build_app
    from serve.discover import find_bundles

    root = tmp_path_factory.mktemp("served")
    for bundle in bundles:
        shutil.copytree(bundle, root / bundle.parent.name / bundle.name)
    found, problems = find_bundles(root)
    assert set(found) == {b.parent.name for b in bundles} and not problems
    app = build_app(found, problems)
    app.queue(default_concurrency_limit=concurrency)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    try:
        yield f"http://127.0.0.1:{port}/", root
    finally:
        app.close()


@pytest.fixture
def bundle_copy(smoke_bundle, tmp_path):
    """A private copy of the smoke bundle, laid out as ``artifacts/classify/<run>``."""
    dst = tmp_path / "artifacts" / "classify" / smoke_bundle.name
    shutil.copytree(smoke_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def served_bundle(smoke_bundle, tmp_path_factory):
    dst = tmp_path_factory.mktemp("served") / "classify" / smoke_bundle.name
    shutil.copytree(smoke_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def app_url(served_bundle):
    """The app on a free loopback port, serving a copy of the smoke bundle, for the whole session."""
    from serve.app import build_app
    from serve.discover import find_bundles

    bundles, problems = find_bundles(served_bundle.parent.parent)
    app = build_app(bundles, problems)
    app.queue(default_concurrency_limit=8)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, max_file_size="2mb")
    yield f"http://127.0.0.1:{port}/"
    app.close()


def example_feeds(io: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs any graph takes: each axis at its smallest size (two rows where the axis is the batch), ints 1
    (a token, a class, a step, a mask bit: valid for every graph here), pixels random, floats random in [0, 1)."""
    dims = io.get("dims", {})

    def size(axis):
        if isinstance(axis, int):
            return axis
        parts = [max(dims.get(p.strip(), {}).get("min", 1), 2 if p.strip() == "batch" else 1) for p in axis.split("+")]
        return sum(parts)

    feeds = {}
    for s in io["inputs"]:
        shape = tuple(size(a) for a in s["shape"])
        dtype = np.dtype(s["dtype"])
        if dtype == np.uint8:
            feeds[s["name"]] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype.kind == "f":
            feeds[s["name"]] = rng.random(shape).astype(dtype)  # in [0, 1): thresholds too
        else:
            feeds[s["name"]] = np.ones(shape, dtype)
    return feeds


@pytest.fixture(scope="session")
def protocol_server(smoke_bundles):
    """The inference protocol over every task's smoke bundle on a free port: (address, bundles, app)."""
    from pipeline.tasks import TASKS
    from serve.protocol import Protocol, Server, models_of
    from serve.runtime import Bundle
    from serve.triton_config import model_config

    bundles = {task: Bundle.open(smoke_bundles(task)) for task in TASKS}
    app = Protocol(models_of(bundles), max_body=1 << 20, workers=2, config=model_config)
    server = Server(app, "127.0.0.1", free_port())
    server.start()
    url = f"127.0.0.1:{server.port}"
    yield url, bundles, app
    server.stop()
