"""What the Models tab reads of a benchmark: the headline (served variant against torch eager and the fastest
peer) and the chart by length where the cases vary one."""
from __future__ import annotations

from pipeline.benchmark import _headline
from pipeline.plots import length_axis, plot_benchmark


def _rows(axes: dict[str, list], backends: dict[str, float]) -> list[dict]:
    import itertools

    rows = []
    for values in itertools.product(*axes.values()):
        case = dict(zip(axes, values))
        scale = case.get("context", 1) * case.get("batch", 1)
        rows += [{"backend": b, **case, "median_ms": ms * scale, "throughput": 1000 / (ms * scale)}
                 for b, ms in backends.items()]
    return rows


def test_the_headline_is_the_served_variant_against_eager_and_the_fastest_peer():
    rows = _rows({"batch": [1, 32]}, {"torch eager": 3.0, "torch.compile": 1.5, "ORT int8": 0.75,
                                      "OpenVINO fp32": 1.0, "ORT fp32": 0.8})
    served = {"ORT int8": "int8", "OpenVINO fp32": "openvino", "ORT fp32": "fp32"}
    head = _headline(rows, ["batch"], served, {"cases": [{"axes": {"batch": 1}, "variant": "int8"}], "status": "accepted"})
    assert head == {"case": {"batch": 1}, "variant": "int8", "ms": 0.75, "torch_eager_ms": 3.0,
                    "peer": "OpenVINO fp32", "peer_ms": 1.0}
    rejected = _headline(rows, ["batch"], served, {"cases": [{"axes": {"batch": 1}, "variant": "int8"}],
                                                    "status": "rejected", "fallback": "fp32"})
    assert rejected["variant"] == "fp32" and rejected["ms"] == 0.8  # what serving runs then


def test_cases_that_vary_a_length_are_charted_against_it(tmp_path):
    text = _rows({"batch": [1, 8], "phase": ["prefill", "decode"], "context": [32, 128, 512]},
                 {"torch eager": 2.0, "ORT fp32": 1.0})
    assert length_axis(text, ["batch", "phase", "context"]) == "context"
    assert length_axis(_rows({"batch": [1, 32, 64]}, {"a": 1.0}), ["batch"]) is None  # batch is never the x axis
    assert length_axis(_rows({"batch": [1], "seconds": [1, 5]}, {"a": 1.0}), ["batch", "seconds"]) is None
    for rows, axes in ((text, ["batch", "phase", "context"]), (_rows({"batch": [1, 32]}, {"a": 1.0}), ["batch"])):
        path = tmp_path / f"{len(axes)}.png"
        plot_benchmark(rows, axes, "tokens", path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
