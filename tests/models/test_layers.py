import pytest
import torch

from models.layers import (ConvBNAct, FeedForward, LearnedPositionalEmbedding, MultiHeadAttention, ResidualBlock,
                           TransformerBlock, activation, sinusoidal_embedding)


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
