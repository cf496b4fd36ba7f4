"""``python -m pipeline triton RUN_DIR... --out REPO``: a Triton Inference Server model repository.

The same models, names and I/O as ``python -m serve``'s inference protocol (:mod:`serve.protocol`), so
one ``tritonclient`` program runs against either server:

    REPO/<task>_<graph>/config.pbtxt       onnxruntime_onnx (tensorrt_plan for an engine), dynamic batching
    REPO/<task>_<graph>/1/<graph file>     the variant serving picks (or --variant), hashed as the manifest says
    REPO/<task>/...                        a one-graph task: the same graph under the task's name; a loop task:
                                           the Python backend (1/model.py, a copy of serve/, the manifest)

Each ``config.pbtxt`` is :func:`serve.triton_config.model_config` rendered as protobuf text; written
into a temporary folder and moved into place whole, so a failed write leaves no half repository.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError

SERVE = Path(__file__).resolve().parents[1] / "serve"


def write_repository(run_dirs: list[str | Path], out: str | Path, variant: str | None = None,
                     force: bool = False) -> list[str]:
    """Write the repository of ``run_dirs`` (one bundle per task) to ``out``; returns the model names."""
    from serve.bundle import BundleError
    from serve.protocol import models_of
    from serve.runtime import Bundle
    from serve.triton_backend import MODEL_PY
    from serve.triton_config import model_config, to_pbtxt, triton_file

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise PipelineError(f"{out} exists and is not empty: name a new folder (or pass --force to replace it)")
    bundles: dict[str, Bundle] = {}
    for run_dir in run_dirs:
        try:
            bundle = Bundle.open(run_dir)
        except BundleError as e:
            raise PipelineError(str(e)) from None
        if bundle.task in bundles:
            raise PipelineError(f"two {bundle.task} bundles given ({bundles[bundle.task].path}, {bundle.path}): "
                                "a repository serves one per task")
        if variant is not None and variant not in bundle.variants():
            raise PipelineError(f"{bundle.path}: no accepted variant {variant!r}; it has {', '.join(bundle.variants())}")
        bundles[bundle.task] = bundle
    models = models_of(bundles)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".triton-", dir=out.parent))
    try:
        for name, model in models.items():
            chosen = variant or model.bundle.default_variant  # both among the bundle's usable variants
            folder = staging / name
            (folder / "1").mkdir(parents=True)
            (folder / "config.pbtxt").write_text(to_pbtxt(model_config(model, chosen)))
            if model.graph is not None:
                file = triton_file(model, chosen)
                source = model.bundle.file(file)
                if source is None:
                    raise PipelineError(f"{model.bundle.path / file} is missing or altered: rebuild the bundle")
                shutil.copy2(source, folder / "1" / file)
            else:
                (folder / "1" / "model.py").write_text(MODEL_PY.format(task=model.bundle.task))
                shutil.copytree(SERVE, folder / "1" / "serve", ignore=shutil.ignore_patterns("__pycache__"))
                (folder / "1" / "bundle").mkdir()
                shutil.copy2(model.bundle.path / "manifest.json", folder / "1" / "bundle" / "manifest.json")
                (folder / "1" / "bundle" / "triton.json").write_text(json.dumps({"variant": chosen}))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return list(models)

