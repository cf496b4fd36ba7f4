"""The GPT: the KV-cache path gives the logits of recomputing the whole sequence, left padding is
invisible, the head is tied to the embedding, and it learns."""
import dataclasses

import pytest
import torch

import models
from models.gpt import GPT, GPTConfig

SMALL = GPTConfig(context=48, dim=32, heads=4, layers=3)


def _model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(dataclasses.replace(SMALL, **kw)).eval()


@pytest.mark.parametrize("position", ["rotary", "learned"])
@pytest.mark.parametrize("chunks", [[1] * 20, [7, 1, 1, 5, 6], [20]])
def test_cached_decoding_equals_recomputing(chunks, position):
    """Prompt then byte by byte (or in chunks) on the cache == one pass over the whole sequence."""
    model = _model(position=position)
    ids = torch.randint(0, 256, (3, sum(chunks)))
    with torch.no_grad():
        full = model(ids)  # (3, 20, 256)
        past, out, t = model.empty_cache(3), [], 0
        for c in chunks:
            logits, past = model.forward_cached(ids[:, t:t + c], torch.ones(3, t + c, dtype=torch.int64), past)
            out.append(logits)
            t += c
    assert past[0][0].shape == (3, 4, 20, 8)
    assert (torch.cat(out, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("position", ["rotary", "learned"])
def test_left_padding_is_invisible(position):
    """A left-padded row reads as the same bytes alone: positions come from the mask."""
    model = _model(1, position=position)
    a, b = torch.randint(0, 256, (1, 12)), torch.randint(0, 256, (1, 5))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 7, dtype=torch.int64), b], 1)])
    mask = torch.cat([torch.ones(1, 12), torch.cat([torch.zeros(1, 7), torch.ones(1, 5)], 1)]).long()
    with torch.no_grad():
        logits, past = model.forward_cached(ids, mask, model.empty_cache(2))
        assert torch.isfinite(logits).all()  # padding queries see themselves: no NaN
        assert (logits[0] - model(a)[0]).abs().max() <= 1e-5
        assert (logits[1, 7:] - model(b)[0]).abs().max() <= 1e-5
        nxt = torch.randint(0, 256, (2, 1))
        step, _ = model.forward_cached(nxt, torch.cat([mask, torch.ones(2, 1, dtype=torch.int64)], 1), past)
        assert (step[1, 0] - model(torch.cat([b, nxt[1:]], 1))[0, -1]).abs().max() <= 1e-5


def test_head_is_tied_and_config_rebuilds():
    model = _model()
    assert model.head.weight is model.token.weight
    rebuilt = models.create_model("gpt", GPTConfig(**dataclasses.asdict(model.cfg)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in rebuilt.parameters()) < 100_000


def test_it_learns_a_repeating_text():
    """A few Adam steps on a repeating phrase bring the loss well below uniform (8 bits/byte)."""
    model = _model(2).train()
    data = torch.tensor(list(b"the cat sat on the mat. " * 2))  # 48 bytes: the context
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        logits = model(data[None, :-1])
        loss = torch.nn.functional.cross_entropy(logits[0], data[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0  # nats per byte; it starts near ln(256) = 5.5


@pytest.mark.parametrize("bad", [{"dim": 30, "heads": 4}, {"layers": 0}, {"dropout": 1.0}, {"dim": 12, "heads": 4}])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        GPTConfig(**bad)


def test_rotary_attention_sees_offsets_not_places():
    """Rotary positions: shifting every position by the same amount changes nothing."""
    model = _model(3)
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        a = model(ids)
        b = model(ids, positions=torch.arange(10) + 17)
    assert (a - b).abs().max() <= 1e-4
    assert not any("position" in k for k in model.state_dict())
