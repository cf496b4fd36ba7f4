import shutil
import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
