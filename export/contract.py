"""A task's export contract as data: graph I/O names, dtypes, symbolic shapes with one
min/opt/max range per symbolic dimension (feeding torch.export, TensorRT profiles and serving
checks alike), the opset, and the parity bounds an export must meet."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

EXACT_KEY = "exact_scopes"  # model.onnx metadata: the contract's ``exact`` submodules, comma-separated


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def __post_init__(self):
        # min may be 0: a KV cache's past length is 0 at the prompt
        if not (0 <= self.min <= self.opt <= self.max):
            raise ValueError(f"need 0 <= min <= opt <= max, got {self}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "uint8", "float32", "int64"
    # ints are fixed, strings name a dimension of ExportContract.dims or a sum of them ("past+seq":
    # an attention mask over the cache and the new tokens); () a scalar
    shape: tuple[str | int, ...]
    doc: str = ""


def dim_parts(dim: str) -> list[str]:
    """``"past+seq"`` -> ``["past", "seq"]``: the named dimensions a (possibly derived) size adds up."""
    return [p.strip() for p in dim.split("+")]


@dataclass(frozen=True)
class Bound:
    metric: str
    op: Literal["<=", ">="]
    value: float

    def holds(self, measured: float) -> bool:
        return measured <= self.value if self.op == "<=" else measured >= self.value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class ExportContract:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: dict[str, DimRange]
    parity: tuple[Bound, ...]
    opset: int = 18
    # submodules of the deployable (dotted paths, e.g. "classifier.preprocess") whose nodes stay
    # fp32 and unquantized in every variant: pre/post-processing (crops, decoding, NMS) is exact
    exact: tuple[str, ...] = ()

    def __post_init__(self):
        for spec in self.inputs + self.outputs:
            for d in spec.shape:
                if isinstance(d, str) and spec in self.inputs and any(p not in self.dims for p in dim_parts(d)):
                    raise ValueError(f"input {spec.name}: dimension {d!r} has no range in dims")

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def io_spec(self) -> dict:
        """The JSON form written into the manifest."""
        return {
            "inputs": [asdict(s) for s in self.inputs],
            "outputs": [asdict(s) for s in self.outputs],
            "dims": {k: asdict(v) for k, v in self.dims.items()},
            "opset": self.opset,
            "exact": list(self.exact),
        }

    def shape_for(self, spec: TensorSpec, which: Literal["min", "opt", "max"]) -> tuple[int, ...]:
        """A concrete shape of input ``spec`` at one end of its ranges (TensorRT profiles)."""
        return tuple(d if isinstance(d, int) else sum(getattr(self.dims[p], which) for p in dim_parts(d))
                     for d in spec.shape)


def check_parity(measured: dict[str, float], bounds: tuple[Bound, ...]) -> list[str]:
    """The bounds that ``measured`` breaks, as readable strings (empty when all hold)."""
    return [f"{b.metric} was not measured, needs {b}" if b.metric not in measured
            else f"{b.metric} = {measured[b.metric]:.3g}, needs {b}"
            for b in bounds if b.metric not in measured or not b.holds(measured[b.metric])]
