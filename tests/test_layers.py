"""DESIGN.md's import rules, checked statically over every module of the four packages."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("models", "pipeline", "export", "serve")
# package -> top-level names it must never import (DESIGN.md: "Layers, and which way imports go")
FORBIDDEN = {
    "serve": {"torch", "models", "pipeline", "export"},
    "export": {"serve", "pipeline", "models"},
    "models": {"pipeline", "export", "serve", "onnx", "onnxruntime", "gradio", "numpy"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package):
    broken = {f"{p.relative_to(ROOT)} imports {sorted(_imports(p) & FORBIDDEN[package])}"
              for p in (ROOT / package).rglob("*.py") if _imports(p) & FORBIDDEN[package]}
    assert not broken, broken


def test_models_import_torch_only():
    allowed = {"torch", "models", "__future__", "dataclasses", "math", "typing"}
    broken = {f"{p.relative_to(ROOT)}: {sorted(_imports(p) - allowed)}"
              for p in (ROOT / "models").rglob("*.py") if _imports(p) - allowed}
    assert not broken, broken


def test_the_rule_checker_sees_deferred_imports(tmp_path):
    """Imports inside functions count too (the checker walks the whole tree, not just the top)."""
    (tmp_path / "m.py").write_text("def f():\n    import torch\n    from pipeline import stages\n")
    assert _imports(tmp_path / "m.py") == {"torch", "pipeline"}


def test_slow_marking_covers_every_bundle_test():
    """``-m "not slow"`` collects no test that builds or reads a pipeline bundle."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                           "-p", "no:cacheprovider", str(ROOT / "tests")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert collected and not [t for t in collected if "test_app.py" in t or "test_browser.py" in t
                              or "test_proof_task" in t or "run_all" in t]
