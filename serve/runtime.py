"""Load a bundle, check it, and run its graphs: numpy in, numpy out.

- the one factory of ONNX Runtime sessions (:class:`OrtSession`): serving, and the pipeline's
  scoring, parity and benchmarks, all run graphs through it with the same settings;
- a graph file is read once, its bytes checked against the manifest's sha256 and the session
  built from those same bytes: a file that does not match is reported and never loaded;
- providers in the order TensorRT, CUDA, CPU among those available; the provider that actually
  runs is reported, with a warning when a GPU was asked for and not used;
- inputs (and outputs) are checked against each graph's I/O spec by a check compiled once per
  graph, so a decode loop's hundreds of calls pay microseconds each;
- sessions are built once per (graph, variant) and reused across requests (ORT's run is thread-safe);
  the variants serving picks are loaded at start, any other one on first use, and at most
  ``Bundle.keep`` of those stay loaded (the least recently used is dropped).
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from serve.bundle import (BundleError, Serving, check_graphs, first_line, graph_files, read_manifest, serving_of,
                          sha256, sha256_bytes, variant_runtime, variant_title)
from serve.engine import EngineSession, tensorrt_missing
from serve.openvino_runtime import OpenVinoSession, openvino_missing

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}

Feeds = dict[str, np.ndarray]  # a graph's named inputs
# a call whose uint8 inputs (images, masks: what a user sends, unbounded but for serve.inputs' limits)
# hold more bytes than this gives its working memory back when it ends; smaller calls (a batch of 32
# scenes of 128x128 is 1.5 MB) keep theirs for the next call. Caches and token ids are bounded by the
# contract's dims and never release.
ARENA_KEEP_BYTES = 4 << 20


def releases(feeds: Feeds) -> bool:
    """Whether a call on ``feeds`` is large enough to hand its working memory back (ARENA_KEEP_BYTES)."""
    return sum(v.nbytes for v in feeds.values() if isinstance(v, np.ndarray) and v.dtype == np.uint8) > ARENA_KEEP_BYTES


def _ort():
    """onnxruntime, imported on first use: a bundle's loops run without it where its graphs run elsewhere
    (Triton's Python backend, :mod:`serve.triton_backend`)."""
    import onnxruntime

    return onnxruntime


def _session_options(spin: bool, threads: int, arena: bool) -> "ort.SessionOptions":
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # a server runs many small requests side by side: idle ORT threads sleep rather than spin.
    # ``spin``: they spin (ORT's own default, and what torch's OpenMP threads do), waking at once
    # for the next operator: lower latency for one request at a time, a busy core when idle
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.enable_cpu_mem_arena = arena
    if threads:
        opts.intra_op_num_threads = threads
    return opts


class OrtSession:
    """An ONNX Runtime session on the preferred available providers, called with named inputs."""

    def __init__(self, model: str | Path | bytes, providers: list[str] | None = None, threads: int = 0,
                 name: str = "the graph", spin: bool = False):
        ort = _ort()
        available = ort.get_available_providers()
        asked = providers or [p for p in PREFERRED if p in available]
        # the CPU arena on: ORT reuses its buffers from one call to the next instead of asking the
        # system for them each time (measured: without it the quick U-Net ran 1.4x slower at batch 32,
        # the detector 1.5x). A call given ``release=True`` (a large upload: see ARENA_KEEP_BYTES) runs on
        # a second session of the same bytes without the arena, built on the first such call, so its
        # memory goes back to the system when it ends: arena shrinkage alone left 540 MB of one 2048x2048
        # call on the ORT-optimized smoke U-Net (609 vs 129 MB after the call; 2.7 GB after four),
        # for 1.6x the time of that call (1.03 vs 0.66 s)
        source = model if isinstance(model, bytes) else str(model)
        self._session = lambda arena: ort.InferenceSession(source, _session_options(spin, threads, arena),
                                                           providers=asked)
        try:
            self.session = self._session(True)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"{name} cannot be loaded by onnxruntime: {first_line(e, 300)}") from None
        self._lean: ort.InferenceSession | None = None
        self._lean_lock = threading.Lock()
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        self.provider = self.providers[0]
        if GPU_PROVIDERS & set(asked) and not GPU_PROVIDERS & set(self.providers):
            warnings.warn(f"{name}: a GPU provider was asked for ({asked}) but ONNX Runtime runs it on "
                          f"{self.providers}: is onnxruntime (CPU) installed beside onnxruntime-gpu?", stacklevel=2)

    def __call__(self, feeds: Feeds, release: bool = False) -> dict[str, np.ndarray]:
        """``release``: a large call, run without the arena so that its memory goes back after it."""
        session = self._lean_session() if release else self.session
        return dict(zip(self.output_names, session.run(None, feeds)))

    def _lean_session(self) -> ort.InferenceSession:
        with self._lean_lock:
            if self._lean is None:
                self._lean = self._session(False)  # memory patterns stay on: without them 1.7x slower
            return self._lean


class IOCheck:
    """A graph's I/O spec compiled into plain tuples once; checking a call costs microseconds."""

    def __init__(self, io: dict[str, Any]):
        dims = io.get("dims", {})

        def bounds(axis: str) -> tuple[int, int]:
            """min, max of a named axis, or of a sum of them ("past+seq")."""
            parts = [dims.get(p.strip(), {}) for p in axis.split("+")]
            return sum(p.get("min", 0) for p in parts), min(sum(p.get("max", 1 << 62) for p in parts), 1 << 62)

        def compile_(specs):
            out = []
            for s in specs:
                axes = tuple((a, None, None) if isinstance(a, int) else (a, *bounds(a)) for a in s["shape"])
                out.append((s["name"], np.dtype(s["dtype"]), axes))
            return tuple(out)

        self.inputs, self.outputs = compile_(io["inputs"]), compile_(io["outputs"])
        self.input_names = frozenset(n for n, _, _ in self.inputs)

    def check_inputs(self, feeds: Feeds) -> None:
        if feeds.keys() != self.input_names:
            missing, extra = self.input_names - set(feeds), set(feeds) - self.input_names
            raise BundleError(f"inputs must be {sorted(self.input_names)}; missing {sorted(missing)}, "
                              f"unexpected {sorted(extra)}")
        for name, dtype, axes in self.inputs:
            value = feeds[name]
            if not isinstance(value, np.ndarray) or value.dtype != dtype:
                got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                raise BundleError(f"{name}: expected {dtype}, got {got}")
            _check_shape(name, value.shape, axes)

    def check_outputs(self, outputs: dict[str, np.ndarray], what: str) -> None:
        """The graph gave what the manifest says (names, dtypes, ranks, fixed sizes): a swapped file does not."""
        if len(outputs) != len(self.outputs):
            raise BundleError(f"{what} gave {len(outputs)} outputs; the manifest says {len(self.outputs)}")
        for name, dtype, axes in self.outputs:
            if name not in outputs:
                raise BundleError(f"{what} has no output {name!r}; the manifest lists it")
            if outputs[name].dtype != dtype:
                raise BundleError(f"{what}: output {name} is {outputs[name].dtype}; the manifest says {dtype}")
            _check_shape(name, outputs[name].shape, axes, f"{what}: output ")


def _check_shape(name: str, shape: tuple[int, ...], axes, prefix: str = "") -> None:
    if len(shape) != len(axes):
        raise BundleError(f"{prefix}{name}: expected {len(axes)} dimensions {[a for a, _, _ in axes]}, "
                          f"got shape {tuple(shape)}")
    for axis, ((want, lo, hi), got) in enumerate(zip(axes, shape)):
        if lo is None:
            if got != want:
                raise BundleError(f"{prefix}{name}: dimension {axis} must be {want}, got {got}")
        elif not lo <= got <= hi:
            raise BundleError(f"{prefix}{name}: {want} must be between {lo} and {hi}, got {got}")


class CheckedRunner:
    """A session of one graph with its I/O checks: what the serve loops call."""

    def __init__(self, session: Any, check: IOCheck, what: str):
        self.session, self.check, self.what = session, check, what
        self.provider = session.provider

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        self.check.check_inputs(feeds)
        try:
            outputs = self.session(feeds, release=releases(feeds))
        except Exception as e:  # noqa: BLE001 - surfaced to the user as one line
            raise BundleError(f"the model failed on this input: {first_line(e, 300)}") from None
        self.check.check_outputs(outputs, self.what)
        return outputs


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
    unusable: dict[str, str] = field(default_factory=dict)  # variant -> why it could not be loaded here
    checks: dict[str, IOCheck] = field(default_factory=dict, repr=False)  # graph -> compiled I/O check
    threads: int = 0  # ORT intra-op threads; 0: all cores
    spin: bool = False  # ORT's idle threads spin (lower latency, one request at a time) instead of sleeping
    # variants kept loaded beyond the ones serving picks (those always stay): a server's users who try
    # every variant of a U-Net would otherwise keep six copies of it and their working memory
    # (``python -m serve`` keeps 2); None: every variant stays loaded (the pipeline's measurements)
    keep: int | None = None
    # (graph, variant) -> runner, least recently used first
    _sessions: OrderedDict[tuple[str, str], CheckedRunner] = field(default_factory=OrderedDict, repr=False)
    _hashed: set[str] = field(default_factory=set, repr=False)  # files whose sha256 was checked
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _table: tuple | None = field(default=None, repr=False)  # _serving_choice()

    @classmethod
    def open(cls, path: str | Path, threads: int = 0, spin: bool = False, keep: int | None = None) -> "Bundle":
        """Read and check the manifest; files are checked for presence and size here, and hashed
        when first opened (:meth:`session`, :meth:`file`)."""
        path = Path(path)
        manifest = read_manifest(path)
        check_graphs(manifest, str(path))
        bundle = cls(path, manifest, threads=threads, spin=spin, keep=keep)
        for name, entry in manifest["files"].items():
            p = path / name
            if not p.is_file():
                bundle.bad_files[name] = "missing"
            elif not isinstance(entry, dict) or p.stat().st_size != entry.get("bytes"):
                bundle.bad_files[name] = "altered or truncated (its size does not match the manifest)"
        try:
            bundle.checks = {g: IOCheck(spec["io"]) for g, spec in manifest["graphs"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{path}: a graph's I/O spec in the manifest is damaged ({e!r})") from None
        return bundle

    # -- what it holds ------------------------------------------------------------------------

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def name(self) -> str:
        return self.manifest.get("run", self.path.name)

    @property
    def info(self) -> dict[str, Any]:
        """Task-specific facts written by the task at export (labels, vocabulary, ...)."""
        return self.manifest.get("info", {})

    @property
    def inference(self) -> dict[str, Any]:
        """The served defaults of the task's inference settings, as verified at export."""
        return self.manifest.get("inference", {})

    @property
    def graphs(self) -> list[str]:
        return list(self.manifest["graphs"])

    def variants(self) -> list[str]:
        """Variants that passed their metric check and whose files are intact, fp32 first."""
        out = []
        for name, entry in self.manifest["variants"].items():
            files = graph_files(self.manifest, name)
            if entry.get("status") != "accepted" or not files or any(f in self.bad_files for f in files.values()):
                continue
            if name in self.unusable:
                continue
            runtime = variant_runtime(name)
            if (runtime == "tensorrt" and tensorrt_missing()) or (runtime == "openvino" and openvino_missing()):
                continue
            out.append(name)
        return out

    @property
    def serving(self) -> Serving:
        """The manifest's ``serving``, typed (the cases, the fallback, whether the mix was accepted)."""
        return serving_of(self.manifest)

    def serving_variant(self, batch: int = 1, **call: int | float | str) -> str:
        """What runs a call unless the caller names a variant: :class:`ServingChoice` over the manifest's
        ``serving`` (made on the machine that benchmarked the bundle), restricted to the variants usable
        here. When the benchmark's per-call mix was rejected on the held-out sets, every call runs its
        fallback, the fastest accepted single variant."""
        return self._serving_choice()(batch, **call)

    def _serving_choice(self) -> "ServingChoice":
        """Rebuilt when a variant turns out unusable or a file damaged (both only grow)."""
        state = (len(self.unusable), len(self.bad_files))
        if self._table is None or self._table[0] != state:
            available, serving = self.variants(), self.serving
            fallback = serving.fallback if serving.fallback in available else (available[0] if available else "fp32")
            cases = [] if serving.status == "rejected" else [(c.axes, c.variant) for c in serving.cases]
            self._table = (state, ServingChoice(cases, fallback, available))
        return self._table[1]

    def served(self, graph: str, axes: "Callable[[Feeds], dict[str, int | str]] | None" = None,
               choice: "ServingChoice | None" = None) -> "ServedRunner":
        """A runner of ``graph`` that runs each call on the serving choice for that call (the bundle's,
        or ``choice``): the call's batch size, and what ``axes(feeds)`` says of it (text: phase and context)."""
        return ServedRunner(self, graph, axes, choice or self.serving_variant)

    def served_variants(self) -> list[str]:
        """The variants serving picks from (its cases and fallback) among those usable here."""
        return self._serving_choice().variants

    @property
    def default_variant(self) -> str:
        """What the app runs (one input at a time) unless the user picks another: ``serving_variant(1)``."""
        return self.serving_variant(1)

    def check_image(self, image: np.ndarray, graph: str = "model", name: str = "image") -> None:
        """An image (H, W, C) the graph's ``name`` input (N, H, W, C) takes, or an InputError in the
        upload check's words, naming both sides (the graph's own check names one axis at a time)."""
        from serve.inputs import InputError

        spec = next((axes for n, _, axes in self.checks[graph].inputs if n == name and len(axes) == 4), None)
        if spec is None:
            return
        (_, h_lo, h_hi), (_, w_lo, w_hi) = spec[1], spec[2]
        h, w = image.shape[:2]
        lo, hi = max(h_lo or 1, w_lo or 1), min(h_hi or 1 << 30, w_hi or 1 << 30)
        if not (lo <= h <= hi and lo <= w <= hi):
            raise InputError(f"the image is {w}x{h} pixels; each side must be between {lo} and {hi}")

    def batch_of(self, feeds: Feeds, graph: str) -> int:
        """The size of the first input's ``batch`` axis (1 where the graph has none)."""
        for name, _, axes in self.checks[graph].inputs:
            if axes and axes[0][0] == "batch" and isinstance(feeds.get(name), np.ndarray) and feeds[name].ndim:
                return int(feeds[name].shape[0])
        return 1

    def file(self, name: str) -> Path | None:
        """A listed, intact file of the bundle (hashed on first use), or None."""
        if name not in self.manifest["files"] or name in self.bad_files or not (self.path / name).is_file():
            return None
        if name not in self._hashed:
            if sha256(self.path / name) != self.manifest["files"][name].get("sha256"):
                self.bad_files[name] = "altered (sha256 does not match the manifest)"
                return None
            self._hashed.add(name)
        return self.path / name

    # -- running ------------------------------------------------------------------------------

    def _read_verified(self, name: str) -> bytes:
        """A graph file's bytes, after checking them against the manifest's sha256."""
        path = self.path / name
        if not path.is_file():
            self.bad_files[name] = "missing"
            raise BundleError(f"{name} is missing from {self.path}")
        data = path.read_bytes()
        if sha256_bytes(data) != self.manifest["files"].get(name, {}).get("sha256"):
            self.bad_files[name] = "altered or truncated (sha256 does not match the manifest)"
            raise BundleError(f"{name} was altered or truncated after it was written (sha256 mismatch); not loaded")
        return data

    def session(self, graph: str, variant: str = "fp32") -> CheckedRunner:
        """The (cached) checked runner of ``graph`` in ``variant``: an ORT session or a TensorRT engine."""
        key = (graph, variant)
        if (cached := self._sessions.get(key)) is not None:
            if self.keep is not None:  # recency matters only where sessions are dropped (a decode loop's hot path)
                with self._lock:
                    if key in self._sessions:
                        self._sessions.move_to_end(key)
            return cached
        if variant not in self.variants():
            damaged = [f"{f} {self.bad_files[f]}" for f in graph_files(self.manifest, variant).values()
                       if f in self.bad_files] + ([self.unusable[variant]] if variant in self.unusable else [])
            why = f" ({'; '.join(damaged)})" if damaged else ""
            raise BundleError(f"variant {variant!r} is not available{why}; available: {', '.join(self.variants())}")
        if graph not in self.manifest["graphs"]:
            raise BundleError(f"{self.path} has no graph {graph!r}; it has {', '.join(self.graphs)}")
        name = self.manifest["graphs"][graph]["files"][variant]
        try:
            data = self._read_verified(name)
            runtime = variant_runtime(variant)
            session = (EngineSession(data, name) if runtime == "tensorrt"
                       else OpenVinoSession(data, threads=self.threads, name=name) if runtime == "openvino"
                       else OrtSession(data, threads=self.threads, name=name, spin=self.spin))
        except BundleError as e:  # not offered again: the next request must not pay for a retry
            self.unusable[variant] = str(e)
            raise
        runner = CheckedRunner(session, self.checks[graph], name)
        with self._lock:
            runner = self._sessions.setdefault(key, runner)
            self._sessions.move_to_end(key)
            self._evict()
        return runner

    def _evict(self) -> None:
        """Drop the sessions of the least recently used variants beyond ``keep`` among those serving does
        not pick (a call running on one keeps it alive until it returns). Called under ``_lock``."""
        if self.keep is None:
            return
        pinned = set(self._serving_choice().variants)
        recent: list[str] = []  # unpinned variants, most recently used first
        for _, variant in reversed(self._sessions):
            if variant not in pinned and variant not in recent:
                recent.append(variant)
        for variant in recent[self.keep:]:
            for key in [k for k in self._sessions if k[1] == variant]:
                del self._sessions[key]

    def runners(self, variant: str = "fp32") -> dict[str, CheckedRunner]:
        """{graph: runner} of one variant: what a task's serve loop runs over."""
        return {g: self.session(g, variant) for g in self.graphs}

    def warm_up(self, variants: list[str] | None = None) -> dict[str, str]:
        """Build the sessions of ``variants`` now (default: those serving picks), so the first request
        does not pay for it; other variants load on first use.

        Returns the variants that could not be loaded, with why (they stay unavailable)."""
        failed = {}
        for variant in self.served_variants() if variants is None else variants:
            try:
                self.runners(variant)
            except BundleError as e:
                failed[variant] = str(e)
        return failed

    def run(self, feeds: Feeds, variant: str | None = None, graph: str | None = None) -> Prediction:
        """One call of ``graph`` (the bundle's only graph when None), timed; ``variant`` None: the
        serving choice for this call's batch size (:meth:`serving_variant`)."""
        if graph is None:
            if len(self.graphs) != 1:
                raise BundleError(f"{self.path} has graphs {self.graphs}: name the one to run")
            graph = self.graphs[0]
        if variant is None:
            variant = self.serving_variant(self.batch_of(feeds, graph))
        runner = self.session(graph, variant)
        t0 = time.perf_counter()
        outputs = runner(feeds)
        return Prediction(outputs, time.perf_counter() - t0, variant, runner.provider)

    def describe(self, variant: str) -> str:
        """``INT8, CPUExecutionProvider``: what runs a variant, for the app's latency lines."""
        providers = {r.provider for r in self.runners(variant).values()}
        return f"{variant_title(variant)}, {', '.join(sorted(providers))}"


def _log_sizes(axes: Mapping[str, int | float | str]) -> dict[str, float | str]:
    """A case's or a call's axes with sizes as logarithms (serving compares sizes on a log scale)."""
    return {k: v if isinstance(v, str) else math.log(max(float(v), 1e-9)) for k, v in axes.items()}


class ServingChoice:
    """The one function that picks a call's variant: the variant of the benchmarked case nearest the call.

    A call is its batch size and whatever else the task's cases vary (text: ``phase="decode",
    context=300``). Cases that name another value of a named axis (another phase) are not candidates;
    sizes count by their distance on a log scale; axes the call does not give are ignored; among
    equally near cases the variant most of them name wins; cases whose variant is not ``usable`` are
    skipped, and with none left the call runs ``fallback``. Answers are remembered (a decode step costs
    well under a millisecond: the choice must cost microseconds)."""

    def __init__(self, cases: list[tuple[Mapping[str, int | float | str], str]], fallback: str,
                 usable: list[str] | None = None):
        self.cases = [(_log_sizes(axes), v) for axes, v in cases if usable is None or v in usable]
        self.fallback = fallback
        self.memo: dict[tuple, str] = {}
        # every variant a call can get, fallback first
        self.variants = list(dict.fromkeys([fallback, *(v for _, v in self.cases)]))

    def __call__(self, batch: int = 1, **call: int | float | str) -> str:
        key = (batch, *sorted(call.items()))
        if (known := self.memo.get(key)) is not None:
            return known
        given = _log_sizes({"batch": batch, **call})
        near: list[tuple[float, str]] = []
        for axes, variant in self.cases:
            if any(k in axes and isinstance(v, str) and axes[k] != v for k, v in given.items()):
                continue
            distance = sum(abs(axes[k] - v) for k, v in given.items()
                           if isinstance(v, float) and isinstance(axes.get(k), float))
            near.append((round(distance, 9), variant))
        answer = self.fallback
        if near:
            closest = [v for d, v in near if d == min(near)[0]]
            answer = max(sorted(set(closest)), key=closest.count)
        if len(self.memo) < 1 << 16:
            self.memo[key] = answer
        return answer


class ServedRunner:
    """Runs each call of one graph on the variant serving picks for it (:meth:`Bundle.served`);
    ``used`` counts the calls per variant, for status lines."""

    def __init__(self, bundle: Bundle, graph: str, axes: Callable[[Feeds], dict[str, int | str] | None] | None,
                 choice: Callable[..., str]):
        self.bundle, self.graph, self.axes, self.choice = bundle, graph, axes, choice
        self.used: dict[str, int] = {}

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        call = (self.axes and self.axes(feeds)) or {"batch": self.bundle.batch_of(feeds, self.graph)}
        variant = self.choice(**call)
        self.used[variant] = self.used.get(variant, 0) + 1
        return self.bundle.session(self.graph, variant)(feeds)
