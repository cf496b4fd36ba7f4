"""Load a bundle, check it, and run its graphs: numpy in, numpy out.

- every file the manifest lists is checked against its sha256 before use; a file that does not
  match is reported and never loaded;
- ONNX Runtime providers are taken in the order TensorRT, CUDA, CPU among those available; the
  provider that actually runs is reported, with a warning when a GPU was asked for and not used;
- inputs are checked against the manifest's I/O spec (dtype, rank, fixed sizes, min/max ranges);
- sessions are built once per variant and reused across requests (ORT's ``run`` is thread-safe).
"""
from __future__ import annotations

import json
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serve.files import sha256

SCHEMA_VERSION = 1
PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
VARIANT_TITLES = {"fp32": "fp32 (model.onnx)", "opt": "fp32, ORT-optimized", "int8": "INT8", "fp16": "FP16",
                  "tensorrt": "TensorRT engine"}


class BundleError(Exception):
    """A bundle, file or input that cannot be used; the message is meant for people."""


@dataclass
class Prediction:
    outputs: dict[str, np.ndarray]
    seconds: float
    variant: str
    provider: str


@dataclass
class Bundle:
    """A run folder written by ``python -m pipeline``: its manifest and its checked files."""

    path: Path
    manifest: dict[str, Any]
    bad_files: dict[str, str] = field(default_factory=dict)  # file -> why it is not used
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: manifest.json not found")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{manifest_path} is not valid JSON: {e}") from None
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(f"{path}: manifest schema {manifest.get('schema_version')} is not {SCHEMA_VERSION}")
        for key in ("task", "io", "variants", "files"):
            if key not in manifest:
                raise BundleError(f"{path}: the manifest has no {key!r}; run `python -m pipeline export {path}`")
        bundle = cls(path, manifest)
        bundle.verify()
        return bundle

    # -- what it holds ------------------------------------------------------------------------

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def name(self) -> str:
        return self.manifest.get("run", self.path.name)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels", []))

    def verify(self) -> dict[str, str]:
        """Re-hash every listed file; those that are missing or changed go to ``bad_files``."""
        bad = {}
        for name, entry in self.manifest["files"].items():
            p = self.path / name
            if not p.is_file():
                bad[name] = "missing"
            elif p.stat().st_size != entry["bytes"] or sha256(p) != entry["sha256"]:
                bad[name] = "altered or truncated (sha256 does not match the manifest)"
        with self._lock:
            self.bad_files = bad
            for variant, entry in self.manifest["variants"].items():
                if entry.get("file") in bad:
                    self._sessions.pop(variant, None)
        return bad

    def variants(self) -> list[str]:
        """Variants that passed their accuracy check and whose file is intact, fp32 first."""
        out = []
        for name, entry in self.manifest["variants"].items():
            if entry.get("status") == "accepted" and entry.get("file") and entry["file"] not in self.bad_files:
                if name == "tensorrt" and _trt_missing():
                    continue
                out.append(name)
        return out

    def file(self, name: str) -> Path | None:
        """A listed, intact file of the bundle (None otherwise)."""
        if name in self.manifest["files"] and name not in self.bad_files and (self.path / name).is_file():
            return self.path / name
        return None

    # -- running ------------------------------------------------------------------------------

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        """Inputs against the I/O spec: names, dtype, rank, fixed sizes and each dimension's range."""
        io = self.manifest["io"]
        specs = {s["name"]: s for s in io["inputs"]}
        missing, extra = set(specs) - set(feeds), set(feeds) - set(specs)
        if missing or extra:
            raise BundleError(f"inputs must be {sorted(specs)}; missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name, value in feeds.items():
            spec = specs[name]
            if not isinstance(value, np.ndarray) or value.dtype != np.dtype(spec["dtype"]):
                got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                raise BundleError(f"{name}: expected {spec['dtype']}, got {got}")
            if value.ndim != len(spec["shape"]):
                raise BundleError(f"{name}: expected {len(spec['shape'])} dimensions {spec['shape']}, got shape {value.shape}")
            for axis, (want, got) in enumerate(zip(spec["shape"], value.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise BundleError(f"{name}: dimension {axis} must be {want}, got {got}")
                    continue
                rng = io["dims"][want]
                if not rng["min"] <= got <= rng["max"]:
                    raise BundleError(f"{name}: {want} must be between {rng['min']} and {rng['max']}, got {got}")

    def session(self, variant: str = "fp32", providers: list[str] | None = None):
        """The (cached) runner of ``variant``: an ORT session, or a TensorRT engine.

        A cached runner is reused only while its file keeps the size and modification time it
        was verified with; a file changed on disk is re-hashed (and refused when it no longer
        matches the manifest).
        """
        entry = self.manifest["variants"].get(variant)
        with self._lock:
            cached = self._sessions.get(variant)
        if cached is not None:
            runner, stamp = cached
            if _stamp(self.path / entry["file"]) == stamp:
                return runner
            with self._lock:
                self._sessions.pop(variant, None)
        if entry is None or entry.get("status") != "accepted" or not entry.get("file"):
            raise BundleError(f"variant {variant!r} is not available; available: {', '.join(self.variants())}")
        name = entry["file"]
        path = self.path / name
        if not path.is_file():
            raise BundleError(f"{name} is missing from {self.path}")
        stamp = _stamp(path)
        if sha256(path) != self.manifest["files"].get(name, {}).get("sha256"):
            self.bad_files[name] = "altered or truncated (sha256 does not match the manifest)"
            raise BundleError(f"{name} was altered or truncated after it was written (sha256 mismatch); not loaded")
        if variant == "tensorrt":
            from serve.engine import EngineSession

            runner = EngineSession(path)
        else:
            runner = OrtSession(path, providers)
        with self._lock:
            return self._sessions.setdefault(variant, (runner, stamp))[0]

    def warm_up(self) -> dict[str, str]:
        """Build every usable variant's session now, so the first request does not pay for it.

        Returns the variants that could not be loaded, with why (they stay unavailable)."""
        failed = {}
        for variant in self.variants():
            try:
                self.session(variant)
            except BundleError as e:
                failed[variant] = str(e)
        return failed

    def run(self, feeds: dict[str, np.ndarray], variant: str = "fp32") -> Prediction:
        self.check_inputs(feeds)
        sess = self.session(variant)
        t0 = time.perf_counter()
        try:
            outputs = sess.run(feeds)
        except Exception as e:  # noqa: BLE001 - surfaced to the user as one line
            raise BundleError(f"the model failed on this input: {str(e).splitlines()[0][:300]}") from None
        names = [s["name"] for s in self.manifest["io"]["outputs"]]
        return Prediction(dict(zip(names, outputs)), time.perf_counter() - t0, variant, sess.provider)


class OrtSession:
    """An ONNX Runtime session on the preferred available providers."""

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int = 0):
        available = ort.get_available_providers()
        asked = providers or [p for p in PREFERRED if p in available]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # a server runs many small requests side by side: idle ORT threads must sleep, not spin
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=asked)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"{path.name} cannot be loaded by onnxruntime: {str(e).splitlines()[0][:300]}") from None
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        if GPU_PROVIDERS & set(asked) and not GPU_PROVIDERS & set(self.providers):
            warnings.warn(f"{path.name}: a GPU provider was asked for ({asked}) but ONNX Runtime runs it on "
                          f"{self.providers}: is onnxruntime (CPU) installed beside onnxruntime-gpu?", stacklevel=2)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _trt_missing() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return True
    return False
