"""``python -m serve`` as a user starts it."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from serve.app import MAKE_ONE, build_app
from tests.conftest import ROOT
from tests.serve.conftest import free_port


def test_no_bundle_names_the_command(tmp_path):
    app = build_app({}, [], tmp_path)
    text = json.dumps(app.config)
    assert "No model bundle found" in text and MAKE_ONE in text


@pytest.mark.slow
@pytest.mark.parametrize("with_bundle", [False, True])
def test_python_m_serve(tmp_path, served_bundle, with_bundle):
    """Started as a user starts it: it prints what it serves, then its URL once it listens."""
    import queue
    import threading

    root = served_bundle.parent.parent if with_bundle else tmp_path
    port, v2, grpc_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "serve", str(root), "--port", str(port), "--v2-port", str(v2),
                             "--grpc-port", str(grpc_port)],
                            cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    out = []
    try:
        deadline = time.time() + 90
        while not any(f"serving on http://127.0.0.1:{port}" in line for line in out):
            assert time.time() < deadline and proc.poll() is None, "".join(out)
            try:
                out.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        config = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read().decode()
        models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{v2}/v2/repository/index", timeout=5).read())
        import tritonclient.grpc as grpcclient

        over_grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}").get_model_repository_index().models
        assert {m.name for m in over_grpc} == {m["name"] for m in models}
        if with_bundle:
            assert "classify-sketch" in config and "Models" in config and f"127.0.0.1:{v2}/v2" in config
            assert {m["name"] for m in models} == {"classify", "classify_model"}
        else:
            assert "No model bundle found" in config and models == []
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = "".join(out)
    assert ("no bundle found" in text) != with_bundle
    assert (f"classify: {served_bundle}" in text) == with_bundle


@pytest.mark.slow
@pytest.mark.parametrize("which", ["--port", "--v2-port", "--grpc-port"])
def test_port_in_use_is_one_error_line(tmp_path, which):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--port": str(free_port()), "--v2-port": str(free_port()), "--grpc-port": str(free_port()),
                 which: str(port)}
        proc = subprocess.run([sys.executable, "-m", "serve", str(tmp_path), *(a for kv in ports.items() for a in kv)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    what = {"--v2-port": "the inference protocol", "--grpc-port": "the inference protocol over gRPC"}.get(which, "")
    assert line.startswith(f"error: cannot serve {what + ' ' if what else ''}on 127.0.0.1:{port}"), line


@pytest.mark.parametrize("argv", [["--port", "abc"], ["--concurrency", "0"], ["--max-side", "-3"], ["--bogus"],
                                  ["--max-upload", "lots"], ["--v2-workers", "0"]])
def test_usage_errors_are_one_line(capsys, argv):
    from serve.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
