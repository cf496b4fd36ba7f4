"""Find bundles under an artifacts folder: ``<root>/<task>/<run>/manifest.json``."""
from __future__ import annotations

import json
from pathlib import Path

from serve.bundle import MANIFEST, BundleError, graph_files
from serve.runtime import Bundle
from serve.tasks import TABS


def find_bundles(root: str | Path, runs: list[str] | None = None, spin: bool = False, keep: int = 2
                 ) -> tuple[dict[str, Bundle], list[str]]:
    """The newest bundle per task (or the named ``runs``), and one line per bundle that could not be
    used; ``spin``: their ORT sessions' idle threads spin (:class:`serve.runtime.OrtSession`);
    ``keep``: variants kept loaded beyond the served ones (:attr:`serve.runtime.Bundle.keep`)."""
    root = Path(root)
    problems: list[str] = []
    chosen: dict[str, Bundle] = {}
    if not root.is_dir():
        return chosen, problems
    candidates = sorted(root.glob(f"*/*/{MANIFEST}"), key=lambda p: _created(p), reverse=True)
    for manifest in candidates:
        run_dir = manifest.parent
        if runs and run_dir.name not in runs and str(run_dir) not in runs:
            continue
        task = run_dir.parent.name
        if task in chosen:
            continue
        try:
            bundle = Bundle.open(run_dir, spin=spin, keep=keep)
            if bundle.task != task:
                raise BundleError(f"{run_dir}: a {bundle.task!r} bundle in the {task!r} folder; move it to "
                                  f"{root / bundle.task}")
            if task not in TABS:
                raise BundleError(f"{run_dir}: no tab serves task {task!r} (known: {', '.join(TABS)})")
            TABS[task].check(bundle)
        except BundleError as e:
            problems.append(str(e))
            continue
        if "fp32" not in bundle.variants():
            files = graph_files(bundle.manifest, "fp32")
            why = "; ".join(f"{f} {bundle.bad_files[f]}" for f in files.values() if f in bundle.bad_files)
            problems.append(f"{run_dir}: its portable graphs are missing or damaged ({why or 'not exported'})")
            continue
        chosen[task] = bundle
    if runs:
        found = {b.path.name for b in chosen.values()} | {str(b.path) for b in chosen.values()}
        problems += [f"run {r!r} not found under {root}" for r in runs if r not in found]
    return chosen, problems


def _created(manifest: Path) -> str:
    """Newest first by the manifest's creation time (a damaged one sorts last, then fails to open)."""
    try:
        created = json.loads(manifest.read_text()).get("created", "")
    except (OSError, ValueError, AttributeError, RecursionError):
        return ""
    return (created if isinstance(created, str) else "") + manifest.parent.name
