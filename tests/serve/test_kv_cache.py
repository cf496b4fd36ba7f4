"""serve/kv_cache.py: the one KV cache every decode loop feeds (textgen, the proof task, speech next)."""
import numpy as np
import pytest

from serve.kv_cache import CacheSpec, KVCache, pad, past_names, present_name


def test_names_follow_optimum_and_genai():
    assert past_names(2) == ["past_key_values.0.key", "past_key_values.0.value",
                             "past_key_values.1.key", "past_key_values.1.value"]
    assert present_name("past_key_values.1.value") == "present.1.value"


def test_pad_left_and_right():
    ids, mask = pad([b"ab", b"xyz"], "left")
    assert ids.tolist() == [[0, 97, 98], [120, 121, 122]] and mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    ids, mask = pad([[3, 4], [5]], "right", value=9)
    assert ids.tolist() == [[3, 4], [5, 9]] and mask.tolist() == [[1, 1], [1, 0]]
    assert ids.dtype == mask.dtype == np.int64
    with pytest.raises(ValueError, match="side"):
        pad([[1]], "middle")


def test_cache_grows_with_each_call_and_snapshots_restore_it():
    spec = CacheSpec(layers=2, heads=3, head_dim=4, context=16)
    assert spec == CacheSpec.of({"layers": 2, "heads": 3, "head_dim": 4, "context": 16})
    cache = KVCache(spec, batch=2)
    assert cache.length == 0 and set(cache.feeds()) == set(past_names(2))
    assert all(v.shape == (2, 3, 0, 4) and v.dtype == np.float32 for v in cache.feeds().values())

    def call(feeds, new):  # a stand-in decoder graph: appends ``new`` positions to every cache tensor
        return {present_name(k): np.concatenate([v, np.full((2, 3, new, 4), v.shape[2], np.float32)], 2)
                for k, v in feeds.items()}

    cache.update(call(cache.feeds(), 5))
    assert cache.length == 5
    saved = cache.snapshot()
    cache.update(call(cache.feeds(), 1))
    assert cache.length == 6 and cache.past["past_key_values.1.value"][0, 0, 5, 0] == 5
    cache.restore(saved)
    assert cache.length == 5
    cache.reset(batch=3)
    assert cache.length == 0 and cache.feeds()["past_key_values.0.key"].shape == (3, 3, 0, 4)
