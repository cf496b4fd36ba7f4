"""What tasks with a KV-cache decoder share on the training side: the contract's cache tensors, named
as ``serve.kv_cache`` names them (the serve side's loops feed them) and flattened into the graph by
``export.cache_graph.CacheStepGraph``."""
from __future__ import annotations

from export.contract import TensorSpec
from serve.kv_cache import CacheSpec, past_names, present_name


def cache_tensors(spec: CacheSpec, what: str = "tokens") -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The contract's cache inputs and outputs, per layer: past (N, H, past, Dh) and present
    (N, H, past+seq, Dh); ``what`` the tokens are, for the docs."""
    names = past_names(spec.layers)
    past = tuple(TensorSpec(n, "float32", ("batch", spec.heads, "past", spec.head_dim),
                            f"cached keys/values of the earlier {what} (past = 0 at the first call)") for n in names)
    present = tuple(TensorSpec(present_name(n), "float32", ("batch", spec.heads, "past+seq", spec.head_dim),
                               f"the cache with this call's {what} appended") for n in names)
    return past, present
