import pytest
import torch

from models.layers import (ConvBNAct, FeedForward, LearnedPositionalEmbedding, MultiHeadAttention, ResidualBlock,
                           TransformerBlock, activation, additive_mask, sinusoidal_embedding)


def test_conv_bn_act_shape():
    assert ConvBNAct(3, 8, 3, stride=2)(torch.randn(2, 3, 16, 16)).shape == (2, 8, 8, 8)


@pytest.mark.parametrize("c_in,c_out,stride", [(8, 8, 1), (8, 16, 2)])
def test_residual_block_shape_and_skip(c_in, c_out, stride):
    block = ResidualBlock(c_in, c_out, stride)
    assert block(torch.randn(2, c_in, 8, 8)).shape == (2, c_out, 8 // stride, 8 // stride)
    assert isinstance(block.skip, torch.nn.Identity) == (c_in == c_out and stride == 1)


def test_residual_block_is_identity_plus_body():
    block = ResidualBlock(4, 4).eval()
    for p in block.body.parameters():
        torch.nn.init.zeros_(p)  # body outputs 0 (BN weight 0) -> block is relu(x)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))


def test_attention_shape_and_causal_mask():
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    assert attn(x).shape == (2, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    full = attn(x, mask)
    # with a causal mask, changing the last token cannot change earlier outputs
    y = x.clone()
    y[:, -1] += 1.0
    torch.testing.assert_close(attn(y, mask)[:, :-1], full[:, :-1])
    assert not torch.allclose(attn(y)[:, :-1], attn(x)[:, :-1])


def reference_attention(attn: MultiHeadAttention, x, source, allowed):
    """Attention written out from the projection's weights: queries from x, keys/values from source."""
    d, h = x.shape[-1], attn.num_heads
    w, b = attn.qkv.weight, attn.qkv.bias
    q, k, v = x @ w[:d].T + b[:d], source @ w[d:2 * d].T + b[d:2 * d], source @ w[2 * d:].T + b[2 * d:]
    split = lambda z: z.view(z.shape[0], z.shape[1], h, d // h).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-2, -1) / (d // h) ** 0.5
    y = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ split(v)
    return attn.proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], d))


def test_cross_attention_reads_keys_and_values_from_the_source():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    padding = torch.tensor([[1] * 7, [1] * 4 + [0] * 3]).bool()[:, None, None, :]  # (N, 1, 1, S)
    with torch.no_grad():
        y = attn(x, padding, source=memory)
        torch.testing.assert_close(y, reference_attention(attn, x, memory, padding))
        # self-attention is cross-attention to itself
        torch.testing.assert_close(attn(x), attn(x, source=x))
        # the padded memory positions do not count
        changed = memory.clone()
        changed[1, 4:] += 5.0
        torch.testing.assert_close(attn(x, padding, source=changed)[1], y[1])
        # cross-attention over keys and values computed once (a cross cache) gives the same
        k, v = attn.keys_values(memory)
        torch.testing.assert_close(attn.attend_cached(attn.queries(x), k, v, additive_mask(padding)), y)


def test_cached_self_attention_equals_attention_over_the_whole_sequence():
    torch.manual_seed(1)
    attn = MultiHeadAttention(16, 4, rotary=True).eval()
    x = torch.randn(2, 6, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    with torch.no_grad():
        whole = attn(x, causal)
        empty = torch.zeros(2, 4, 0, 4)
        first, k, v = attn.forward_cached(x[:, :4], empty, empty, additive_mask(causal[:4, :4]), torch.arange(4))
        rest, k, v = attn.forward_cached(x[:, 4:], k, v, additive_mask(causal[4:]), torch.arange(4, 6))
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, atol=1e-5, rtol=1e-5)
    assert k.shape == v.shape == (2, 4, 6, 4)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_transformer_block_and_feedforward_shapes():
    x = torch.randn(3, 7, 32)
    assert TransformerBlock(32, 4)(x).shape == x.shape
    assert FeedForward(32, 64)(x).shape == x.shape


def test_positional_embeddings():
    pos = LearnedPositionalEmbedding(10, 8)
    x = torch.zeros(2, 4, 8)
    torch.testing.assert_close(pos(x, offset=3), pos.pos[:, 3:7].expand(2, -1, -1))
    e = sinusoidal_embedding(torch.arange(6), 8)
    assert e.shape == (6, 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_unknown_activation():
    with pytest.raises(ValueError, match="known: relu, gelu"):
        activation("swish")
