"""The manifest's one schema (serve.bundle.Manifest): every damage is one line naming where, and
nothing but a BundleError ever comes out of reading one."""
import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.bundle import BundleError, graph_files, read_manifest
from serve.runtime import IOCheck

H = "0" * 64
VALID = {
    "schema_version": 2, "task": "classify", "run": "r", "metric": {"name": "accuracy", "direction": "max",
                                                                    "tolerance": 0.5, "unit": "%", "split": "test"},
    "inference": {}, "info": {"labels": ["a", "b"]},
    "graphs": {"model": {"io": {"inputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", "h", "w", "c"]}],
                                "outputs": [{"name": "probs", "dtype": "float32", "shape": ["batch", 2]}],
                                "dims": {"batch": {"min": 1, "opt": 8, "max": 64}}},
                         "files": {"fp32": "model.onnx", "int8": "model.int8.onnx"}}},
    "variants": {"fp32": {"status": "accepted", "accuracy": 99.0}, "int8": {"status": "rejected", "accuracy": 50.0},
                 "fp16": {"status": "failed", "reason": "x"}},
    "metrics": {"torch": {"accuracy": 99.0}}, "examples": ["examples/a_0.png"],
    "files": {"model.onnx": {"sha256": H, "bytes": 10}, "model.int8.onnx": {"sha256": H, "bytes": 10},
              "examples/a_0.png": {"sha256": H, "bytes": 10}},
}


def _read(tmp_path, manifest):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return read_manifest(tmp_path)


def test_a_valid_manifest_reads(tmp_path):
    assert _read(tmp_path, VALID) == VALID


def _set(path: str, value):
    def damage(m):
        *parents, leaf = path.split("/")
        node = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is KeyError:
            del node[leaf]
        elif isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return damage


@pytest.mark.parametrize("damage, message", [
    (_set("variants/fp32", 5), "variants.fp32: Input should be a valid dictionary"),
    (_set("variants/bogus", {"status": "accepted"}), "variants.bogus: Input should be 'fp32'"),
    (_set("variants/fp32/status", "fine"), "variants.fp32.status: Input should be 'accepted', 'rejected' or 'failed'"),
    (_set("variants/fp32/accuracy", KeyError), "variants.fp32 is accepted without its accuracy value"),
    (_set("examples/0", "../../etc/passwd"), "examples.0: '../../etc/passwd' is not a file name inside the bundle"),
    (lambda m: m["files"].update({"/etc/passwd": {"sha256": H, "bytes": 1}}), "is not a file name inside the bundle"),
    (_set("files/model.onnx/sha256", "abc"), "files.model.onnx.sha256: String should match pattern"),
    (_set("files/model.onnx/bytes", -1), "files.model.onnx.bytes: Input should be greater than or equal to 0"),
    (_set("graphs/model/files/fp32", "other.onnx"), "graph 'model' names 'other.onnx' for fp32, but files does not"),
    (_set("graphs/model/files/opt", "model.onnx"), "graph 'model' has a opt file, but variants has no 'opt' entry"),
    (_set("graphs/model/io/outputs/0/dtype", "complex"), "graphs.model.io.outputs.0.dtype: Input should be 'bool'"),
    (_set("graphs/model/io/outputs/0/shape", ["batch", -2]), "probs has a negative size -2"),
    (_set("graphs/model/io/inputs", []), "graphs.model.io.inputs: List should have at least 1 item"),
    (_set("graphs/model/io/dims/batch/max", "64"), "graphs.model.io.dims.batch.max: Input should be a valid integer"),
    (_set("metric/tolerance", float("nan")), "metric.tolerance: Input should be a finite number"),
    (_set("metric/direction", "up"), "metric.direction: Input should be 'max' or 'min'"),
    (_set("metric", KeyError), "metric: Field required"),
    (_set("task", 5), "task: Input should be a valid string"),
    (_set("examples/0", "examples/b_0.png"), "example 'examples/b_0.png' is not listed in files"),
    (_set("serving", {"cases": "x"}), "cases: Input should be a valid list"),
    (_set("serving", {"cases": [{"axes": {"batch": 1}, "variant": "fast"}]}), "cases.0.variant: Input should be 'fp32'"),
    (_set("serving", {"cases": [], "status": "maybe"}), "status: Input should be 'accepted' or 'rejected'"),
])
def test_every_damage_is_one_line_naming_where(tmp_path, damage, message):
    manifest = copy.deepcopy(VALID)
    damage(manifest)
    with pytest.raises(BundleError) as e:
        _read(tmp_path, manifest)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'manifest.json'} is damaged: ")


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(VALID) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(PATHS), JSON), min_size=1, max_size=3))
def test_any_damage_is_a_bundle_error_or_a_usable_manifest(tmp_path, changes):
    manifest = copy.deepcopy(VALID)
    for path, value in changes:
        node = manifest
        try:
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        m = _read(tmp_path, manifest)
    except BundleError as e:
        assert "\n" not in str(e)
        return
    for spec in m["graphs"].values():  # what the runtime does next with an accepted manifest works
        IOCheck(spec["io"])
    for variant in m["variants"]:
        graph_files(m, variant)
