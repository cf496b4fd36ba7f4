"""The speech model's hard parts: the log-mel front end (the DFT convolution is the STFT; a padded row
reads as the same audio alone), and the cached decoder step against the teacher-forced pass."""
import torch

from models.whisper import LogMel, Whisper, WhisperConfig, mel_filters

CFG = WhisperConfig(n_mels=32, dim=32, heads=2, encoder_layers=1, decoder_layers=2, max_tokens=16, dropout=0.0)


def test_mel_filters_cover_the_band_with_unit_area():
    f = mel_filters(16000, 512, 32)
    assert f.shape == (32, 257) and (f >= 0).all()
    assert (f.sum(1) > 0).all()  # no empty band
    hz = torch.linspace(0, 8000, 257)
    centres = (f * hz).sum(1) / f.sum(1)
    assert (centres[1:] > centres[:-1]).all()  # ordered low to high


def test_the_dft_convolution_is_the_stft_the_model_trains_on():
    m = LogMel(CFG)
    x, lengths = torch.randn(2, 8000) * 0.1, torch.tensor([8000, 5000])
    m.eval()
    by_conv, frames = m(x, lengths)
    m.train()
    by_fft, _ = m(x, lengths)
    assert torch.allclose(by_conv, by_fft, atol=1e-4)
    assert frames.tolist() == [51, 32] and by_conv.shape == (2, 32, 51)
    assert by_conv.max() <= 1.0 + 1e-6 and by_conv.min() >= -1.0 - 1e-6
    assert (by_conv[1, :, 32:] == 0).all()  # nothing past the row's audio


def test_gain_does_not_change_the_features():
    m = LogMel(CFG).eval()
    x, lengths = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    assert torch.allclose(m(x, lengths)[0], m(x * 0.05, lengths)[0], atol=1e-4)


def test_a_padded_row_is_encoded_as_the_same_audio_alone():
    torch.manual_seed(0)
    model = Whisper(CFG).eval()
    x = torch.randn(2, 12000) * 0.1
    with torch.no_grad():
        states, mask, _ = model.encode(x, torch.tensor([12000, 7000]))
        alone, alone_mask, _ = model.encode(x[1:, :7000], torch.tensor([7000]))
    s = int(alone_mask.sum())
    assert int(mask[1].sum()) == s
    assert torch.allclose(states[1, :s], alone[0, :s], atol=1e-5)


def test_cached_steps_give_the_teacher_forced_logits():
    torch.manual_seed(0)
    model = Whisper(CFG).eval()
    x, lengths = torch.randn(2, 9000) * 0.1, torch.tensor([9000, 6000])
    tokens = torch.randint(3, CFG.vocab_size, (2, 6))
    tokens[:, 0] = 1
    with torch.no_grad():
        full, _, _ = model(x, lengths, tokens)
        states, mask, _ = model.encode(x, lengths)
        cross = model.cross_cache(states)
        past, steps = model.empty_cache(2), []
        for t in range(tokens.shape[1]):
            logits, past = model.step(tokens[:, t:t + 1], mask, past, cross)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4)


def test_the_cross_cache_is_cross_attention_to_the_states():
    """The decoder's cross-attention over the keys/values the encoder outputs once equals attention to the
    states themselves (MultiHeadAttention's own cross-attention, the padding masked)."""
    torch.manual_seed(0)
    model = Whisper(CFG).eval()
    x, lengths = torch.randn(2, 9000) * 0.1, torch.tensor([9000, 5000])
    with torch.no_grad():
        states, mask, _ = model.encode(x, lengths)
        block = model.decoder[0]
        q_in = torch.randn(2, 3, CFG.dim)
        k, v = model.cross_cache(states)[0]
        bias = torch.zeros(mask.shape).masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        cached = block.cross_attn.attend_cached(block.cross_attn.queries(q_in), k, v, bias)
        direct = block.cross_attn(q_in, mask.bool()[:, None, None, :], source=states)
    assert torch.allclose(cached, direct, atol=1e-5)
